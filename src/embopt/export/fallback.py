"""Accuracy-driven fallback: keep the int8 model's most sensitive nodes in fp32 until the gate passes.

1. Sensitivity: for every node the recipe quantizes, build a model with *only that node* quantized
   and measure how far its embeddings move from the fp32 parent's on a dev sample (mean cosine
   distance). One node at a time isolates each node's own damage, which excluding it would undo.
2. Fallback: exclude the 1, 2, 3, ... most sensitive nodes (rebuild the int8 model with them in
   fp32) and re-score the gate metric, until it passes or ``max_nodes`` are excluded.

The quantizer, the embedding function and the gate score are passed in, so the same loop serves
dynamic and static recipes and is unit-tested with a fake scorer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# build(dst, nodes_to_quantize=None, nodes_to_exclude=None) -> dst
BuildFn = Callable[..., Path]


@dataclass
class FallbackResult:
    passed: bool
    excluded: list[str]
    score: float  # the gate metric of the returned model
    sensitivity: list[tuple[str, float]]  # node, mean cosine distance to fp32; most sensitive first
    steps: list[dict] = field(default_factory=list)  # one per rebuild: k, score

    def report(self, top: int = 10) -> dict:
        return {"passed": self.passed, "nodes_kept_fp32": self.excluded, "score": round(self.score, 5),
                "steps": self.steps, "most_sensitive": [{"node": n, "cosine_distance": float(f"{s:.3g}")}
                                                        for n, s in self.sensitivity[:top]]}


def cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean ``1 - cos`` of row pairs, computed as ``|a/|a| - b/|b||^2 / 2`` in float64.

    The same quantity as ``1 - cosine``, but exact for the tiny distances a single
    int8 node causes, where ``1 - cos`` in float32 is below rounding noise.
    """
    a, b = (np.asarray(x, dtype=np.float64) for x in (a, b))
    a, b = (x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None) for x in (a, b))
    return float(np.mean(0.5 * np.sum((a - b) ** 2, axis=1)))


def node_sensitivity(nodes: Sequence[str], build: BuildFn, embed: Callable[[Path], np.ndarray],
                     reference: np.ndarray, workdir: Path) -> list[tuple[str, float]]:
    """(node, mean cosine distance of its single-node int8 model to fp32), most sensitive first."""
    from tqdm.auto import tqdm

    out = []
    path = Path(workdir) / "sensitivity.onnx"
    for node in tqdm(list(nodes), desc="int8 sensitivity", unit="node"):
        build(path, nodes_to_quantize=[node])
        out.append((node, cosine_distance(embed(path), reference)))
    path.unlink(missing_ok=True)
    return sorted(out, key=lambda x: -x[1])


def exclude_until_pass(sensitivity: Sequence[tuple[str, float]], build: BuildFn,
                       score: Callable[[Path], float], threshold: float, dst: Path,
                       max_nodes: int) -> FallbackResult:
    """Rebuild ``dst`` with the k most sensitive nodes in fp32, k = 1.., until ``score(dst) >= threshold``.

    When no k up to ``max_nodes`` passes, ``dst`` holds the best-scoring model found.
    """
    order = [n for n, _ in sensitivity]
    steps: list[dict] = []
    best_score, best_k = float("nan"), 0  # k = 0: nothing to exclude
    limit = min(max_nodes, len(order))
    for k in range(1, limit + 1):
        build(dst, nodes_to_exclude=order[:k])
        s = float(score(dst))
        steps.append({"k": k, "score": round(s, 5)})
        log.info("fallback: %d node(s) in fp32 (%s) -> %.5f (need %.5f)", k, order[k - 1], s, threshold)
        if s >= threshold:
            return FallbackResult(True, order[:k], s, list(sensitivity), steps)
        if k == 1 or s > best_score:
            best_score, best_k = s, k
    if best_k not in (0, limit):
        build(dst, nodes_to_exclude=order[:best_k])
    return FallbackResult(False, order[:best_k], best_score, list(sensitivity), steps)
