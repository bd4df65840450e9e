"""Triton Inference Server model repository for the exported models.

Layout: ``<repo>/<model>/config.pbtxt`` and ``<repo>/<model>/1/model.onnx`` (or ``model.plan`` for
TensorRT). Dims exclude the batch dimension because ``max_batch_size > 0`` makes Triton add it.
Every config is checked by parsing it into Triton's own ``ModelConfig`` protobuf (from
``tritonclient``) when that package is installed.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from embopt.errors import EmboptError
from embopt.export.onnx import INPUT_NAMES, OUTPUT_NAME
from embopt.pipeline.params import TritonParams

PLATFORMS = {"onnxruntime_onnx": ("onnxruntime", "model.onnx"), "tensorrt_plan": ("tensorrt", "model.plan")}


def config_pbtxt(name: str, platform: str, dim: int, t: TritonParams, kind: str | None = None) -> str:
    """The text of a Triton ``config.pbtxt``; ``kind`` defaults to GPU for TensorRT plans, else CPU."""
    if platform not in PLATFORMS:
        raise EmboptError(f"triton: platform '{platform}' is not one of {', '.join(PLATFORMS)}")
    kind = kind or ("KIND_GPU" if platform == "tensorrt_plan" else "KIND_CPU")
    preferred = sorted({b for b in t.preferred_batch_sizes if 1 <= b <= t.max_batch_size})
    preferred_line = f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]\n" if preferred else ""
    inputs = ",\n".join(f'  {{\n    name: "{n}"\n    data_type: TYPE_INT64\n    dims: [ -1 ]\n  }}'
                         for n in INPUT_NAMES)
    return (
        f'name: "{name}"\nplatform: "{platform}"\nbackend: "{PLATFORMS[platform][0]}"\n'
        f"max_batch_size: {t.max_batch_size}\ninput [\n{inputs}\n]\n"
        f'output [\n  {{\n    name: "{OUTPUT_NAME}"\n    data_type: TYPE_FP32\n    dims: [ {dim} ]\n  }}\n]\n'
        f"dynamic_batching {{\n{preferred_line}  max_queue_delay_microseconds: {t.max_queue_delay_us}\n}}\n"
        f"instance_group [\n  {{\n    count: {t.instances}\n    kind: {kind}\n  }}\n]\n"
    )


def parse_config(text: str):
    """Triton's ``inference.ModelConfig`` parsed from ``config.pbtxt`` text (EmboptError when invalid)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise EmboptError(f"invalid Triton config.pbtxt: {exc}") from None


def add_model(repo: Path, name: str, model_file: Path, platform: str, dim: int, t: TritonParams,
              kind: str | None = None) -> Path:
    """Copy ``model_file`` into ``repo/name/1/`` and write its config.pbtxt (checked with tritonclient)."""
    text = config_pbtxt(name, platform, dim, t, kind)
    with contextlib.suppress(ImportError):  # serving needs no tritonclient; the tests check every config
        parse_config(text)
    folder = Path(repo) / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    shutil.copy2(model_file, folder / "1" / PLATFORMS[platform][1])
    (folder / "config.pbtxt").write_text(text, encoding="utf-8")
    return folder
