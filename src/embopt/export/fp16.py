"""fp16 ONNX for GPUs, keeping float32 inputs/outputs.

Half precision halves the weights and doubles tensor-core throughput on NVIDIA GPUs, but ONNX
Runtime's CPU provider has few fp16 kernels (it inserts casts or fails), so this variant carries
``"requires": "cuda"`` in the manifest and is evaluated only where a CUDA provider exists.
``keep_io_types`` keeps the interface (int64 ids in, float32 embedding out) for every runtime.
"""

from __future__ import annotations

import logging
from pathlib import Path

from embopt.errors import EmboptError
from embopt.export.onnx import check_onnx
from embopt.pipeline.files import quiet_root_logger

log = logging.getLogger(__name__)

# Pooling and L2 normalisation stay fp32: summing up to max_seq_length fp16 vectors
# and squaring them costs precision for no speed that matters.
POOLING_OPS = ["ReduceSum", "ReduceMean", "ReduceL2", "ReduceMax", "Div", "Sqrt", "Pow", "Clip",
               "LpNormalization", "Max"]


def convert_fp16(src: Path, dst: Path, keep_io_types: bool = True) -> Path:
    """Write an fp16 copy of ``src`` (fused or not) to ``dst``."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST
    from onnxruntime.transformers.onnx_model import OnnxModel

    check_onnx(src)
    try:
        with quiet_root_logger():
            model = OnnxModel(onnx.load(str(src)))
            blocked = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(POOLING_OPS))
            model.convert_float_to_float16(keep_io_types=keep_io_types, op_block_list=blocked)
            model.save_model_to_file(str(dst))
    except Exception as exc:  # the converter raises assorted errors on graphs it cannot type
        raise EmboptError(f"{src}: fp16 conversion failed: {str(exc).splitlines()[0]}") from None
    log.info("fp16 (keep_io_types=%s) -> %s", keep_io_types, dst)
    return dst
