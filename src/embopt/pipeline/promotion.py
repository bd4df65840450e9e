"""What "best" means, as code: the objective, the tie rule and champion/challenger.

Every number here comes from the validation split (accuracy) and interleaved timing rounds (speed,
with their spread): STSb dev is never used to choose. A speed difference smaller than the measured
noise (or ``noise_floor``) is a tie, and ties go to the more accurate variant, so timing noise
cannot flip the choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Contender:
    name: str
    val_retention: float
    sps: float  # median sentences/s over the interleaved rounds
    spread: float  # (max - min) / median over those rounds
    size_mb: float
    dim: int

    @classmethod
    def from_row(cls, name: str, row: dict) -> Contender:
        return cls(name, row["val_retention"], row["throughput_sps"], row["throughput_spread"],
                   row["size_mb"], row["dim"])


def speed_tie(a: Contender, b: Contender, noise_floor: float) -> bool:
    """True when a and b differ in speed by no more than the noise of either measurement."""
    noise = max(a.spread, b.spread, noise_floor)
    return abs(a.sps - b.sps) <= noise * max(a.sps, b.sps)


def eligible(contenders: Sequence[Contender], objective: str, full_dim: int) -> list[Contender]:
    """Under ``throughput`` only full-width variants compete: PCA is for storage (``vector_bytes``)."""
    return [c for c in contenders if objective != "throughput" or c.dim == full_dim]


def best(contenders: Sequence[Contender], objective: str, noise_floor: float) -> Contender:
    if objective == "throughput":
        fastest = max(contenders, key=lambda c: c.sps)
        tied = [c for c in contenders if speed_tie(c, fastest, noise_floor)]
        return max(tied, key=lambda c: (c.val_retention, -c.size_mb, c.sps, c.name))
    narrowest = min(c.dim for c in contenders)
    tied = [c for c in contenders if c.dim == narrowest]
    return max(tied, key=lambda c: (c.val_retention, c.sps, c.name))


def decide(challenger: Contender, incumbent: Contender | None, objective: str,
           noise_floor: float) -> tuple[bool, str]:
    """Whether the challenger takes the champion alias, and why (one line for the log and the registry)."""
    if incumbent is None:
        return True, "no champion yet: promoted directly"
    if objective == "throughput" and not speed_tie(challenger, incumbent, noise_floor):
        faster = challenger.sps > incumbent.sps
        return faster, (f"{challenger.sps:.0f} vs incumbent {incumbent.sps:.0f} sent/s, beyond the noise "
                        f"(±{100 * max(challenger.spread, incumbent.spread, noise_floor):.1f}%): "
                        + ("challenger is faster" if faster else "incumbent is faster"))
    if objective == "vector_bytes" and challenger.dim != incumbent.dim:
        return challenger.dim < incumbent.dim, f"dim {challenger.dim} vs incumbent {incumbent.dim}"
    better = challenger.val_retention > incumbent.val_retention
    verdict = "challenger is more accurate" if better else "incumbent kept"
    return better, (f"tie on the objective; val retention {challenger.val_retention:.5f} vs incumbent "
                    f"{incumbent.val_retention:.5f}: {verdict}")
