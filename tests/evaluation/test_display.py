from __future__ import annotations

import numpy as np

from radmtl.evaluation.display import display_slice


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
