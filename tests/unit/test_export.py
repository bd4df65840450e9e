"""Export: TensorRT profile/engine planning/builder config (CPU), Triton configs parsed by Triton's protobuf,
CUDA-only variants, the export stage and its bad input. GPU builds carry the ``gpu`` marker."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import stage_project

from embopt.errors import EmboptError
from embopt.export.tensorrt import EngineSpec, Profile, availability, build_engine, configure, engine_specs
from embopt.export.triton import add_model, config_pbtxt, parse_config
from embopt.export.variants import onnx_variants, unavailable_variants
from embopt.pipeline.params import TensorRTParams, TritonParams

pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] is pinned in lock.txt")


# ----------------------------------------------------------------------------- TensorRT profile


def test_profile_from_params_checks_shapes():
    p = Profile.from_params([1, 8], [32, 64], [128, 256], max_seq_length=128)
    assert p.as_dict() == {"min": [1, 8], "opt": [32, 64], "max": [128, 256]}
    with pytest.raises(EmboptError, match=r"export\.tensorrt\.opt_shape: expected \[batch, sequence\]"):
        Profile.from_params([1, 8], [32], [128, 256])
    with pytest.raises(EmboptError, match="min <= opt <= max"):
        Profile.from_params([1, 128], [32, 64], [128, 256])
    with pytest.raises(EmboptError, match=r"max_shape: sequence 64 < the bundle's max_seq_length 128"):
        Profile.from_params([1, 8], [32, 64], [128, 64], max_seq_length=128)


# ----------------------------------------------------------------------------- which engines from what


def _bundle(tmp_path: Path, graphs: dict[str, Path], variants: dict, sources: dict | None = None) -> tuple:
    (tmp_path / "onnx").mkdir(parents=True, exist_ok=True)
    for name, src in graphs.items():
        shutil.copy2(src, tmp_path / "onnx" / name)
    manifest = {"max_seq_length": 32, "variants": variants, "tensorrt_sources": sources or {}}
    return tmp_path, manifest


@pytest.fixture(scope="module")
def unfused(tiny_model, tmp_path_factory) -> Path:
    from embopt.export.onnx import export_onnx

    return export_onnx(tiny_model, tmp_path_factory.mktemp("unfused") / "model_unfused.onnx")


def test_engine_specs_pick_parseable_sources(tiny_bundle, unfused, tmp_path):
    p = TensorRTParams(min_shape=[1, 4], opt_shape=[8, 16], max_shape=[32, 32], workspace_mb=512,
                       builder_optimization_level=5)
    fused_only, m = _bundle(tmp_path / "a", {"model.onnx": tiny_bundle / "onnx" / "model.onnx"},
                            {"onnx_fp32": {"file": "onnx/model.onnx"}})
    specs, skipped = engine_specs(p, fused_only, m, None)
    assert specs == [] and "contrib ops" in skipped["fp16"] and "tensorrt_qdq" in skipped["int8"]

    both, m = _bundle(tmp_path / "b", {"model.onnx": tiny_bundle / "onnx" / "model.onnx",
                                       "model_unfused.onnx": unfused, "model_qdq_tensorrt.onnx": unfused},
                      {"onnx_fp32": {"file": "onnx/model.onnx"}},
                      {"fp32": {"file": "onnx/model_unfused.onnx"},
                       "int8_qdq": {"file": "onnx/model_qdq_tensorrt.onnx"}})
    cache = tmp_path / "timing.cache"
    specs, skipped = engine_specs(p, both, m, cache)
    assert skipped == {}
    by = {s.name: s for s in specs}
    assert by["fp16"].onnx.name == "model_unfused.onnx" and by["fp16"].flags == ("FP16",)
    assert by["int8"].onnx.name == "model_qdq_tensorrt.onnx" and by["int8"].flags == ("INT8", "FP16")
    assert by["int8"].engine_file == "model_int8.plan"
    assert all(s.workspace_mb == 512 and s.optimization_level == 5 and s.timing_cache == cache for s in specs)
    assert by["fp16"].profile.max == (32, 32)

    only_fp16 = TensorRTParams(int8=False, min_shape=[1, 4], opt_shape=[8, 16], max_shape=[32, 32])
    assert [s.name for s in engine_specs(only_fp16, both, m, None)[0]] == ["fp16"]


class _Recorder:
    """Stands in for TensorRT's builder, config and profile objects: records every call."""

    def __init__(self, log: list):
        self.log = log

    def __getattr__(self, name):
        def call(*args, **kwargs):
            self.log.append((name, args))
            if name.startswith("create_"):
                return _Recorder(self.log)
            return None

        return call

    def __setattr__(self, name, value):
        if name == "log":
            object.__setattr__(self, name, value)
        else:
            self.log.append((f"set {name}", (value,)))


