"""How the dose section's numbers are written: JSON values, table cells and MLflow metrics, one rule for the
dose tables (:mod:`~radmtl.evaluation.dose.evaluate_dose`) and the range check
(:mod:`~radmtl.evaluation.dose.range_check`)."""

from __future__ import annotations

import math
from collections.abc import Mapping


def json_number(value: float | None) -> float | None:
    """A finite float, or None (JSON's null) for a missing, NaN or infinite value."""
    return None if value is None or not math.isfinite(value) else float(value)


def summary_json(stats: Mapping[str, tuple[float, float]]) -> dict[str, dict[str, float | None]]:
    """``{metric: (mean, sd)}`` → ``{metric: {"mean": …, "sd": …}}`` for metrics.json."""
    return {name: {"mean": json_number(mean), "sd": json_number(sd)} for name, (mean, sd) in stats.items()}


def fmt(value: float) -> str:
    """A table cell: four significant digits, ``n/a`` where not finite."""
    return "n/a" if not math.isfinite(value) else f"{value:.4g}"


def mean_sd_metrics(prefix: str, groups: Mapping[str, Mapping[str, tuple[float, float]]]) -> dict[str, float]:
    """``{prefix}_<group>_<metric>_mean`` and ``_sd`` of every finite ``(mean, sd)`` of each group."""
    out = {}
    for group, stats in groups.items():
        for name, (mean, sd) in stats.items():
            for stat, value in (("mean", mean), ("sd", sd)):
                if math.isfinite(value):
                    out[f"{prefix}_{group}_{name}_{stat}"] = float(value)
    return out

