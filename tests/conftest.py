"""Shared fixtures: a tiny BERT sentence model built from a config, its ONNX bundle,
tiny STS and corpus files. Nothing is downloaded; everything is session-scoped."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import tiny  # noqa: E402


@pytest.fixture(scope="session")
def fixtures_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fixtures")


@pytest.fixture(scope="session")
def tiny_model_dir(fixtures_dir) -> Path:
    """A 4-layer, 32-wide SentenceTransformer (BERT -> mean pooling -> Normalize)."""
    return tiny.build_tiny_model(fixtures_dir / "model")


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(tiny_model_dir), device="cpu")


@pytest.fixture(scope="session")
def sts_dir(fixtures_dir) -> Path:
    return tiny.write_sts_dir(fixtures_dir / "sts")


@pytest.fixture(scope="session")
def corpus_dir(fixtures_dir) -> Path:
    tiny.write_corpus(fixtures_dir / "corpus" / "wiki_00")
    return fixtures_dir / "corpus"


@pytest.fixture(scope="session")
def dev_pairs(sts_dir):
    from embopt.data.sts import read_sts_file

    return read_sts_file(sts_dir / "sts-dev.csv")


@pytest.fixture(scope="session")
def tiny_bundle(tiny_model, tiny_model_dir, fixtures_dir) -> Path:
    """An exported bundle of the tiny model: fused fp32 and dynamic int8 ONNX, tokenizer, manifest."""
    from embopt.bench.simple_bundle import build_simple_bundle

    bundle = build_simple_bundle(tiny_model, tiny_model_dir, fixtures_dir / "bundle", max_seq_length=32)
    return bundle
