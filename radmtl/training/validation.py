"""Whole-volume validation during training: sCT MAE (HU), Dice per organ, predicted σ vs error.

Validation runs on the network grid (RAS, training spacing): the resampled reference CT and body
mask are the ground truth there. That is the right yardstick for choosing the best epoch and is
cheaper than mapping every prediction back to the input grid; `radmtl evaluate` reports the
final numbers on the original grid.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from radmtl.config import Config
from radmtl.evaluation.metrics import dice, mae_hu
from radmtl.inference.predict import predict_volume

log = logging.getLogger(__name__)


def validate(
    model: torch.nn.Module,
    cases: Iterable[dict],
    cfg: Config,
    label_names: dict[str, int],
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    qa_dir: Path | None = None,
    qa_prefix: str = "val",
    gather: Callable[[list[dict[str, float]]], list[dict[str, float]]] | None = None,
) -> tuple[dict[str, float], list[Path]]:
    """Validate on preprocessed whole volumes (dicts from ``eval_transforms``).

    ``gather`` (under torchrun) turns this rank's per-case rows into every rank's, so that sharded
    validation averages over all cases.

    Returns:
        Metrics averaged over cases (``val_mae_hu``, ``val_mean_sigma_hu``, ``val_sigma_over_mae``,
        ``val_dice_<organ>``, ``val_dice_mean``) and the QA PNGs written for the first case.
    """
    scale = cfg.data.ct_scale_hu
    per_case: list[dict[str, float]] = []
    qa_paths: list[Path] = []
    organs = {name: value for name, value in label_names.items() if value != 0}
    for i, case in enumerate(cases):
        mr = case["mr"][None]
        preds = predict_volume(
            model, mr, cfg.data.patch_size, overlap=cfg.infer.overlap,
            sw_batch_size=cfg.infer.sw_batch_size, mc_samples=1, likelihood=cfg.loss.likelihood,
            device=device, amp_dtype=amp_dtype,
        )
        body = np.asarray(case["mask"][0]) > 0.5
        row: dict[str, float] = {}
        sct_hu = sigma_hu = seg = ct_hu = ref = None
        if "sct" in preds and "ct" in case:
            ct_hu = np.asarray(case["ct"][0]) * scale
            sct_hu = preds["sct"][0, 0].numpy() * scale
            row["val_mae_hu"] = mae_hu(ct_hu, sct_hu, body)
            if "sigma_aleatoric" in preds:
                sigma_hu = preds["sigma_aleatoric"][0, 0].numpy() * scale
                row["val_mean_sigma_hu"] = float(sigma_hu[body].mean()) if body.any() else float("nan")
                # For a calibrated Gaussian E|error| = σ·√(2/π), so this ratio should approach
                # √(π/2) ≈ 1.25; far below means overconfident σ, far above underconfident.
                if row["val_mae_hu"] > 0:
                    row["val_sigma_over_mae"] = row["val_mean_sigma_hu"] / row["val_mae_hu"]
        if "seg_labels" in preds and "labels" in case:
            seg = preds["seg_labels"][0, 0].numpy().astype(np.int16)
            ref = np.rint(np.asarray(case["labels"][0])).astype(np.int16)
            dices = {f"val_dice_{name}": float(dice(seg, ref, value)) for name, value in organs.items()}
            row.update(dices)
            row["val_dice_mean"] = float(np.nanmean(list(dices.values()))) if dices else float("nan")
        per_case.append(row)
        if i == 0 and qa_dir is not None:
            qa_paths = _qa(case, ct_hu, sct_hu, sigma_hu, seg, ref, body, cfg, label_names, qa_dir, qa_prefix)
    if gather is not None:
        per_case = gather(per_case)
    keys = sorted({k for row in per_case for k in row})
    metrics = {k: float(np.nanmean([row.get(k, np.nan) for row in per_case])) for k in keys}
    return metrics, qa_paths


def _qa(case, ct_hu, sct_hu, sigma_hu, seg, ref, body, cfg, label_names, qa_dir, prefix) -> list[Path]:
    try:
        from radmtl.evaluation.qa import qa_images  # matplotlib: only when pictures are asked for

        return qa_images(
            mr=np.asarray(case["mr"][0]), ct_hu=ct_hu, sct_hu=sct_hu, sigma_hu=sigma_hu, seg=seg,
            ref_labels=ref, mask=body.astype(np.uint8), out_dir=qa_dir, prefix=prefix,
            spacing=cfg.data.spacing, label_names=label_names,
        )
    except Exception as err:  # a failed picture must never stop a multi-day run
        log.warning("QA images could not be drawn (%s: %s); training continues", type(err).__name__, err)
        return []
