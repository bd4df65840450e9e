"""Triton Inference Server model repository for the exported models.

Layout: ``<repo>/<model>/config.pbtxt`` and ``<repo>/<model>/1/model.onnx`` (or
``model.plan`` for TensorRT). Dims exclude the batch dimension because
``max_batch_size > 0`` makes Triton add it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from embopt.onnx_export import INPUT_NAMES, OUTPUT_NAME


def config_pbtxt(
    name: str, platform: str, dim: int, max_batch_size: int, preferred_batch_sizes: list[int],
    max_queue_delay_us: int, instances: int,
) -> str:
    """The text of a Triton ``config.pbtxt``.

    Args:
        platform: ``onnxruntime_onnx`` or ``tensorrt_plan``.
    """
    kind = "KIND_GPU" if platform == "tensorrt_plan" else "KIND_CPU"
    preferred = sorted(b for b in preferred_batch_sizes if b <= max_batch_size)
    inputs = ",\n".join(
        f'  {{\n    name: "{n}"\n    data_type: TYPE_INT64\n    dims: [ -1 ]\n  }}' for n in INPUT_NAMES
    )
    return (
        f'name: "{name}"\n'
        f'platform: "{platform}"\n'
        f"max_batch_size: {max_batch_size}\n"
        f"input [\n{inputs}\n]\n"
        f'output [\n  {{\n    name: "{OUTPUT_NAME}"\n    data_type: TYPE_FP32\n    dims: [ {dim} ]\n  }}\n]\n'
        f"dynamic_batching {{\n  preferred_batch_size: [ {', '.join(map(str, preferred))} ]\n"
        f"  max_queue_delay_microseconds: {max_queue_delay_us}\n}}\n"
        f"instance_group [\n  {{\n    count: {instances}\n    kind: {kind}\n  }}\n]\n"
    )


def add_model(
    repo: Path, name: str, model_file: Path, platform: str, dim: int, max_batch_size: int,
    preferred_batch_sizes: list[int], max_queue_delay_us: int, instances: int,
) -> Path:
    """Copy ``model_file`` into ``repo/name/1/`` and write its config.pbtxt."""
    folder = Path(repo) / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    target = "model.plan" if platform == "tensorrt_plan" else "model.onnx"
    shutil.copy2(model_file, folder / "1" / target)
    (folder / "config.pbtxt").write_text(
        config_pbtxt(name, platform, dim, max_batch_size, preferred_batch_sizes, max_queue_delay_us, instances),
        encoding="utf-8",
    )
    return folder
