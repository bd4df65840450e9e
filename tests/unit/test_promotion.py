"""Champion/challenger decisions: the objective, the tie rule, and what noise cannot flip."""

from __future__ import annotations

import pytest

from embopt.pipeline.promotion import Contender, best, decide, eligible, speed_tie

FLOOR = 0.05


def c(name, ret, sps, spread=0.01, size=15.0, dim=384):
    return Contender(name, ret, sps, spread, size, dim)


def test_first_run_promotes_directly():
    assert decide(c("a", 0.98, 1000), None, "throughput", FLOOR)[0] is True


def test_challenger_worse_keeps_incumbent():
    promoted, why = decide(c("new", 0.97, 700), c("old", 0.98, 1000), "throughput", FLOOR)
    assert promoted is False and "incumbent is faster" in why


def test_challenger_faster_beyond_noise_takes_champion_even_if_slightly_less_accurate():
    promoted, why = decide(c("new", 0.975, 2000), c("old", 0.98, 1000), "throughput", FLOOR)
    assert promoted is True and "challenger is faster" in why


@pytest.mark.parametrize("challenger_sps", [1003.0, 1020.0, 980.0])
def test_tie_within_noise_goes_to_the_more_accurate(challenger_sps):
    # 0.3-2% apart: inside the 5% floor, so speed says nothing and val retention decides.
    assert decide(c("new", 0.985, challenger_sps), c("old", 0.98, 1000), "throughput", FLOOR)[0] is True
    assert decide(c("new", 0.975, challenger_sps), c("old", 0.98, 1000), "throughput", FLOOR)[0] is False


def test_identical_challenger_never_churns_the_champion():
    same = c("onnx_int8", 0.985, 1000)
    assert decide(same, c("onnx_int8", 0.985, 1004), "throughput", FLOOR)[0] is False


def test_measured_spread_widens_the_tie_band():
    noisy_a, noisy_b = c("a", 0.99, 1100, spread=0.15), c("b", 0.98, 1000, spread=0.02)
    assert speed_tie(noisy_a, noisy_b, FLOOR)  # 9% apart, but the rounds of a varied by 15%
    assert not speed_tie(c("a", 0.99, 1100), noisy_b, FLOOR)


def test_best_breaks_speed_ties_by_val_retention_then_size():
    # The README's flip: 2,806 vs 2,791 sent/s must not decide between two variants.
    pool = [c("int8", 0.985, 2791, size=15.0), c("int8_b", 0.980, 2806, size=14.0), c("fp32", 0.986, 1400)]
    assert best(pool, "throughput", FLOOR).name == "int8"
    twins = [c("x", 0.985, 2791, size=15.0), c("y", 0.985, 2800, size=14.0)]
    assert best(twins, "throughput", FLOOR).name == "y"


def test_pca_competes_only_under_vector_bytes():
    pool = [c("int8", 0.985, 2791), c("int8_pca128", 0.97, 2806, dim=128)]
    assert [x.name for x in eligible(pool, "throughput", 384)] == ["int8"]
    assert best(eligible(pool, "vector_bytes", 384), "vector_bytes", FLOOR).name == "int8_pca128"
    assert decide(pool[1], pool[0], "vector_bytes", FLOOR)[0] is True