def test_configure_builder_from_spec():
    trt = SimpleNamespace(MemoryPoolType=SimpleNamespace(WORKSPACE="WORKSPACE"),
                          BuilderFlag=SimpleNamespace(FP16="FLAG_FP16", INT8="FLAG_INT8"))
    log: list = []
    spec = EngineSpec("int8", Path("m.onnx"), ("INT8", "FP16"), Profile((1, 4), (8, 16), (32, 32)),
                      workspace_mb=256, optimization_level=4)
    configure(trt, _Recorder(log), spec, cache_bytes=b"old timings")
    assert ("set_memory_pool_limit", ("WORKSPACE", 256 << 20)) in log
    assert [a[0] for n, a in log if n == "set_flag"] == ["FLAG_INT8", "FLAG_FP16"]
    assert ("set builder_optimization_level", (4,)) in log
    shapes = [a for n, a in log if n == "set_shape"]
    assert shapes == [("input_ids", (1, 4), (8, 16), (32, 32)), ("attention_mask", (1, 4), (8, 16), (32, 32))]
    assert ("create_timing_cache", (b"old timings",)) in log
    assert [n for n, _ in log].index("add_optimization_profile") > [n for n, _ in log].index("set_shape")


def test_availability_says_why_not():
    ok, reason = availability()
    assert ok or ("tensorrt" in reason or "GPU" in reason)


# ----------------------------------------------------------------------------- Triton


@pytest.mark.parametrize("platform, backend, kind", [("onnxruntime_onnx", "onnxruntime", 2),
                                                     ("tensorrt_plan", "tensorrt", 1)])
def test_triton_config_parses_into_model_config(platform, backend, kind):
    from tritonclient.grpc import model_config_pb2 as mc

    t = TritonParams(max_batch_size=64, preferred_batch_sizes=[128, 32, 8, 8], max_queue_delay_us=250,
                     instances=2)
    cfg = parse_config(config_pbtxt("embopt_x", platform, 384, t))
    assert (cfg.name, cfg.platform, cfg.backend, cfg.max_batch_size) == ("embopt_x", platform, backend, 64)
    assert [(i.name, i.data_type, list(i.dims)) for i in cfg.input] == [
        ("input_ids", mc.TYPE_INT64, [-1]), ("attention_mask", mc.TYPE_INT64, [-1])]  # no batch dim
    outputs = [(o.name, o.data_type, list(o.dims)) for o in cfg.output]
    assert outputs == [("sentence_embedding", mc.TYPE_FP32, [384])]
    assert list(cfg.dynamic_batching.preferred_batch_size) == [8, 32]  # > max_batch_size dropped, deduped
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 250
    assert [(g.count, g.kind) for g in cfg.instance_group] == [(2, kind)]


def test_triton_bad_config_is_rejected(tmp_path):
    with pytest.raises(EmboptError, match="invalid Triton config.pbtxt"):
        parse_config('name: "x"\nmax_batch_size: "many"\n')
    with pytest.raises(ValueError, match="max_batch_size"):  # the params refuse it
        TritonParams(max_batch_size=0)
    with pytest.raises(EmboptError, match="platform 'pytorch'"):
        config_pbtxt("x", "pytorch", 8, TritonParams())


def test_add_model_layout(tiny_bundle, tmp_path):
    src = tiny_bundle / "onnx" / "model_qint8.onnx"
    t = TritonParams(max_batch_size=16, preferred_batch_sizes=[4], max_queue_delay_us=100)
    folder = add_model(tmp_path, "embopt_onnx_int8", src, "onnxruntime_onnx", 32, t)
    assert (folder / "1" / "model.onnx").read_bytes() == src.read_bytes()
    assert parse_config((folder / "config.pbtxt").read_text()).name == "embopt_onnx_int8"


# ----------------------------------------------------------------------------- CUDA-only variants


def test_cuda_variants_skipped_without_cuda(tiny_bundle, tmp_path, monkeypatch):
    import onnxruntime as ort

    b = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, b)
    m = json.loads((b / "manifest.json").read_text())
    m["variants"]["onnx_fp16"] = {"file": "onnx/model.onnx", "requires": "cuda"}
    (b / "manifest.json").write_text(json.dumps(m))
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert "CUDA" in unavailable_variants(b)["onnx_fp16"]
    assert set(onnx_variants(b, tmp_path / "no_pca")) == {"onnx_fp32", "onnx_int8"}
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert unavailable_variants(b) == {}
    assert set(onnx_variants(b, tmp_path / "no_pca")) == {"onnx_fp32", "onnx_int8", "onnx_fp16"}


