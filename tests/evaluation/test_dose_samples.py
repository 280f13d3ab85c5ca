"""Dose bands of the MC-dropout sCT samples (:mod:`radmtl.evaluation.dose.sample_dose`) on hand-made doses,
no dose engine: coverage fractions, DVH band SDs and flags that can be counted by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from radmtl.evaluation.dose.dvh import dvh_metrics
from radmtl.evaluation.dose.sample_dose import band_multiplier, dose_sd, dvh_band, sample_dose_metrics, sample_doses

RX = 60.0


def _doses():
    """A 10 × 1 × 1 'patient': CT dose 60 Gy in voxels 0–7 (the target is 0–3), 3 Gy (below 10 %) in 8–9."""
    ct = np.array([60.0] * 8 + [3.0, 3.0]).reshape(10, 1, 1)
    target = np.zeros((10, 1, 1), bool)
    target[:4] = True
    return ct, {"prostate": target}


def test_voxel_coverage_counts_errors_within_196_sample_sds_in_each_dose_region():
    ct, structures = _doses()
    sct = ct.copy()
    sct[:4] += 1.0  # target voxels 1 Gy hot
    sct[4:8] += 6.0  # other high-dose voxels 6 Gy hot
    # Three samples of SD exactly 1 Gy per voxel (ddof 1): sCT − 1, sCT, sCT + 1; band ± 4.97 Gy (K = 3).
    doses = np.stack([sct - 1.0, sct, sct + 1.0])
    assert dose_sd(doses)[:, 0, 0] == pytest.approx(np.ones(10))
    row = sample_dose_metrics(ct, sct, doses, structures, "prostate", RX)
    assert row["samples_n"] == 3.0
    # > 10 % and > 90 % of 60 Gy are voxels 0–7: errors 1 (≤ 4.97) in 0–3, 6 (> 4.97) in 4–7.
    assert row["samples_dose_covered_gt10pct"] == pytest.approx(0.5)
    assert row["samples_dose_covered_gt90pct"] == pytest.approx(0.5)
    assert row["samples_dose_sd_median_gt90pct_gy"] == pytest.approx(1.0)
    # DVH of the target: every number is 1 Gy hot on the sCT and 1 Gy apart between samples → covered.
    assert row["dvh_sd_prostate_d95_gy"] == pytest.approx(1.0)
    assert row["dvh_covered_prostate_d95_gy"] == 1.0 and row["dvh_covered_fraction"] == 1.0


def test_a_dvh_number_outside_its_band_is_not_covered_and_counts_in_the_fraction():
    ct, structures = _doses()
    sct = ct.copy()
    sct[0] -= 20.0  # the target's coldest voxel: D98 and D95 drop by 20 Gy, Dmean by 5, D50 and D2 not
    doses = np.stack([sct - 0.5, sct, sct + 0.5])  # SD 0.5 Gy: a band of ± 2.48 Gy (K = 3)
    row = sample_dose_metrics(ct, sct, doses, structures, "prostate", RX)
    flags = {k: v for k, v in row.items() if k.startswith("dvh_covered_prostate")}
    assert flags == {"dvh_covered_prostate_dmean_gy": 0.0, "dvh_covered_prostate_d98_gy": 0.0,
                     "dvh_covered_prostate_d95_gy": 0.0, "dvh_covered_prostate_d50_gy": 1.0,
                     "dvh_covered_prostate_d2_gy": 1.0}
    assert row["dvh_covered_fraction"] == pytest.approx(2 / 5)
    # The band SD of a DVH number is the SD of that number over the sample doses.
    per_sample = [dvh_metrics(d, structures, "prostate")["prostate_d98_gy"] for d in doses]
    assert row["dvh_sd_prostate_d98_gy"] == pytest.approx(float(np.std(per_sample, ddof=1)))


def test_one_sample_is_refused_and_an_empty_region_gives_nan():
    ct, structures = _doses()
    with pytest.raises(ValueError, match="at least 2 samples"):
        sample_dose_metrics(ct, ct, ct[None], structures, "prostate", RX)
    cold = np.full_like(ct, 1.0)  # nothing above 10 % of 60 Gy
    row = sample_dose_metrics(cold, cold, np.stack([cold, cold]), structures, "prostate", RX)
    assert math.isnan(row["samples_dose_covered_gt10pct"]) and math.isnan(row["samples_dose_sd_median_gt90pct_gy"])


def test_sample_doses_recompute_each_sample_in_order_and_the_dvh_band_spans_them():
    samples = np.stack([np.full((4, 1, 1), float(k)) for k in range(3)], axis=-1)  # (X, Y, Z, K)
    seen = []

    def recompute(hu):
        seen.append(float(hu.mean()))
        return hu * 2.0

    doses = sample_doses(recompute, samples)
    assert seen == [0.0, 1.0, 2.0] and doses.shape == (3, 4, 1, 1) and doses.dtype == np.float32
    assert doses[:, 0, 0, 0] == pytest.approx([0.0, 2.0, 4.0])
    mask = np.ones((4, 1, 1), bool)
    low, high = dvh_band(doses, mask, np.array([1.0, 3.0, 5.0]))
    # V(1 Gy): sample 0 has nothing ≥ 1, samples 1 and 2 everything; V(3): only sample 2; V(5): none.
    assert low.tolist() == [0.0, 0.0, 0.0] and high.tolist() == [1.0, 1.0, 0.0]


def test_the_band_multiplier_is_the_95_percent_prediction_interval_of_k_samples():
    # Student's t(0.975, K − 1) · √(1 + 1/K): 4.303 · 1.155 at K = 3, 2.365 · 1.061 at K = 8; → 1.96 as K grows.
    assert band_multiplier(3) == pytest.approx(4.968, abs=1e-3)
    assert band_multiplier(8) == pytest.approx(2.508, abs=1e-3)
    assert band_multiplier(10_000) == pytest.approx(1.96, abs=1e-3)
    # What it promises, by simulation: a new draw falls inside mean ± k·SD of K = 4 draws 95 % of the time.
    rng = np.random.default_rng(0)
    draws = rng.normal(size=(200_000, 5))
    sample, new = draws[:, :4], draws[:, 4]
    inside = np.abs(new - sample.mean(1)) <= band_multiplier(4) * sample.std(1, ddof=1)
    assert inside.mean() == pytest.approx(0.95, abs=0.003)
    with pytest.raises(ValueError, match="at least 2 samples"):
        band_multiplier(1)
