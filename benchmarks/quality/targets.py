"""The quality issue's targets per data set, and their check on every seed's (or the ensemble's) values."""
from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from benchmarks.quality.rows import LABELS

__all__ = ["Target", "TARGETS", "TargetCheck", "describe", "check_targets"]


@dataclass(frozen=True)
class Target:
    """One target of the quality issue, checked on the official test split at the validation-chosen threshold.

    ``each_at_least``: every seed's value (not only the mean) is at least ``bound``;
    ``spread_at_most``: max − min of the value across the seeds is at most ``bound``.
    Values and bounds are fractions (accuracy 0.928) or AUCs (0.975), as in metrics.json.
    """

    key: str
    bound: float
    rule: Literal["each_at_least", "spread_at_most"] = "each_at_least"

    @property
    def label(self) -> str:
        if self.rule == "spread_at_most":
            return f"{LABELS[self.key]} spread (max − min) across seeds ≤ {100 * self.bound:g} points"
        bound = f"{self.bound:g}" if self.key in ("roc_auc", "pr_auc") else f"{100 * self.bound:g} %"
        return f"{LABELS[self.key]} ≥ {bound}"


TARGETS: dict[str, tuple[Target, ...]] = {
    "kaggle": (Target("accuracy", 0.928), Target("sensitivity", 0.93), Target("specificity", 0.90),
               Target("roc_auc", 0.975), Target("specificity", 0.03, "spread_at_most")),
    "medmnist": (Target("accuracy", 0.92), Target("roc_auc", 0.98)),
}
TARGETS["demo"] = TARGETS["kaggle"]  # synthetic images: only to exercise the check, never a verdict on the issue
_TOLERANCE = 1e-9  # 580/624 is 0.92949…: a value equal to the bound meets it, rounding noise does not decide


@dataclass
class TargetCheck:
    """A target against the seeds' (or the ensemble's) values; ``met`` None = cannot be checked (one seed, spread)."""

    label: str
    key: str
    rule: str
    bound: float
    seeds: list[Any]
    values: list[float | None]
    mean: float | None
    sd: float | None
    spread: float | None
    met: bool | None
    misses: list[Any] = field(default_factory=list)  # the seeds that miss it (or have no value)
    note: str = ""


def describe(values: Sequence[float | None]) -> dict[str, float | int | None]:
    """Mean, sample sd (n − 1), min, max and spread of the values that exist; sd needs two of them."""
    present = [float(v) for v in values if v is not None]
    if not present:
        return {"n": 0, "mean": None, "sd": None, "min": None, "max": None, "spread": None}
    return {"n": len(present), "mean": statistics.fmean(present),
            "sd": statistics.stdev(present) if len(present) > 1 else None,
            "min": min(present), "max": max(present), "spread": max(present) - min(present)}


def check_targets(per_seed: Sequence[tuple[Any, dict[str, float | None] | None]],
                  targets: Sequence[Target]) -> list[TargetCheck]:
    """Each target against ``(seed, values)`` pairs (values as in metrics.json; None = the seed has no result).

    A seed without a result misses every target (every seed must meet it); the spread target needs two seeds.
    """
    seeds = [seed for seed, _ in per_seed]
    checks = []
    for target in targets:
        values = [(v or {}).get(target.key) for _, v in per_seed]
        stats = describe(values)
        missing = [seed for seed, value in zip(seeds, values) if value is None]
        note = f"no result for seed {', '.join(map(str, missing))}" if missing else ""
        if target.rule == "spread_at_most":
            if len(per_seed) < 2:
                met, misses, note = None, [], "needs two or more seeds"
            else:
                met = not missing and stats["spread"] is not None and stats["spread"] <= target.bound + _TOLERANCE
                misses = missing if missing else ([] if met else list(seeds))
        else:
            below = [seed for seed, value in zip(seeds, values)
                     if value is not None and value < target.bound - _TOLERANCE]
            misses = [seed for seed in seeds if seed in missing or seed in below]
            met = bool(per_seed) and not misses
        spread = stats["spread"] if len(per_seed) > 1 else None  # one value has no spread
        checks.append(TargetCheck(target.label, target.key, target.rule, target.bound, seeds, values, stats["mean"],
                                  stats["sd"], spread, met, misses, note))
    return checks
