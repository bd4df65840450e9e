"""ONNX Runtime int8 quantization.

Dynamic quantization stores weights as int8 and quantizes activations on the fly:
no calibration data, and on CPUs with VNNI/AVX2 int8 GEMMs it is the fastest
accuracy-preserving step for transformer encoders. ``reduce_range`` (7-bit
weights) avoids saturation on CPUs without VNNI.
"""

from __future__ import annotations

import logging
from pathlib import Path

from embopt.errors import EmboptError
from embopt.files import quiet_root_logger
from embopt.onnx_export import check_onnx

log = logging.getLogger(__name__)


def quantize_dynamic_int8(
    src: Path, dst: Path, per_channel: bool = False, reduce_range: bool = False, op_types: list[str] | None = None
) -> Path:
    """Write a dynamically quantized (int8 weights, uint8 activations) copy of ``src`` to ``dst``."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    check_onnx(src)
    try:
        with quiet_root_logger():
            quantize_dynamic(
                model_input=str(src), model_output=str(dst), per_channel=per_channel, reduce_range=reduce_range,
                weight_type=QuantType.QInt8, op_types_to_quantize=op_types or None,
                # Fused contrib ops (Attention with pruned heads) defeat ONNX shape inference; the
                # tensors it cannot type are float32 activations.
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
    except Exception as exc:  # ORT raises bare Exceptions for unsupported graphs
        raise EmboptError(f"{src}: dynamic int8 quantization failed: {str(exc).splitlines()[0]}") from None
    log.info("int8 (dynamic, per_channel=%s, reduce_range=%s) -> %s", per_channel, reduce_range, dst)
    return dst
