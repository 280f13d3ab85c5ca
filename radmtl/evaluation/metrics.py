"""Evaluation metrics: SynthRAD2023-style image metrics and Dice/HD95 (calibration: radmtl.evaluation.calibration).

All functions are pure and take numpy arrays on one grid in (x, y, z) order; spacing is in mm.
Conventions shared by every function:

- ``mask`` is the body mask; anything non-zero counts as inside.
- A metric over an empty region is ``nan`` (never an exception), so one odd case does not stop the
  evaluation of a cohort; :func:`summarise` ignores ``nan`` across cases.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)

HU_MIN = -1024.0
HU_MAX = 3000.0
DATA_RANGE_HU = HU_MAX - HU_MIN  # 4024, as in SynthRAD2023
BONE_THRESHOLD_HU = 200.0
SSIM_WINDOW = 7


def check_same_shape(**arrays: np.ndarray | None) -> None:
    shapes = {name: np.shape(a) for name, a in arrays.items() if a is not None}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"arrays must share one grid, got shapes {shapes}")


def as_mask(mask: np.ndarray, name: str = "mask") -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"{name} must be a 3D (x, y, z) array, got shape {mask.shape}")
    return mask != 0


def masked_error_hu(ct_hu: np.ndarray, sct_hu: np.ndarray, inside: np.ndarray) -> np.ndarray:
    return np.asarray(ct_hu, np.float64)[inside] - np.asarray(sct_hu, np.float64)[inside]


def mae_hu(ct_hu: np.ndarray, sct_hu: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute error in HU over mask voxels, without clipping (SynthRAD2023 MAE).

    Args:
        ct_hu: reference CT (X, Y, Z) in HU.
        sct_hu: synthetic CT (X, Y, Z) in HU.
        mask: region (X, Y, Z); non-zero is inside.

    Returns:
        MAE in HU; ``nan`` if the mask is empty.
    """
    check_same_shape(ct_hu=ct_hu, sct_hu=sct_hu, mask=mask)
    inside = as_mask(mask)
    if not inside.any():
        return math.nan
    return float(np.mean(np.abs(masked_error_hu(ct_hu, sct_hu, inside))))


