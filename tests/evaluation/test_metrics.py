"""Tests for radmtl.evaluation.metrics and radmtl.evaluation.plots: hand-computed values on tiny volumes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from radmtl.evaluation import calibration, metrics
from radmtl.evaluation.plots import calibration_plot, error_vs_sigma_plot

C1 = (0.01 * 4024) ** 2
C2 = (0.03 * 4024) ** 2


def _ones(shape=(8, 8, 8)) -> np.ndarray:
    return np.ones(shape, dtype=bool)


# ----------------------------------------------------------------------------- MAE / PSNR


def test_mae_hu_over_mask_only_and_unclipped():
    ct = np.zeros((4, 4, 4))
    sct = np.zeros((4, 4, 4))
    sct[0, 0, 0] = 10.0
    sct[0, 0, 1] = -30.0
    sct[3, 3, 3] = 5000.0  # outside the mask: must not count
    mask = np.zeros((4, 4, 4), dtype=np.uint8)
    mask[0, 0, :] = 1  # 4 voxels, errors 10, 30, 0, 0
    assert metrics.mae_hu(ct, sct, mask) == pytest.approx(10.0)
    # No clipping: a 5000 HU error counts in full.
    mask[3, 3, 3] = 1
    assert metrics.mae_hu(ct, sct, mask) == pytest.approx((10 + 30 + 5000) / 5)


def test_mae_hu_empty_mask_is_nan():
    assert math.isnan(metrics.mae_hu(np.zeros((2, 2, 2)), np.ones((2, 2, 2)), np.zeros((2, 2, 2))))


def test_psnr_constant_offset():
    ct = np.zeros((6, 6, 6))
    assert metrics.psnr(ct, ct + 10.0, _ones((6, 6, 6))) == pytest.approx(10 * math.log10(4024**2 / 100))


def test_psnr_clips_to_synthrad_range():
    ct = np.full((6, 6, 6), 3500.0)  # clipped to 3000
    sct = np.full((6, 6, 6), 2990.0)  # so the error is 10 HU, not 510 HU
    expected = 10 * math.log10(4024**2 / 100)
    assert metrics.psnr(ct, sct, _ones((6, 6, 6))) == pytest.approx(expected)
    # Both below -1024 clip to the same value: identical → inf by convention.
    below_range = metrics.psnr(np.full((4, 4, 4), -2000.0), np.full((4, 4, 4), -1500.0), _ones((4, 4, 4)))
    assert below_range == math.inf


def test_psnr_ignores_outside_mask():
    ct = np.zeros((6, 6, 6))
    sct = ct + 10.0
    sct[0] = 2000.0
    mask = _ones((6, 6, 6))
    mask[0] = False
    assert metrics.psnr(ct, sct, mask) == pytest.approx(10 * math.log10(4024**2 / 100))


# ----------------------------------------------------------------------------- SSIM


def test_ssim_identical_is_one():
    ct = np.random.default_rng(0).normal(0, 300, size=(12, 12, 12))
    assert metrics.ssim(ct, ct.copy(), _ones((12, 12, 12))) == pytest.approx(1.0, abs=1e-12)


def test_ssim_constant_images_hand_value():
    # Constant images: σx = σy = σxy = 0, so SSIM = (2μxμy + C1)/(μx² + μy² + C1) after the shift.
    ct = np.zeros((10, 10, 10))
    sct = np.full((10, 10, 10), 1000.0)
    mu_x, mu_y = 1024.0, 2024.0
    expected = (2 * mu_x * mu_y + C1) / (mu_x**2 + mu_y**2 + C1)
    assert metrics.ssim(ct, sct, _ones((10, 10, 10))) == pytest.approx(expected, rel=1e-9)
    assert expected < 0.9  # the test discriminates: not trivially 1


def test_ssim_matches_brute_force_windows_with_mask_and_crop():
    rng = np.random.default_rng(1)
    shape = (11, 10, 12)
    ct = rng.normal(0, 200, size=shape)
    sct = ct + rng.normal(0, 100, size=shape)
    mask = np.zeros(shape, dtype=bool)
    mask[2:9, 1:8, 3:11] = True
    x = np.where(mask, np.clip(ct, -1024, 3000), -1024) + 1024
    y = np.where(mask, np.clip(sct, -1024, 3000), -1024) + 1024
    values = []
    # Voxels 3 from every border: their 7³ windows lie inside the image, so no padding is involved.
    for i in range(3, shape[0] - 3):
        for j in range(3, shape[1] - 3):
            for k in range(3, shape[2] - 3):
                if not mask[i, j, k]:
                    continue
                wx = x[i - 3 : i + 4, j - 3 : j + 4, k - 3 : k + 4].ravel()
                wy = y[i - 3 : i + 4, j - 3 : j + 4, k - 3 : k + 4].ravel()
                cov = np.cov(wx, wy, ddof=1)  # sample covariance, as scikit-image
                mx, my = wx.mean(), wy.mean()
                numerator = (2 * mx * my + C1) * (2 * cov[0, 1] + C2)
                values.append(numerator / ((mx**2 + my**2 + C1) * (cov[0, 0] + cov[1, 1] + C2)))
    assert metrics.ssim(ct, sct, mask) == pytest.approx(np.mean(values), rel=1e-9)


def test_ssim_ignores_outside_mask_and_crop_border():
    ct = np.zeros((12, 12, 12))
    sct = ct.copy()
    sct[:, :, 10:] = 800.0  # differs only outside the mask
    mask = _ones((12, 12, 12))
    mask[:, :, 10:] = False
    assert metrics.ssim(ct, sct, mask) == pytest.approx(1.0, abs=1e-12)
    border_only = np.zeros((12, 12, 12), dtype=bool)
    border_only[:3] = True  # entirely inside the 3-voxel crop
    assert math.isnan(metrics.ssim(ct, sct + 5, border_only))


def test_ssim_rejects_small_volume():
    with pytest.raises(ValueError, match="axis >= 7"):
        metrics.ssim(np.zeros((6, 8, 8)), np.zeros((6, 8, 8)), _ones((6, 8, 8)))


# ----------------------------------------------------------------------------- region MAE


def test_bone_and_organ_mae_in_image_metrics():
    ct = np.zeros((8, 8, 8))
    ct[:2] = 500.0  # bone: 128 voxels
    sct = ct.copy()
    sct[:2] -= 40.0  # bone error 40 HU
    sct[2:] += 4.0  # soft tissue error 4 HU
    labels = np.zeros((8, 8, 8), dtype=np.uint8)
    labels[4:6] = 1
    labels[0] = 2
    mask = _ones()
    names = {"background": 0, "bladder": 1, "femur": 2, "absent": 3}
    result = metrics.image_metrics(ct, sct, mask, labels, names)
    assert result["mae_bone_hu"] == pytest.approx(40.0)
    assert result["mae_hu"] == pytest.approx((128 * 40 + 384 * 4) / 512)
    assert result["mae_bladder_hu"] == pytest.approx(4.0)
    assert result["mae_femur_hu"] == pytest.approx(40.0)
    assert math.isnan(result["mae_absent_hu"])
    assert "mae_background_hu" not in result
    assert set(result) >= {"psnr", "ssim"}
    unnamed = metrics.image_metrics(ct, sct, mask, labels)
    assert unnamed["mae_label_1_hu"] == pytest.approx(4.0)


def test_shape_mismatch_names_arrays():
    with pytest.raises(ValueError, match="sct_hu"):
        metrics.mae_hu(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)), np.ones((4, 4, 4)))


# ----------------------------------------------------------------------------- segmentation


def _two_cubes(axis: int, shift: int) -> tuple[np.ndarray, np.ndarray]:
    ref = np.zeros((32, 32, 32), dtype=np.uint8)
    ref[8:18, 8:18, 8:18] = 3
    pred = np.roll(ref, shift, axis=axis)
    return pred, ref


@pytest.mark.parametrize(("axis", "shift"), [(0, 2), (2, 3)])
def test_dice_and_hd95_shifted_cubes_anisotropic(axis, shift):
    spacing = (2.5, 1.0, 0.7)
    pred, ref = _two_cubes(axis, shift)
    overlap = (10 - shift) * 100
    assert metrics.dice(pred, ref, 3) == pytest.approx(2 * overlap / 2000)
    assert metrics.hd95_mm(pred, ref, 3, spacing) == pytest.approx(shift * spacing[axis])


def test_segmentation_empty_conventions():
    empty = np.zeros((16, 16, 16), dtype=np.uint8)
    cube = empty.copy()
    cube[4:8, 4:8, 4:8] = 1
    assert metrics.dice(empty, empty, 1) == 1.0
    assert metrics.hd95_mm(empty, empty, 1, (1, 1, 1)) == 0.0
    assert metrics.dice(cube, empty, 1) == 0.0
    assert metrics.dice(empty, cube, 1) == 0.0
    # One side empty: the image diagonal, √(16² + 32² + 48²) mm = 59.87 mm at 1 × 2 × 3 mm, not nan.
    assert metrics.hd95_mm(cube, empty, 1, (1, 2, 3)) == pytest.approx(59.866, abs=1e-3)
    assert metrics.hd95_mm(empty, cube, 1, (1, 2, 3)) == pytest.approx(59.866, abs=1e-3)
    with pytest.raises(ValueError, match="spacing"):
        metrics.hd95_mm(cube, cube, 1, (1.0, 0.0, 1.0))


def test_segmentation_metrics_keys_skip_background():
    pred, ref = _two_cubes(0, 2)
    names = {"background": 0, "prostate": 3, "rectum": 2}
    result = metrics.segmentation_metrics(pred, ref, names, (1.0, 1.0, 1.0))
    assert set(result) == {"dice_prostate", "hd95_prostate_mm", "dice_rectum", "hd95_rectum_mm", "missed_organs"}
    assert result["dice_prostate"] == pytest.approx(0.8)
    assert result["hd95_prostate_mm"] == pytest.approx(2.0)
    assert result["dice_rectum"] == 1.0 and result["hd95_rectum_mm"] == 0.0
    assert result["missed_organs"] == 0.0


def test_a_missed_organ_is_counted_and_makes_the_mean_hd95_worse_not_better():
    pred, ref = _two_cubes(0, 2)
    names = {"background": 0, "prostate": 3, "rectum": 2}
    found = metrics.segmentation_metrics(pred, ref, names, (1.0, 1.0, 1.0))
    missed = metrics.segmentation_metrics(np.where(pred == 3, 0, pred), ref, names, (1.0, 1.0, 1.0))
    assert missed["dice_prostate"] == 0.0 and missed["missed_organs"] == 1.0
    assert missed["hd95_prostate_mm"] == pytest.approx(metrics.hd95_penalty_mm(ref.shape, (1.0, 1.0, 1.0)))
    # Over two cases, one with the prostate found 2 mm off and one with it missed: the miss counts.
    summary = metrics.summarise([found, missed])
    assert summary["hd95_prostate_mm"][0] > found["hd95_prostate_mm"]
    assert summary["missed_organs"][0] == 0.5


# ----------------------------------------------------------------------------- uncertainty


@pytest.fixture(scope="module")
def gaussian_case():
    rng = np.random.default_rng(42)
    shape = (32, 32, 32)
    sigma = rng.uniform(10.0, 100.0, size=shape)
    ct = rng.normal(0.0, 300.0, size=shape)
    sct = ct - sigma * rng.standard_normal(shape)  # ct − sct ~ N(0, σ²): calibrated
    return ct, sct, sigma, np.ones(shape, dtype=bool)


def test_calibrated_gaussian_coverage_and_zscores(gaussian_case):
    ct, sct, sigma, mask = gaussian_case
    assert calibration.coverage(ct, sct, sigma, mask) == pytest.approx(0.95, abs=0.01)
    z_mean, z_sd = calibration.zscore_stats(ct, sct, sigma, mask)
    assert z_mean == pytest.approx(0.0, abs=0.02)
    assert z_sd == pytest.approx(1.0, abs=0.02)


def test_sigma_two_times_too_small(gaussian_case):
    ct, sct, sigma, mask = gaussian_case
    z_mean, z_sd = calibration.zscore_stats(ct, sct, sigma / 2, mask)
    assert z_sd == pytest.approx(2.0, abs=0.04)
    # P(|Z| <= 1.96/2) = 2Φ(0.98) − 1 ≈ 0.673
    assert calibration.coverage(ct, sct, sigma / 2, mask) == pytest.approx(0.673, abs=0.01)


def test_calibration_curve_on_diagonal(gaussian_case):
    ct, sct, sigma, mask = gaussian_case
    expected, observed = calibration.calibration_curve(ct, sct, sigma, mask, levels=(0.25, 0.5, 0.9, 0.95))
    np.testing.assert_allclose(expected, [0.25, 0.5, 0.9, 0.95])
    np.testing.assert_allclose(observed, expected, atol=0.01)
    _, over_confident = calibration.calibration_curve(ct, sct, sigma / 2, mask, levels=(0.5, 0.9))
    assert np.all(over_confident < np.array([0.4, 0.8]))  # σ too small: curve below the diagonal
    with pytest.raises(ValueError, match="levels"):
        calibration.calibration_curve(ct, sct, sigma, mask, levels=(0.5, 1.0))


def test_zero_and_negative_sigma():
    ct = np.zeros((4, 4, 4))
    mask = _ones((4, 4, 4))
    # σ = 0 with zero error: floored, so z = 0 rather than nan.
    assert calibration.zscore_stats(ct, ct, np.zeros_like(ct), mask) == (0.0, 0.0)
    assert calibration.coverage(ct, ct, np.zeros_like(ct), mask) == 1.0
    with pytest.raises(ValueError, match="sigma_hu"):
        calibration.coverage(ct, ct, -np.ones_like(ct), mask)


def test_spearman_monotone_and_degenerate():
    a = np.random.default_rng(3).uniform(1, 2, size=(10, 10, 10))
    assert calibration.spearman(a, np.exp(3 * a) + 7) == pytest.approx(1.0)
    assert calibration.spearman(a, -(a**3), _ones((10, 10, 10))) == pytest.approx(-1.0)
    # Subsampled path keeps a monotone relation exact and is deterministic.
    assert calibration.spearman(a, a**2, max_voxels=100) == pytest.approx(1.0)
    b = np.random.default_rng(4).normal(size=a.shape)
    assert calibration.spearman(a, b, max_voxels=100) == calibration.spearman(a, b, max_voxels=100)
    assert math.isnan(calibration.spearman(a, np.ones_like(a)))


def test_uncertainty_metrics_with_true_noise(gaussian_case):
    ct, sct, sigma, mask = gaussian_case
    result = calibration.uncertainty_metrics(
        ct, sct, sigma, mask, sigma_aleatoric_hu=2 * sigma, true_noise_sd_hu=sigma
    )
    assert set(result) == {
        "zscore_mean", "zscore_sd", "coverage_95", "spearman_error_sigma",
        "spearman_sigma_true_noise", "ratio_sigma_true_noise",
        "spearman_sigma_true_noise_soft_tissue", "soft_tissue_low_bias_fraction",
    }  # fmt: skip
    assert result["ratio_sigma_true_noise"] == pytest.approx(2.0)
    assert result["spearman_sigma_true_noise"] == pytest.approx(1.0)
    # σ_aleatoric = 2·true SD ranks perfectly on any subset, the soft-tissue one included
    assert result["spearman_sigma_true_noise_soft_tissue"] == pytest.approx(1.0)
    # the subset is soft tissue on the CT (≈ 55 % of N(0, 300²) HU) less the few biased voxels
    soft = float(np.mean((ct > calibration.SOFT_TISSUE_HU[0]) & (ct < calibration.SOFT_TISSUE_HU[1])))
    assert 0.8 * soft < result["soft_tissue_low_bias_fraction"] <= soft
    assert result["coverage_95"] == pytest.approx(0.95, abs=0.01)
    # |error| grows with σ, so the rank correlation is clearly positive (≈ 0.3 for this σ range).
    assert 0.15 < result["spearman_error_sigma"] < 0.6
    without_truth = calibration.uncertainty_metrics(ct, sct, sigma, mask)
    assert "ratio_sigma_true_noise" not in without_truth


# ----------------------------------------------------------------------------- summary


def test_summarise_ignores_nan():
    rows = [{"mae_hu": 1.0, "dice_bladder": math.nan}, {"mae_hu": 3.0, "dice_bladder": 0.5}, {"mae_hu": 5.0}]
    summary = metrics.summarise(rows)
    assert list(summary) == ["mae_hu", "dice_bladder"]
    assert summary["mae_hu"] == pytest.approx((3.0, 2.0))
    mean, sd = summary["dice_bladder"]
    assert mean == 0.5 and math.isnan(sd)
    assert all(math.isnan(v) for v in metrics.summarise([{"psnr": math.nan}])["psnr"])


# ----------------------------------------------------------------------------- plots


def test_plots_write_png(tmp_path, gaussian_case):
    ct, sct, sigma, mask = gaussian_case
    curves = {
        "calibrated": calibration.calibration_curve(ct, sct, sigma, mask),
        "σ/2": calibration.calibration_curve(ct, sct, sigma / 2, mask),
    }
    path = calibration_plot(curves, tmp_path / "figs" / "calibration.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000
    path2 = error_vs_sigma_plot(np.abs(ct - sct), sigma, tmp_path / "error_sigma.png", label="case_001")
    assert path2.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    written = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert written == ["calibration.png", "error_sigma.png"]  # no temporary files left behind
    with pytest.raises(ValueError, match="curves"):
        calibration_plot({}, tmp_path / "x.png")
