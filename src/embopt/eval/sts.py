"""STS evaluation: Spearman correlation of cosine similarity with the gold scores."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from embopt.data.sts import StsPair, unique_sentences

EncodeFn = Callable[[Sequence[str]], np.ndarray]


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.clip(np.linalg.norm(a, axis=1, keepdims=True), 1e-12, None)
    b = b / np.clip(np.linalg.norm(b, axis=1, keepdims=True), 1e-12, None)
    return np.sum(a * b, axis=1)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def sts_spearman(encode: EncodeFn, pairs: Sequence[StsPair]) -> float:
    """Spearman x 100 (the convention of STS papers) of cosine similarity vs gold score.

    Each distinct sentence is encoded once, so every variant sees exactly the same inputs.
    """
    sentences = unique_sentences(pairs)
    index = {s: i for i, s in enumerate(sentences)}
    emb = np.asarray(encode(sentences), dtype=np.float32)
    a = emb[[index[p.s1] for p in pairs]]
    b = emb[[index[p.s2] for p in pairs]]
    gold = np.array([p.score for p in pairs], dtype=np.float64)
    return 100.0 * spearman(cosine_rows(a, b), gold)


def retention(score: float, reference: float) -> float:
    """Fraction of the reference score kept (1.0 = no loss)."""
    return float(score / reference) if reference else float("nan")
