"""Roofline: the matrix work an encoder must do per sentence, and this machine's peaks.

Operations are counted as 2 per multiply-add (as in "TOPS"), for the matrix products only: Q/K/V/output
projections, the two FFN products, QK^T and AV. Layer norms, GELU, softmax and embeddings are left out
(memory-bound, small next to the products), so the count is a lower bound on the work done. The peaks
are measured in the benchmark's process and threads: an ONNX Runtime ``MatMulInteger`` (uint8 x int8
-> int32, the kernel the dynamic int8 graphs run) and a fp32 ``torch.matmul``, both n x n x n.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embopt.bench.timing import interleaved
from embopt.serving.runtime import session_options


@dataclass(frozen=True)
class EncoderShape:
    """What the op count needs from a BERT-like config."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    # Attention heads removed per layer (head pruning): {layer index: count}.
    pruned_heads: Mapping[int, int] = field(default_factory=dict)
    # Extra output projection (PCA folded into the graph): hidden -> k.
    projection: int = 0

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def attention_dim(self, layer: int) -> int:
        return (self.heads - int(self.pruned_heads.get(layer, 0))) * self.head_dim

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["pruned_heads"] = {str(k): v for k, v in self.pruned_heads.items()}
        return d


def shape_from_config(cfg: Mapping[str, Any], projection: int = 0) -> EncoderShape:
    """An :class:`EncoderShape` from a Hugging Face ``config.json`` dict (BERT or DistilBERT keys)."""
    layers = cfg.get("num_hidden_layers", cfg.get("n_layers"))
    hidden = cfg.get("hidden_size", cfg.get("dim"))
    inter = cfg.get("intermediate_size", cfg.get("hidden_dim"))
    heads = cfg.get("num_attention_heads", cfg.get("n_heads"))
    if None in (layers, hidden, inter, heads):
        raise KeyError("config lacks one of num_hidden_layers, hidden_size, intermediate_size, "
                       "num_attention_heads")
    pruned = {int(k): len(v) for k, v in (cfg.get("pruned_heads") or {}).items()}
    return EncoderShape(int(layers), int(hidden), int(inter), int(heads), pruned, projection)


def read_model_config(folder: Path) -> dict[str, Any] | None:
    """``config.json`` of a SentenceTransformer folder (root or ``0_Transformer``), or None."""
    for cand in (Path(folder) / "config.json", Path(folder) / "0_Transformer" / "config.json"):
        if cand.exists():
            return json.loads(cand.read_text(encoding="utf-8"))
    return None


def ops_per_sentence(shape: EncoderShape, tokens: int) -> float:
    """Matrix-product operations (2 per multiply-add) to encode one sentence of ``tokens`` tokens."""
    s, h = float(tokens), float(shape.hidden)
    total = 0.0
    for layer in range(shape.layers):
        a = float(shape.attention_dim(layer))
        total += 2 * s * (3 * h * a + a * h)  # Q, K, V and the attention output projection
        total += 2 * s * (2 * h * shape.intermediate)  # FFN up and down
        total += 2 * 2 * s * s * a  # QK^T and (softmax)V
    total += 2 * h * shape.projection
    return total


def mean_ops(shape: EncoderShape, token_counts: Iterable[int]) -> float:
    """Mean operations per sentence over real (unpadded) token counts."""
    counts = list(token_counts)
    return sum(ops_per_sentence(shape, t) for t in counts) / len(counts) if counts else 0.0


def _peak(fn, n: int, threads: int, repeats: int) -> dict[str, float]:
    """Ops/s of ``fn`` (an n x n x n product) in its best and its median run, after a warm-up."""
    fn(None)  # warm-up: thread pools, packing buffers
    runs = interleaved({"peak": fn}, [None], repeats)["peak"][:, 0]
    ops = 2.0 * n**3
    return {"n": n, "threads": threads, "peak_ops_s": ops / float(runs.min()),
            "median_ops_s": ops / float(np.median(runs))}


def fp32_peak(threads: int, n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """torch fp32 ``matmul`` of n x n x n on ``threads`` threads: ops/s (best and median run)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(0)
        a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
        return _peak(lambda _: torch.matmul(a, b), n, threads, repeats)
    finally:
        torch.set_num_threads(old)


def int8_peak(threads: int, n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """ONNX Runtime ``MatMulInteger`` (uint8 activations x int8 weights) of n x n x n: ops/s."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = rng.integers(-127, 128, size=(n, n), dtype=np.int8)
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "matmul_integer_peak",
                              [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, [n, n])],
                              initializer=[numpy_helper.from_array(weight, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    sess = ort.InferenceSession(model.SerializeToString(), sess_options=session_options(threads),
                                providers=["CPUExecutionProvider"])
    a = rng.integers(0, 256, size=(n, n), dtype=np.uint8)
    return _peak(lambda _: sess.run(None, {"a": a}), n, threads, repeats)


def roofline_row(shape: EncoderShape | None, token_counts: list[int], throughput_sps: float, precision: str,
                 peaks: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    """Achieved matrix ops/s of a variant at ``throughput_sps`` and its share of this machine's peaks."""
    if shape is None:
        return {"status": "skipped: no model config found for this variant"}
    ops = mean_ops(shape, token_counts)
    achieved = ops * throughput_sps
    row = {
        "mean_tokens": float(np.mean(token_counts)) if token_counts else 0.0,
        "gops_per_sentence": ops / 1e9,
        "achieved_gops_s": achieved / 1e9,
        "pct_of_int8_peak": 100.0 * achieved / peaks["int8"]["peak_ops_s"],
        "pct_of_fp32_peak": 100.0 * achieved / peaks["fp32"]["peak_ops_s"],
        "precision": precision,
        "shape": shape.as_dict(),
    }
    row["pct_of_own_peak"] = row["pct_of_int8_peak"] if precision == "int8" else row["pct_of_fp32_peak"]
    return row
