"""σ recalibration after training: fit the σ-scaling factor on the validation cases.

σ-scaling (Laves et al., MIDL 2020): one factor ``s`` multiplies the predicted aleatoric σ so that
the validation z-scores ``(ct − sct)/σ_total`` have unit root-mean-square, where
``σ_total² = (s·σ_aleatoric)² + σ_epistemic²``. Without epistemic variance this is the closed form
``s² = mean(r²/σ_aleatoric²)``, the maximum-likelihood factor of the Gaussian NLL; with it, ``s`` solves
``mean(r² / (s²·σ_al² + σ_ep²)) = 1``, which is monotone in ``s`` (solved by Brent's method). The same
equation serves both likelihoods because every σ radmtl writes is a standard deviation (a Laplace
head's σ = √2·b), and the z-score test is stated on standard deviations.

The fit uses exactly what ``radmtl infer`` writes — the same preprocessing, sliding window, T
MC-dropout samples and resampling onto each case's own grid — and each case's reference CT and
body mask on that grid (DESIGN.md section 1: calibration is measured on the input grid). The factor
is stored in the checkpoint under ``sigma_scaling``; infer applies it unless told not to.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import optimize

from radmtl.evaluation.calibration import SIGMA_FLOOR_HU, coverage, zscore_stats
from radmtl.evaluation.review import ReviewThresholds, ValidationCase, fit_review_thresholds
from radmtl.nn.checkpoint import model_from_checkpoint, save_checkpoint
from radmtl.data.discovery import Case
from radmtl.inference.case_maps import (body_outline, finer_than_network, grid_sigma, map_to_input_grid,
                                        predict_on_network_grid)
from radmtl.data.io import read_volume

log = logging.getLogger(__name__)

METHOD = ("σ-scaling (Laves et al. 2020): s solves mean((ct - sct)^2 / ((s*sigma_aleatoric)^2 + "
          "sigma_epistemic^2)) = 1 over the body voxels of the validation cases, on their own grids")
# The factor is searched in [1/1000, 1000]: outside that the σ head is broken, not miscalibrated.
_SCALE_RANGE = (1e-3, 1e3)


@dataclass(frozen=True)
class CaseResiduals:
    """Body-voxel values of one validation case on its own grid, in HU."""

    case_id: str
    residual_hu: np.ndarray
    sigma_aleatoric_hu: np.ndarray
    sigma_epistemic_hu: np.ndarray
    labels: np.ndarray | None = None  # reference labels of the same voxels, where the case has them
    sigma_grid_hu: np.ndarray | None = None  # on a grid finer than the network's: what it cannot resolve


def fit_sigma_scale(residual_hu: np.ndarray, sigma_aleatoric_hu: np.ndarray,
                    sigma_epistemic_hu: np.ndarray | None = None) -> float:
    """The σ-scaling factor s (see the module docstring); 1-D arrays over the voxels used.

    Raises:
        ValueError: no voxels, or the epistemic σ alone already over-covers the residuals so that
            no positive factor reaches unit z RMS.
    """
    r2 = np.square(np.asarray(residual_hu, np.float64))
    a2 = np.square(np.maximum(np.asarray(sigma_aleatoric_hu, np.float64), SIGMA_FLOOR_HU))
    if r2.size == 0:
        raise ValueError("no voxels to fit the σ-scaling factor on")
    if sigma_epistemic_hu is None or not np.any(sigma_epistemic_hu):
        return float(math.sqrt(np.mean(r2 / a2)))
    e2 = np.square(np.asarray(sigma_epistemic_hu, np.float64))

    def excess(scale: float) -> float:
        return float(np.mean(r2 / (scale * scale * a2 + e2))) - 1.0

    low, high = _SCALE_RANGE
    if excess(low) <= 0.0:
        raise ValueError("the epistemic σ alone already exceeds the validation errors; no σ-scaling "
                         "factor in [0.001, 1000] gives unit z RMS")
    if excess(high) >= 0.0:
        return high
    return float(optimize.brentq(excess, low, high, xtol=1e-6))


def case_residuals(loaded: Any, case: Case, mc_samples: int, device: Any) -> CaseResiduals:
    """Run one validation case through infer's path (no σ-scaling) and keep its body voxels."""
    from radmtl.data.transforms import derive_body_mask

    cfg = loaded.cfg
    maps, net_affine, _ = predict_on_network_grid(
        loaded, case.paths["mr"], mc_samples=mc_samples, overlap=cfg.infer.overlap,
        sw_batch_size=cfg.infer.sw_batch_size, device=device, amp_dtype=None)
    ct = read_volume(case.paths["ct"])
    # The body outline infer uses on an input grid finer than the network's (the MR's grid is the CT's).
    # (the MR is read for its body mask only where the outline applies: validation cases on the network's
    # own grid need neither)
    outline = (body_outline(maps["sct"], net_affine, read_volume(case.paths["mr"]), cfg.data.ct_scale_hu)
               if finer_than_network(net_affine, ct.affine) else None)
    if outline is not None:  # what the network grid cannot resolve: not scaled, like the epistemic σ
        maps["sigma_grid"] = grid_sigma(maps["sct"])
    on_grid = {key: map_to_input_grid(key, maps[key], net_affine, ct, cfg.data.ct_scale_hu, outline)
               for key in ("sct", "sigma_aleatoric", "sigma_epistemic", "sigma_grid") if key in maps}
    if "mask" in case.paths:
        body = read_volume(case.paths["mask"]).array != 0
    else:
        body = derive_body_mask(read_volume(case.paths["mr"]).array) != 0
    zeros = np.zeros(int(body.sum()), np.float32)
    return CaseResiduals(
        case_id=case.case_id,
        residual_hu=(ct.array - on_grid["sct"])[body],
        sigma_aleatoric_hu=on_grid["sigma_aleatoric"][body],
        sigma_epistemic_hu=on_grid["sigma_epistemic"][body] if "sigma_epistemic" in on_grid else zeros,
        labels=read_volume(case.paths["labels"]).array[body] if "labels" in case.paths else None,
        sigma_grid_hu=on_grid["sigma_grid"][body] if "sigma_grid" in on_grid else None,
    )


