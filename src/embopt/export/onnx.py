"""ONNX export with pooling and L2 normalisation inside the graph, and ORT graph fusion.

The graph takes ``input_ids`` and ``attention_mask`` (int64, dynamic batch and sequence axes) and
returns ``sentence_embedding`` (float32, L2-normalised), so a runtime needs only a tokenizer and one
session call: no numpy pooling code to get subtly wrong.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from embopt.errors import EmboptError
from embopt.pipeline.files import quiet_root_logger
from embopt.training.modeling import hf_model, pooling_mode

log = logging.getLogger(__name__)

INPUT_NAMES = ["input_ids", "attention_mask"]
OUTPUT_NAME = "sentence_embedding"


def build_wrapper(st_model):
    """A torch module: transformer -> pooling -> L2 normalise, traceable for ONNX."""
    import torch
    from sentence_transformers.models import Normalize, Pooling

    mode = pooling_mode(st_model)
    if mode not in ("mean", "cls", "max"):
        raise EmboptError(f"onnx export: pooling mode '{mode}' not supported (mean, cls, max)")
    for i, module in enumerate(st_model):
        if i > 0 and not isinstance(module, (Pooling, Normalize)):
            raise EmboptError(f"onnx export: module {i} ({type(module).__name__}) is not supported; "
                              "supported pipelines are Transformer -> Pooling(mean|cls|max) [-> Normalize]")

    class SentenceEncoder(torch.nn.Module):
        def __init__(self, transformer):
            super().__init__()
            self.transformer = transformer

        def forward(self, input_ids, attention_mask):
            hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            if mode == "mean":
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            elif mode == "cls":
                pooled = hidden[:, 0]
            else:
                pooled = (hidden + (mask - 1.0) * 1e9).max(dim=1).values
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    return SentenceEncoder(hf_model(st_model)).eval()


def export_onnx(st_model, path: Path, opset: int = 17) -> Path:
    """Export a SentenceTransformer to ONNX (fp32) at ``path``."""
    import torch

    wrapper = build_wrapper(st_model).to("cpu")
    ids = torch.ones(2, 16, dtype=torch.long)
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 10:] = 0  # exercise padding while tracing
    axes = {**{name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES}, OUTPUT_NAME: {0: "batch"}}
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # tracer warnings about python control flow in HF code
        # The TorchScript exporter (dynamo=False) gives the op patterns ORT's BERT fusions match.
        torch.onnx.export(wrapper, (ids, mask), str(path), input_names=INPUT_NAMES,
                          output_names=[OUTPUT_NAME], dynamic_axes=axes, opset_version=opset,
                          do_constant_folding=True, dynamo=False)
    log.info("exported ONNX fp32 to %s", path)
    return path


def optimize_onnx(src: Path, dst: Path) -> dict[str, int]:
    """ORT transformer optimizer: fuse embeddings+LayerNorm, attention, skip-LayerNorm, bias-GELU.

    Returns the counts of fused operators.
    """
    from onnxruntime.transformers.optimizer import optimize_model

    with quiet_root_logger():
        # 0 heads, 0 width: read from the graph, which a head-pruned model (head counts per layer) needs.
        opt = optimize_model(str(src), model_type="bert", num_heads=0, hidden_size=0, opt_level=1)
        opt.save_model_to_file(str(dst))
    stats = {k: int(v) for k, v in opt.get_fused_operator_statistics().items() if v}
    log.info("ORT fusion %s -> %s: %s", src.name, dst.name, stats)
    return stats


def check_onnx(path: Path) -> None:
    """Fail with one line naming the file when it is not a valid ONNX model."""
    import onnx

    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:  # onnx raises several types (ValidationError, DecodeError, OSError)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EmboptError(f"{path}: not a valid ONNX model ({first})") from None
