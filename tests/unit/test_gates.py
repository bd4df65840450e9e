import pytest

from embopt.errors import GateFailed
from embopt.pipeline.gates import enforce, evaluate_gates, passes
from embopt.pipeline.params import PromoteGate


def test_min_and_max_thresholds():
    res = evaluate_gates(
        "s", {"min_retention": 0.97, "max_latency": 2.0}, {"retention": 0.98, "latency": 3.0}
    )
    assert [r.passed for r in res] == [True, False]
    with pytest.raises(GateFailed) as exc:
        enforce(res)
    line = str(exc.value)
    assert (
        "stage=s" in line
        and "metric=latency" in line
        and "value=3.0000" in line
        and "threshold=<=2.0000" in line
    )
    assert "retention" not in line  # only misses are reported


def test_null_threshold_is_off():
    assert evaluate_gates("s", {"min_retention": None}, {}) == []
    assert passes("promote", PromoteGate(min_retention=None, min_speedup=None), {})


def test_boundary_passes():
    assert passes("s", {"min_retention": 0.97}, {"retention": 0.97})
    assert not passes("s", {"min_retention": 0.97}, {"retention": 0.9699})


def test_unknown_metric_is_a_bug_not_a_miss():
    with pytest.raises(KeyError, match="did not compute"):
        evaluate_gates("s", {"min_speedup": 2}, {"retention": 1.0})


def test_gate_key_needs_prefix():
    with pytest.raises(KeyError, match="min_ or max_"):
        evaluate_gates("s", {"retention": 0.9}, {"retention": 1.0})
