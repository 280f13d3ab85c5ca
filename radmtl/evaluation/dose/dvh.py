"""Dose–volume metrics of one structure: cumulative DVH, Dx, Dmean.

Convention (stated once, used everywhere): every voxel of the structure counts with equal volume (one grid),
and ``D_x`` is **the minimum dose received by the hottest x % of the structure's volume, by nearest rank,
without interpolation**: with the N voxel doses sorted from hottest to coldest, ``D_x`` is the dose of
the ``ceil(x/100 · N)``-th one (at least the first). So D2 is close to the maximum, D98 close to the
minimum, D50 the median of an odd N (the upper median of an even N) and, for ten voxels of doses
1 … 10 Gy, D95 = 1, D50 = 6, D2 = 10 Gy. The cumulative DVH ``V(d)`` is the fraction of the structure
receiving at least ``d``; ``D_x`` is the largest dose d at which ``V(d) ≥ x/100``, the same number read off
that curve. An empty structure gives ``nan``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np

from radmtl.evaluation.dose.errors import DoseError

TARGET_LEVELS = (98.0, 95.0, 50.0, 2.0)
OAR_LEVELS = (2.0,)


def _doses(dose_gy: np.ndarray, mask: np.ndarray) -> np.ndarray:
    dose_gy, mask = np.asarray(dose_gy), np.asarray(mask)
    if dose_gy.shape != mask.shape:
        raise DoseError(f"dose and structure mask must share one grid, got {dose_gy.shape} and {mask.shape}")
    return np.asarray(dose_gy[mask != 0], dtype=np.float64)


def dose_at_volume(dose_gy: np.ndarray, mask: np.ndarray, percent: float | Iterable[float]) -> float | list[float]:
    """``D_x`` in Gy (the module's nearest-rank convention) for one level or several.

    Args:
        dose_gy: (X, Y, Z) dose.
        mask: (X, Y, Z) structure; non-zero is inside.
        percent: x in (0, 100], or several.
    """
    levels = [float(percent)] if np.isscalar(percent) else [float(p) for p in percent]
    if any(not 0.0 < p <= 100.0 for p in levels):
        raise DoseError(f"DVH levels must lie in (0, 100] %, got {levels}")
    doses = np.sort(_doses(dose_gy, mask))[::-1]
    if doses.size == 0:
        values = [math.nan] * len(levels)
    else:
        ranks = [max(1, math.ceil(round(p / 100.0 * doses.size, 9))) for p in levels]
        values = [float(doses[rank - 1]) for rank in ranks]
    return values[0] if np.isscalar(percent) else values


def cumulative_dvh(dose_gy: np.ndarray, mask: np.ndarray, bins_gy: np.ndarray) -> np.ndarray:
    """``V(d)``: the fraction (0–1) of the structure receiving at least each dose in ``bins_gy``."""
    doses = np.sort(_doses(dose_gy, mask))
    bins = np.asarray(bins_gy, dtype=np.float64)
    if doses.size == 0:
        return np.full(bins.shape, math.nan)
    return (doses.size - np.searchsorted(doses, bins, side="left")) / doses.size


def dvh_metrics(dose_gy: np.ndarray, structures: Mapping[str, np.ndarray], target: str | None = None,
                prefix: str = "") -> dict[str, float]:
    """DVH numbers of each structure: the target's D98/D95/D50/D2 and Dmean, each OAR's Dmean and D2.

    Keys: ``{prefix}{name}_d95_gy``, ``{prefix}{name}_dmean_gy`` …
    """
    out: dict[str, float] = {}
    for name, mask in structures.items():
        doses = _doses(dose_gy, mask)
        out[f"{prefix}{name}_dmean_gy"] = float(doses.mean()) if doses.size else math.nan
        levels = TARGET_LEVELS if name == target else OAR_LEVELS
        for level, value in zip(levels, dose_at_volume(dose_gy, mask, levels)):
            out[f"{prefix}{name}_d{level:g}_gy"] = value
    return out
