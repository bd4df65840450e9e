"""Quantization: ISA presets, dynamic and static int8, fp16, the accuracy fallback and the quantize stage."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import stage_project
import tiny
from onnxruntime.quantization.calibrate import load_tensors_data

from embopt.errors import EmboptError
from embopt.eval.sts import cosine_rows
from embopt.export.calibration import StaticRecipe, is_tensorrt_qdq, quantize_static_qdq
from embopt.export.candidates import Candidate, pick, plan_candidates
from embopt.export.fallback import exclude_until_pass, node_sensitivity
from embopt.export.fp16 import convert_fp16
from embopt.export.quantize import (
    DynamicRecipe,
    check_op_types,
    detect_isa,
    quantize_dynamic_int8,
    quantized_nodes,
    resolve_recipe,
)
from embopt.pipeline.params import QuantizeParams
from embopt.serving.runtime import Embedder, load_tokenizer

OPS = ["MatMul", "Attention", "Gather"]


@pytest.fixture(scope="module")
def graphs(tiny_model, tiny_bundle, tmp_path_factory) -> dict[str, Path]:
    """The tiny model's fused fp32 graph (from the bundle) and its unfused export."""
    from embopt.export.onnx import export_onnx

    d = tmp_path_factory.mktemp("graphs")
    return {"fused": tiny_bundle / "onnx" / "model.onnx",
            "unfused": export_onnx(tiny_model, d / "unfused.onnx")}


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    return tiny.sentences(48, seed=5)


def embed(bundle: Path, path: Path, texts: list[str]) -> np.ndarray:
    return Embedder(bundle, onnx_path=path, threads=1).embed(texts)


# ----------------------------------------------------------------------------- presets


def test_detect_isa_reads_machine_and_flags():
    assert detect_isa("aarch64", set()) == "arm64"
    assert detect_isa("x86_64", {"avx2", "avx512f", "avx512_vnni"}) == "avx512_vnni"
    assert detect_isa("x86_64", {"avx2", "avx_vnni"}) == "avx512_vnni"  # AVX-VNNI: same u8s8 kernels
    assert detect_isa("x86_64", {"avx2", "fma"}) == "avx2"


def test_presets_and_overrides():
    assert resolve_recipe("avx2").reduce_range is True  # no VNNI: 7-bit weights avoid saturation
    assert resolve_recipe("avx512_vnni").reduce_range is False
    r = resolve_recipe("avx2", reduce_range=False, per_channel=True, weight_type="quint8",
                       op_types=["MatMul"])
    assert (r.isa, r.reduce_range, r.per_channel, r.weight_type, r.op_types) == (
        "avx2", False, True, "quint8", ("MatMul",))
    with pytest.raises(EmboptError, match="quantize.isa"):
        resolve_recipe("sse2")


# ----------------------------------------------------------------------------- dynamic


def test_dynamic_int8_quantizes_and_excludes_nodes(graphs, tiny_bundle, sentences, tmp_path):
    fp32 = graphs["fused"]
    q = quantize_dynamic_int8(fp32, tmp_path / "q.onnx", op_types=OPS)
    done = quantized_nodes(fp32, q, OPS)
    assert "Attention_0" in done and any("MatMul" in n for n in done)
    keep = done[:2]
    q2 = quantize_dynamic_int8(fp32, tmp_path / "q2.onnx", op_types=OPS, nodes_to_exclude=keep)
    assert set(quantized_nodes(fp32, q2, OPS)) == set(done) - set(keep)
    orig = {n.name: n.op_type for n in onnx.load(str(fp32)).graph.node}
    after = {n.name: n.op_type for n in onnx.load(str(q2)).graph.node}
    assert all(after.get(k) == orig[k] for k in keep)  # still the float op
    ref = embed(tiny_bundle, fp32, sentences)
    assert float(np.mean(cosine_rows(embed(tiny_bundle, q, sentences), ref))) > 0.98
    only = quantize_dynamic_int8(fp32, tmp_path / "one.onnx", op_types=OPS, nodes_to_quantize=[done[0]])
    assert quantized_nodes(fp32, only, OPS) == [done[0]]


