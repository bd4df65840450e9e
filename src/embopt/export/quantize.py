"""ONNX Runtime dynamic int8 quantization, with instruction-set presets and node exclusion.

Dynamic quantization stores weights as int8 and quantizes activations on the fly: no calibration
data, and on CPUs with VNNI/AMX int8 GEMMs it is the fastest accuracy-preserving step for
transformer encoders. ``reduce_range`` (7-bit weights) avoids saturation on CPUs without VNNI.

The preset (``avx512_vnni``, ``avx2``, ``arm64``) is read from the CPU unless a param forces one;
explicit ``per_channel`` / ``reduce_range`` / ``weight_type`` params override it.
"""

from __future__ import annotations

import contextlib
import logging
import platform
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from embopt.errors import EmboptError
from embopt.export.onnx import check_onnx
from embopt.pipeline.files import quiet_root_logger

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DynamicRecipe:
    """Everything that defines one dynamic int8 model, recorded in the manifest."""

    isa: str = "avx512_vnni"
    per_channel: bool = False
    reduce_range: bool = False
    weight_type: str = "qint8"
    op_types: tuple[str, ...] = ("MatMul", "Attention", "Gather", "EmbedLayerNormalization")


# What ORT's docs (quantize_static "Choosing parameters for CPU inference") and Optimum's
# AutoQuantizationConfig recommend per instruction set. VNNI and ARM dot-product
# instructions accumulate u8*s8 without saturating; plain AVX2 (vpmaddubsw) can saturate
# 16-bit intermediates, which 7-bit weights (reduce_range) avoid.
ISA_PRESETS = {isa: DynamicRecipe(isa=isa, reduce_range=isa == "avx2")
               for isa in ("avx512_vnni", "avx2", "arm64")}


