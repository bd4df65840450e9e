"""Teacher embedding backends: the fp32 ONNX teacher run by embopt's runtime embeds like the torch teacher."""

from __future__ import annotations

import numpy as np
import pytest
import tiny

from embopt.errors import EmboptError
from embopt.training.teacher_encode import resolve_backend, teacher_encoder


def test_onnx_teacher_equals_torch_teacher(tiny_model):
    # Mixed lengths (and one long enough to be truncated) so the length-sorted batches differ from torch's.
    sentences = tiny.sentences(70, seed=5) + [" ".join(tiny.sentences(12, seed=6))]
    torch_emb = teacher_encoder(tiny_model, "torch", batch_size=16, max_seq_length=32)(sentences)
    onnx_emb = teacher_encoder(tiny_model, "onnx", batch_size=16, max_seq_length=32, threads=1)(sentences)
    assert onnx_emb.shape == torch_emb.shape and onnx_emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(onnx_emb, axis=1), 1.0, atol=1e-5)
    cos = (onnx_emb * torch_emb).sum(axis=1)
    assert cos.min() >= 0.9999, cos.min()


@pytest.mark.parametrize(("backend", "device", "expected"),
                         [("auto", "cpu", "onnx"), ("auto", "cuda:0", "torch"), ("torch", "cpu", "torch"),
                          ("onnx", "cpu", "onnx")])
def test_backend_choice(backend, device, expected):
    assert resolve_backend(backend, device) == expected


def test_unknown_backend_is_a_one_line_error():
    with pytest.raises(EmboptError, match="teacher_embed.backend: 'tf' is not one of auto, onnx, torch"):
        resolve_backend("tf", "cpu")


class Killed(Exception):
    """Stands for the process being killed mid-corpus."""


def fake_encoder(calls: list[int], fail_after: int | None = None):
    """Deterministic rows from the text (a hash seeds each row); raises once ``fail_after`` chunks ran."""
    import zlib

    def encode(sentences):
        if fail_after is not None and len(calls) >= fail_after:
            raise Killed
        calls.append(len(sentences))
        rows = [np.random.default_rng(zlib.crc32(s.encode())).standard_normal(8) for s in sentences]
        return np.asarray(rows, dtype=np.float32)

    return encode


def test_chunks_resume_after_a_kill_with_the_uninterrupted_result(tmp_path):
    from embopt.training.teacher_encode import clear_chunks, encode_in_chunks

    sentences = tiny.sentences(95, seed=8)
    calls: list[int] = []
    full, resumed = encode_in_chunks(fake_encoder(calls), sentences, 20, tmp_path / "uninterrupted", "job")
    assert resumed == 0 and calls == [20, 20, 20, 20, 15] and full.shape == (95, 8)

    ckpt = tmp_path / "ckpt"
    calls = []
    with pytest.raises(Killed):
        encode_in_chunks(fake_encoder(calls, fail_after=2), sentences, 20, ckpt, "job")
    assert sorted(p.name for p in ckpt.glob("chunk_*.npy")) == ["chunk_00000.npy", "chunk_00001.npy"]
    calls = []
    again, resumed = encode_in_chunks(fake_encoder(calls), sentences, 20, ckpt, "job")
    assert resumed == 40 and calls == [20, 20, 15]  # only the missing chunks are encoded
    np.testing.assert_array_equal(again, full)

    calls = []  # other settings: the saved chunks are not reused
    _, resumed = encode_in_chunks(fake_encoder(calls), sentences, 20, ckpt, "other-job")
    assert resumed == 0 and len(calls) == 5
    clear_chunks(ckpt)
    assert not list(ckpt.glob("chunk_*")) and not (ckpt / "job.json").exists()


def test_chunked_onnx_teacher_matches_one_pass(tiny_model, tmp_path):
    from embopt.training.teacher_encode import encode_in_chunks

    sentences = tiny.sentences(50, seed=9)
    encode = teacher_encoder(tiny_model, "onnx", batch_size=8, max_seq_length=32, threads=1)
    chunked, _ = encode_in_chunks(encode, sentences, 16, tmp_path, "job")
    np.testing.assert_allclose(chunked, encode(sentences), atol=1e-5)


def test_logged_encoder_reports_progress_and_returns_the_same_rows(tiny_model, caplog):
    import logging

    from embopt.training.teacher_encode import logged_encoder

    encode = teacher_encoder(tiny_model, "torch", batch_size=8, max_seq_length=32)
    sentences = tiny.sentences(50, seed=4)
    with caplog.at_level(logging.INFO, logger="embopt.training.teacher_encode"):
        got = logged_encoder(encode, "teacher val STS", 16)(sentences)
    np.testing.assert_allclose(got, encode(sentences), atol=1e-5)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("teacher val STS:")]
    assert [line.split(" (")[0] for line in lines] == [
        f"teacher val STS: {n} of 50 sentences" for n in (16, 32, 48, 50)]
    assert all(line.endswith("sentences/s)") for line in lines)


def test_spark_engine_without_java_stops_with_one_line_and_writes_nothing(tmp_path, tiny_model_dir, dev_pairs,
                                                                          monkeypatch, capsys):
    """No Java (or no pyspark): one line saying what to install, exit 1, no run, chunk or output."""
    import stage_project

    root = stage_project.make_project(tmp_path / "proj", tiny_model_dir, dev_pairs, corpus_lines=20)
    stage_project.write_params(root, {"base": {"teacher": str(tiny_model_dir)},
                                      "teacher_embed": {"engine": "spark"}})
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "no-java"))
    code, err = stage_project.run("teacher_embed", monkeypatch, root, capsys)
    assert code == 1
    assert err.strip().splitlines()[-1].startswith("teacher_embed: error: the spark engine needs "), err
    written = [root / "models" / "teacher_embed", root / "models" / "teacher_embed_ckpt",
               root / "metrics" / "teacher_embed.json", root / "mlflow.db"]
    assert not [p for p in written if p.exists()]
