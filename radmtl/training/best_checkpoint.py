"""The best checkpoint and the best metric agree after any kill: what ``--resume`` mends first.

An epoch that improves is published twice: ``checkpoint_latest.pt`` first (it carries the new best metric
and epoch), then ``checkpoint_best.pt``, each by an atomic rename. A kill between the two renames (or
during the second file's write) leaves a latest checkpoint that names epoch N the best while the best
checkpoint still holds an earlier epoch, and the complete new file as a hidden temporary. Resumed as it
stood, the run printed epoch N's metric, fitted the σ-scaling factor on the earlier weights and logged them
to MLflow as its model.

:func:`reconcile_best` completes the publication instead: the latest checkpoint of an improving epoch *is*
that epoch's best checkpoint (both are written from one payload), so it is copied into place. Where the
file on disk cannot be mended that way (deleted, or another epoch for a reason no kill explains) the best
metric is taken from the file actually there, so the checkpoint, its metric and the logged model always
agree. Temporary files a killed write left are removed.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import Any

from radmtl.data.atomic import atomic_path
from radmtl.nn.checkpoint import BEST, LATEST, CheckpointError, load_checkpoint

log = logging.getLogger(__name__)

# atomic_path's temporary names: ".<8 hex>.tmp.<final name>"
_TEMPORARY = re.compile(rf"^\.[0-9a-f]{{8}}\.tmp\.({re.escape(BEST)}|{re.escape(LATEST)})$")


def reconcile_best(out_dir: Path, latest: dict[str, Any]) -> tuple[float | None, int | None]:
    """Make ``OUT/checkpoint_best.pt`` the epoch that ``latest`` (the loaded latest checkpoint) names best.

    Returns:
        ``(best metric, best epoch)`` to resume with: the latest checkpoint's when the best file holds that
        epoch (as found, or once the interrupted publication is completed), else the best file's own.
    """
    out_dir = Path(out_dir)
    _remove_temporaries(out_dir)
    metric, epoch = latest.get("best_metric"), latest.get("best_epoch")
    if epoch is None:
        return metric, epoch
    best = out_dir / BEST
    found = _epoch_of(best)
    if found == epoch:
        return metric, epoch
    if int(latest["epoch"]) == int(epoch):
        # Killed between the two publications of an improving epoch: the latest file is the best one.
        with atomic_path(best) as tmp:
            shutil.copyfile(out_dir / LATEST, tmp)
        log.info("resume: %s now holds epoch %d, the best (%s), as the interrupted run was publishing it "
                 "(it held %s)", best, epoch, metric, f"epoch {found}" if found is not None else "nothing")
        return metric, epoch
    if found is None:
        log.warning("resume: %s (epoch %d, the best so far) is missing or unreadable; the best checkpoint is "
                    "chosen anew from the next validation", best, epoch)
        return None, None
    payload = load_checkpoint(best)
    log.warning("resume: %s holds epoch %d, not epoch %d that %s names best; going on from the file on disk "
                "(best %s at epoch %d)", best, found, epoch, LATEST, payload.get("best_metric"), found)
    return payload.get("best_metric"), found


def _epoch_of(path: Path) -> int | None:
    if not path.is_file():
        return None
    try:
        return int(load_checkpoint(path)["epoch"])
    except (CheckpointError, KeyError, TypeError, ValueError):
        return None


def _remove_temporaries(out_dir: Path) -> None:
    """Remove the temporary checkpoint files a killed write left (atomic_path's names), naming them."""
    left = [p for p in out_dir.iterdir() if _TEMPORARY.match(p.name) and p.is_file()] if out_dir.is_dir() else []
    for path in left:
        path.unlink(missing_ok=True)
    if left:
        log.info("resume: removed %d temporary checkpoint file(s) an interrupted write left: %s", len(left),
                 ", ".join(p.name for p in left))
