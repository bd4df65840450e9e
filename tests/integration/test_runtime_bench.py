"""`embopt bench-runtime --quick` on the tiny model: runs end to end and writes well-formed results."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from embopt.bench.runtime_bench import MODES, check_targets, zipf_stream
from embopt.cli.main import app
from embopt.training.student import choose_layers


def test_zipf_stream_repeats_popular_texts():
    texts = [f"t{i}" for i in range(100)]
    stream = zipf_stream(texts, 2000, 1.0, seed=1)
    counts = np.array(sorted((stream.count(t) for t in set(stream)), reverse=True))
    assert len(stream) == 2000 and set(stream) <= set(texts)
    assert counts[0] > 10 * np.median(counts)  # heavy head
    assert zipf_stream(texts, 2000, 1.0, seed=1) == stream


def test_student_layers_are_spaced_like_distill():
    spaced = lambda n, count: choose_layers(n, None, count)  # noqa: E731  (what bench-runtime cuts)
    assert spaced(6, 2) == [0, 5] and spaced(6, 1) == [5] and spaced(4, 3) == [0, 2, 3]


def test_quick_run_writes_results(tiny_model_dir, sts_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, [
        "bench-runtime", "--quick", "--teacher", str(tiny_model_dir),
        "--sts-file", str(sts_dir / "sts-dev.csv"), "--work", str(tmp_path / "work"),
        "--out", str(out), "--threads", "1", "--max-seq-length", "32",
    ])
    assert res.exit_code == 0, res.output
    result = json.loads((out / "runtime_bench.json").read_text())
    assert result["setup"]["student_layers"] == [0, 3]
    for model in ("teacher", "student"):
        rows = result["speed"][model]
        for path in ("st_onnx_int8", "embopt_same_file_int8", "embopt_pipeline_int8"):
            assert rows[path]["sentences_per_s"] > 0 and rows[path]["runs"] == 2
        assert 0 < rows["embopt_same_file_int8"]["overhead_fraction"] < 1
    assert result["fidelity"]["same_file_cosine_min"] > 0.9999  # the same fp32 file gives the same vectors
    cache = result["cache"]
    assert 0 < cache["repeat_fraction"] < 1 and cache["hit_rate"] > 0 and cache["hit_us_memory"] > 0
    assert set(result["targets"]) == set(check_targets(result))
    md = (out / "runtime_bench.md").read_text()
    assert "| teacher | st_onnx_int8 |" in md and "Cache (Zipf" in md
    assert "| target | value | wanted | met |" in res.output
    modes = result["modes"]["throughput"]
    assert set(modes) == set(MODES) and all(r["sentences_per_s"] > 0 for r in modes.values())
    assert modes["sessions"]["cosine_min_vs_plain"] >= 0.9999  # same batches as plain: same vectors
    assert result["modes"]["latency_16tok_1thread"]["embed"]["p50_ms"] > 0
    assert "| sessions | mode=bulk |" in md

    import mlflow

    runs = mlflow.search_runs(search_all_experiments=True,
                              filter_string="tags.`embopt.kind` = 'bench-runtime'")
    assert len(runs) == 1 and runs["metrics.cache.speedup"].iloc[0] > 0


def test_modes_only_on_a_bundle(tiny_bundle, sts_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, [
        "bench-runtime", "--modes-only", "--quick", "--bundle", str(tiny_bundle), "--variant", "onnx_fp32",
        "--sts-file", str(sts_dir / "sts-dev.csv"), "--out", str(tmp_path), "--threads", "2",
    ])
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "runtime_modes.json").read_text())["modes"]
    assert result["variant"] == "onnx_fp32" and set(result["throughput"]) == set(MODES)
    # fp32: every mode, whatever batches it forms, gives the plain vectors
    assert min(r["cosine_min_vs_plain"] for r in result["throughput"].values()) >= 0.9999
    assert "| sessions+overlap | mode=bulk, tokenize_chunk=512 |" in res.output