# ----------------------------------------------------------------------------- the stage


@pytest.fixture(scope="module")
def quantized(tiny_model_dir, dev_pairs, tmp_path_factory) -> Path:
    """A project whose quantize stage ran (defaults: fused + unfused fp32, dynamic int8, fp16)."""
    root = stage_project.make_project(tmp_path_factory.mktemp("proj"), tiny_model_dir, dev_pairs)
    mp = pytest.MonkeyPatch()
    try:
        from embopt.pipeline.stage import run_stage

        stage_project.point_config_at(mp, root)
        import stages.quantize

        run_stage("quantize", stages.quantize.main)
    finally:
        mp.undo()
    return root


def test_stage_exports_bundle_triton_and_skips_tensorrt(quantized, monkeypatch, capsys):
    code, err = stage_project.run("export", monkeypatch, quantized, capsys)
    assert code == 0, err
    out = quantized / "models" / "export"
    m = json.loads((out / "manifest.json").read_text())
    assert {"onnx_fp32", "onnx_int8", "onnx_fp16"} <= set(m["variants"])
    if not availability()[0]:
        assert m["tensorrt"]["status"] == "skipped" and m["tensorrt"]["reason"]
        engines = m["tensorrt"]["engines"]  # what a GPU machine would build, and from what
        assert engines["fp16"] == {"status": "skipped", "source": "model_unfused.onnx", "flags": ["FP16"]}
        assert "tensorrt_qdq" in engines["int8"]["status"]
    assert m["tensorrt"]["profile"] == {"min": [1, 4], "opt": [8, 16], "max": [32, 32]}
    assert m["triton"]["models"] == ["embopt_onnx_fp16", "embopt_onnx_fp32", "embopt_onnx_int8"]
    kinds = {}
    for name in m["triton"]["models"]:
        cfg = parse_config((out / "triton" / name / "config.pbtxt").read_text())
        assert (out / "triton" / name / "1" / "model.onnx").exists()
        assert cfg.max_batch_size == 32 and list(cfg.output[0].dims) == [m["dim"]]
        kinds[name] = cfg.instance_group[0].kind
    assert kinds["embopt_onnx_fp16"] == 1 and kinds["embopt_onnx_int8"] == 2  # GPU / CPU
    metrics = json.loads((quantized / "reports" / "pipeline" / "export.json").read_text())
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert "CUDA" in metrics["not_evaluated_here"]["onnx_fp16"]


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_stage_corrupt_onnx_leaves_earlier_output(quantized, monkeypatch, capsys, damage, tmp_path):
    root = tmp_path / "proj"
    shutil.copytree(quantized, root, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts"))
    out = root / "models" / "export"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    (out / "marker").write_text("earlier output")
    manifest = json.loads((root / "models" / "quantize" / "manifest.json").read_text())
    bad = root / "models" / "quantize" / manifest["variants"]["onnx_int8"]["file"]
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x00garbage")
    code, err = stage_project.run("export", monkeypatch, root, capsys)
    assert code == 1
    lines = [ln for ln in err.splitlines() if ln.startswith("export: error:")]
    assert len(lines) == 1 and str(bad) in lines[0]
    assert sorted(p.name for p in out.iterdir()) == ["marker"]


def test_stage_bad_triton_variant_names_the_setting(quantized, monkeypatch, capsys):
    stage_project.write_params(quantized, {"export": {"triton": {"variants": ["onnx_int4"]}}})
    try:
        code, err = stage_project.run("export", monkeypatch, quantized, capsys)
    finally:
        stage_project.write_params(quantized, {})
    assert code == 1 and "export.triton.variants: no variant(s) onnx_int4" in err


# ----------------------------------------------------------------------------- GPU only


@pytest.mark.gpu
def test_tensorrt_fp16_engine_builds(unfused, tmp_path):
    ok, reason = availability()
    if not ok:
        pytest.skip(f"needs CUDA and TensorRT: {reason}")
    spec = EngineSpec("fp16", unfused, ("FP16",), Profile((1, 4), (8, 16), (32, 32)),
                      timing_cache=tmp_path / "timing.cache")
    engine = build_engine(spec, tmp_path / spec.engine_file)
    assert engine.stat().st_size > 0 and spec.timing_cache.stat().st_size > 0
