"""The axial grid covering an oblique one and the resampling onto it (:mod:`radmtl.data.axial`)."""

from __future__ import annotations

import numpy as np
import pytest

from radmtl.data.axial import axial_grid, is_axis_aligned, resample_onto


def _rotated(degrees: float) -> np.ndarray:
    c, s = np.cos(np.deg2rad(degrees)), np.sin(np.deg2rad(degrees))
    affine = np.eye(4)
    affine[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([2.0, 3.0, 4.0])
    affine[:3, 3] = [10.0, -5.0, 3.0]
    return affine


def test_axis_aligned_means_a_signed_permutation_of_the_world_axes():
    assert is_axis_aligned(np.diag([2.0, 3.0, 4.0, 1.0]))
    permuted = np.zeros((4, 4))
    permuted[0, 1], permuted[1, 2], permuted[2, 0], permuted[3, 3] = -2.0, 3.0, 4.0, 1.0  # LPS-like, reordered
    assert is_axis_aligned(permuted)
    assert not is_axis_aligned(_rotated(10.0))
    assert is_axis_aligned(_rotated(1e-7))  # header round-off is not obliquity


def test_resampling_onto_the_covering_axial_grid_keeps_a_linear_field_and_puts_outside_values_outside():
    affine, shape = _rotated(15.0), (12, 10, 6)
    axial, axial_shape = axial_grid(affine, shape)
    assert is_axis_aligned(axial)
    # A field linear in world coordinates is reproduced exactly by trilinear interpolation inside the grid.
    index = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1).astype(float)
    world = index @ affine[:3, :3].T + affine[:3, 3]
    field = world @ np.array([0.5, -1.5, 2.0]) + 7.0
    out = resample_onto(field, affine, axial, axial_shape, order=1, outside=-1000.0)
    axial_index = np.stack(np.meshgrid(*(np.arange(n) for n in axial_shape), indexing="ij"), axis=-1).astype(float)
    axial_world = axial_index @ axial[:3, :3].T + axial[:3, 3]
    expected = axial_world @ np.array([0.5, -1.5, 2.0]) + 7.0
    source = (axial_world - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T  # each axial voxel in oblique indices
    inside = np.all((source >= 0) & (source <= np.array(shape) - 1), axis=-1)
    assert inside.sum() > 0.3 * inside.size
    np.testing.assert_allclose(out[inside], expected[inside], atol=1e-6)
    far = np.any((source < -1) | (source > np.array(shape)), axis=-1)
    assert far.any() and np.all(out[far] == -1000.0)
    # Nearest neighbour keeps label values and dtype.
    labels = (index[..., 0] > 5).astype(np.uint8) * 3
    moved = resample_onto(labels, affine, axial, axial_shape, order=0, outside=0)
    assert moved.dtype == np.uint8 and set(np.unique(moved)) == {0, 3}


def test_an_axis_aligned_grid_covers_itself_voxel_for_voxel_in_scanner_order():
    affine = np.diag([2.0, 3.0, 4.0, 1.0])  # RAS: x to the right, y anterior
    axial, shape = axial_grid(affine, (5, 6, 7))
    assert shape == (5, 6, 7)
    # The axial grid runs as DICOM's rows and columns do (x to the patient's left, y posterior): the same voxels,
    # x and y reversed, no interpolation.
    data = np.random.default_rng(0).random((5, 6, 7))
    np.testing.assert_allclose(resample_onto(data, affine, axial, shape, 1, 0.0), data[::-1, ::-1], atol=1e-12)


def test_the_half_voxel_rim_inside_the_source_voxels_keeps_its_values_and_beyond_is_outside():
    # A 4 × 1 × 1 source of 100s, 1 mm voxels spanning x ∈ [−0.5, 3.5] mm; target centres at x = −0.4, −0.6,
    # 3.4 and 3.6 mm: the first and third lie in the edge voxels' outer halves, the others beyond the faces.
    source = np.full((4, 1, 1), 100.0)
    target = np.eye(4)
    target[0, 0] = 0.2
    target[0, 3] = -0.6
    values = resample_onto(source, np.eye(4), target, (22, 1, 1), order=1, outside=-1000.0)[:, 0, 0]
    x = -0.6 + 0.2 * np.arange(22)  # −0.6, −0.4, … 3.6
    assert np.all(values[(x > -0.5) & (x < 3.5)] == 100.0)
    assert values[0] == -1000.0 and values[-1] == -1000.0
    labels = resample_onto(source.astype(np.uint8), np.eye(4), target, (22, 1, 1), order=0, outside=0)[:, 0, 0]
    assert labels[1] == 100 and labels[-2] == 100 and labels[0] == 0
