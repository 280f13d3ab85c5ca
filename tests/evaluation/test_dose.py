"""The dose test of issue 28 on tiny data: a water box with a bone slab, planned and recomputed by pyRadPlan.

A fixed plan recomputed on the same CT gives the same dose (MAE 0, γ 100 %); +50 % HU in the slab shortens
the proton range by the analytic WEPL change (within 10 %); and the DVH numbers of a planned dose equal a
hand computation from the dose array. Grid: 120 × 12 × 12 voxels of 1 × 4 × 4 mm (fine along the beam, so
that R80 is read between 1 mm samples), RAS, the beam (gantry 270°) entering from the patient's right.
"""

from __future__ import annotations

import numpy as np
import pytest

from radmtl.evaluation.dose.dvh import dvh_metrics
from radmtl.evaluation.dose.hlut import DEFAULT_HLUT
from radmtl.evaluation.dose.profiles import range_r80_mm
from radmtl.evaluation.dose.wepl import wepl_with_sigma

pytestmark = pytest.mark.slow

SPACING = (1.0, 4.0, 4.0)
SHAPE = (120, 12, 12)
SLAB = slice(95, 110)  # 15 mm of 1000 HU bone, crossed first
BONE_HU = 1000.0
HU_INCREASE = 0.50  # +50 % HU in the slab


def _affine() -> np.ndarray:
    affine = np.diag([*SPACING, 1.0])
    affine[:3, 3] = (-60.0, -22.0, -22.0)
    return affine


@pytest.fixture(scope="module")
def water_box():
    ct_hu = np.full(SHAPE, -1000.0)
    ct_hu[2:118] = 0.0
    ct_hu[SLAB] = BONE_HU
    body = ct_hu > -500
    target = np.zeros(SHAPE, bool)
    target[30:56, 4:8, 4:8] = True  # 26 × 16 × 16 mm, 62–87 mm deep
    return ct_hu, body, target


@pytest.fixture(scope="module")
def proton_plan(pyradplan, water_box):
    from radmtl.evaluation.dose.engine import PlanSettings, plan_on_ct

    ct_hu, body, target = water_box
    settings = PlanSettings(prescription_gy=2.0, proton_gantry_deg=(270.0,), body_objective=None)
    return plan_on_ct(ct_hu, _affine(), {"target": target}, "target", body, "protons", settings)


def _central_depth_dose(dose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Depth from the body's entry plane (x index 117.5) and the dose on the central axis."""
    profile = dose[:, 5:7, 5:7].mean(axis=(1, 2))[::-1]
    x_index = np.arange(SHAPE[0])[::-1]
    return (117.5 - x_index) * SPACING[0], profile


def test_fixed_plan_recomputed_on_the_same_ct_gives_the_same_dose(proton_plan, water_box, pymedphys):
    from radmtl.evaluation.dose.engine import recompute
    from radmtl.evaluation.dose.gamma import gamma_pass_rate

    ct_hu, _, target = water_box
    first, second = recompute(proton_plan, ct_hu), recompute(proton_plan, ct_hu)
    assert first.shape == SHAPE and float(np.abs(first - second).mean()) == 0.0
    # The forward dose is the optimised one (pyRadPlan's influence matrix is float32).
    np.testing.assert_allclose(first, proton_plan.dose_gy, atol=1e-4)
    assert float(first[target].mean()) == pytest.approx(2.0, rel=0.03)
    assert gamma_pass_rate(first, second, SPACING) == {"gamma_2_2_pass_percent": 100.0,
                                                       "gamma_3_3_pass_percent": 100.0}


def test_more_hu_in_the_slab_shortens_the_proton_range_by_the_analytic_wepl_change(proton_plan, water_box):
    from radmtl.evaluation.dose.engine import recompute

    ct_hu, _, _ = water_box
    denser = ct_hu.copy()
    denser[SLAB] *= 1.0 + HU_INCREASE
    r80 = [range_r80_mm(*_central_depth_dose(recompute(proton_plan, ct))) for ct in (ct_hu, denser)]
    start, end = (60.0, 0.0, 0.0), (-60.0, 0.0, 0.0)  # along the central axis, through the whole box
    wepl_change = (wepl_with_sigma(denser, _affine(), start, end).wepl_mm
                   - wepl_with_sigma(ct_hu, _affine(), start, end).wepl_mm)
    analytic = (DEFAULT_HLUT.to_spr(BONE_HU * (1 + HU_INCREASE)) - DEFAULT_HLUT.to_spr(BONE_HU)) * 15.0
    assert wepl_change == pytest.approx(analytic)
    assert 86.0 < r80[0] < 92.0  # the target's distal edge lies 88 mm deep
    shift = r80[1] - r80[0]
    assert shift < 0 and shift == pytest.approx(-analytic, rel=0.10), (r80, analytic)


def test_photon_plan_recomputes_identically_and_its_dvh_matches_a_hand_computation(pyradplan, water_box, pymedphys):
    from radmtl.evaluation.dose.engine import PlanSettings, plan_on_ct, recompute
    from radmtl.evaluation.dose.gamma import gamma_pass_rate

    ct_hu, body, target = water_box
    settings = PlanSettings(prescription_gy=2.0, body_objective=None, photon_bixel_mm=8.0)
    plan = plan_on_ct(ct_hu, _affine(), {"target": target}, "target", body, "photons", settings)
    dose, again = recompute(plan, ct_hu), recompute(plan, ct_hu)
    assert float(np.abs(dose - again).max()) == 0.0
    # radmtl evaluate --dose takes the optimised dose as the CT dose instead of recomputing it: this proves it.
    np.testing.assert_allclose(dose, plan.dose_gy, atol=1e-4)
    assert gamma_pass_rate(dose, again, SPACING)["gamma_2_2_pass_percent"] == 100.0
    assert float(dose[target].mean()) == pytest.approx(2.0, rel=0.05)
    hottest_first = np.sort(dose[target].astype(np.float64))[::-1]
    n = hottest_first.size  # 26 · 4 · 4 = 416 voxels: D95 is the 396th hottest (ceil 395.2), D2 the 9th
    metrics = dvh_metrics(dose, {"target": target}, target="target")
    assert n == 416
    assert metrics["target_d95_gy"] == hottest_first[395] and metrics["target_d2_gy"] == hottest_first[8]
    assert metrics["target_d50_gy"] == hottest_first[207] and metrics["target_d98_gy"] == hottest_first[407]
    assert metrics["target_dmean_gy"] == pytest.approx(hottest_first.mean())
