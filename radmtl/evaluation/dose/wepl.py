"""Water-equivalent path length (WEPL) along a straight ray, and its σ from a per-voxel HU σ map.

The ray is traversed exactly (Siddon, Med. Phys. 12:252, 1985): the fractions α ∈ [0, 1] at which the
segment from ``start_mm`` to ``end_mm`` crosses a voxel boundary plane are merged and sorted, and each
piece between two crossings lies in one voxel, whose index is read at the piece's midpoint. The work is
done in continuous voxel-index coordinates (voxel ``i`` spans ``[i − ½, i + ½]``), so any affine, oblique
included, is handled, and a piece's length in mm is its Δα times the segment's length in world mm. The
traversal is exact: the lengths add up to the part of the segment inside the grid. Outside the grid the
ray crosses vacuum (SPR 0).

WEPL = Σᵢ SPRᵢ·ℓᵢ. With a per-voxel HU σ (``sigma_hu``) and the table's slope dSPR/dHU at each voxel, two
bounds of the WEPL's σ:

* fully correlated voxel errors (every voxel off by its σ in the same direction, e.g. a bone HU bias):
  ``σ_corr = Σᵢ σᵢ·ℓᵢ·|dSPR/dHU|ᵢ``;
* independent voxel errors: ``σ_ind = √Σᵢ (σᵢ·ℓᵢ·dSPR/dHUᵢ)²``.

Arrays are (X, Y, Z) and ``affine`` maps voxel indices to world mm (radmtl's RAS convention; only
differences matter here).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from radmtl.evaluation.dose.errors import DoseError
from radmtl.evaluation.dose.hlut import DEFAULT_HLUT, Hlut

logger = logging.getLogger(__name__)

_ALPHA_EPS = 1e-12


def _point(value, name: str) -> np.ndarray:
    point = np.asarray(value, dtype=np.float64).reshape(-1)
    if point.shape != (3,) or not np.all(np.isfinite(point)):
        raise DoseError(f"{name} must be a finite (x, y, z) point in mm, got {value!r}")
    return point


def ray_voxels(shape: tuple[int, int, int], affine: np.ndarray, start_mm, end_mm) -> tuple[np.ndarray, np.ndarray]:
    """The voxels a straight segment crosses and the length of it in each (Siddon traversal).

    Args:
        shape: grid shape (X, Y, Z).
        affine: (4, 4) voxel index → world mm.
        start_mm: (3,) world point where the ray starts (e.g. the beam's source or entry point).
        end_mm: (3,) world point where it ends.

    Returns:
        ``(indices, lengths_mm)``: (M, 3) int voxel indices in the order the ray meets them and (M,)
        path lengths in mm; pieces outside the grid are left out.
    """
    if len(shape) != 3:
        raise DoseError(f"shape must be (X, Y, Z), got {shape}")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise DoseError(f"affine must be an invertible 4 × 4 voxel → mm matrix, got {affine.tolist()}")
    start, end = _point(start_mm, "start_mm"), _point(end_mm, "end_mm")
    length = float(np.linalg.norm(end - start))
    if length == 0.0:
        return np.zeros((0, 3), dtype=np.int64), np.zeros(0)
    inverse = np.linalg.inv(affine)
    a = inverse[:3, :3] @ start + inverse[:3, 3]
    b = inverse[:3, :3] @ end + inverse[:3, 3]
    step = b - a
    alphas = [np.array([0.0, 1.0])]
    for axis in range(3):
        if abs(step[axis]) < 1e-15:
            continue
        planes = np.arange(shape[axis] + 1, dtype=np.float64) - 0.5
        crossing = (planes - a[axis]) / step[axis]
        alphas.append(crossing[(crossing > 0.0) & (crossing < 1.0)])
    alpha = np.unique(np.concatenate(alphas))
    alpha = alpha[np.concatenate([[True], np.diff(alpha) > _ALPHA_EPS])]
    middle = 0.5 * (alpha[:-1] + alpha[1:])
    indices = np.floor(a[None, :] + middle[:, None] * step[None, :] + 0.5).astype(np.int64)
    lengths = np.diff(alpha) * length
    inside = np.all((indices >= 0) & (indices < np.asarray(shape)[None, :]), axis=1) & (lengths > 0)
    return indices[inside], lengths[inside]


def wepl(spr: np.ndarray, affine: np.ndarray, start_mm, end_mm) -> float:
    """WEPL in mm from ``start_mm`` to ``end_mm`` through a relative stopping power map (X, Y, Z)."""
    spr = np.asarray(spr, dtype=np.float64)
    if spr.ndim != 3:
        raise DoseError(f"spr must be a 3D (X, Y, Z) array, got shape {spr.shape}")
    indices, lengths = ray_voxels(spr.shape, affine, start_mm, end_mm)
    return float(np.sum(spr[tuple(indices.T)] * lengths))


@dataclass(frozen=True)
class WeplResult:
    """WEPL along one ray and its σ bounds, all in mm (``*_percent``: of the WEPL)."""

    wepl_mm: float
    geometric_mm: float  # the ray's length inside the grid
    sigma_correlated_mm: float
    sigma_independent_mm: float

    @property
    def sigma_correlated_percent(self) -> float:
        return 100.0 * self.sigma_correlated_mm / self.wepl_mm if self.wepl_mm > 0 else math.nan

    @property
    def sigma_independent_percent(self) -> float:
        return 100.0 * self.sigma_independent_mm / self.wepl_mm if self.wepl_mm > 0 else math.nan

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}wepl_mm": self.wepl_mm, f"{prefix}geometric_mm": self.geometric_mm,
                f"{prefix}sigma_wepl_correlated_mm": self.sigma_correlated_mm,
                f"{prefix}sigma_wepl_independent_mm": self.sigma_independent_mm,
                f"{prefix}sigma_wepl_correlated_percent": self.sigma_correlated_percent,
                f"{prefix}sigma_wepl_independent_percent": self.sigma_independent_percent}


def wepl_with_sigma(ct_hu: np.ndarray, affine: np.ndarray, start_mm, end_mm, sigma_hu: np.ndarray | None = None,
                    hlut: Hlut = DEFAULT_HLUT) -> WeplResult:
    """WEPL through a CT in HU and, given a σ map in HU on the same grid, its correlated and independent σ.

    Args:
        ct_hu: (X, Y, Z) CT or sCT in HU.
        affine: (4, 4) voxel index → world mm.
        start_mm, end_mm: (3,) world points of the ray.
        sigma_hu: (X, Y, Z) per-voxel σ of ``ct_hu`` in HU (e.g. radmtl's ``sct_sigma_total``); None → σ 0.
        hlut: the HU → SPR table.

    Returns:
        :class:`WeplResult`.
    """
    ct_hu = np.asarray(ct_hu, dtype=np.float64)
    if ct_hu.ndim != 3:
        raise DoseError(f"ct_hu must be a 3D (X, Y, Z) array, got shape {ct_hu.shape}")
    if sigma_hu is not None and np.shape(sigma_hu) != ct_hu.shape:
        raise DoseError(f"sigma_hu must be on the CT's grid {ct_hu.shape}, got {np.shape(sigma_hu)}")
    indices, lengths = ray_voxels(ct_hu.shape, affine, start_mm, end_mm)
    hu = ct_hu[tuple(indices.T)]
    total = float(np.sum(hlut.to_spr(hu) * lengths))
    if sigma_hu is None:
        correlated = independent = 0.0
    else:
        sigma = np.asarray(sigma_hu, dtype=np.float64)[tuple(indices.T)]
        if np.any(sigma < 0) or not np.all(np.isfinite(sigma)):
            raise DoseError("sigma_hu must be finite and ≥ 0 HU along the ray")
        terms = sigma * lengths * np.abs(hlut.spr_slope(hu))
        correlated, independent = float(np.sum(terms)), float(np.sqrt(np.sum(terms**2)))
    return WeplResult(total, float(np.sum(lengths)), correlated, independent)


def distal_edge_mm(mask: np.ndarray, affine: np.ndarray, start_mm, through_mm) -> np.ndarray | None:
    """Where the ray from ``start_mm`` through ``through_mm`` last leaves ``mask``: its distal edge.

    The ray is followed past ``through_mm`` to the far side of the grid; the point returned is the exit
    plane of the last mask voxel it crosses, so a WEPL from ``start_mm`` to it covers the whole structure.
    Returns None when the ray misses the mask.
    """
    mask = np.asarray(mask) != 0
    start, through = _point(start_mm, "start_mm"), _point(through_mm, "through_mm")
    direction = through - start
    if not np.any(direction):
        raise DoseError("start_mm and through_mm must differ")
    corners = np.array([[i, j, k, 1.0] for i in (-1, mask.shape[0]) for j in (-1, mask.shape[1])
                        for k in (-1, mask.shape[2])]) @ np.asarray(affine, np.float64).T
    reach = max(float(np.linalg.norm(c[:3] - start)) for c in corners)
    end = start + direction / np.linalg.norm(direction) * reach
    indices, lengths = ray_voxels(mask.shape, affine, start, end)
    hits = np.flatnonzero(mask[tuple(indices.T)])
    if hits.size == 0:
        return None
    travelled = float(np.sum(lengths[: hits[-1] + 1]))
    # Lengths skip pieces outside the grid: add back the distance from the start to the grid's entry.
    entry = grid_entry_distance(mask.shape, affine, start, end)
    return start + (end - start) / np.linalg.norm(end - start) * (entry + travelled)


def grid_entry_distance(shape, affine, start: np.ndarray, end: np.ndarray) -> float:
    inverse = np.linalg.inv(np.asarray(affine, np.float64))
    a = inverse[:3, :3] @ start + inverse[:3, 3]
    b = inverse[:3, :3] @ end + inverse[:3, 3]
    low, high = 0.0, 1.0
    for axis in range(3):
        lo, hi = -0.5, shape[axis] - 0.5
        if abs(b[axis] - a[axis]) < 1e-15:
            if not lo <= a[axis] <= hi:
                return math.nan
            continue
        t0, t1 = sorted(((lo - a[axis]) / (b[axis] - a[axis]), (hi - a[axis]) / (b[axis] - a[axis])))
        low, high = max(low, t0), min(high, t1)
    return low * float(np.linalg.norm(end - start))