def psnr(ct_hu: np.ndarray, sct_hu: np.ndarray, mask: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB over mask voxels (SynthRAD2023 PSNR).

    Both images are clipped to [-1024, 3000] HU and the data range is 4024 HU:
    ``10·log10(4024² / MSE)``. Arguments as in :func:`mae_hu`.

    Returns:
        PSNR in dB; ``inf`` when MSE = 0 (identical after clipping, as scikit-image gives);
        ``nan`` if the mask is empty.
    """
    check_same_shape(ct_hu=ct_hu, sct_hu=sct_hu, mask=mask)
    inside = as_mask(mask)
    if not inside.any():
        return math.nan
    error = masked_error_hu(np.clip(ct_hu, HU_MIN, HU_MAX), np.clip(sct_hu, HU_MIN, HU_MAX), inside)
    mse = float(np.mean(error**2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(DATA_RANGE_HU**2 / mse)


def ssim_map(x: np.ndarray, y: np.ndarray, data_range: float = DATA_RANGE_HU) -> np.ndarray:
    """Full 3D SSIM map with a 7-voxel uniform window and sample covariance.

    Re-implemented (rather than calling scikit-image) because scikit-image is not a dependency and
    the masked SynthRAD mean needs the full map. The formula, window, constants and the N/(N−1)
    covariance normalisation match ``skimage.metrics.structural_similarity`` defaults, so values are
    comparable with SynthRAD2023's.

    Args:
        x, y: images (X, Y, Z) of one shape, every axis >= 7.
        data_range: dynamic range of the images.

    Returns:
        SSIM map (X, Y, Z), float64, not cropped.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 3 or min(x.shape) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs a 3D image with every axis >= {SSIM_WINDOW}, got shape {x.shape}")
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2  # K1 = 0.01, K2 = 0.03
    n_window = SSIM_WINDOW**x.ndim
    cov_norm = n_window / (n_window - 1)

    def local_mean(image: np.ndarray) -> np.ndarray:
        return ndimage.uniform_filter(image, size=SSIM_WINDOW)

    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x = cov_norm * (local_mean(x * x) - mu_x * mu_x)
    var_y = cov_norm * (local_mean(y * y) - mu_y * mu_y)
    cov_xy = cov_norm * (local_mean(x * y) - mu_x * mu_y)
    numerator = (2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)
    denominator = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return numerator / denominator


def ssim(ct_hu: np.ndarray, sct_hu: np.ndarray, mask: np.ndarray) -> float:
    """Masked SSIM as in SynthRAD2023.

    Both images are clipped to [-1024, 3000] HU, voxels outside the mask are set to -1024, both are
    shifted by +1024, the SSIM map (see :func:`ssim_map`) is computed over the whole volume, and its
    mean is taken over mask voxels after cropping 3 voxels (half the window) at every border.

    Arguments as in :func:`mae_hu`; every axis must be >= 7.

    Returns:
        Mean SSIM; ``nan`` if no mask voxel survives the crop.
    """
    check_same_shape(ct_hu=ct_hu, sct_hu=sct_hu, mask=mask)
    inside = as_mask(mask)
    ct_shifted, sct_shifted = (
        np.where(inside, np.clip(np.asarray(image, np.float64), HU_MIN, HU_MAX), HU_MIN) - HU_MIN
        for image in (ct_hu, sct_hu)
    )
    full_map = ssim_map(ct_shifted, sct_shifted)
    pad = (SSIM_WINDOW - 1) // 2
    crop = (slice(pad, -pad),) * 3
    inside_cropped = inside[crop]
    if not inside_cropped.any():
        return math.nan
    return float(full_map[crop][inside_cropped].mean())


def mae_bone_hu(ct_hu: np.ndarray, sct_hu: np.ndarray, mask: np.ndarray) -> float:
    """MAE in HU over bone: reference CT >= 200 HU inside the body mask; ``nan`` if none (Bragman 2018)."""
    check_same_shape(ct_hu=ct_hu, sct_hu=sct_hu, mask=mask)
    bone = as_mask(mask) & (np.asarray(ct_hu) >= BONE_THRESHOLD_HU)
    return mae_hu(ct_hu, sct_hu, bone)


def mae_organ_hu(
    ct_hu: np.ndarray, sct_hu: np.ndarray, mask: np.ndarray, labels: np.ndarray, label: int
) -> float:
    """MAE in HU over one organ label inside the body mask; ``nan`` if absent (Bragman et al. 2018)."""
    check_same_shape(ct_hu=ct_hu, sct_hu=sct_hu, mask=mask, labels=labels)
    return mae_hu(ct_hu, sct_hu, as_mask(mask) & (np.asarray(labels) == label))


def _binary_tensor(labels: np.ndarray, label: int):
    import torch

    return torch.from_numpy(np.ascontiguousarray(np.asarray(labels) == label))[None, None]


def dice(pred_labels: np.ndarray, ref_labels: np.ndarray, label: int) -> float:
    """Dice overlap of one label (MONAI ``compute_dice``).

    Both empty → 1.0 (perfect agreement that the organ is absent); exactly one empty → 0.0.

    Args:
        pred_labels: predicted integer labels (X, Y, Z).
        ref_labels: reference integer labels (X, Y, Z).
        label: the label value to compare.
    """
    from monai.metrics import compute_dice

    check_same_shape(pred_labels=pred_labels, ref_labels=ref_labels)
    value = compute_dice(
        _binary_tensor(pred_labels, label).float(),
        _binary_tensor(ref_labels, label).float(),
        include_background=True,
        ignore_empty=False,
    )
    return float(value.item())


def hd95_mm(
    pred_labels: np.ndarray, ref_labels: np.ndarray, label: int, spacing: Sequence[float]
) -> float:
    """Symmetric 95th-percentile Hausdorff distance of one label's surfaces, in mm (MONAI).

    Both empty → 0.0. Exactly one empty (an organ missed, or predicted where the reference has none)
    → :func:`hd95_penalty_mm`, the diagonal of the image: a distance to nothing is undefined, and a
    ``nan`` would be dropped from the mean over cases, so a model would score better by missing an
    organ than by finding it badly. :func:`segmentation_metrics` also counts missed organs.

    Args:
        pred_labels: predicted integer labels (X, Y, Z).
        ref_labels: reference integer labels (X, Y, Z).
        label: the label value to compare.
        spacing: voxel size (sx, sy, sz) in mm.
    """
    from monai.metrics import compute_hausdorff_distance

    check_same_shape(pred_labels=pred_labels, ref_labels=ref_labels)
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be three positive mm values, got {spacing}")
    pred, ref = _binary_tensor(pred_labels, label), _binary_tensor(ref_labels, label)
    pred_empty, ref_empty = not bool(pred.any()), not bool(ref.any())
    if pred_empty and ref_empty:
        return 0.0
    if pred_empty or ref_empty:
        return hd95_penalty_mm(ref_labels.shape, spacing)
    with warnings.catch_warnings():
        # MONAI 1.6 warns about its own deprecated internal argument on every call.
        warnings.simplefilter("ignore", FutureWarning)
        value = compute_hausdorff_distance(
            pred, ref, include_background=True, percentile=95, spacing=list(spacing)
        )
    return float(value.item())


def hd95_penalty_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """The HD95 given to an organ present in only one of prediction and reference: the diagonal of
    the image's field of view in mm, the largest distance two voxels of it can have (as BraTS does)."""
    return float(np.sqrt(sum((n * float(s)) ** 2 for n, s in zip(shape, spacing))))


def _organ_labels(labels: np.ndarray, label_names: Mapping[str, int] | None) -> dict[str, int]:
    if label_names is None:
        # Without names, number the labels present so keys stay stable: label_1, label_2, ...
        return {f"label_{int(v)}": int(v) for v in np.unique(labels) if v != 0}
    return {name: int(value) for name, value in label_names.items() if int(value) != 0}


def image_metrics(
    ct_hu: np.ndarray,
    sct_hu: np.ndarray,
    mask: np.ndarray,
    labels: np.ndarray | None = None,
    label_names: Mapping[str, int] | None = None,
) -> dict[str, float]:
    """SynthRAD2023 and Bragman et al. 2018 image metrics for one case.

    Keys: ``mae_hu``, ``psnr``, ``ssim``, ``mae_bone_hu`` and, when ``labels`` is given,
    ``mae_<organ>_hu`` for every non-zero label (``label_names`` maps name → value; without it the
    labels present are named ``label_<value>``).
    """
    result = {
        "mae_hu": mae_hu(ct_hu, sct_hu, mask),
        "psnr": psnr(ct_hu, sct_hu, mask),
        "ssim": ssim(ct_hu, sct_hu, mask),
        "mae_bone_hu": mae_bone_hu(ct_hu, sct_hu, mask),
    }
    if labels is not None:
        for name, value in _organ_labels(labels, label_names).items():
            result[f"mae_{name}_hu"] = mae_organ_hu(ct_hu, sct_hu, mask, labels, value)
    return result


def segmentation_metrics(
    pred: np.ndarray, ref: np.ndarray, label_names: Mapping[str, int], spacing: Sequence[float]
) -> dict[str, float]:
    """Dice and HD95 per organ for one case: keys ``dice_<organ>``, ``hd95_<organ>_mm`` and
    ``missed_organs`` (organs in the reference with no predicted voxel).

    Background (label 0) is skipped. Empty-structure conventions as in :func:`dice`/:func:`hd95_mm`
    (a missed organ: Dice 0, HD95 the :func:`hd95_penalty_mm`).
    """
    result: dict[str, float] = {}
    missed = 0
    for name, value in _organ_labels(ref, label_names).items():
        result[f"dice_{name}"] = dice(pred, ref, value)
        result[f"hd95_{name}_mm"] = hd95_mm(pred, ref, value, spacing)
        missed += int(bool(np.any(ref == value)) and not bool(np.any(pred == value)))
    result["missed_organs"] = float(missed)
    return result


def summarise(rows: Sequence[Mapping[str, float]]) -> dict[str, tuple[float, float]]:
    """Mean ± SD over cases for every metric that appears in any row.

    NaN values (and rows missing the key) are ignored, so the statistics are over the cases where
    the metric is defined; ``inf`` (e.g. PSNR of identical images) is kept and propagates. The SD is
    the sample SD (ddof=1); it is ``nan`` with fewer than 2 defined cases, and both are ``nan`` with
    none.

    Returns:
        ``{metric: (mean, sd)}`` in order of first appearance.
    """
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    summary: dict[str, tuple[float, float]] = {}
    for name in names:
        values = np.array([row.get(name, math.nan) for row in rows], np.float64)
        values = values[~np.isnan(values)]
        with np.errstate(invalid="ignore"):  # inf − inf inside the SD of an inf PSNR is nan, as documented
            mean = float(values.mean()) if values.size else math.nan
            sd = float(values.std(ddof=1)) if values.size >= 2 else math.nan
        summary[name] = (mean, sd)
    return summary
