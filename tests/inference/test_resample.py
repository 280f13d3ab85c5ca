"""radmtl.inference.resample: slab-wise resampling onto an oblique, anisotropic grid is exact.

Large inputs are resampled in slabs of output slices; each slab's affine is the target affine
shifted by the slab's first slice *in voxels*. Small test volumes never reach the default slab
size, so here ``slab_voxels`` is set small enough that every slab is two slices (the last one),
and the result is compared with one whole-volume call and with the analytic value of a field
linear in world millimetres (which trilinear interpolation reproduces exactly).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from radmtl.inference.resample import argmax_labels_on_grid, resample_to_grid

SRC_SHAPE = (24, 24, 24)
SRC_SPACING = 2.5
DST_SHAPE = (9, 8, 7)  # 7 slices: slabs of 2, 2, 2, 1
DST_SPACING = (1.5, 2.0, 3.0)
GRADIENT = np.array([1.0, -2.0, 0.7])  # HU per mm along world x, y, z


def _src_affine() -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = np.diag([SRC_SPACING] * 3)
    affine[:3, 3] = [-30.0, -30.0, -30.0]  # field of view -30 .. 27.5 mm on each axis
    return affine


def _dst_affine() -> np.ndarray:
    affine = np.eye(4)
    rotation = Rotation.from_euler("xyz", [17, -25, 33], degrees=True).as_matrix()
    affine[:3, :3] = rotation @ np.diag(DST_SPACING)
    # centre the target grid in the source field of view (its corners stay well inside)
    centre_ijk = (np.array(DST_SHAPE) - 1) / 2
    affine[:3, 3] = np.array([-1.25, -1.25, -1.25]) - affine[:3, :3] @ centre_ijk
    return affine


def _world(affine: np.ndarray, shape) -> np.ndarray:
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def _field(xyz: np.ndarray) -> np.ndarray:
    return xyz @ GRADIENT + 50.0


def _source_image() -> torch.Tensor:
    field = _field(_world(_src_affine(), SRC_SHAPE))
    return torch.as_tensor(np.stack([field, -0.5 * field]), dtype=torch.float32)  # two channels


def test_target_grid_lies_inside_the_source_field_of_view():
    corners = _world(_dst_affine(), DST_SHAPE).reshape(-1, 3)
    lo, hi = -30.0 + SRC_SPACING, -30.0 + SRC_SPACING * (SRC_SHAPE[0] - 2)
    assert corners.min() > lo and corners.max() < hi  # no border padding anywhere


@pytest.mark.parametrize("slices_per_slab", [1, 2, 3])
def test_slabs_match_one_call_and_the_analytic_field(slices_per_slab):
    image, src, dst = _source_image(), _src_affine(), _dst_affine()
    whole = resample_to_grid(image, src, dst, DST_SHAPE)
    slabs = resample_to_grid(image, src, dst, DST_SHAPE,
                             slab_voxels=DST_SHAPE[0] * DST_SHAPE[1] * slices_per_slab)
    assert slabs.shape == whole.shape == (2, *DST_SHAPE) and slabs.dtype == np.float32
    expected = _field(_world(dst, DST_SHAPE))
    np.testing.assert_allclose(whole[0], expected, atol=1e-4)  # |field| < 80: float32 rounding
    np.testing.assert_allclose(whole[1], -0.5 * expected, atol=1e-4)
    np.testing.assert_allclose(slabs, whole, atol=1e-4)


def test_slabs_in_nearest_mode_match_one_call():
    rng = np.random.default_rng(0)
    labels = torch.as_tensor(rng.integers(0, 5, (1, *SRC_SHAPE)), dtype=torch.float32)
    whole = resample_to_grid(labels, _src_affine(), _dst_affine(), DST_SHAPE, mode="nearest")
    slabs = resample_to_grid(labels, _src_affine(), _dst_affine(), DST_SHAPE, mode="nearest",
                             slab_voxels=DST_SHAPE[0] * DST_SHAPE[1] * 2)
    np.testing.assert_array_equal(slabs, whole)
    # nearest neighbour: each target voxel takes the label of the source voxel its centre falls in
    ijk = np.rint((_world(_dst_affine(), DST_SHAPE) - _src_affine()[:3, 3]) / SRC_SPACING).astype(int)
    np.testing.assert_array_equal(whole[0], labels[0].numpy()[ijk[..., 0], ijk[..., 1], ijk[..., 2]])


def test_argmax_labels_follow_the_interpolated_probabilities():
    # Two classes split by the plane where the world-linear field crosses 50: the label is the side.
    field = _field(_world(_src_affine(), SRC_SHAPE))
    p1 = 1.0 / (1.0 + np.exp(-(field - 50.0) / 20.0))
    probs = torch.as_tensor(np.stack([1.0 - p1, p1]), dtype=torch.float32)
    labels, kept = argmax_labels_on_grid(probs, _src_affine(), _dst_affine(), DST_SHAPE, keep_probs=True)
    expected = _field(_world(_dst_affine(), DST_SHAPE))
    clear = np.abs(expected - 50.0) > 2.0  # the logistic is not linear: skip the boundary itself
    np.testing.assert_array_equal(labels[clear], (expected[clear] > 50.0).astype(np.int64))
    np.testing.assert_allclose(kept.sum(0), 1.0, atol=1e-5)
