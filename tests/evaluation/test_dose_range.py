"""The proton range check on the lateral rays, against hand values (no pyRadPlan needed).

A water box (0 HU) in air, 2 mm voxels, with a bone slab (500 HU, 6 mm) on the patient's RIGHT only (RAS +x,
:mod:`radmtl.data.laterality`) and a 3-voxel target cube in the middle. With the linear table SPR = 1 + HU/1000
both rays cross 18 mm of body up to the target's distal edge; the one from the right (gantry 270°) also the
slab, so its WEPL is (SPR − 1)·t = 3 mm longer. Swapping left and right would swap the two WEPLs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from radmtl.evaluation.dose.hlut import Hlut
from radmtl.evaluation.dose.range_check import (BEAMS, beam_ray, format_range, range_case, range_json,
                                                range_mlflow_metrics, summarise_range)

LINEAR = Hlut("linear", np.array([-1000.0, 1000.0]), np.array([0.0, 2.0]), np.array([0.0, 2.0]))  # 1/1000 per HU
SHAPE = (20, 9, 9)
SPACING = 2.0
SLAB_HU, SLAB_MM = 500.0, 6.0


def _phantom(flip_x: bool = False):
    """CT, body, target and affine; ``flip_x`` stores the same patient LAS (index x grows to the left)."""
    ct = np.full(SHAPE, -1000.0)
    ct[2:17] = 0.0  # body: x voxels 2 … 16
    ct[12:15] = SLAB_HU  # 3 voxels at high RAS x: the patient's right
    target = np.zeros(SHAPE, bool)
    target[8:11, 3:6, 3:6] = True  # centroid at voxel (9, 4, 4)
    affine = np.diag([SPACING, SPACING, SPACING, 1.0])
    if flip_x:
        ct, target = ct[::-1].copy(), target[::-1].copy()
        affine[0, 0] = -SPACING
        affine[0, 3] = SPACING * (SHAPE[0] - 1)  # the same world points as before
    return ct, ct > -400, target, affine


@pytest.mark.parametrize("flip_x", [False, True])
def test_rays_enter_on_the_correct_side_and_see_the_slab_only_from_the_right(flip_x):
    ct, body, target, affine = _phantom(flip_x)
    # Gantry 270° enters from the patient's right (RAS +x) and travels towards −x; 90° the reverse.
    entry, distal = beam_ray(body, target, affine, BEAMS["gantry_270"][1])
    assert entry == pytest.approx([16.5 * SPACING, 4 * SPACING, 4 * SPACING])
    assert distal == pytest.approx([7.5 * SPACING, 4 * SPACING, 4 * SPACING])
    entry, distal = beam_ray(body, target, affine, BEAMS["gantry_90"][1])
    assert entry == pytest.approx([1.5 * SPACING, 4 * SPACING, 4 * SPACING])
    assert distal == pytest.approx([10.5 * SPACING, 4 * SPACING, 4 * SPACING])
    rows = range_case(ct, ct, affine, body, target, hlut=LINEAR)
    assert rows["gantry_90"]["wepl_ct_mm"] == pytest.approx(18.0)
    assert rows["gantry_270"]["wepl_ct_mm"] == pytest.approx(18.0 + (SLAB_HU / 1000.0) * SLAB_MM)
    assert rows["gantry_270"]["geometric_mm"] == pytest.approx(18.0)
    assert all(row["wepl_error_mm"] == 0.0 for row in rows.values())
    assert all(math.isnan(row["sigma_wepl_correlated_mm"]) and math.isnan(row["covered_independent"])
               for row in rows.values())  # no σ map: no σ part


def test_one_ray_per_proton_field_of_the_plan_anterior_at_gantry_0():
    from radmtl.evaluation.dose.range_check import beams_for

    assert beams_for((270.0, 90.0)) == BEAMS
    beams = beams_for((0.0, 180.0))
    assert beams == {"gantry_0": (0.0, (0.0, -1.0, 0.0)), "gantry_180": (180.0, (0.0, 1.0, 0.0))}
    ct, body, target, affine = _phantom()
    rows = range_case(ct, ct, affine, body, target, hlut=LINEAR, beams=beams)
    # The water fills all 9 y voxels. From anterior (RAS +y) the ray enters at y index 8.5 and ends at the target's
    # posterior face, y index 2.5: 6 voxels of 2 mm. From posterior: −0.5 → 5.5, also 12 mm.
    assert rows["gantry_0"]["wepl_ct_mm"] == pytest.approx(12.0)
    assert rows["gantry_180"]["wepl_ct_mm"] == pytest.approx(12.0)

def test_raised_slab_hu_gives_the_analytic_wepl_error_and_the_sigma_bounds_and_coverage_by_hand():
    ct, body, target, affine = _phantom()
    sct = ct.copy()
    sct[ct == SLAB_HU] *= 1.10  # +10 % HU in the slab: ΔWEPL = slope · ΔHU · t = 1/1000 · 50 · 6 = 0.3 mm
    sigma = np.full(SHAPE, 20.0)
    rows = range_case(ct, sct, affine, body, target, sigma_hu=sigma, hlut=LINEAR)
    right, left = rows["gantry_270"], rows["gantry_90"]
    assert right["wepl_error_mm"] == pytest.approx(0.3)
    assert right["wepl_error_percent"] == pytest.approx(100 * 0.3 / 21.0)
    assert left["wepl_error_mm"] == pytest.approx(0.0, abs=1e-12)
    for row in rows.values():
        # Uniform σ = 20 HU, slope 1/1000, 9 voxels of 2 mm: Σ σℓ|s| = 0.36 mm, √Σ(σℓs)² = 0.12 mm.
        assert row["sigma_wepl_correlated_mm"] == pytest.approx(0.36)
        assert row["sigma_wepl_independent_mm"] == pytest.approx(0.12)
        assert row["sigma_wepl_correlated_percent"] == pytest.approx(100 * 0.36 / row["wepl_sct_mm"])
    # 0.3 ≤ 1.96 · 0.36 = 0.71 but > 1.96 · 0.12 = 0.24; an error of 0 is covered under both.
    assert (right["covered_correlated"], right["covered_independent"]) == (1.0, 0.0)
    assert (left["covered_correlated"], left["covered_independent"]) == (1.0, 1.0)


def test_sample_wepl_sd_is_the_spread_of_the_slab_over_the_samples_and_only_from_the_right():
    ct, body, target, affine = _phantom()
    ct_hot = ct.copy()
    ct_hot[ct == SLAB_HU] = 560.0  # the CT's slab is 60 HU denser than the sCT's: error −0.36 mm from the right
    # Three sCT samples whose slab is 400, 500, 600 HU: WEPLs through 6 mm of it differ by 0.6 mm steps,
    # SD (ddof 1) = 0.6 mm; the left ray stops before the slab, so its samples agree (SD 0).
    samples = np.stack([np.where(ct == SLAB_HU, hu, ct) for hu in (400.0, 500.0, 600.0)], axis=-1)
    rows = range_case(ct_hot, ct, affine, body, target, hlut=LINEAR, samples_hu=samples)
    right, left = rows["gantry_270"], rows["gantry_90"]
    assert right["wepl_error_mm"] == pytest.approx(-0.36)
    assert right["sigma_wepl_samples_mm"] == pytest.approx(0.6)
    assert right["sigma_wepl_samples_percent"] == pytest.approx(100 * 0.6 / 21.0)
    assert left["sigma_wepl_samples_mm"] == pytest.approx(0.0, abs=1e-12)
    assert right["covered_samples"] == 1.0  # 0.36 ≤ 1.96 · 0.6
    assert left["covered_samples"] == 1.0  # an error of 0 with SD 0
    narrow = np.stack([np.where(ct == SLAB_HU, hu, ct) for hu in (490.0, 500.0, 510.0)], axis=-1)
    right = range_case(ct_hot, ct, affine, body, target, hlut=LINEAR, samples_hu=narrow)["gantry_270"]
    assert right["sigma_wepl_samples_mm"] == pytest.approx(0.06)
    assert right["covered_samples"] == 0.0  # 0.36 > 1.96 · 0.06
    assert "sigma_wepl_samples_mm" not in range_case(ct, ct, affine, body, target, hlut=LINEAR)["gantry_270"]


def test_summary_json_mlflow_and_table_give_the_coverage_fraction_over_cases():
    ct, body, target, affine = _phantom()
    sct = ct.copy()
    sct[ct == SLAB_HU] *= 1.10
    sigma = np.full(SHAPE, 20.0)
    rows = {"a": range_case(ct, sct, affine, body, target, sigma, LINEAR),
            "b": range_case(ct, ct, affine, body, target, sigma, LINEAR)}
    summary = summarise_range(rows)
    assert summary["gantry_270"]["covered_independent"][0] == 0.5  # a not covered, b covered
    assert summary["gantry_270"]["covered_correlated"][0] == 1.0
    assert summary["gantry_270"]["wepl_error_mm"][0] == pytest.approx(0.15)
    document = range_json(rows, {"a": "sct_sigma_total", "b": "sct_sigma_total"}, LINEAR.name)
    beam = document["beams"]["gantry_270"]
    assert beam["gantry_deg"] == 270.0 and beam["direction_ras"] == [-1.0, 0.0, 0.0]
    assert set(beam["cases"]) == {"a", "b"} and beam["summary"]["covered_independent"]["mean"] == 0.5
    metrics = range_mlflow_metrics(rows)
    assert metrics["dose_range_gantry_270_covered_independent_mean"] == 0.5
    assert metrics["dose_range_gantry_90_wepl_ct_mm_mean"] == pytest.approx(18.0)
    text = format_range(rows, LINEAR.name)
    assert "gantry_270" in text and "covered_independent" in text and "wepl_error_mm" in text
