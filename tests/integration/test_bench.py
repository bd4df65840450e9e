"""embopt bench: the command runs on the tiny model and bundle and writes well-formed outputs.

No timing assertions: speed numbers of a tiny model on a shared CI machine mean
nothing. The checks are on structure, consistency (ratios, percentiles, phase
sums) and on the pieces with exact answers (op counts, profile aggregation).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from embopt.bench.roofline import EncoderShape, mean_ops, ops_per_sentence, shape_from_config

# ------------------------------------------------------------------------- roofline


def test_ops_per_sentence_counts_every_matrix_product():
    shape = EncoderShape(layers=1, hidden=4, intermediate=8, heads=2)
    s = 3
    projections = 2 * s * (3 * 4 * 4 + 4 * 4)  # Q, K, V, output
    ffn = 2 * s * (2 * 4 * 8)
    attention = 2 * 2 * s * s * 4  # QK^T and AV over the 4-wide attention
    assert ops_per_sentence(shape, s) == projections + ffn + attention
    two_layers = EncoderShape(layers=2, hidden=4, intermediate=8, heads=2)
    assert ops_per_sentence(two_layers, s) == 2 * ops_per_sentence(shape, s)


def test_pruned_heads_and_projection_change_the_count():
    full = EncoderShape(layers=2, hidden=8, intermediate=16, heads=4)
    pruned = EncoderShape(layers=2, hidden=8, intermediate=16, heads=4, pruned_heads={0: 2})
    assert pruned.attention_dim(0) == 4 and pruned.attention_dim(1) == 8
    assert ops_per_sentence(pruned, 10) < ops_per_sentence(full, 10)
    pca = EncoderShape(layers=2, hidden=8, intermediate=16, heads=4, projection=3)
    assert ops_per_sentence(pca, 10) - ops_per_sentence(full, 10) == 2 * 8 * 3
    assert mean_ops(full, [4, 6]) == (ops_per_sentence(full, 4) + ops_per_sentence(full, 6)) / 2


def test_shape_from_config_reads_bert_keys_and_refuses_incomplete_configs():
    cfg = {
        "num_hidden_layers": 6,
        "hidden_size": 384,
        "intermediate_size": 1536,
        "num_attention_heads": 12,
        "pruned_heads": {"1": [0, 3]},
    }
    shape = shape_from_config(cfg)
    assert (shape.layers, shape.hidden, shape.intermediate, shape.heads) == (6, 384, 1536, 12)
    assert shape.pruned_heads == {1: 2}
    with pytest.raises(KeyError):
        shape_from_config({"hidden_size": 384})


# ------------------------------------------------------------------------ profiling


def test_ort_profile_summary_aggregates_by_op_and_pooling(tmp_path):
    from embopt.bench.profiling import ort_profile_summary

    events = [
        {"cat": "Session", "name": "model_run", "dur": 500},
        {"cat": "Node", "name": "Attention_0_kernel_time", "dur": 300, "args": {"op_name": "Attention"}},
        {
            "cat": "Node",
            "name": "/transformer/x/MatMul_kernel_time",
            "dur": 100,
            "args": {"op_name": "MatMul"},
        },
        {"cat": "Node", "name": "/ReduceSum_kernel_time", "dur": 100, "args": {"op_name": "ReduceSum"}},
        {"cat": "Node", "name": "/ReduceSum_fence_before", "dur": 999, "args": {"op_name": "ReduceSum"}},
    ]
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(events))
    summary = ort_profile_summary(path, pooling={"/ReduceSum"})
    assert summary["kernel_ms"] == pytest.approx(0.5)
    assert summary["model_run_ms"] == pytest.approx(0.5)
    assert summary["pooling_share"] == pytest.approx(0.2)
    assert list(summary["by_op_pct"]) == ["Attention", "MatMul", "ReduceSum"]
    assert summary["by_op_pct"]["Attention"] == pytest.approx(60.0)


def test_pooling_nodes_are_the_wrapper_ops_not_the_encoder(tiny_bundle):
    from embopt.bench.profiling import pooling_nodes

    names = pooling_nodes(tiny_bundle / "onnx" / "model.onnx")
    assert "/ReduceSum" in names and "/ReduceL2" in names
    assert not any(n.startswith("/transformer") or n.startswith("Attention") for n in names)


def test_st_phases_add_up_to_the_wall_time(tiny_model):
    from embopt.bench.profiling import PHASES, st_phases

    ph = st_phases(tiny_model, ["A man is playing a guitar.", "The cat is eating."] * 4, batch_size=4)
    assert set(PHASES) <= set(ph)
    assert all(ph[p] >= 0 for p in PHASES)
    assert ph["model_run"] > 0 and ph["tokenize"] > 0 and ph["build_tensors"] > 0
    assert sum(ph[p] for p in PHASES) == pytest.approx(ph["total"], rel=1e-6, abs=1e-9)
    assert "preprocess" not in vars(tiny_model)  # the wrapper is removed afterwards


def test_long_texts_join_paragraphs_and_drop_markup(corpus_dir):
    from embopt.bench.run import long_texts

    texts = long_texts(corpus_dir, n=3, min_words=40)
    assert len(texts) == 3
    assert all(len(t.split()) >= 40 for t in texts)
    assert not any("<doc" in t or "</doc>" in t for t in texts)


def test_peak_rss_in_a_fresh_process(tiny_bundle, tmp_path):
    from embopt.bench.peak_rss import run_isolated

    texts = tmp_path / "texts.json"
    texts.write_text(json.dumps(["A man is playing a guitar."] * 8))
    spec = {
        "backend": "embopt-ort",
        "name": "onnx_int8",
        "bundle": str(tiny_bundle),
        "onnx_path": str(tiny_bundle / "onnx" / "model_qint8.onnx"),
        "threads": 1,
        "texts_file": str(texts),
        "batch_size": 4,
        "max_seq_length": 32,
    }
    out = run_isolated(spec, timeout_s=120)
    assert "error" not in out, out
    assert 0 < out["rss_imports_mb"] <= out["rss_peak_mb"]
    bad = run_isolated({**spec, "name": "missing", "onnx_path": str(tmp_path / "nope.onnx")}, timeout_s=120)
    assert "error" in bad and "nope.onnx" in bad["error"]


# ------------------------------------------------------------------------- command


def _run_bench(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db",
        EMBOPT_ROOT=str(Path(__file__).resolve().parents[2]),  # the repo's params.yaml
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    return subprocess.run(
        [sys.executable, "-m", "embopt.cli.main", "bench", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory, tiny_bundle, tiny_model_dir, sts_dir, corpus_dir):
    """One quick run on the tiny fixtures: teacher = tiny model, ST anchors of it, our two ONNX variants."""
    tmp = tmp_path_factory.mktemp("bench")
    bundle = tmp / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["source_model"] = str(tiny_model_dir)  # lets the roofline read the tiny config
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    out = tmp / "out"
    proc = _run_bench(
        tmp,
        "--quick",
        "--threads",
        "2",
        "--batch-sizes",
        "1,8,32",
        "--no-rss",
        "--out",
        str(out),
        "--teacher",
        str(tiny_model_dir),
        "--export-dir",
        str(bundle),
        "--pca-dir",
        str(tmp / "no_pca"),
        "--torch-model",
        f"student_torch={tiny_model_dir}",
        "--sts-file",
        str(sts_dir / "sts-dev.csv"),
        "--corpus",
        str(corpus_dir),
        "--final",
        "onnx_int8",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, out, proc


def test_bench_writes_consistent_json(bench_run):
    _, out, _ = bench_run
    result = json.loads((out / "bench.json").read_text())
    rows = result["variants"]
    anchors = {"teacher_torch", "st_onnx_fp32"} | {n for n in rows if n.startswith("st_onnx_int8_")}
    assert len(anchors) == 3, f"ST anchors missing: {result['notes']}"
    assert set(rows) == anchors | {"onnx_fp32", "onnx_int8", "student_torch"}
    assert set(result["anchors"]) == anchors
    assert result["final"] == "onnx_int8"
    assert result["setup"]["batch_sizes"] == [1, 8, 32]
    assert result["machine"]["threads"]["benchmark_threads"] == 2
    assert result["machine"]["threads"]["torch_num_threads"] == 2
    assert result["setup"]["contention"]["process_cpu_per_wall_s"] > 0
    for p in ("int8", "fp32"):
        assert result["peaks"][p]["peak_ops_s"] > 0
    assert rows["teacher_torch"]["retention"] == pytest.approx(1.0)
    for name, r in rows.items():
        assert math.isfinite(r["sts_spearman"]) and -100 <= r["sts_spearman"] <= 100
        assert set(r["throughput_sps"]) == {"1", "8", "32"} and all(
            x > 0 for x in r["throughput_sps"].values()
        )
        for b, x in r["throughput_sps"].items():
            teacher = rows["teacher_torch"]["throughput_sps"][b]
            assert r["speedup_vs_teacher"][b] == pytest.approx(x / teacher)
            best = r["best_anchor"][b]
            assert best in anchors
            assert rows[best]["throughput_sps"][b] == max(rows[a]["throughput_sps"][b] for a in anchors)
        lat = r["latency_ms_bs1_1thread"]
        assert 0 < lat["p50_ms"] <= lat["p95_ms"] <= lat["p99_ms"]
        assert set(r["thread_sweep"]) == {"t1_b1", "t1_b32", "t2_b1", "t2_b32"}
        assert r["size_mb"] > 0
        for key in ("b1", "b32"):
            ph = r["phases_s"][key]
            parts = sum(
                ph[p] for p in ("tokenize", "build_tensors", "model_run", "pooling_normalize", "other")
            )
            assert parts == pytest.approx(ph["total"], rel=1e-6, abs=1e-9), (name, key)
            assert ph["model_run"] > 0
        roof = r["roofline"][str(r["roofline_best_batch"])]
        assert roof["gops_per_sentence"] > 0 and roof["pct_of_int8_peak"] > 0, (name, roof)
    assert rows["onnx_int8"]["precision"] == "int8" and rows["onnx_fp32"]["precision"] == "fp32"
    assert rows["onnx_int8"]["phases_s"]["b32"]["pooling_normalize"] > 0  # split out by the ORT profile
    assert set(result["targets"]) == {
        "speedup_vs_teacher_at_retention",
        "latency_p50_16tok",
        "vs_st_int8",
        "int8_vs_fp32_parent",
        "roofline_int8",
    }
    assert all(isinstance(t["met"], bool) for t in result["targets"].values())
    sweep = result["truncation_sweep"]
    assert set(sweep) == {"teacher_torch", "onnx_int8"} | {n for n in anchors if n.startswith("st_onnx_int8")}
    for per in sweep.values():
        assert per["16"]["long_mean_tokens"] <= 16 < per["32"]["long_mean_tokens"] <= 32
        assert per["32"]["cos_vs_longest"] == pytest.approx(1.0, abs=1e-5)


def test_bench_writes_traces_markdown_and_plot(bench_run):
    _, out, proc = bench_run
    result = json.loads((out / "bench.json").read_text())
    for name, r in result["variants"].items():
        prof = r["profile"]
        assert "error" not in prof, (name, prof)
        trace = out / "traces" / prof["trace"]
        assert trace.exists() and trace.stat().st_size > 0
        json.loads(trace.read_text())  # a readable Chrome trace / ORT profile
        expected = "torch.profiler" if r["backend"] == "torch" else "onnxruntime"
        assert prof["kind"] == expected
    md = (out / "bench.md").read_text()
    for heading in (
        "## Variants",
        "## Targets",
        "## Where the time goes",
        "## Thread sweep",
        "## Batch sweep",
        "## Truncation sweep",
        "## Roofline",
    ):
        assert heading in md
    for name in result["variants"]:
        assert f"`{name}`" in md
    assert "| variant | group | backend |" in md
    assert md in proc.stdout  # the command prints the report
    png = (out / "pareto.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_logs_one_mlflow_run_with_artifacts(bench_run):
    import mlflow

    tmp, _, _ = bench_run
    mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["embopt"], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags["embopt.kind"] == "bench"
    assert "onnx_int8.throughput_b32" in run.data.metrics
    assert run.data.params["threads"] == "2"
    client = mlflow.MlflowClient()
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"bench.md", "bench.json", "pareto.png", "traces"} <= top
    traces = [a.path for a in client.list_artifacts(run.info.run_id, "traces")]
    assert any(p.endswith(".torch_trace.json") for p in traces) and any(".ort_profile" in p for p in traces)


def test_bench_missing_sts_file_is_one_line_and_writes_nothing(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    proc = _run_bench(
        tmp_path,
        "--quick",
        "--no-rss",
        "--no-anchors",
        "--no-mlflow",
        "--out",
        str(out),
        "--teacher",
        str(tiny_model_dir),
        "--sts-file",
        str(tmp_path / "nope.tsv"),
    )
    assert proc.returncode == 1
    assert "bench: error:" in proc.stderr and "nope.tsv" in proc.stderr
    assert not (out / "bench.json").exists() and not (out / "bench.md").exists()


def test_final_variant_is_what_promote_chose_then_evaluate_then_the_last(tmp_path, monkeypatch):
    """The targets judge the variant the pipeline ships (promote's pick), not one that failed its gate."""
    from embopt.bench import run as bench_run_mod

    monkeypatch.setattr(bench_run_mod.config, "METRICS_DIR", tmp_path)
    opts = bench_run_mod.BenchOptions(export_dir=bench_run_mod.config.EXPORT_DIR)
    names = ["onnx_fp32", "onnx_int8", "onnx_int8_pca128"]
    assert bench_run_mod._final_variant(opts, names) == "onnx_int8_pca128"
    (tmp_path / "evaluate.json").write_text(json.dumps({"final": "onnx_fp32"}))
    assert bench_run_mod._final_variant(opts, names) == "onnx_fp32"
    (tmp_path / "promote.json").write_text(json.dumps({"challenger": {"variant": "onnx_int8"}}))
    assert bench_run_mod._final_variant(opts, names) == "onnx_int8"
    (tmp_path / "promote.json").write_text(json.dumps({"challenger": {"variant": "gone_variant"}}))
    assert bench_run_mod._final_variant(opts, names) == "onnx_fp32"
    other = bench_run_mod.BenchOptions(export_dir=tmp_path / "elsewhere")
    assert bench_run_mod._final_variant(other, names) == "onnx_int8_pca128"
    assert bench_run_mod._final_variant(bench_run_mod.BenchOptions(final="onnx_fp32"), names) == "onnx_fp32"
