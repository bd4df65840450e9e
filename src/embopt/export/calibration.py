"""Static int8 (QDQ) quantization calibrated on corpus sentences.

Activation ranges come from running the fp32 model on N corpus sentences and reducing what each
tensor saw with MinMax, Entropy (KL divergence between the float and the quantized histograms) or
Percentile. The ranges are written to a JSON file (ORT's calibration cache, read back with
``onnxruntime.quantization.calibrate.load_tensors_data``) that ships in the bundle as an artifact,
and that the accuracy fallback reuses instead of calibrating again.

The QDQ format keeps the float graph and wraps quantized tensors in QuantizeLinear/DequantizeLinear
pairs; ORT fuses them into int8 kernels at load time, and TensorRT builds explicit int8 engines from
the same file when the QDQ pairs are symmetric int8 (zero point 0) and every op is a standard one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embopt.errors import EmboptError
from embopt.export.onnx import INPUT_NAMES, check_onnx
from embopt.export.quantize import check_op_types, qtype
from embopt.pipeline.files import quiet_root_logger

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StaticRecipe:
    """Everything that defines one static QDQ model, recorded in the manifest."""

    method: str = "minmax"
    per_channel: bool = False
    activation_type: str = "quint8"  # quint8 for x86 CPUs; qint8 (+ symmetric) for TensorRT and ARM
    symmetric_activations: bool = False
    op_types: tuple[str, ...] = ("MatMul",)
    percentile: float = 99.999
    calibration_sentences: int = 256
    batch_size: int = 32


class SentenceReader:
    """ORT ``CalibrationDataReader``: padded (input_ids, attention_mask) batches of tokenized sentences."""

    def __init__(self, tokenizer, sentences: Sequence[str], batch_size: int = 32, pad_id: int = 0):
        self.batches = []
        ids = [e.ids for e in tokenizer.encode_batch(list(sentences))]
        for start in range(0, len(ids), batch_size):
            chunk = ids[start : start + batch_size]
            width = max(len(x) for x in chunk)
            input_ids = np.array([seq + [pad_id] * (width - len(seq)) for seq in chunk], dtype=np.int64)
            mask = np.array([[1] * len(seq) + [0] * (width - len(seq)) for seq in chunk], dtype=np.int64)
            self.batches.append({INPUT_NAMES[0]: input_ids, INPUT_NAMES[1]: mask})
        self._iter = iter(self.batches)

    def get_next(self) -> dict | None:
        return next(self._iter, None)

    def set_range(self, start_index: int, end_index: int) -> None:
        """Serve only batches [start, end): ORT calls this to calibrate one stride at a time."""
        self._iter = iter(self.batches[start_index:end_index])

    def __len__(self) -> int:
        return len(self.batches)


def quantize_static_qdq(src: Path, dst: Path, recipe: StaticRecipe, sentences: Sequence[str] | None,
                        tokenizer, ranges_path: Path, pad_id: int = 0,
                        nodes_to_exclude: Sequence[str] | None = None,
                        nodes_to_quantize: Sequence[str] | None = None) -> Path:
    """Write a static QDQ int8 copy of ``src`` to ``dst``, calibrated on ``sentences``.

    ``ranges_path`` is the calibration artifact: written on the first call, reused
    (no new calibration) when it already exists, as it does for fallback rebuilds.

    Raises:
        EmboptError: empty calibration set, unsupported op type, or ORT failure.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    check_onnx(src)
    check_op_types(src, recipe.op_types, "static", "quantize.static.op_types")
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[recipe.method]  # the params' Literal checked it
    ranges_path = Path(ranges_path)
    reader = None
    if not ranges_path.exists():
        if not sentences:
            raise EmboptError("quantize.static.calibration_sentences: the calibration set is empty "
                              "(no corpus sentences to calibrate on)")
        reader = SentenceReader(tokenizer, sentences, recipe.batch_size, pad_id)
    extra = {"ActivationSymmetric": recipe.symmetric_activations, "WeightSymmetric": True,
             "CalibPercentile": recipe.percentile,
             # One batch per collection step: ORT's histogram collector stacks a step's batches with
             # np.asarray, which fails when batches differ in shape (they do: padded per batch).
             "CalibStridedMinMax": 1,
             # Fused contrib ops defeat ONNX shape inference; untyped tensors are float32 activations.
             "DefaultTensorType": 1}
    typed = Path(dst).with_name(Path(dst).stem + ".typed.onnx")
    try:
        # Every intermediate tensor typed (ORT's symbolic shape inference): the calibrator picks float
        # tensors from the model's value_info, and plain ONNX shape inference stops at ORT's fused
        # contrib ops (Attention, SkipLayerNormalization), which would leave nothing calibrated.
        infer = SymbolicShapeInference.infer_shapes
        onnx.save(infer(onnx.load(str(src)), auto_merge=True, guess_output_rank=True), str(typed))
        with quiet_root_logger(40):  # ORT warns "consider pre-processing" on every call
            quantize_static(str(typed), str(dst), calibration_data_reader=reader,
                            quant_format=QuantFormat.QDQ, op_types_to_quantize=list(recipe.op_types),
                            per_channel=recipe.per_channel, activation_type=qtype(recipe.activation_type),
                            weight_type=qtype("qint8"), nodes_to_exclude=list(nodes_to_exclude or []),
                            nodes_to_quantize=list(nodes_to_quantize or []),
                            calibrate_method=method, extra_options=extra,
                            calibration_cache_path=str(ranges_path))
    except Exception as exc:  # ORT raises bare Exceptions/ValueErrors for unsupported graphs
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EmboptError(f"{src}: static int8 ({recipe.method}) quantization failed: {first}") from None
    finally:
        typed.unlink(missing_ok=True)
    log.info("int8 (static QDQ, %s, %d sentences, %d node(s) kept fp32) -> %s (ranges: %s)", recipe.method,
             len(sentences or []), len(nodes_to_exclude or []), dst, ranges_path.name)
    return dst


def is_tensorrt_qdq(path: Path) -> tuple[bool, str]:
    """Whether TensorRT can build an explicit int8 engine from this QDQ model, else why not."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    custom = sorted({n.op_type for n in model.graph.node if n.domain not in ("", "ai.onnx")})
    if custom:
        return False, f"non-standard ops ({', '.join(custom)}): TensorRT cannot parse ORT contrib ops"
    inits = {i.name: i for i in model.graph.initializer}
    qs = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    if not qs:
        return False, "no QuantizeLinear nodes (not a QDQ model)"
    for n in qs:
        if len(n.input) < 3 or n.input[2] not in inits:
            return False, f"{n.name}: no constant zero point"
        zp = numpy_helper.to_array(inits[n.input[2]])
        if zp.dtype != np.int8 or np.any(zp != 0):
            return False, f"{n.name}: zero point must be int8 0 (symmetric), got {zp.dtype}"
    return True, ""
