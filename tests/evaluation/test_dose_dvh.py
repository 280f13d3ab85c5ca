"""DVH metrics against hand computation on tiny arrays (the nearest-rank Dx convention of dvh.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from radmtl.evaluation.dose.dvh import cumulative_dvh, dose_at_volume, dvh_metrics
from radmtl.evaluation.dose.errors import DoseError


def _ten_voxels():
    dose = np.zeros((4, 4, 1))
    mask = np.zeros_like(dose, bool)
    dose.flat[:10] = np.arange(1.0, 11.0)[::-1]  # 10 … 1 Gy in the structure, 0 Gy outside
    mask.flat[:10] = True
    dose.flat[10:] = 99.0  # outside the structure: must not count
    return dose, mask


def test_dx_is_the_minimum_dose_of_the_hottest_x_percent_by_nearest_rank():
    dose, mask = _ten_voxels()
    # Hottest 2 % of 10 voxels: rank ceil(0.2) = 1 → 10 Gy; 50 %: rank 5 → 6 Gy; 95 %/98 %: rank 10 → 1 Gy;
    # 20 %: rank 2 → 9 Gy; 100 %: the minimum.
    assert dose_at_volume(dose, mask, [2, 50, 95, 98, 20, 100]) == [10.0, 6.0, 1.0, 1.0, 9.0, 1.0]
    assert dose_at_volume(dose, mask, 30.0) == 8.0


def test_cumulative_dvh_agrees_with_dx():
    dose, mask = _ten_voxels()
    np.testing.assert_allclose(cumulative_dvh(dose, mask, [0.0, 1.0, 5.5, 6.0, 10.0, 10.5]),
                               [1.0, 1.0, 0.5, 0.5, 0.1, 0.0])


def test_dvh_metrics_of_target_and_oar_and_empty_structures():
    dose, mask = _ten_voxels()
    oar = np.zeros_like(mask)
    oar.flat[[0, 1, 2]] = True  # 10, 9, 8 Gy
    out = dvh_metrics(dose, {"prostate": mask, "rectum": oar, "bladder": np.zeros_like(mask)}, target="prostate")
    assert out["prostate_d98_gy"] == 1.0 and out["prostate_d95_gy"] == 1.0
    assert out["prostate_d50_gy"] == 6.0 and out["prostate_d2_gy"] == 10.0
    assert out["prostate_dmean_gy"] == pytest.approx(5.5)
    assert out["rectum_dmean_gy"] == pytest.approx(9.0) and out["rectum_d2_gy"] == 10.0
    assert "rectum_d95_gy" not in out
    assert math.isnan(out["bladder_dmean_gy"]) and math.isnan(out["bladder_d2_gy"])


def test_bad_levels_and_grids_are_refused():
    dose, mask = _ten_voxels()
    with pytest.raises(DoseError, match="levels"):
        dose_at_volume(dose, mask, 0.0)
    with pytest.raises(DoseError, match="one grid"):
        dose_at_volume(dose, mask[:2], 50.0)
