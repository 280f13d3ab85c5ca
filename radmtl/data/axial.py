"""The axial grid that covers an oblique one, and arrays resampled onto it.

Shared by ``radmtl infer --dicom-grid axial`` (:mod:`radmtl.inference.dicom_grid`: a planning system will not
calculate dose on an oblique CT) and ``radmtl evaluate --dose`` (the dose engine plans on axis-aligned grids
only): each axis of the axial grid takes the spacing of the oblique axis nearest to it, and its box holds
every voxel of the oblique grid.
"""

from __future__ import annotations

import itertools

import numpy as np

from radmtl.data.io import RAS_FROM_LPS

# Floating-point slack when counting how many voxels cover an extent (mm / mm).
_COVER_TOL = 1e-6
# Direction cosines within this of 0 or ±1 count as axis-aligned (header round-trips lose ~1e-6).
_ALIGNED_TOL = 1e-5


def is_axis_aligned(affine: np.ndarray) -> bool:
    """Whether each voxel axis runs along one world axis (any order and sign): no resampling needed to plan."""
    linear = np.asarray(affine, np.float64)[:3, :3]
    cosines = np.abs(linear / np.linalg.norm(linear, axis=0))
    return bool(np.all((cosines < _ALIGNED_TOL) | (cosines > 1 - _ALIGNED_TOL))
                and sorted(np.argmax(cosines, axis=0)) == [0, 1, 2])


def axial_grid(mr_affine: np.ndarray, mr_shape: tuple[int, int, int]) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The axial grid covering the MR: (RAS affine, shape).

    Rows run along +x (LPS), columns along +y, slices along +z. Its box of voxels (centres ± half a
    voxel) holds the box of the MR's voxels, centred on it, with the fewest voxels that do.
    """
    lps = RAS_FROM_LPS @ np.asarray(mr_affine, dtype=np.float64)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    cosines = np.abs(lps[:3, :3] / spacing)  # [world axis, MR axis]
    nearest = max(itertools.permutations(range(3)), key=lambda p: sum(cosines[w, p[w]] for w in range(3)))
    step = spacing[list(nearest)]
    corners = np.array(list(itertools.product(*[(-0.5, n - 0.5) for n in mr_shape])), dtype=np.float64)
    world = corners @ lps[:3, :3].T + lps[:3, 3]
    low, high = world.min(axis=0), world.max(axis=0)
    shape = tuple(int(n) for n in np.maximum(1, np.ceil((high - low) / step - _COVER_TOL)))
    axial_lps = np.diag([*step, 1.0])
    axial_lps[:3, 3] = (low + high) / 2 - (np.asarray(shape) - 1) / 2 * step
    return RAS_FROM_LPS @ axial_lps, shape


def inside_field_of_view(mr_affine: np.ndarray, mr_shape: tuple[int, int, int], affine: np.ndarray,
                         shape: tuple[int, int, int]) -> np.ndarray:
    """(X, Y, Z) bool: the voxel centres of (``affine``, ``shape``) that lie inside the MR's voxels."""
    to_mr = np.linalg.solve(np.asarray(mr_affine, dtype=np.float64), np.asarray(affine, dtype=np.float64))
    ii, jj = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    plane = np.stack([ii, jj], axis=-1).astype(np.float64) @ to_mr[:3, :2].T + to_mr[:3, 3]
    limit = np.asarray(mr_shape, dtype=np.float64) - 0.5
    inside = np.empty(shape, dtype=bool)
    for k in range(shape[2]):  # a slice at a time: no (X, Y, Z, 3) coordinate array
        coords = plane + k * to_mr[:3, 2]
        inside[:, :, k] = np.all((coords >= -0.5) & (coords <= limit), axis=-1)
    return inside


def resample_onto(array: np.ndarray, affine: np.ndarray, target_affine: np.ndarray,
                  target_shape: tuple[int, int, int], order: int, outside: float) -> np.ndarray:
    """An (X, Y, Z) array on (``affine``) resampled onto (``target_affine``, ``target_shape``).

    Args:
        order: 1 trilinear (HU, σ, dose), 0 nearest (labels, masks).
        outside: the value of a voxel whose centre lies outside the source grid's voxels (−1000 HU for a CT,
            0 for labels), the box :func:`axial_grid` covers and :func:`inside_field_of_view` tests.

    scipy's ``affine_transform`` maps each target voxel index to its source index through one 4 × 4 matrix,
    which is all an affine-to-affine resampling is. It reads the edge voxels' values out to the voxels' outer
    faces (``mode="nearest"``: the half-voxel rim between the outermost centres and the faces is still inside
    the image), and what lies beyond the faces is ``outside``. Values are read as float64 and returned as
    ``array``'s dtype.
    """
    from scipy import ndimage

    source_from_target = np.linalg.solve(np.asarray(affine, np.float64), np.asarray(target_affine, np.float64))
    shape = tuple(int(n) for n in target_shape)
    out = ndimage.affine_transform(np.asarray(array, np.float64), source_from_target[:3, :3],
                                   offset=source_from_target[:3, 3], output_shape=shape, order=order, mode="nearest")
    out[~inside_field_of_view(affine, np.shape(array), target_affine, shape)] = outside
    return out.astype(np.asarray(array).dtype, copy=False)
