"""Phantom datasets on disk: cases made side by side in worker processes and written in the radmtl
dataset layout with ``dataset.json``. Split from :mod:`radmtl.data.phantom.cases`, which makes one case
in memory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from radmtl.data.io import write_volume
from radmtl.data.atomic import atomic_path
from radmtl.data.discovery import SPLITS
from radmtl.data.phantom.cases import (CASE_FILES, DEFAULT_SHAPE, PHANTOM_LABELS, PhantomError, _check_grid,
                                       _check_seed, case_seed, generate_case)
from radmtl.data.phantom.grids import ORIENTATIONS
from radmtl.data.phantom.realism import Realism

log = logging.getLogger(__name__)


# From this many cases on, generate_dataset makes them in parallel by default.
PARALLEL_MIN_CASES = 4


def _workers(workers: int | None, cases: int) -> int:
    if workers is None:
        if cases < PARALLEL_MIN_CASES:
            return 1
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise PhantomError(f"workers must be a positive integer, got {workers!r}")
    return max(1, min(int(workers), cases))


def _write_case(job) -> dict[str, str]:
    """Generate one case and write its files; its dataset.json entry (a worker process runs this)."""
    folder, case_id, seed, shape, spacing, realism, orientation = job
    case = generate_case(seed, shape, spacing, realism, orientation)
    arrays = {"mr": (case.mr, np.float32), "ct": (case.ct_hu, np.float32),
              "mask": (case.mask, np.uint8), "labels": (case.labels, np.uint8),
              "ct_noise_sd": (case.ct_noise_sd_hu, np.float32)}
    entry = {"case": case_id}
    for name in CASE_FILES:
        array, dtype = arrays[name]
        write_volume(array, case.affine, folder / f"{name}.nii.gz", dtype)
        entry[name] = f"{case_id}/{name}.nii.gz"
    return entry


def generate_dataset(
    out_dir: str | Path,
    cases: int,
    seed: int = 0,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing: tuple[float, float, float] | None = None,
    workers: int | None = 1,
    realism: Realism = Realism(),
    orientations: tuple[str, ...] = ("ras",),
    first_case: int = 1,
    split: str = "training",
) -> list[str]:
    """Write ``cases`` phantom cases and ``dataset.json`` in the radmtl dataset layout.

    Case ``i`` (``case_{i+1:03d}``) uses :func:`case_seed` ``(seed, i)``, so it is the same whatever
    ``cases`` is, whichever process makes it, and on any grid: a dataset of cases 1-19 on a coarse grid and
    one of cases 20-24 on a fine grid (``first_case=20``) are the 24 cases of one seed, split in two (each
    case's anatomy; the storage grids of ``orientations`` are taken in turn from the first case written).

    Args:
        out_dir: dataset folder (created if missing).
        cases: number of cases (≥ 1).
        seed: dataset seed (non-negative integer).
        shape: grid size (X, Y, Z) in voxels.
        spacing: voxel size (mm); None covers :data:`DEFAULT_FOV_MM` with ``shape``.
        workers: processes that make cases side by side; None: one per available CPU from
            :data:`PARALLEL_MIN_CASES` cases on (a case takes about a second on the demo's grid, a
            worker about as long to start), otherwise 1 (``radmtl phantom``'s default). Workers are
            spawned processes, which import the caller's main module again: a script that asks for
            more than one must call this under ``if __name__ == "__main__":``, hence the default 1.
        realism: bowel gas, texture and MR→CT deformation (:class:`Realism`); recorded in
            ``dataset.json``.
        orientations: storage grids (:data:`ORIENTATIONS`), taken in turn: the ``k``-th case written (from 0)
            is stored on ``orientations[k % n]``. With more than one, each case's folder is
            ``<orientation>/case_NNN``, so ``radmtl evaluate`` summarises each orientation apart.
        first_case: the number of the first case written (its id ``case_NNN`` and its seed).
        split: the ``dataset.json`` list the cases go to (:data:`SPLITS`): ``validation`` makes a folder
            that ``radmtl train --data TRAIN VAL`` validates and recalibrates σ on as it is.

    Returns:
        The case ids, e.g. ``["case_001", ...]``.
    """
    if isinstance(cases, bool) or not isinstance(cases, (int, np.integer)) or cases < 1:
        raise PhantomError(f"cases must be a positive integer, got {cases!r}")
    seed = _check_seed(seed)
    shape, spacing = _check_grid(shape, spacing)
    cases = int(cases)
    if isinstance(first_case, bool) or not isinstance(first_case, (int, np.integer)) or first_case < 1:
        raise PhantomError(f"first_case must be a positive integer, got {first_case!r}")
    if split not in SPLITS:
        raise PhantomError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    first = int(first_case) - 1
    workers = _workers(workers, cases)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    numbers = range(first, first + cases)  # 0-based case numbers
    seeds = [case_seed(seed, number) for number in numbers]
    orientations = tuple(orientations)
    if not orientations or any(o not in ORIENTATIONS for o in orientations):
        raise PhantomError(f"orientations must be among {', '.join(ORIENTATIONS)}, got {orientations!r}")
    case_orientations = [orientations[index % len(orientations)] for index in range(cases)]
    case_ids = [(f"{case_orientations[index]}/" if len(orientations) > 1 else "") + f"case_{number + 1:03d}"
                for index, number in enumerate(numbers)]
    jobs = [(out_dir / case_ids[index], case_ids[index], seeds[index], shape, spacing, realism,
             case_orientations[index]) for index in range(cases)]
    entries = []
    with contextlib.ExitStack() as stack:
        make = map
        if workers > 1:
            # spawn, not fork: a forked child of a process whose torch already started its OpenMP
            # threads (the tests, the ablation) can hang; the children import only numpy, scipy, nibabel.
            context = multiprocessing.get_context("spawn")
            make = stack.enter_context(ProcessPoolExecutor(workers, mp_context=context)).map
        for entry in make(_write_case, jobs):
            entries.append(entry)
            log.info("phantom %s (%d/%d) written to %s", entry["case"], len(entries), cases, out_dir)

    dataset = {
        "name": "radmtl-phantom",
        "description": "Synthetic male pelvis: T2-like MR, CT in HU with Gaussian noise of known SD "
                       "(ct_noise_sd, HU), body mask and organ labels; generated by radmtl.data.phantom.",
        "labels": dict(PHANTOM_LABELS),
        "spacing_mm": [float(s) for s in spacing],
        "shape": list(shape),
        "seed": seed,
        "case_seeds": seeds,
        "realism": realism.as_dict(),
        "case_orientations": case_orientations,
        **{name: entries if name == split else [] for name in SPLITS},
    }
    with atomic_path(out_dir / "dataset.json") as tmp:
        tmp.write_text(json.dumps(dataset, indent=2) + "\n")
    return [entry["case"] for entry in entries]
