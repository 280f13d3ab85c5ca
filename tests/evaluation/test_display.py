from __future__ import annotations

import numpy as np
import pytest

from radmtl.evaluation.display import VIEW_GEOMETRY, display_point, display_slice, foreground_centre, slice_extent


def test_slices_follow_radiological_convention():
    volume = np.zeros((4, 5, 6))
    volume[3, 0, 0] = 1  # most right (x grows towards R), posterior, inferior
    axial = display_slice(volume, "axial", 0)
    assert axial.shape == (5, 4)  # rows = y, cols = x
    assert axial[-1, 0] == 1  # right on the viewer's left, posterior at the bottom
    coronal = display_slice(volume, "coronal", 0)
    assert coronal.shape == (6, 4) and coronal[-1, 0] == 1  # inferior at the bottom
    sagittal = display_slice(volume, "sagittal", 3)
    assert sagittal.shape == (6, 5) and sagittal[-1, -1] == 1  # anterior left, so posterior right


def test_foreground_centre_is_the_centroid_or_the_middle():
    mask = np.zeros((10, 8, 6), dtype=bool)
    mask[2:5, 1:4, 4] = True  # centroid (3, 2, 4)
    assert foreground_centre(mask.shape, None, np.zeros(mask.shape), mask) == (3, 2, 4)
    assert foreground_centre(mask.shape, np.zeros(mask.shape)) == (5, 4, 3)


@pytest.mark.parametrize("view", ["axial", "coronal", "sagittal"])
def test_display_point_lands_on_the_voxel_display_slice_shows(view):
    shape, spacing, voxel = (7, 5, 4), (1.5, 2.0, 3.0), (5, 1, 2)
    volume = np.zeros(shape)
    volume[voxel] = 1
    axis = VIEW_GEOMETRY[view][0]
    image = display_slice(volume, view, voxel[axis])
    (row, col), = np.argwhere(image == 1)
    left, right, bottom, top = slice_extent(view, shape, spacing)
    x_mm, y_mm = display_point(view, voxel, shape, spacing)
    # the voxel's centre in the extent's mm, rows counted from the top (origin="upper")
    assert x_mm == pytest.approx((col + 0.5) * (right - left) / image.shape[1])
    assert y_mm == pytest.approx((row + 0.5) * (bottom - top) / image.shape[0])
