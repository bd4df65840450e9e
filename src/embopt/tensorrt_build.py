"""TensorRT engine build from the exported ONNX (official ``tensorrt`` Python API, TRT 10).

Attempted only where an NVIDIA GPU and the ``tensorrt`` package exist; otherwise
:func:`availability` says why it is skipped and the export stage records that
reason in the manifest and succeeds. Everything that needs no GPU (the shape
profile) is plain Python and unit-tested on CPU.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from embopt.errors import EmboptError
from embopt.onnx_export import INPUT_NAMES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Profile:
    """One optimisation profile: (batch, sequence) shapes for every input."""

    min: tuple[int, int]
    opt: tuple[int, int]
    max: tuple[int, int]

    @classmethod
    def from_params(cls, min_shape: list[int], opt_shape: list[int], max_shape: list[int]) -> Profile:
        shapes = [tuple(int(x) for x in s) for s in (min_shape, opt_shape, max_shape)]
        for name, s in zip(("min_shape", "opt_shape", "max_shape"), shapes, strict=True):
            if len(s) != 2 or min(s) < 1:
                raise EmboptError(f"export.tensorrt.{name}: expected [batch, sequence] >= 1, got {list(s)}")
        lo, mid, hi = shapes
        if not all(lo[i] <= mid[i] <= hi[i] for i in range(2)):
            raise EmboptError(
                f"export.tensorrt: shapes must satisfy min <= opt <= max per axis, got {list(lo)}, {list(mid)}, {list(hi)}"
            )
        return cls(lo, mid, hi)

    def for_inputs(self) -> dict[str, tuple[tuple[int, int], tuple[int, int], tuple[int, int]]]:
        return {name: (self.min, self.opt, self.max) for name in INPUT_NAMES}


def availability() -> tuple[bool, str]:
    """(True, "") when an engine can be built here, else (False, reason)."""
    if importlib.util.find_spec("tensorrt") is None:
        return False, "the tensorrt Python package is not installed (pip install tensorrt; needs an NVIDIA GPU)"
    has_gpu = False
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = shutil.which("nvidia-smi") is not None
    if not has_gpu:
        return False, "no CUDA GPU is visible on this machine"
    return True, ""


def build_engine(
    onnx_path: Path, engine_path: Path, profile: Profile, fp16: bool = True, workspace_mb: int = 2048,
    timing_cache: Path | None = None,
) -> Path:  # pragma: no cover - needs an NVIDIA GPU with TensorRT
    """Parse the ONNX, build a serialized engine with one optimisation profile, save it."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EmboptError(f"{onnx_path}: TensorRT could not parse the model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    trt_profile = builder.create_optimization_profile()
    for name, (lo, mid, hi) in profile.for_inputs().items():
        trt_profile.set_shape(name, lo, mid, hi)
    config.add_optimization_profile(trt_profile)
    cache_bytes = timing_cache.read_bytes() if timing_cache and timing_cache.exists() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EmboptError(f"{onnx_path}: TensorRT engine build failed (see the TensorRT log above)")
    engine_path.write_bytes(bytes(serialized))
    if timing_cache is not None:
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    log.info("TensorRT engine (fp16=%s) -> %s", fp16, engine_path)
    return engine_path
