"""Backends beside ONNX Runtime: OpenVINO IR (fp32, NNCF int8) and the static token table.

Each is built from the tiny model, run through the one runtime (the manifest names the
backend), packaged as a served bundle and loaded back. No timing here (benchmarks measure speed).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import stage_project
import tiny

from embopt.errors import EmboptError
from embopt.eval.sts import cosine_rows
from embopt.export.variants import package_variant, static_variants
from embopt.serving.runtime import Embedder, load_tokenizer
from embopt.training.static import distill_table, encode_with_table, fit_table

TEXTS = tiny.sentences(24, seed=3) + ["", "Doc"]


@pytest.fixture(scope="module")
def project(tiny_model, tiny_model_dir, dev_pairs, tmp_path_factory):
    """A stage project with the tiny model as teacher and its corpus embeddings (teacher_embed output)."""
    from embopt.data.corpus import read_lines

    root = stage_project.make_project(tmp_path_factory.mktemp("proj"), tiny_model_dir, dev_pairs)
    corpus = read_lines(root / "data" / "prepared" / "corpus.txt")
    (root / "models" / "teacher_embed").mkdir(parents=True)
    np.save(root / "models" / "teacher_embed" / "embeddings.npy",
            tiny_model.encode(corpus, convert_to_numpy=True, normalize_embeddings=True))
    (root / "metrics").mkdir()
    (root / "metrics" / "teacher_embed.json").write_text(json.dumps({"teacher_val_spearman": 50.0}))
    return root


def roundtrip(bundle, variant, path, tmp_path, texts=TEXTS) -> tuple[Embedder, Embedder]:
    """The variant as evaluate runs it, and as the served bundle promote would package runs it."""
    direct = Embedder(bundle, variant=variant, onnx_path=path, threads=1)
    served = Embedder(package_variant(bundle, variant, path, tmp_path / f"served_{variant}"), threads=1)
    np.testing.assert_allclose(served.embed(texts), direct.embed(texts), atol=1e-6)
    return direct, served


def test_openvino_variants_from_the_quantize_stage(project, monkeypatch, capsys, tmp_path):
    stage_project.write_params(project, {"quantize": {"openvino": {"enabled": True,
                                                                   "calibration_sentences": 32}}})
    code, err = stage_project.run("quantize", monkeypatch, project, capsys)
    assert code == 0, err
    bundle = project / "models" / "quantize"
    v = json.loads((bundle / "manifest.json").read_text())["variants"]
    report = json.loads((project / "reports" / "pipeline" / "quantize.json").read_text())["openvino"]
    ort = Embedder(bundle, variant="onnx_fp32_unfused", threads=1).embed(TEXTS)
    for name, min_cos in (("openvino_fp32", 0.9999), ("openvino_int8", 0.9)):
        assert v[name]["backend"] == "openvino" and (bundle / v[name]["weights"]).exists()
        direct, served = roundtrip(bundle, name, bundle / v[name]["file"], tmp_path)
        assert direct.backend == served.backend == "openvino"
        assert served.manifest["variants"][name]["backend"] == "openvino"
        got = direct.embed(TEXTS)
        assert got.shape == ort.shape and cosine_rows(got, ort).min() >= min_cos
        assert 0 < report[name]["retention_vs_fp32"] and report[name]["throughput_sps"] > 0
    # fp32 IR is the same function as the ORT graph; int8 is not bit-identical to it
    assert not np.allclose(Embedder(bundle, "openvino_int8", threads=1).embed(TEXTS), ort, atol=1e-6)


def test_static_stage_builds_embeds_and_roundtrips(project, tiny_model_dir, monkeypatch, capsys, tmp_path):
    stage_project.write_params(project, {"base": {"teacher": str(tiny_model_dir)},
                                         "static": {"epochs": 2, "batch_size": 32}})
    code, err = stage_project.run("static", monkeypatch, project, capsys)
    assert code == 0, err
    bundle = project / "models" / "static"
    (name, (src, path)), = static_variants(bundle).items()
    assert name == "static" and src == bundle and path.suffix == ".npy"
    direct, served = roundtrip(bundle, name, path, tmp_path)
    assert direct.backend == served.backend == "static" and direct.dim == 32
    emb = direct.embed(TEXTS)
    np.testing.assert_allclose(np.linalg.norm(emb[:-2], axis=1), 1.0, atol=1e-5)
    assert not emb[-2].any()  # "" is only [CLS] [SEP], whose rows are zero
    # The runtime (special tokens, padding, batches) gives what the training code computes.
    tok = load_tokenizer(bundle, 32)
    ids = [e.ids for e in tok.encode_batch(TEXTS[:24], add_special_tokens=False)]
    np.testing.assert_allclose(emb[:24], encode_with_table(np.load(path), ids), atol=1e-5)
    metrics = json.loads((project / "metrics" / "static.json").read_text())
    assert metrics["best_epoch"] in (0, 1, 2) and metrics["train_sentences"] == 200


def test_fit_moves_the_static_mean_toward_the_teacher(tiny_model, tiny_model_dir, project):
    from embopt.data.corpus import read_lines

    tok = load_tokenizer(tiny_model_dir, 32)
    specials = [i for i, t in tok.get_added_tokens_decoder().items() if t.special]
    table = distill_table(str(tiny_model_dir), tok.get_vocab(), specials)
    assert table.shape == (len(tok.get_vocab()), 32) and not table[specials].any()
    corpus = read_lines(project / "data" / "prepared" / "corpus.txt")
    ids = [e.ids for e in tok.encode_batch(corpus, add_special_tokens=False)]
    targets = np.load(project / "models" / "teacher_embed" / "embeddings.npy")

    def fit_to_teacher(t):  # the selection score here: mean cosine to the teacher on the corpus
        return float(cosine_rows(encode_with_table(t, ids), targets).mean())

    best, history = fit_table(table, ids, targets, fit_to_teacher, epochs=5, batch_size=16, lr=0.01, seed=0)
    assert len(history) == 6 and history[-1] > history[0] + 0.05
    assert fit_to_teacher(best) == max(history)


def test_static_table_errors_name_the_file(tmp_path):
    from embopt.serving.backends import StaticSession

    bad = tmp_path / "embeddings.npy"
    np.save(bad, np.zeros(5, dtype=np.float32))
    with pytest.raises(EmboptError, match="embeddings.npy: expected a \\(vocab, dim\\) table"):
        StaticSession(bad)
    with pytest.raises(EmboptError, match="unknown backend 'tensorflow'"):
        from embopt.serving.backends import backend_of

        backend_of({"backend": "tensorflow"}, bad)
