"""Uncertainty calibration metrics: z-scores, coverage, calibration curves, σ-vs-error ranking.

Same conventions as :mod:`radmtl.evaluation.metrics` (numpy arrays on one grid, body ``mask`` non-zero
inside, ``nan`` for an empty region). σ maps are in HU and floored at ``SIGMA_FLOOR_HU`` before
dividing, because a network can predict (numerically) zero σ and a z-score of ±inf would poison
every mean.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage, stats

from radmtl.evaluation.metrics import as_mask, check_same_shape, masked_error_hu

logger = logging.getLogger(__name__)

SIGMA_FLOOR_HU = 1e-3
# Soft tissue on the reference CT (fat -100 HU … muscle/organs +60 HU, with noise), for the σ-recovery
# check where the model is accurate (DESIGN.md section 1).
SOFT_TISSUE_HU = (-250.0, 200.0)
SPEARMAN_MAX_VOXELS = 200_000
DEFAULT_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


def _sigma_floored(sigma_hu: np.ndarray, name: str = "sigma_hu") -> np.ndarray:
    sigma_hu = np.asarray(sigma_hu, dtype=np.float64)
    if np.any(sigma_hu < 0) or not np.all(np.isfinite(sigma_hu)):
        raise ValueError(f"{name} must be finite and >= 0 HU, got min {np.nanmin(sigma_hu)}")
    return np.maximum(sigma_hu, SIGMA_FLOOR_HU)


def zscore_stats(
    ct_hu: np.ndarray, sct_hu: np.ndarray, sigma_hu: np.ndarray, mask: np.ndarray
) -> tuple[float, float]:
    """Mean and SD (ddof=0) of the z-scores ``(ct − sct)/σ`` over mask voxels.

    A calibrated model gives mean ≈ 0 and SD ≈ 1 (Bragman et al. 2018). Empty mask → (nan, nan).
    """
    check_same_shape(ct_hu=ct_hu, sct_hu=sct_hu, sigma_hu=sigma_hu, mask=mask)
    inside = as_mask(mask)
    if not inside.any():
        return math.nan, math.nan
    z = masked_error_hu(ct_hu, sct_hu, inside) / _sigma_floored(sigma_hu)[inside]
    return float(z.mean()), float(z.std())


def coverage(
    ct_hu: np.ndarray, sct_hu: np.ndarray, sigma_hu: np.ndarray, mask: np.ndarray, z: float = 1.96
) -> float:
    """Fraction of mask voxels with ``|ct − sct| <= z·σ`` (≈ 0.95 for z = 1.96 if calibrated).

    Returns:
        Observed coverage in [0, 1]; ``nan`` if the mask is empty.
    """
    if not z > 0:
        raise ValueError(f"z must be > 0, got {z}")
    return float(_observed_coverage(ct_hu, sct_hu, sigma_hu, mask, np.array([z]))[0])


def _observed_coverage(
    ct_hu: np.ndarray, sct_hu: np.ndarray, sigma_hu: np.ndarray, mask: np.ndarray, z: np.ndarray
) -> np.ndarray:
    check_same_shape(ct_hu=ct_hu, sct_hu=sct_hu, sigma_hu=sigma_hu, mask=mask)
    inside = as_mask(mask)
    z = np.asarray(z, np.float64)
    if not inside.any():
        return np.full(z.shape, np.nan)
    abs_z = np.sort(np.abs(masked_error_hu(ct_hu, sct_hu, inside)) / _sigma_floored(sigma_hu)[inside])
    # Sorting once makes every level a binary search instead of a pass over the volume.
    return np.searchsorted(abs_z, z, side="right") / abs_z.size


def calibration_curve(
    ct_hu: np.ndarray,
    sct_hu: np.ndarray,
    sigma_hu: np.ndarray,
    mask: np.ndarray,
    levels: Sequence[float] = DEFAULT_LEVELS,
) -> tuple[np.ndarray, np.ndarray]:
    """Expected vs observed coverage of central Gaussian intervals ``μ ± z·σ``.

    For each nominal level p, ``z = Φ⁻¹(0.5 + p/2)``. A calibrated model lies on the diagonal;
    below it means σ is too small (over-confident).

    Args:
        levels: nominal coverages, each in (0, 1).

    Returns:
        (expected levels, observed coverage), both float64 arrays of ``len(levels)``.
    """
    expected = np.asarray(levels, np.float64)
    if expected.ndim != 1 or np.any((expected <= 0) | (expected >= 1)):
        raise ValueError(f"levels must be a 1D sequence in (0, 1), got {levels}")
    z = stats.norm.ppf(0.5 + expected / 2)
    return expected, _observed_coverage(ct_hu, sct_hu, sigma_hu, mask, z)


def spearman(
    a: np.ndarray,
    b: np.ndarray,
    mask: np.ndarray | None = None,
    max_voxels: int = SPEARMAN_MAX_VOXELS,
) -> float:
    """Spearman rank correlation of two maps over mask voxels.

    Above ``max_voxels`` voxels a fixed-seed random subset (without replacement) is used: ranking
    millions of voxels is slow and the estimate's standard error at 200k is ~0.002. Random rather
    than strided so the subset cannot alias with the image's spatial structure; the fixed seed keeps
    results reproducible.

    Returns:
        rho in [-1, 1]; ``nan`` if fewer than 2 voxels or either map is constant.
    """
    if max_voxels < 2:
        raise ValueError(f"max_voxels must be >= 2, got {max_voxels}")
    check_same_shape(a=a, b=b, mask=mask)
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if mask is not None:
        inside = as_mask(mask)
        a, b = a[inside], b[inside]
    a, b = a.ravel(), b.ravel()
    if a.size > max_voxels:
        keep = np.random.default_rng(0).choice(a.size, size=max_voxels, replace=False)
        a, b = a[keep], b[keep]
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(stats.spearmanr(a, b).statistic)


def uncertainty_metrics(
    ct_hu: np.ndarray,
    sct_hu: np.ndarray,
    sigma_total_hu: np.ndarray,
    mask: np.ndarray,
    sigma_aleatoric_hu: np.ndarray | None = None,
    true_noise_sd_hu: np.ndarray | None = None,
) -> dict[str, float]:
    """Calibration of the predicted σ for one case.

    Keys: ``zscore_mean``, ``zscore_sd``, ``coverage_95`` (|error| <= 1.96·σ_total),
    ``spearman_error_sigma`` (|error| vs σ_total). With the phantom's true noise SD map also
    ``spearman_sigma_true_noise`` and ``ratio_sigma_true_noise``: the **median** over mask voxels
    with true SD > 0 of σ_aleatoric / true SD (median, because voxels with tiny true SD give huge
    ratios that would dominate a mean; 1.0 is perfect). Without ``sigma_aleatoric_hu`` the total σ
    stands in, which overestimates the ratio by the epistemic part (a warning is logged).

    ``spearman_sigma_true_noise_soft_tissue`` ranks the same pair over the voxels where σ recovery
    is a fair test: soft tissue on the reference CT (:data:`SOFT_TISSUE_HU`) where the model is
    accurate, ``|bias| < true SD``. The bias is the error averaged over the voxel's 3×3×3
    neighbourhood, which keeps the model's systematic error and divides the CT's i.i.d. noise by
    about √27 (a single voxel's error is mostly that noise). Where the model is biased, σ rightly
    grows beyond the data noise and the ranking would test something else.
    """
    z_mean, z_sd = zscore_stats(ct_hu, sct_hu, sigma_total_hu, mask)
    abs_error = np.abs(np.asarray(ct_hu, np.float64) - np.asarray(sct_hu, np.float64))
    result = {
        "zscore_mean": z_mean,
        "zscore_sd": z_sd,
        "coverage_95": coverage(ct_hu, sct_hu, sigma_total_hu, mask, z=1.96),
        "spearman_error_sigma": spearman(abs_error, sigma_total_hu, mask),
    }
    if true_noise_sd_hu is not None:
        if sigma_aleatoric_hu is None:
            logger.warning("no aleatoric σ given; comparing total σ with the true noise SD")
            sigma_aleatoric_hu = sigma_total_hu
        check_same_shape(sigma_aleatoric_hu=sigma_aleatoric_hu, true_noise_sd_hu=true_noise_sd_hu, mask=mask)
        sigma_aleatoric = _sigma_floored(sigma_aleatoric_hu, "sigma_aleatoric_hu")
        true_sd = np.asarray(true_noise_sd_hu, np.float64)
        noisy = as_mask(mask) & (true_sd > 0)
        result["spearman_sigma_true_noise"] = spearman(sigma_aleatoric, true_sd, mask)
        error = np.asarray(ct_hu, np.float64) - np.asarray(sct_hu, np.float64)
        bias = ndimage.uniform_filter(error, size=3, mode="nearest")
        ct = np.asarray(ct_hu, np.float64)
        accurate_soft_tissue = (as_mask(mask) & (ct > SOFT_TISSUE_HU[0]) & (ct < SOFT_TISSUE_HU[1])
                                & (np.abs(bias) < true_sd))
        result["spearman_sigma_true_noise_soft_tissue"] = spearman(sigma_aleatoric, true_sd, accurate_soft_tissue)
        result["soft_tissue_low_bias_fraction"] = (
            float(accurate_soft_tissue.sum() / as_mask(mask).sum()) if as_mask(mask).any() else math.nan)
        result["ratio_sigma_true_noise"] = (
            float(np.median(sigma_aleatoric[noisy] / true_sd[noisy])) if noisy.any() else math.nan
        )
    return result
