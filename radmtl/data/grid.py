"""A voxel grid's geometry (shape, spacing, origin, direction cosines) and how two grids differ: the test
behind "one grid per case" in `radmtl check` and behind reading a prediction onto its reference."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Geometry tolerances: header round-trips through float32 quaternions lose ~1e-5 mm.
SPACING_TOL_MM = 1e-3
ORIGIN_TOL_MM = 1e-2
DIRECTION_TOL = 1e-3


@dataclass(frozen=True)
class Grid:
    """Shape, spacing (mm), origin (mm, RAS) and direction cosines (columns) of a voxel grid."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray

    @classmethod
    def from_affine(cls, shape: tuple[int, ...], affine: np.ndarray) -> Grid:
        linear = np.asarray(affine, dtype=np.float64)[:3, :3]
        spacing = np.linalg.norm(linear, axis=0)
        direction = linear / np.where(spacing > 0, spacing, 1.0)
        return cls(
            shape=tuple(int(s) for s in shape[:3]),
            spacing=tuple(float(s) for s in spacing),
            origin=tuple(float(o) for o in np.asarray(affine)[:3, 3]),
            direction=direction,
        )

    def describe(self) -> dict:
        """JSON-safe description (for provenance files)."""
        return {
            "shape": list(self.shape),
            "spacing_mm": [round(s, 6) for s in self.spacing],
            "origin_mm": [round(o, 6) for o in self.origin],
            "direction": np.round(self.direction, 6).tolist(),
        }


def grid_mismatch(grid: Grid, reference: Grid) -> str | None:
    """Describe how ``grid`` differs from ``reference`` (None when they match within tolerance)."""
    if grid.shape != reference.shape:
        return f"shape {list(grid.shape)} differs from {list(reference.shape)}"
    if not np.allclose(grid.spacing, reference.spacing, atol=SPACING_TOL_MM):
        return (
            f"spacing {[round(s, 4) for s in grid.spacing]} mm differs from "
            f"{[round(s, 4) for s in reference.spacing]} mm"
        )
    if not np.allclose(grid.origin, reference.origin, atol=ORIGIN_TOL_MM):
        return (
            f"origin {[round(o, 3) for o in grid.origin]} mm differs from "
            f"{[round(o, 3) for o in reference.origin]} mm"
        )
    if not np.allclose(grid.direction, reference.direction, atol=DIRECTION_TOL):
        return "direction (orientation) differs"
    return None
