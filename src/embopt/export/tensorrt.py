"""TensorRT engines from the exported ONNX (official ``tensorrt`` Python API, TRT 10).

Each engine is built from a file TensorRT can parse (standard ONNX ops only, so the *unfused* graph:
ORT's fused Attention/SkipLayerNormalization are contrib ops):

- ``fp16``: the fp32 graph with FP16 kernels allowed;
- ``int8``: the symmetric int8 QDQ model (explicit quantization: TensorRT places int8 kernels where
  the Q/DQ pairs are, FP16 elsewhere).

One optimisation profile (min/opt/max batch and sequence length from params) and a timing cache
kept across builds. Attempted only where an NVIDIA GPU and the ``tensorrt`` package exist, else
:func:`availability` says why it is skipped. All but the build (the profile, which engines to build
from what, the builder configuration applied to any object with TensorRT's API) is plain Python,
unit-tested on CPU.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embopt.errors import EmboptError
from embopt.export.onnx import INPUT_NAMES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Profile:
    """One optimisation profile: (batch, sequence) shapes for every input."""

    min: tuple[int, int]
    opt: tuple[int, int]
    max: tuple[int, int]

    @classmethod
    def from_params(cls, min_shape: list[int], opt_shape: list[int], max_shape: list[int],
                    max_seq_length: int | None = None) -> Profile:
        shapes = [tuple(int(x) for x in s) for s in (min_shape, opt_shape, max_shape)]
        for name, s in zip(("min_shape", "opt_shape", "max_shape"), shapes, strict=True):
            if len(s) != 2 or min(s) < 1:
                raise EmboptError(f"export.tensorrt.{name}: expected [batch, sequence] >= 1, got {list(s)}")
        lo, mid, hi = shapes
        if not all(lo[i] <= mid[i] <= hi[i] for i in range(2)):
            raise EmboptError("export.tensorrt: shapes must satisfy min <= opt <= max per axis, "
                              f"got {list(lo)}, {list(mid)}, {list(hi)}")
        if max_seq_length is not None and hi[1] < max_seq_length:
            raise EmboptError(f"export.tensorrt.max_shape: sequence {hi[1]} < the bundle's max_seq_length "
                              f"{max_seq_length}; longer inputs would be rejected by the engine")
        return cls(lo, mid, hi)

    def as_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


@dataclass(frozen=True)
class EngineSpec:
    """What one engine is built from and how: everything but the GPU."""

    name: str  # fp16 | int8
    onnx: Path
    flags: tuple[str, ...]  # TensorRT BuilderFlag names
    profile: Profile
    workspace_mb: int = 2048
    optimization_level: int = 3
    timing_cache: Path | None = None

    @property
    def engine_file(self) -> str:
        return f"model_{self.name}.plan"


def _has_contrib_ops(path: Path) -> bool:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return any(n.domain not in ("", "ai.onnx") for n in graph.node)


def engine_specs(p, bundle: Path, manifest: dict[str, Any], timing_cache: Path | None) -> tuple[
        list[EngineSpec], dict[str, str]]:
    """The engines ``export.tensorrt`` asks for, each from a source TensorRT can parse.

    Returns:
        (specs, skipped): engines to build, and engine name -> why it is not built.
    """
    profile = Profile.from_params(p.min_shape, p.opt_shape, p.max_shape, manifest.get("max_seq_length"))
    sources = manifest.get("tensorrt_sources") or {}
    specs, skipped = [], {}
    common = dict(profile=profile, workspace_mb=p.workspace_mb,
                  optimization_level=p.builder_optimization_level, timing_cache=timing_cache)
    if p.fp16:
        candidates = [(sources.get("fp32") or {}).get("file")]
        candidates += [manifest["variants"].get(v, {}).get("file")
                       for v in ("onnx_fp32_unfused", "onnx_fp32")]
        usable = [bundle / f for f in candidates
                  if f and (bundle / f).exists() and not _has_contrib_ops(bundle / f)]
        if usable:
            specs.append(EngineSpec("fp16", usable[0], ("FP16",), **common))
        else:
            skipped["fp16"] = ("no fp32 ONNX with standard ops only in the bundle (the fused graph has "
                               "ORT contrib ops); set quantize.keep_unfused: true")
    if p.int8:
        qdq = (sources.get("int8_qdq") or {}).get("file")
        if qdq and (bundle / qdq).exists():
            # FP16 too: layers without Q/DQ pairs (LayerNorm, softmax) run in half precision, not fp32.
            specs.append(EngineSpec("int8", bundle / qdq, ("INT8", "FP16"), **common))
        else:
            skipped["int8"] = ("no symmetric int8 QDQ model in the bundle (quantize.static.tensorrt_qdq: "
                               "true builds one; null builds it only where TensorRT runs)")
    return specs, skipped


def availability() -> tuple[bool, str]:
    """(True, "") when an engine can be built here, else (False, reason)."""
    if importlib.util.find_spec("tensorrt") is None:
        return False, "the tensorrt package is not installed (pip install tensorrt; needs an NVIDIA GPU)"
    import torch

    return (True, "") if torch.cuda.is_available() else (False, "no CUDA GPU is visible on this machine")


def configure(trt, builder, spec: EngineSpec, cache_bytes: bytes = b""):
    """A builder config for ``spec``: memory pool, precision flags, optimisation level, profile, timing cache.

    ``trt`` is the tensorrt module (or a stand-in with the same names, in tests).
    """
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, spec.workspace_mb << 20)
    for flag in spec.flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    config.builder_optimization_level = spec.optimization_level
    profile = builder.create_optimization_profile()
    for name in INPUT_NAMES:
        profile.set_shape(name, spec.profile.min, spec.profile.opt, spec.profile.max)
    config.add_optimization_profile(profile)
    config.set_timing_cache(config.create_timing_cache(cache_bytes), ignore_mismatch=False)
    return config


def build_engine(spec: EngineSpec, engine_path: Path) -> Path:  # pragma: no cover - needs an NVIDIA GPU
    """Parse ``spec.onnx``, build the serialized engine, save it and the updated timing cache."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(spec.onnx).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EmboptError(f"{spec.onnx}: TensorRT could not parse the model: {errors}")
    cache_bytes = spec.timing_cache.read_bytes() if spec.timing_cache and spec.timing_cache.exists() else b""
    config = configure(trt, builder, spec, cache_bytes)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EmboptError(f"{spec.onnx}: TensorRT {spec.name} engine build failed (see the TensorRT log)")
    engine_path.write_bytes(bytes(serialized))
    if spec.timing_cache is not None:
        spec.timing_cache.parent.mkdir(parents=True, exist_ok=True)
        spec.timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    log.info("TensorRT %s engine (%s) -> %s", spec.name, "+".join(spec.flags), engine_path)
    return engine_path
