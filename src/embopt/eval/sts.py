"""STS evaluation: Spearman correlation of cosine similarity with the gold scores."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from embopt.data.sts import StsPair, unique_sentences


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = (x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None) for x in (a, b))
    return np.sum(a * b, axis=1)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def sts_spearman(encode: Callable[[Sequence[str]], np.ndarray], pairs: Sequence[StsPair]) -> float:
    """Spearman x 100 (the convention of STS papers) of cosine similarity vs gold score.

    Each distinct sentence is encoded once, so every variant sees exactly the same inputs.
    """
    sentences = unique_sentences(pairs)
    cos = pair_cosines(np.asarray(encode(sentences), dtype=np.float32), sentences, pairs)
    return 100.0 * spearman(cos, np.array([p.score for p in pairs], dtype=np.float64))


def retention(score: float, reference: float) -> float:
    """Fraction of the reference score kept (1.0 = no loss)."""
    return float(score / reference) if reference else float("nan")


def pair_cosines(emb: np.ndarray, sentences: Sequence[str], pairs: Sequence[StsPair]) -> np.ndarray:
    """Cosine of each pair, from embeddings of ``sentences`` (each distinct sentence encoded once)."""
    index = {s: i for i, s in enumerate(sentences)}
    return cosine_rows(emb[[index[p.s1] for p in pairs]], emb[[index[p.s2] for p in pairs]])


def _row_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    return (a * b).sum(axis=1) / np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))


def bootstrap_spearman(cos: np.ndarray, gold: np.ndarray, ref_cos: np.ndarray | None = None,
                       n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """Percentile-bootstrap interval of Spearman x 100, resampling *pairs* with replacement.

    With ``ref_cos`` (the teacher's cosines on the same pairs) each resample also scores
    the reference, so the retention interval is paired: the sentences that are hard for
    the variant are hard for the teacher too, and that shared noise cancels.

    Returns:
        ``spearman`` (on all pairs), ``spearman_lo``/``_hi`` and, with a reference,
        ``retention``, ``retention_lo``/``_hi``.
    """
    from scipy.stats import rankdata  # average ranks for ties, as spearmanr

    idx = np.random.default_rng(seed).integers(0, len(gold), size=(n_boot, len(gold)))
    gold_r = rankdata(gold[idx], axis=1)
    boot = 100.0 * _row_pearson(rankdata(cos[idx], axis=1), gold_r)
    alpha = (1.0 - level) / 2
    out = {"spearman": 100.0 * spearman(cos, gold)}
    out["spearman_lo"], out["spearman_hi"] = (float(q) for q in np.quantile(boot, [alpha, 1 - alpha]))
    if ref_cos is not None:
        ratio = boot / (100.0 * _row_pearson(rankdata(ref_cos[idx], axis=1), gold_r))
        out["retention"] = out["spearman"] / (100.0 * spearman(ref_cos, gold))
        out["retention_lo"], out["retention_hi"] = (float(q) for q in np.quantile(ratio, [alpha, 1 - alpha]))
    return out
