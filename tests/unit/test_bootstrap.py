"""Bootstrap intervals of Spearman and retention on synthetic data with known answers."""

from __future__ import annotations

import numpy as np

from embopt.eval.sts import bootstrap_spearman


def test_perfect_ranking_has_a_zero_width_interval():
    gold = np.linspace(0, 5, 300)
    out = bootstrap_spearman(gold * 0.2 + 0.1, gold, ref_cos=gold, n_boot=200, seed=0)
    assert out["spearman"] == out["spearman_lo"] == out["spearman_hi"] == 100.0
    assert out["retention"] == out["retention_lo"] == out["retention_hi"] == 1.0


def test_interval_width_matches_the_fisher_z_approximation():
    # For n pairs the standard error of atanh(Spearman) is about sqrt(1.06 / (n - 3)).
    rng = np.random.default_rng(1)
    n = 1500
    gold = rng.normal(size=n)
    cos = 0.6 * gold + 0.8 * rng.normal(size=n)
    out = bootstrap_spearman(cos, gold, n_boot=1000, seed=2)
    r = out["spearman"] / 100
    se = np.sqrt(1.06 / (n - 3))
    lo, hi = np.tanh(np.arctanh(r) - 1.96 * se), np.tanh(np.arctanh(r) + 1.96 * se)
    width = (out["spearman_hi"] - out["spearman_lo"]) / 100
    assert out["spearman_lo"] < out["spearman"] < out["spearman_hi"]
    assert abs(width - (hi - lo)) < 0.2 * (hi - lo)


def test_paired_retention_interval_is_narrower_than_unpaired_noise():
    # Variant and teacher share most of their errors: the paired ratio is tight around the truth.
    rng = np.random.default_rng(3)
    n = 1000
    gold = rng.uniform(0, 5, n)
    teacher = gold + rng.normal(0, 1.0, n)
    variant = teacher + rng.normal(0, 0.2, n)
    out = bootstrap_spearman(variant, gold, ref_cos=teacher, n_boot=500, seed=4)
    assert out["retention_lo"] <= out["retention"] <= out["retention_hi"]
    ret_width = out["retention_hi"] - out["retention_lo"]
    rel_spearman_width = (out["spearman_hi"] - out["spearman_lo"]) / out["spearman"]
    assert ret_width < 0.5 * rel_spearman_width