def _unscaled(case: CaseResiduals) -> np.ndarray:
    """The σ that σ-scaling leaves alone: σ_epistemic and, on a finer grid, σ_grid (in quadrature)."""
    if case.sigma_grid_hu is None:
        return case.sigma_epistemic_hu
    return np.sqrt(np.square(case.sigma_epistemic_hu) + np.square(case.sigma_grid_hu))


def pool(res: list[CaseResiduals]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All validation voxels together: (residual, σ_aleatoric, σ not scaled: epistemic [+ grid]) in HU."""
    return (np.concatenate([c.residual_hu for c in res]), np.concatenate([c.sigma_aleatoric_hu for c in res]),
            np.concatenate([_unscaled(c) for c in res]))


def calibration_summary(residual_hu: np.ndarray, sigma_aleatoric_hu: np.ndarray, sigma_epistemic_hu: np.ndarray,
                        scale: float) -> dict[str, float]:
    """z mean/SD and 95 % coverage of pooled voxels with σ_aleatoric × ``scale``."""
    # The metrics take (x, y, z) volumes; pooled voxels are a (n, 1, 1) one.
    r = residual_hu[:, None, None]
    total = np.sqrt((scale * sigma_aleatoric_hu) ** 2 + sigma_epistemic_hu ** 2)[:, None, None]
    inside = np.ones(r.shape, bool)
    z_mean, z_sd = zscore_stats(r, np.zeros_like(r), total, inside)
    return {"zscore_mean": z_mean, "zscore_sd": z_sd, "coverage_95": coverage(r, np.zeros_like(r), total, inside)}


def review_thresholds(res: list[CaseResiduals], scale: float, cfg: Any, label_names: dict[str, int]) -> ReviewThresholds:
    """The review's flag levels (:mod:`radmtl.evaluation.review`) on the same voxels, with σ_aleatoric × ``scale``.

    σ_grid is left out (the review flags on √((s·σ_aleatoric)² + σ_epistemic²)): the step-edge spread it
    adds on a finer grid marks every tissue edge, and flags on σ_total with it lost their meaning there
    (design phantoms, seed 1000, 2 × 2 × 3 mm, level fitted on 7 × 7 × 6 mm validation cases: precision for
    |error| > 100 HU 0.35-0.38 with σ_grid, 0.45-0.50 without it, recall 0.88-0.90; 0.48-0.54 on the
    network grid itself).
    """
    return fit_review_thresholds(
        [ValidationCase(c.case_id, np.abs(c.residual_hu),
                        np.sqrt(np.square(scale * c.sigma_aleatoric_hu) + np.square(c.sigma_epistemic_hu)), c.labels)
         for c in res], label_names, cfg.infer.review_error_hu, cfg.infer.review_precision)


def recalibrate(checkpoint: str | Path, val_cases: list[Case], device: Any = "cpu",
                mc_samples: int | None = None) -> dict[str, Any] | None:
    """Fit the σ-scaling factor on ``val_cases`` and store it in ``checkpoint`` (atomically), with the
    review thresholds fitted on the same voxels (``review_thresholds``).

    Returns:
        The ``sigma_scaling`` record written into the checkpoint (its ``review_thresholds`` entry holds
        the review's), or None when there is nothing to fit (no per-voxel σ head, or no validation
        case with a CT).
    """
    loaded = model_from_checkpoint(checkpoint, device)
    cfg = loaded.cfg
    usable = [c for c in val_cases if "ct" in c.paths and "mr" in c.paths]
    if not cfg.model.sct_log_var or not usable:
        log.info("σ recalibration skipped: %s", "no per-voxel σ head" if not cfg.model.sct_log_var
                 else "no validation case with a CT")
        return None
    mc_samples = int(mc_samples or cfg.infer.mc_samples)
    res = [case_residuals(loaded, case, mc_samples, device) for case in usable]
    pooled = pool(res)
    scale = fit_sigma_scale(*pooled)
    before, after = calibration_summary(*pooled, 1.0), calibration_summary(*pooled, scale)
    record = {
        "factor": scale,
        "method": METHOD,
        "likelihood": cfg.loss.likelihood,
        "mc_samples": mc_samples,
        "cases": [c.case_id for c in res],
        "voxels": int(pooled[0].size),
        "before": before,
        "after": after,
    }
    thresholds = review_thresholds(res, scale, cfg, loaded.label_names)
    # The payload read to build the model (its tensors stay on the CPU): no second read of the file.
    payload = dict(loaded.payload)
    payload["sigma_scaling"] = record
    payload["review_thresholds"] = thresholds.as_dict()
    save_checkpoint(checkpoint, payload)
    log.info("review flag: σ_total ≥ %.1f HU (precision %.2f, recall %.2f for |error| > %g HU on the validation "
             "voxels); a case asks for review above %.2f %% of its body flagged", thresholds.sigma_total_hu,
             thresholds.precision, thresholds.recall, thresholds.error_hu, 100 * thresholds.case_flagged_fraction)
    log.info("σ-scaling factor %.3f on %d validation case(s): z SD %.3f → %.3f, coverage_95 %.3f → %.3f",
             scale, len(res), before["zscore_sd"], after["zscore_sd"], before["coverage_95"],
             after["coverage_95"])
    return record | {"review_thresholds": thresholds.as_dict()}


__all__ = ["CaseResiduals", "calibration_summary", "case_residuals", "fit_sigma_scale", "pool", "recalibrate", "review_thresholds"]