def cpu_flags() -> set[str]:
    """CPU feature flags from /proc/cpuinfo (empty where that file does not exist)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    return set()


def detect_isa(machine: str | None = None, flags: set[str] | None = None) -> str:
    """The int8 preset for this CPU: ``arm64``, ``avx512_vnni`` (any VNNI, incl. AVX-VNNI) or ``avx2``."""
    machine = (machine or platform.machine()).lower()
    if machine in ("aarch64", "arm64", "armv8l"):
        return "arm64"
    flags = cpu_flags() if flags is None else flags
    if flags & {"avx512_vnni", "avx_vnni", "amx_int8"}:
        return "avx512_vnni"
    return "avx2"  # no VNNI: the conservative preset (reduce_range) is right for anything older too


def resolve_recipe(isa: str = "auto", per_channel: bool | None = None, reduce_range: bool | None = None,
                   weight_type: str | None = None, op_types: Sequence[str] | None = None) -> DynamicRecipe:
    """The preset for ``isa`` (``auto``: this CPU's), with any explicit setting applied on top."""
    chosen = detect_isa() if isa == "auto" else isa
    if chosen not in ISA_PRESETS:
        raise EmboptError(f"quantize.isa: '{isa}' is not one of auto, {', '.join(ISA_PRESETS)}")
    op_types = None if op_types is None else tuple(op_types)
    changes = {k: v for k, v in (("per_channel", per_channel), ("reduce_range", reduce_range),
                                 ("weight_type", weight_type), ("op_types", op_types)) if v is not None}
    return replace(ISA_PRESETS[chosen], **changes)


def check_op_types(src: Path, op_types: Sequence[str], mode: str, setting: str) -> list[str]:
    """The model's nodes of ``op_types``, validated for ``mode`` (``dynamic``: integer ops, ``static``: QDQ).

    EmboptError for an op type ORT cannot quantize this way, or a model with none of them.
    """
    import onnx
    from onnxruntime.quantization.registry import IntegerOpsRegistry, QDQRegistry

    supported = set(IntegerOpsRegistry if mode == "dynamic" else QDQRegistry)
    bad = [t for t in op_types if t not in supported]
    if bad:
        raise EmboptError(f"{setting}: op type(s) {', '.join(bad)} cannot be quantized {mode}ally by "
                          f"onnxruntime (supported: {', '.join(sorted(supported))})")
    graph = onnx.load(str(src), load_external_data=False).graph
    nodes = [n.name for n in graph.node if n.op_type in set(op_types)]
    if not nodes:
        present = sorted({n.op_type for n in graph.node})
        raise EmboptError(f"{src}: no node of the op types in {setting} ({', '.join(op_types)}); "
                          f"the model has: {', '.join(present)}")
    return nodes


def quantized_nodes(src: Path, dst: Path, op_types: Sequence[str]) -> list[str]:
    """Names of ``src`` nodes of ``op_types`` that quantization replaced in ``dst``."""
    import onnx

    graph = onnx.load(str(src), load_external_data=False).graph
    before = [n.name for n in graph.node if n.op_type in op_types]
    after = onnx.load(str(dst), load_external_data=False).graph.node
    # QDQ keeps the float node and wraps it in Q/DQ: look for a DequantizeLinear feeding it.
    dequantized = {o for n in after if n.op_type == "DequantizeLinear" for o in n.output}
    fed = {n.name: any(i in dequantized for i in n.input) for n in reversed(after)}  # first of a name wins
    return [n for n in before if fed.get(n, True)]


def qtype(name: str):
    """ORT's QuantType for ``qint8`` / ``quint8``."""
    from onnxruntime.quantization import QuantType

    return {"qint8": QuantType.QInt8, "quint8": QuantType.QUInt8}[name]


def quantize_dynamic_int8(src: Path, dst: Path, per_channel: bool = False, reduce_range: bool = False,
                          op_types: list[str] | None = None, weight_type: str = "qint8",
                          nodes_to_exclude: Sequence[str] | None = None,
                          nodes_to_quantize: Sequence[str] | None = None) -> Path:
    """Write a dynamically quantized (int8 weights, uint8 activations) copy of ``src`` to ``dst``.

    Args:
        nodes_to_exclude: node names kept in fp32 (accuracy fallback).
        nodes_to_quantize: when given, only these nodes are quantized (sensitivity analysis).
    """
    import onnx
    from onnxruntime.quantization import quantize_dynamic

    check_onnx(src)
    if op_types:
        check_op_types(src, op_types, "dynamic", "quantize.op_types")
    try:
        with quiet_root_logger(40):  # ORT warns "consider pre-processing" on every call
            quantize_dynamic(
                model_input=str(src), model_output=str(dst), per_channel=per_channel,
                reduce_range=reduce_range, weight_type=qtype(weight_type),
                op_types_to_quantize=list(op_types) if op_types else None,
                nodes_to_exclude=list(nodes_to_exclude or []),
                nodes_to_quantize=list(nodes_to_quantize or []),
                # Fused contrib ops (Attention with pruned heads) defeat ONNX shape inference; the
                # tensors it cannot type are float32 activations.
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    except Exception as exc:  # ORT raises bare Exceptions for unsupported graphs
        raise EmboptError(f"{src}: dynamic int8 quantization failed: {str(exc).splitlines()[0]}") from None
    log.info("int8 (dynamic, per_channel=%s, reduce_range=%s, weights=%s, %d node(s) kept fp32) -> %s",
             per_channel, reduce_range, weight_type, len(nodes_to_exclude or []), dst)
    return dst


def quantize_recipe(src: Path, dst: Path, recipe: DynamicRecipe,
                    nodes_to_exclude: Sequence[str] | None = None,
                    nodes_to_quantize: Sequence[str] | None = None) -> Path:
    """:func:`quantize_dynamic_int8` with the settings of ``recipe``."""
    return quantize_dynamic_int8(src, dst, per_channel=recipe.per_channel, reduce_range=recipe.reduce_range,
                                 op_types=list(recipe.op_types), weight_type=recipe.weight_type,
                                 nodes_to_exclude=nodes_to_exclude, nodes_to_quantize=nodes_to_quantize)
