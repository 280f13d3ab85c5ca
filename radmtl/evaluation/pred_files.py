"""The files of ``radmtl infer``'s output folder as ``radmtl evaluate`` (and its ``--dose``) reads them: which
map stems there are, in which formats, and each read onto the reference's grid, refused in one line when off it
or not finite."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from radmtl.data.io import Volume, VolumeError, read_volume
from radmtl.data.grid import grid_mismatch
from radmtl.evaluation import detection as D

log = logging.getLogger(__name__)

PRED_FILES = ("sct", "seg", *D.SIGMA_MAPS, *D.SEG_UNCERTAINTY_MAPS)  # the stems radmtl infer writes
PRED_SUFFIXES = (".nii.gz", ".nii", ".mha", ".nrrd")


def pred_file(folder: Path, stem: str) -> Path | None:
    """``folder/<stem>`` in the first of :data:`PRED_SUFFIXES` present (a warning if several are), or None."""
    found = [folder / f"{stem}{suffix}" for suffix in PRED_SUFFIXES if (folder / f"{stem}{suffix}").is_file()]
    if len(found) > 1:
        log.warning("%s: several %s files (%s); using %s", folder, stem, ", ".join(p.name for p in found),
                    found[0].name)
    return found[0] if found else None


def read_on_grid(path: Path, reference: Volume, case_id: str, what: str, channels: bool = False) -> np.ndarray:
    """The array of ``path`` ((X, Y, Z), or (X, Y, Z, C) with ``channels``), which must lie on ``reference``'s
    grid and be finite.

    Raises:
        VolumeError: one line naming the case, the file and the fix.
    """
    volume = read_volume(path, channels=channels)
    problem = grid_mismatch(volume.grid, reference.grid)
    if problem is not None:
        raise VolumeError(
            f"case {case_id}: {what} {path.name} is not on the reference grid of {reference.path} "
            f"({problem}); run radmtl infer on this dataset's mr files so outputs land on its grid"
        )
    bad = int(np.count_nonzero(~np.isfinite(volume.array)))
    if bad:
        raise VolumeError(f"case {case_id}: {what} {path.name} holds {bad} NaN or Inf voxel(s); the model that "
                          "wrote it is broken (check its checkpoint) or the file was damaged: rerun radmtl infer")
    return volume.array
