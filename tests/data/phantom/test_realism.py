"""The phantom's hard parts: bowel gas, tissue texture, MR→CT misregistration, and their report."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from radmtl.data.phantom import anatomy as anat
from radmtl.data.phantom import generate_case
from radmtl.data.phantom.realism import Realism, SmoothField, draw_case_realism

SHAPE = (48, 48, 32)
SPACING = (8.0, 6.0, 6.0)


@pytest.fixture(scope="module")
def pair():
    """Seed 3 with the default realism and without any: the same anatomy, tissue values and noise."""
    return generate_case(3, SHAPE, SPACING), generate_case(3, SHAPE, SPACING, Realism.none())


def _points(n=20000, half=150.0, seed=0):
    rng = np.random.default_rng(seed)
    return tuple(rng.uniform(-half, half, size=n).astype(np.float32) for _ in range(3))


def test_plain_phantom_is_registered_and_gas_free_and_shares_everything_else(pair):
    real, plain = pair
    assert np.all(plain.displacement_mm == 0.0)
    np.testing.assert_array_equal(plain.tissue, plain.mr_tissue)
    assert not np.any(plain.tissue == anat.BOWEL_GAS)
    # Realism draws from its own generator: the MR gain, bias and noise of the two are the same, so
    # air far outside the body (no tissue, no texture, no displacement) is equal (to float rounding of
    # the smoothed noise map).
    air = ndimage.binary_erosion(plain.mask == 0, iterations=3) & ndimage.binary_erosion(real.mask == 0, iterations=3)
    assert air.sum() > 1000
    np.testing.assert_allclose(real.mr[air], plain.mr[air], rtol=1e-5)
    np.testing.assert_allclose(real.ct_hu[air], plain.ct_hu[air], rtol=1e-5)


def test_smooth_field_has_unit_variance_and_the_gaussian_correlation_of_its_length():
    length = 8.0
    values, shifted = [], []
    for seed in range(40):  # an ensemble of fields: a single field's sample variance is itself random
        field = SmoothField.draw(np.random.default_rng(seed), length)
        x, y, z = _points(400, seed=seed)
        values.append(field((x, y, z)))
        shifted.append(field((x + length, y, z)))
    values, shifted = np.concatenate(values), np.concatenate(shifted)
    assert abs(values.mean()) < 0.05
    assert values.var() == pytest.approx(1.0, abs=0.08)
    # Gaussian covariance: correlation exp(−½) = 0.61 at one correlation length.
    assert np.corrcoef(values, shifted)[0, 1] == pytest.approx(np.exp(-0.5), abs=0.06)


def test_texture_sd_per_tissue_and_the_share_the_mr_shows():
    realism = Realism()
    extra = draw_case_realism(np.random.default_rng(11), realism)
    points = _points()
    for tissue, sd in ((anat.FAT, 22.0), (anat.PELVIC_FAT, 22.0), (anat.MUSCLE, 20.0),
                       (anat.TRABECULAR, 70.0), (anat.URINE, 0.0), (anat.CORTICAL, 0.0)):
        hu = extra.texture_hu(points, np.full(points[0].shape, tissue, np.uint8))
        assert hu.std() == pytest.approx(sd, rel=0.25, abs=1e-6), anat.TISSUE_NAMES[tissue]
    muscle = np.full(points[0].shape, anat.MUSCLE, np.uint8)
    hu, mr = extra.texture_hu(points, muscle), extra.mr_texture_factor(points, muscle)
    # Half the texture's variance is shown, darker where the HU is higher: correlation −√0.5.
    assert np.corrcoef(hu, mr)[0, 1] == pytest.approx(-np.sqrt(0.5), abs=0.12)
    assert np.all(extra.mr_texture_factor(points, np.full_like(muscle, anat.URINE)) == 1.0)
    assert np.abs(hu).max() <= 3.0 * 20.0 + 1e-3  # clipped at 3 SD


def test_texture_reaches_the_ct_of_the_case_and_not_its_untextured_tissues(pair):
    real, plain = pair
    interior = ndimage.binary_erosion(real.tissue == anat.MUSCLE) & ndimage.binary_erosion(plain.tissue == anat.MUSCLE)
    # One HU per tissue without texture (but for a few voxels next to a thin structure).
    flat = plain.ct_clean_hu[interior]
    assert np.mean(np.abs(flat - np.median(flat)) < 1e-3) > 0.99
    assert real.ct_clean_hu[interior].std() > 8.0  # averaged over 8 × 6 × 6 mm voxels, still textured
    urine = real.ct_clean_hu[ndimage.binary_erosion(real.tissue == anat.URINE, iterations=2)]
    assert urine.size > 20 and np.mean(np.abs(urine - np.median(urine)) < 1e-3) > 0.99


def test_displacement_has_the_requested_rms_is_smooth_and_scales():
    points = _points()
    for rms in (1.0, 2.0, 3.0):
        lengths = [draw_case_realism(np.random.default_rng(s), Realism(deformation_rms_mm=rms)).displacement_mm(points)
                   for s in range(12)]
        measured = float(np.sqrt(np.mean(np.concatenate(lengths) ** 2)))
        assert measured == pytest.approx(rms, rel=0.15)
    extra = draw_case_realism(np.random.default_rng(5), Realism())
    # No folding: the mapping x → x + u(x) stays invertible where every |∂u_i/∂x_j| ≪ 1.
    h = np.float32(0.5)
    base = extra.ct_coords(points)
    for axis in range(3):
        moved = list(points)
        moved[axis] = moved[axis] + h
        ahead = extra.ct_coords(tuple(moved))
        for i in range(3):
            gradient = (ahead[i] - base[i]) / h - (1.0 if i == axis else 0.0)
            assert np.abs(gradient).max() < 0.5


def test_ct_side_labels_move_with_the_displacement(pair):
    real, plain = pair
    # The CT (and its contours) show the anatomy displaced; without it, the MR's tissue map.
    differ = real.tissue != real.mr_tissue
    assert 0.01 < differ[real.mask == 1].mean() < 0.3
    np.testing.assert_array_equal(real.mr_tissue != plain.mr_tissue, np.isin(real.mr_tissue, (anat.BOWEL_GAS, anat.BOWEL_WALL))
                                  | np.isin(plain.mr_tissue, (anat.BOWEL_GAS, anat.BOWEL_WALL)))
    # Organ volumes are kept (a smooth displacement of 2 mm RMS neither grows nor shrinks organs much).
    for label in (1, 2, 3, 4, 5):
        assert (real.labels == label).sum() == pytest.approx((plain.labels == label).sum(), rel=0.2), label


def test_bowel_gas_is_dark_on_mr_air_on_ct_in_the_pelvis_and_unlabelled(pair):
    real, _ = pair
    gas_ct = real.tissue == anat.BOWEL_GAS
    gas_mr = real.mr_tissue == anat.BOWEL_GAS
    assert gas_ct.sum() > 5 and gas_mr.sum() > 5
    assert np.median(real.ct_clean_hu[gas_ct]) < -500.0
    # Dark on MR: on these 8 × 6 × 6 mm voxels most gas voxels are partial-volume mixtures with the
    # bowel wall, still far darker than the fat the gas lies in.
    urine = real.mr[real.mr_tissue == anat.URINE].mean()
    fat = np.median(real.mr[real.mr_tissue == anat.PELVIC_FAT])
    assert np.median(real.mr[gas_mr]) < min(0.25 * urine, 0.35 * fat)
    assert np.all(real.labels[gas_ct] == 0) and np.all(real.mask[gas_ct] == 1)
    # Above the prostate (the sigmoid and small bowel), never in the subcutaneous fat.
    world_z = real.affine[2, 2] * np.nonzero(gas_ct)[2] + real.affine[2, 3]
    prostate_z = real.affine[2, 2] * np.nonzero(real.labels == 3)[2].mean() + real.affine[2, 3]
    assert world_z.min() > prostate_z
    assert not np.any(ndimage.binary_dilation(gas_ct) & (real.tissue == anat.FAT))


def test_phantom_report_meets_its_targets_and_its_numbers_follow_the_phantom(load_script):
    report = load_script("phantom_report")
    shape, spacing = (48, 48, 32), (8.0, 6.0, 6.0)
    rows = {str(seed): report.case_metrics(generate_case(seed, shape, spacing)) for seed in (1, 2)}
    lines, met = report.table(rows)
    assert met, "\n".join(lines)
    assert lines[-1].startswith("| target | 0.2–1: met | ≤ 0.65: met |")
    plain = report.case_metrics(generate_case(1, shape, spacing, Realism.none()))
    assert plain["displacement_rms_mm"] == 0.0 and plain["sd_muscle"] < 5.0
    assert plain["gas_percent"] < rows["1"]["gas_percent"]
    # A report that measured nothing must not pass.
    lines, met = report.table({"a": plain})
    assert not met and "MISSED" in lines[-1]


@pytest.mark.parametrize("orientation", ["lps", "oblique"])
def test_a_case_stored_lps_or_oblique_is_the_same_patient_in_the_same_place(orientation):
    from radmtl.data.laterality import world_centroid
    import nibabel as nib

    ras = generate_case(9, (40, 32, 24), (9.6, 9.0, 8.0))
    other = generate_case(9, (40, 32, 24), (9.6, 9.0, 8.0), orientation=orientation)
    assert nib.aff2axcodes(other.affine)[:2] == ("L", "P")
    if orientation == "oblique":
        assert np.count_nonzero(np.abs(other.affine[:3, :3]) > 1e-6) > 3  # rotated, not a permutation
    for label in (1, 3, 4, 5):
        # Sampled on another grid, each organ's world centroid stays within a voxel or so.
        a, b = world_centroid(ras.labels == label, ras.affine), world_centroid(other.labels == label, other.affine)
        assert np.linalg.norm(np.asarray(a) - np.asarray(b)) < 6.0, label
    assert world_centroid(other.labels == 4, other.affine)[0] < 0  # the left head at RAS x < 0
    assert (other.labels == 1).sum() == pytest.approx((ras.labels == 1).sum(), rel=0.15)


def test_dataset_with_orientations_in_turn_nests_cases_by_orientation(tmp_path):
    import json

    import nibabel as nib

    from radmtl.data.discovery import discover
    from radmtl.data.phantom import generate_dataset

    ids = generate_dataset(tmp_path, cases=3, seed=2, shape=(24, 20, 16), spacing=(16.0, 14.4, 12.0),
                           orientations=("ras", "lps", "oblique"))
    assert ids == ["ras/case_001", "lps/case_002", "oblique/case_003"]
    spec = json.loads((tmp_path / "dataset.json").read_text())
    assert spec["case_orientations"] == ["ras", "lps", "oblique"]
    assert spec["realism"]["deformation_rms_mm"] == 2.0
    index = discover(tmp_path)
    assert sorted(case.group for case in index.cases) == ["lps", "oblique", "ras"]
    assert nib.aff2axcodes(nib.load(tmp_path / "lps/case_002/mr.nii.gz").affine) == ("L", "P", "S")


def test_smooth_field_on_grid_axes_equals_the_pointwise_sum():
    field = SmoothField.draw(np.random.default_rng(4), 6.0)
    axes = [np.linspace(-150, 150, 31).reshape(-1, 1, 1), np.linspace(-90, 120, 17).reshape(1, -1, 1),
            np.linspace(-60, 60, 9).reshape(1, 1, -1)]
    on_axes = field(axes)  # the separable path (two matrix products)
    pointwise = field([np.broadcast_to(a, (31, 17, 9)) for a in axes])  # one cosine per wave and point
    assert on_axes.shape == pointwise.shape == (31, 17, 9)
    np.testing.assert_allclose(on_axes, pointwise, atol=1e-4)


def test_the_ct_image_shows_the_anatomy_its_labels_show_not_the_mrs():
    from radmtl.data.phantom import case_tissue_hu

    case = generate_case(3, SHAPE, SPACING, Realism.none().replace(deformation_rms_mm=6.0))
    by_name = case_tissue_hu(3)
    table = np.array([by_name[anat.TISSUE_NAMES[t]] for t in range(len(anat.TISSUE_NAMES))], np.float32)
    body = case.mask > 0
    moved = body & (case.tissue != case.mr_tissue)
    assert moved.sum() > 500
    # Voxels are partial-volume means, so neither side matches exactly; the CT's own side is far closer.
    ct_side = np.abs(case.ct_clean_hu - table[case.tissue])[moved].mean()
    mr_side = np.abs(case.ct_clean_hu - table[case.mr_tissue])[moved].mean()
    assert ct_side < 0.6 * mr_side
