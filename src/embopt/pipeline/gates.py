"""Gates: thresholds from ``<stage>.gate`` in params.yaml, checked in one place.

A gate key is ``min_<metric>`` or ``max_<metric>``; ``null`` switches it off. A miss
is reported as one line naming stage, metric, value and threshold.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import BaseModel

from embopt.errors import GateFailed


@dataclass(frozen=True)
class GateResult:
    stage: str
    metric: str
    value: float
    op: str  # ">=" or "<="
    threshold: float

    @property
    def passed(self) -> bool:
        return self.value >= self.threshold if self.op == ">=" else self.value <= self.threshold

    def line(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return (f"gate {verdict}: stage={self.stage} metric={self.metric} "
                f"value={self.value:.4f} threshold={self.op}{self.threshold:.4f}")


def evaluate_gates(stage: str, gate: BaseModel | Mapping, metrics: Mapping[str, float]) -> list[GateResult]:
    """Compare ``metrics`` with every active threshold in ``gate``.

    Raises:
        KeyError: a threshold names a metric the stage did not produce (a bug, not a miss).
    """
    items = gate.model_dump() if isinstance(gate, BaseModel) else dict(gate)
    results = []
    for key, threshold in items.items():
        if threshold is None:
            continue
        metric, op = key[4:], {"min_": ">=", "max_": "<="}.get(key[:4])
        if op is None:
            raise KeyError(f"gate key '{stage}.gate.{key}' must start with min_ or max_")
        if metric not in metrics:
            raise KeyError(f"gate '{stage}.gate.{key}' names metric '{metric}' that {stage} did not compute")
        results.append(GateResult(stage, metric, float(metrics[metric]), op, float(threshold)))
    return results


def enforce(results: list[GateResult]) -> None:
    """Raise GateFailed (one line per miss) when any result failed."""
    if failed := [r for r in results if not r.passed]:
        raise GateFailed("; ".join(r.line() for r in failed))


def passes(stage: str, gate: BaseModel | Mapping, metrics: Mapping[str, float]) -> bool:
    return all(r.passed for r in evaluate_gates(stage, gate, metrics))
