"""What a training run shows a person: the per-epoch line, the progress bar, the run's own log file."""

from __future__ import annotations

import logging
import sys
from pathlib import Path


def progress_bar(enabled: bool, total: int, epoch: int, epochs: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"epoch {epoch}/{epochs}", unit="step", leave=False, file=sys.stderr,
                dynamic_ncols=True, disable=not enabled)


def summary_line(epoch: int, epochs: int, m: dict[str, float], seconds: float, improved: bool) -> str:
    parts = [f"epoch {epoch}/{epochs}", f"loss {m.get('train_loss_total', float('nan')):.4f}"]
    for key, fmt in (("train_mae_hu", "train MAE {:.1f} HU"), ("val_mae_hu", "val MAE {:.1f} HU"),
                     ("val_mean_sigma_hu", "val σ {:.1f} HU"), ("val_dice_mean", "val Dice {:.3f}"),
                     ("train_sigma_seg", "σ_seg {:.3f}"), ("patches_per_s", "{:.1f} patches/s")):
        if key in m:
            parts.append(fmt.format(m[key]))
    parts.append(f"{seconds:.0f} s" + ("  *best*" if improved else ""))
    return "  ".join(parts)


def attach_file_log(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path, delay=True)  # no empty train.log from a run that fails at once
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    logger = logging.getLogger("radmtl")
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    return handler