def test_unsupported_op_type_names_the_setting(graphs, tmp_path):
    with pytest.raises(EmboptError, match=r"quantize\.op_types: op type\(s\) Softmax cannot be quant"):
        quantize_dynamic_int8(graphs["fused"], tmp_path / "q.onnx", op_types=["Softmax"])
    with pytest.raises(EmboptError, match=r"quantize\.static\.op_types: op type\(s\) Attention"):
        check_op_types(graphs["fused"], ["Attention"], "static", "quantize.static.op_types")
    with pytest.raises(EmboptError, match=r"no node of the op types in quantize\.op_types \(Conv\)"):
        check_op_types(graphs["fused"], ["Conv"], "dynamic", "quantize.op_types")
    assert not (tmp_path / "q.onnx").exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_onnx_is_one_line_naming_the_file(graphs, tmp_path, damage):
    bad = tmp_path / "bad.onnx"
    data = graphs["fused"].read_bytes()
    bad.write_bytes(data[: len(data) // 3] if damage == "truncated" else b"not a model at all")
    for fn in (lambda: quantize_dynamic_int8(bad, tmp_path / "q.onnx", op_types=OPS),
               lambda: quantize_static_qdq(bad, tmp_path / "s.onnx", StaticRecipe(), ["a b c"], None,
                                           tmp_path / "r.json"),
               lambda: convert_fp16(bad, tmp_path / "h.onnx")):
        with pytest.raises(EmboptError) as err:
            fn()
        assert str(bad) in str(err.value) and "\n" not in str(err.value)
    assert not any((tmp_path / f).exists() for f in ("q.onnx", "s.onnx", "h.onnx", "r.json"))


# ----------------------------------------------------------------------------- static


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_static_qdq_calibrates_saves_ranges_and_stays_close(graphs, tiny_bundle, sentences, tmp_path, method):
    tok = load_tokenizer(tiny_bundle, 32)
    ranges = tmp_path / "ranges.json"
    q = quantize_static_qdq(graphs["fused"], tmp_path / "s.onnx", StaticRecipe(method=method), sentences, tok,
                            ranges)
    saved = load_tensors_data(ranges).data  # ORT's calibration cache: tensor name -> TensorData
    assert len(saved) >= 8 and all(np.all(t.lowest <= t.highest) for t in saved.values())
    assert json.loads(ranges.read_text())["calibration_method"]["value"].lower().endswith(method)
    assert quantized_nodes(graphs["fused"], q, ["MatMul"])  # QDQ pairs around the MatMuls
    assert sum(n.op_type == "QuantizeLinear" for n in onnx.load(str(q)).graph.node) > 0
    ref = embed(tiny_bundle, graphs["fused"], sentences)
    assert float(np.mean(cosine_rows(embed(tiny_bundle, q, sentences), ref))) > 0.95
    # The saved ranges are reused: no calibration data needed for a rebuild (the fallback's case).
    again = quantize_static_qdq(graphs["fused"], tmp_path / "s2.onnx", StaticRecipe(method=method), None, tok,
                                ranges)
    assert again.exists()


def test_static_qdq_empty_calibration_set(graphs, tiny_bundle, tmp_path):
    tok = load_tokenizer(tiny_bundle, 32)
    with pytest.raises(EmboptError, match=r"calibration_sentences: the calibration set is empty"):
        quantize_static_qdq(graphs["fused"], tmp_path / "s.onnx", StaticRecipe(), [], tok,
                            tmp_path / "r.json")
    assert not (tmp_path / "s.onnx").exists() and not (tmp_path / "r.json").exists()


def test_tensorrt_qdq_needs_symmetric_int8_and_standard_ops(graphs, tiny_bundle, sentences, tmp_path):
    tok = load_tokenizer(tiny_bundle, 32)
    sym = StaticRecipe(activation_type="qint8", symmetric_activations=True)
    ok = quantize_static_qdq(graphs["unfused"], tmp_path / "trt.onnx", sym, sentences, tok,
                             tmp_path / "a.json")
    assert is_tensorrt_qdq(ok) == (True, "")
    asym = quantize_static_qdq(graphs["unfused"], tmp_path / "u8.onnx", StaticRecipe(), sentences, tok,
                               tmp_path / "b.json")
    assert "zero point" in is_tensorrt_qdq(asym)[1]
    fused = quantize_static_qdq(graphs["fused"], tmp_path / "f.onnx", sym, sentences, tok,
                                tmp_path / "c.json")
    assert "contrib ops" in is_tensorrt_qdq(fused)[1]


# ----------------------------------------------------------------------------- fp16


def test_fp16_keeps_io_types_and_halves_weights(graphs, tiny_bundle, sentences, tmp_path):
    h = convert_fp16(graphs["fused"], tmp_path / "h.onnx")
    m = onnx.load(str(h))
    assert [i.type.tensor_type.elem_type for i in m.graph.input] == [onnx.TensorProto.INT64] * 2
    assert m.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    big = [i for i in m.graph.initializer if len(i.dims) == 2 and min(i.dims) >= 32]
    assert big and all(i.data_type == onnx.TensorProto.FLOAT16 for i in big)
    try:  # ORT's CPU provider may or may not run every fp16 kernel; where it does, outputs must agree
        out = embed(tiny_bundle, h, sentences)
    except EmboptError:
        pytest.skip("this onnxruntime cannot run the fp16 graph on CPU (evaluated on CUDA only)")
    assert float(np.mean(cosine_rows(out, embed(tiny_bundle, graphs["fused"], sentences)))) > 0.99


# ----------------------------------------------------------------------------- fallback


def test_exclude_until_pass_stops_at_the_first_passing_k(tmp_path):
    sens = [("a", 0.3), ("b", 0.2), ("c", 0.1)]
    built = []

    def build(dst, nodes_to_exclude=None, nodes_to_quantize=None):
        built.append(list(nodes_to_exclude))
        dst.write_text(",".join(nodes_to_exclude))
        return dst

    def score(path):  # passes once a and b are both fp32
        return 0.995 if {"a", "b"} <= set(path.read_text().split(",")) else 0.98

    r = exclude_until_pass(sens, build, score, 0.99, tmp_path / "m.onnx", max_nodes=3)
    assert r.passed and r.excluded == ["a", "b"] and built == [["a"], ["a", "b"]]
    assert [s["k"] for s in r.steps] == [1, 2] and r.report()["nodes_kept_fp32"] == ["a", "b"]


def test_exclude_until_pass_keeps_the_best_when_the_gate_cannot_pass(tmp_path):
    scores = {("a",): 0.97, ("a", "b"): 0.985, ("a", "b", "c"): 0.98}
    last = {}

    def build(dst, nodes_to_exclude=None, nodes_to_quantize=None):
        last["k"] = tuple(nodes_to_exclude)
        return dst

    r = exclude_until_pass([("a", 3), ("b", 2), ("c", 1)], build, lambda p: scores[last["k"]], 0.99,
                           tmp_path / "m.onnx", max_nodes=3)
    assert not r.passed and r.excluded == ["a", "b"] and r.score == 0.985
    assert last["k"] == ("a", "b")  # the file left behind is the best one, not the last tried


def test_node_sensitivity_on_the_tiny_model(graphs, tiny_bundle, sentences, tmp_path):
    fp32 = graphs["fused"]
    q = quantize_dynamic_int8(fp32, tmp_path / "q.onnx", op_types=OPS)
    nodes = quantized_nodes(fp32, q, OPS)
    ref = embed(tiny_bundle, fp32, sentences)
    sens = node_sensitivity(
        nodes, lambda dst, **kw: quantize_dynamic_int8(fp32, dst, op_types=OPS, **kw),
        lambda p: embed(tiny_bundle, p, sentences), ref, tmp_path)
    assert sorted(n for n, _ in sens) == sorted(nodes)
    scores = [s for _, s in sens]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0 and min(scores) >= -1e-6


# ----------------------------------------------------------------------------- candidates


def test_plan_candidates_names_files_and_dedupes():
    p = QuantizeParams(isa="avx512_vnni", dynamic_extra=["per_channel", "per_tensor", "unfused"],
                       static={"methods": ["minmax", "entropy"]})
    cs = plan_candidates(p, has_unfused=True)
    names = [c.name for c in cs]
    assert names == ["onnx_int8_dynamic_per_tensor", "onnx_int8_dynamic_per_channel",
                     "onnx_int8_dynamic_per_tensor_unfused", "onnx_int8_static_minmax",
                     "onnx_int8_static_entropy"]
    assert cs[0].file == "model_qint8.onnx" and len({c.file for c in cs}) == len(cs)
    assert [c.parent for c in cs] == ["fused", "fused", "unfused", "fused", "fused"]
    avx2 = plan_candidates(QuantizeParams(isa="avx2"), True)[0]
    assert avx2.name == "onnx_int8_dynamic_per_tensor_reduce_range"
    plain = plan_candidates(QuantizeParams(isa="avx512_vnni", optimize=False, dynamic_extra=["unfused"]),
                            has_unfused=False)
    assert [(c.name, c.parent) for c in plain] == [("onnx_int8_dynamic_per_tensor", "unfused")]


def test_pick_fastest_passing_up_to_timing_noise_else_most_accurate():
    def c(name, passed, sps, ret, spread=0.01, size=10.0):
        return Candidate(name, "dynamic", "fused", DynamicRecipe(), f"{name}.onnx",
                         {"passed": passed, "throughput_sps": sps, "retention_vs_fp32": ret,
                          "throughput_spread": spread, "size_mb": size})

    def picked(*candidates):
        return pick(candidates, noise_floor=0.05).name

    assert picked(c("a", True, 100, 0.995), c("b", True, 150, 0.991), c("c", False, 300, 0.9)) == "b"
    assert picked(c("a", False, 100, 0.98), c("b", False, 150, 0.97)) == "a"
    # Within the noise floor (4% < 5%), or within the measured spread, speed is a tie: val retention decides.
    assert picked(c("fast", True, 104, 0.991), c("accurate", True, 100, 0.995)) == "accurate"
    assert picked(c("fast", True, 120, 0.991, spread=0.25), c("accurate", True, 100, 0.995)) == "accurate"
    # Beyond the noise, the faster wins; an equal tie goes to the smaller file.
    assert picked(c("fast", True, 120, 0.991), c("accurate", True, 100, 0.995)) == "fast"
    assert picked(c("big", True, 100, 0.995, size=20), c("small", True, 100, 0.995)) == "small"


# ----------------------------------------------------------------------------- the stage


@pytest.fixture(scope="module")
def project(tiny_model_dir, dev_pairs, tmp_path_factory) -> Path:
    return stage_project.make_project(tmp_path_factory.mktemp("proj"), tiny_model_dir, dev_pairs)


def test_stage_builds_gated_variants(project, monkeypatch, capsys):
    stage_project.write_params(project, {"quantize": {"isa": "avx512_vnni",  # candidate names below
        "static": {"methods": ["minmax"], "tensorrt_qdq": True}, "keep_candidates": True,
        "dynamic_extra": ["per_channel"], "gate": {"min_retention_vs_fp32": 0.9}}})
    code, err = stage_project.run("quantize", monkeypatch, project, capsys)
    assert code == 0, err
    out = project / "models" / "quantize"
    m = json.loads((out / "manifest.json").read_text())
    v = m["variants"]
    assert list(v)[:3] == ["onnx_fp32", "onnx_fp32_unfused", "onnx_int8"]
    assert v["onnx_fp16"]["requires"] == "cuda" and v["onnx_fp16"]["keep_io_types"] is True
    assert v["onnx_int8"]["recipe"] in {"onnx_int8_dynamic_per_tensor", "onnx_int8_dynamic_per_channel",
                                        "onnx_int8_static_minmax"}
    kept = {"onnx_int8_dynamic_per_tensor", "onnx_int8_dynamic_per_channel", "onnx_int8_static_minmax"}
    assert kept - {v["onnx_int8"]["recipe"]} <= set(v)  # the others are kept as their own variants
    assert v["onnx_int8"]["recipe"] not in v  # ...and the chosen one is not listed twice
    for entry in v.values():
        assert (out / entry["file"]).exists()
    static = next(e for e in v.values() if e.get("method") == "minmax")
    assert load_tensors_data(out / static["calibration_ranges"]).data
    trt = m["tensorrt_sources"]["int8_qdq"]
    assert is_tensorrt_qdq(out / trt["file"])[0] and (out / trt["calibration_ranges"]).exists()
    metrics = {**json.loads((project / "metrics" / "quantize.json").read_text()),  # headline
               **json.loads((project / "reports" / "pipeline" / "quantize.json").read_text())}  # tables
    assert set(metrics["candidates"]) == kept
    assert metrics["int8_recipe"] == v["onnx_int8"]["recipe"]
    assert all(row["throughput_spread"] >= 0 for row in metrics["candidates"].values())  # what pick reads
    chosen = metrics["candidates"][metrics["int8_recipe"]]
    assert chosen["passed"] and chosen["retention_vs_fp32"] == metrics["retention_vs_fp32"] >= 0.9
    # The fastest passing one up to timing noise: the rule applied to the rows the stage reported.
    rows = [Candidate(name, "dynamic", "fused", DynamicRecipe(), "", row)
            for name, row in metrics["candidates"].items()]
    assert pick(rows, noise_floor=0.05).name == metrics["int8_recipe"]


def test_stage_fallback_reports_nodes_and_cost(project, monkeypatch, capsys):
    # An unreachable gate: the fallback runs, keeps max_nodes in fp32, reports, and the gate fails (exit 2).
    stage_project.write_params(project, {"quantize": {"gate": {"min_retention_vs_fp32": 1.5}, "fp16": False,
                                                      "keep_unfused": False}})
    code, err = stage_project.run("quantize", monkeypatch, project, capsys)
    assert code == 2 and "metric=retention_vs_fp32" in err
    metrics = {**json.loads((project / "metrics" / "quantize.json").read_text()),  # headline
               **json.loads((project / "reports" / "pipeline" / "quantize.json").read_text())}  # tables
    fb = metrics["candidates"][metrics["int8_recipe"]]["fallback"]
    assert not fb["passed"] and 1 <= len(fb["nodes_kept_fp32"]) <= 2
    assert [s["k"] for s in fb["steps"]] == [1, 2]
    assert {"throughput_sps_before", "throughput_sps_after", "speed_cost"} <= set(fb)
    assert fb["most_sensitive"][0]["node"] == fb["nodes_kept_fp32"][0]
    assert metrics["fallback_nodes_fp32"] == len(fb["nodes_kept_fp32"])
    m = json.loads((project / "models" / "quantize" / "manifest.json").read_text())
    assert m["variants"]["onnx_int8"]["nodes_kept_fp32"] == fb["nodes_kept_fp32"]
    assert set(m["variants"]) == {"onnx_fp32", "onnx_int8"}


@pytest.mark.parametrize("overrides, setting", [
    ({"quantize": {"op_types": ["Softmax"]}}, "quantize.op_types"),
    ({"quantize": {"static": {"methods": ["minmax"], "op_types": ["Attention"]}}},
     "quantize.static.op_types"),
    ({"quantize": {"static": {"methods": ["entropy"]}}, "_empty_corpus": True},
     "quantize.static.calibration_sentences"),
])
def test_stage_bad_input_leaves_earlier_output(project, monkeypatch, capsys, overrides, setting):
    out = project / "models" / "quantize"
    out.mkdir(parents=True, exist_ok=True)
    (out / "marker").write_text("earlier output")
    corpus = project / "data" / "prepared" / "corpus.txt"
    saved = corpus.read_text()
    empty = overrides.pop("_empty_corpus", False)
    stage_project.write_params(project, overrides)
    try:
        if empty:
            corpus.write_text("")
        code, err = stage_project.run("quantize", monkeypatch, project, capsys)
    finally:
        corpus.write_text(saved)
    assert code == 1
    lines = [ln for ln in err.splitlines() if ln.startswith("quantize: error:")]
    assert len(lines) == 1 and setting in lines[0]
    assert (out / "marker").read_text() == "earlier output"


def test_recipes_record_their_settings():
    d = asdict(replace(DynamicRecipe(), per_channel=True))
    assert d["per_channel"] is True and d["op_types"][-1] == "EmbedLayerNormalization"
    c = Candidate("onnx_int8_static_entropy", "static", "fused", StaticRecipe(method="entropy"), "m.onnx")
    entry = json.loads(json.dumps(c.manifest_entry()))  # as the manifest stores it
    assert entry["method"] == "entropy" and entry["op_types"] == ["MatMul"]
    assert entry["calibration_ranges"] == "calibration/onnx_int8_static_entropy.ranges.json"
