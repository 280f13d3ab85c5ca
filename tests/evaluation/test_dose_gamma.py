"""γ over pymedphys: identical doses pass everywhere; a shifted linear ramp gives the analytic γ."""

from __future__ import annotations

import math

import numpy as np
import pytest

from radmtl.evaluation.dose.errors import DoseError
from radmtl.evaluation.dose.gamma import gamma_index, gamma_pass_rate, spacing_from_affine


def _ramp(shift_mm: float = 0.0) -> np.ndarray:
    x = np.arange(40, dtype=np.float64)[:, None, None] - shift_mm  # 1 mm voxels along x
    return np.broadcast_to(50.0 + 1.0 * x, (40, 3, 3)).copy()  # 1 Gy/mm, 50 … 89 Gy


def test_identical_doses_pass_everywhere_and_the_cutoff_leaves_low_doses_out(pymedphys):
    dose = _ramp()
    dose[:5] = 5.0  # below 10 % of the 89 Gy maximum: not evaluated
    values = gamma_index(dose, dose, (1.0, 1.0, 1.0), 2.0, 2.0)
    assert np.all(np.isnan(values[:5])) and np.all(values[5:] == 0.0)
    assert gamma_pass_rate(dose, dose, (1.0, 1.0, 1.0)) == {"gamma_2_2_pass_percent": 100.0,
                                                            "gamma_3_3_pass_percent": 100.0}


def test_a_shifted_ramp_gives_the_analytic_gamma(pymedphys):
    # Evaluated dose = reference shifted by s = 3 mm along a gradient g = 1 Gy/mm. For global criteria
    # (ΔD = p % of the 89 Gy maximum, Δd), minimising over the search distance gives
    # γ = s·g / √(ΔD² + g²·Δd²): 1.12 at 2 %/2 mm (fail), 0.75 at 3 %/3 mm (pass).
    reference, evaluated = _ramp(), _ramp(3.0)
    for percent, distance in ((2.0, 2.0), (3.0, 3.0)):
        expected = 3.0 / math.sqrt((percent / 100 * 89.0) ** 2 + distance**2)
        values = gamma_index(reference, evaluated, (1.0, 1.0, 1.0), percent, distance)
        # Away from the far end, where the search would need points beyond the grid.
        np.testing.assert_allclose(values[2:36], expected, atol=0.03)
    rates = gamma_pass_rate(reference, evaluated, (1.0, 1.0, 1.0))
    assert rates["gamma_2_2_pass_percent"] == 0.0
    assert 90.0 <= rates["gamma_3_3_pass_percent"] < 100.0  # only the last voxels, searched short, fail


def test_spacing_and_bad_inputs():
    affine = np.diag([-2.0, 3.0, 4.0, 1.0])
    assert spacing_from_affine(affine) == (2.0, 3.0, 4.0)
    sheared = affine.copy()
    sheared[0, 1] = 1.0
    with pytest.raises(DoseError, match="orthogonal"):
        spacing_from_affine(sheared)
    with pytest.raises(DoseError, match="one grid"):
        gamma_index(np.ones((3, 3, 3)), np.ones((3, 3, 2)), (1, 1, 1), 2, 2)
    with pytest.raises(DoseError, match="zero everywhere"):
        gamma_index(np.zeros((3, 3, 3)), np.zeros((3, 3, 3)), (1, 1, 1), 2, 2)
