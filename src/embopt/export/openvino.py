"""OpenVINO variants: the fp32 IR converted from the unfused ONNX graph, and NNCF int8 of it.

The unfused graph is the source because ORT's fused ops (``com.microsoft`` Attention,
SkipLayerNormalization) are not ONNX ops OpenVINO can read. int8 is NNCF post-training quantization
with the transformer preset (it keeps LayerNorm/Softmax-sensitive spots in fp32), calibrated on the
same corpus sentences as ORT's static int8.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from embopt.errors import EmboptError

log = logging.getLogger(__name__)


def _ov():
    try:
        import openvino as ov
    except ImportError:
        raise EmboptError("quantize.openvino needs `pip install openvino nncf`") from None
    return ov


def convert_ir(onnx_path: Path, dst: Path) -> Path:
    """``dst`` (.xml, with its .bin beside it): the ONNX graph as OpenVINO IR, weights kept in fp32."""
    ov = _ov()
    ov.save_model(ov.convert_model(str(onnx_path)), str(dst), compress_to_fp16=False)
    return dst


def quantize_ir(ir_path: Path, dst: Path, sentences: Sequence[str], tokenizer) -> Path:
    """NNCF int8 post-training quantization of an IR, calibrated one sentence at a time."""
    ov = _ov()
    try:
        import nncf
    except ImportError:
        raise EmboptError("quantize.openvino int8 needs `pip install nncf`") from None
    if not sentences:
        raise EmboptError("quantize.openvino.calibration_sentences: the calibration set is empty")
    model = ov.Core().read_model(str(ir_path))
    names = [i.get_any_name() for i in model.inputs]

    def feeds(text: str) -> dict[str, np.ndarray]:
        ids = np.array([tokenizer.encode(text).ids], dtype=np.int64)
        zeros = {n: np.zeros_like(ids) for n in names}  # token_type_ids where the graph kept it
        return {**zeros, "input_ids": ids, "attention_mask": np.ones_like(ids)}

    quantized = nncf.quantize(model, nncf.Dataset(list(sentences), feeds),
                              model_type=nncf.ModelType.TRANSFORMER, subset_size=len(sentences))
    ov.save_model(quantized, str(dst), compress_to_fp16=False)
    return dst
