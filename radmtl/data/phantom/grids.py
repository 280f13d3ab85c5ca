"""The grids a phantom case can be stored on: RAS (the phantom's own), LPS (a scanner's axial order) and
oblique, every one centred on the world origin so that the same seed shows the same patient in the
same place whatever the storage (:mod:`radmtl.data.laterality` states the RAS convention).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

ORIENTATIONS = ("ras", "lps", "oblique")
# The phantom's oblique storage: a tilted axial acquisition, as an MR planned on the prostate is.
OBLIQUE_DEGREES = (12.0, -6.0, 10.0)


def _centred(affine: np.ndarray, shape) -> np.ndarray:
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape, dtype=np.float64) - 1) / 2)
    return affine


def phantom_affine(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    """RAS affine with diagonal ``spacing`` whose grid centre is the world origin."""
    return _centred(np.diag([*map(float, spacing), 1.0]), shape)


def axial_affine(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    """RAS affine of a conventional axial DICOM grid (columns to the patient's left, rows to the
    posterior, slices to the head: LPS storage), centred on the world origin."""
    return _centred(np.diag([-float(spacing[0]), -float(spacing[1]), float(spacing[2]), 1.0]), shape)


def oblique_affine(shape: tuple[int, int, int], spacing: tuple[float, float, float],
                   degrees: tuple[float, float, float] = (14.0, -9.0, 23.0)) -> np.ndarray:
    """:func:`axial_affine` rotated about the grid centre by the x-y-z Euler angles ``degrees``."""
    affine = axial_affine(shape, spacing)
    rotation = Rotation.from_euler("xyz", degrees, degrees=True).as_matrix()
    affine[:3, :3] = rotation @ affine[:3, :3]
    return _centred(affine, shape)


def orientation_affine(orientation: str, shape, spacing) -> np.ndarray:
    """The affine of storage ``orientation`` (one of :data:`ORIENTATIONS`)."""
    if orientation == "ras":
        return phantom_affine(shape, spacing)
    if orientation == "lps":
        return axial_affine(shape, spacing)
    if orientation == "oblique":
        return oblique_affine(shape, spacing, OBLIQUE_DEGREES)
    raise ValueError(f"orientation must be one of {', '.join(ORIENTATIONS)}, got {orientation!r}")


def world_coords(affine: np.ndarray, index_axes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World RAS x, y, z (mm, float32) of the voxel indices ``index_axes`` (three 1-D arrays, fractional
    allowed) of a grid with ``affine``.

    For an axis-aligned grid each coordinate stays a 1-D array broadcast along its own axis (cheap);
    an oblique grid gives full 3-D arrays.
    """
    index = [np.asarray(a, np.float64).reshape([-1 if j == i else 1 for j in range(3)])
             for i, a in enumerate(index_axes)]
    coords = []
    for row in range(3):
        total = np.float64(affine[row, 3])
        for col in range(3):
            if affine[row, col] != 0.0:
                total = total + affine[row, col] * index[col]
        coords.append(np.asarray(total, np.float32))
    return tuple(coords)
