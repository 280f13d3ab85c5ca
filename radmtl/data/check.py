"""``radmtl check DATA``: validate every case of a dataset before anything trains on it.

Every case is checked and every problem collected (like nnU-Net's ``verify_dataset_integrity``,
but without stopping at the first): one unreadable file is one problem, and the other files of
that case are still checked. One case is in memory at a time, and only one full volume of it.

Rules:

* Required files: ``mr`` for every case. For training (``purpose="train"``), a training or
  validation case must also bring a target for at least one task — ``ct`` (sCT) or ``labels``
  (segmentation): a case trains the tasks it has targets for (mixed supervision), so only a case
  that no task can use is a problem. :func:`task_coverage` says which cases serve which task.
  Test cases need only ``mr``. ``mask`` is never required: it is derived from the MR when absent.
* Grid: every file must share the mr's grid (shape, spacing, origin, direction, within
  :mod:`radmtl.data.io` tolerances).
* Every file: readable, 3D, finite (no NaN/Inf), with a usable affine (finite, every voxel size
  non-zero, independent axes). MR and CT must not be constant. The MR's rules are
  :func:`radmtl.data.volume_rules.mr_problems`, the ones ``radmtl infer`` applies; a file whose affine
  is broken (the mr's included) is not compared with the mr's grid.
* CT must look like Hounsfield units; the first matching rule is reported:
  values within [0, 1] → normalised; max < 100 HU → no tissue/bone, scaled; min > −500 HU → no
  air, probably stored 0-based (HU + 1024); max − min > 5000 → raw or extended-scale values.
* Mask: only 0 and 1, at least one foreground voxel.
* Labels: integer values, all declared in ``dataset.json`` (or non-negative when undeclared).
* ct_noise_sd: no negative values.
* Laterality: each ``*_left``/``*_right`` label pair named in ``dataset.json`` lies the right way round
  in world coordinates, left structure on the patient's left of its twin and of the mask's midline
  (:mod:`radmtl.data.laterality`, the guard ``radmtl infer`` applies to its predictions).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from radmtl.data.discovery import (
    DATASET_JSON,
    IMAGE_KEYS,
    Case,
    DatasetError,
    DatasetIndex,
    discover,
    find_volumes,
    folders_without_mr,
)
from radmtl.data.io import VolumeError, VolumeHeaderError, read_volume
from radmtl.data.grid import Grid, grid_mismatch
from radmtl.data.laterality import check_laterality, laterality_problems, midline_x
from radmtl.data.volume_rules import affine_problems, constant_problem, finite_values, mr_problems

log = logging.getLogger(__name__)

# CT plausibility thresholds in HU (see the module docstring).
HU_AIR_MAX = -500.0
HU_TISSUE_MIN = 100.0
HU_RANGE_MAX = 5000.0

_MAX_LISTED = 8  # values listed in a message before "..."


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset: which case and file, what is wrong, how to fix it."""

    case_id: str
    file: str
    what: str
    fix: str

    def line(self) -> str:
        """The problem as one line: ``case_003 ct.nii.gz: <what> — fix: <fix>``."""
        where = f"{self.case_id} {self.file}" if self.file else self.case_id
        # Library messages (nibabel, zlib) may carry newlines; the CLI promises one line each.
        return " ".join(f"{where}: {self.what} — fix: {self.fix}".split())


PURPOSES = ("train", "infer")
TASK_TARGETS = {"sct": "ct", "seg": "labels"}  # task -> the file that is its target


def check_dataset(
    root: str | Path,
    purpose: str = "train",
    progress: Callable[[int, int], None] | None = None,
) -> tuple[DatasetIndex | None, list[Problem]]:
    """Check every case of a dataset folder and collect every problem.

    Args:
        root: the dataset folder.
        purpose: ``train`` (every training/validation case needs a ``ct`` or ``labels`` target) or
            ``infer`` (only ``mr``).
        progress: called as ``progress(done, total)`` after each case.

    Returns:
        ``(index, problems)``; ``index`` is None when the dataset itself cannot be indexed, in
        which case ``problems`` holds one problem with case id ``"dataset"``.
    """
    if purpose not in PURPOSES:
        raise ValueError(f"purpose: must be one of {list(PURPOSES)}, got {purpose!r}")
    try:
        index = discover(root)
    except DatasetError as err:
        # dataset.json is named as such; a missing or empty folder by the path the user gave.
        file = err.file.name if err.file.name == DATASET_JSON else str(root)
        return None, [Problem("dataset", file, err.what, err.fix)]

    problems: list[Problem] = []
    if not index.has_dataset_json:
        for folder in folders_without_mr(index.root):
            others = sorted(p.name for p in folder.iterdir() if p.is_file())
            problems.append(Problem(
                folder.name, "mr.*",
                f"no mr file, so this folder is skipped (it holds {', '.join(others[:_MAX_LISTED])})",
                "name the MR mr.nii.gz (or .nii/.mha/.nrrd), or remove the folder"))

    test_ids = {c.case_id for c in index.test}
    total = len(index.cases)
    for done, case in enumerate(index.cases, start=1):
        case_problems = check_case(case, index, ("mr",))
        if purpose == "train" and case.case_id not in test_ids and not case.tasks:
            case_problems.insert(0, Problem(
                case.case_id, "ct.*/labels.*",
                f"neither ct nor labels in {case.case_id}/, so no task can train on it",
                "add ct.nii.gz (sCT) and/or labels.nii.gz (segmentation), move the case to the "
                '"test" list of dataset.json, or remove it'))
        problems.extend(case_problems)
        if progress is not None:
            progress(done, total)
    log.debug("%s: checked %d case(s), %d problem(s)", index.root, total, len(problems))
    return index, problems


def task_coverage(index: DatasetIndex) -> dict[str, list[str]]:
    """Task (``sct``, ``seg``) → the training/validation case ids that have its target file."""
    cases = index.training + index.validation
    return {task: [c.case_id for c in cases if task in c.tasks] for task in TASK_TARGETS}


def describe_dataset(index: DatasetIndex) -> str:
    """One line: cases per group (centre/anatomy folder) and how many cases serve each task."""
    cases = index.training + index.validation
    groups: dict[str, int] = {}
    for case in index.cases:
        groups[case.group] = groups.get(case.group, 0) + 1
    where = ""
    if len(groups) > 1 or "" not in groups:
        where = " in " + ", ".join(f"{g or '(top level)'} ({n})" for g, n in sorted(groups.items()))
    coverage = task_coverage(index)
    served = [f"{name} {len(coverage[task])} of {len(cases)}"
              for task, name in (("sct", "sCT"), ("seg", "segmentation"))]
    note = ""
    if cases and not coverage["seg"]:
        note = " (no labels: radmtl train trains the sCT alone)"
    elif cases and not coverage["sct"]:
        note = " (no ct: radmtl train trains segmentation alone)"
    return f"{len(index.cases)} case(s){where}; trains {', '.join(served)}{note}"


def check_case(case: Case, index: DatasetIndex, required: Sequence[str] = ("mr",)) -> list[Problem]:
    """All problems of one case (see the module docstring for the rules)."""
    problems: list[Problem] = []
    case_dir = index.root / case.case_id

    def problem(key: str, path: Path | None, what: str, fix: str) -> None:
        name = _display(path, case_dir, index.root) if path is not None else f"{key}.*"
        problems.append(Problem(case.case_id, name, what, fix))

    for key in required:
        if key not in case.paths:
            problem(key, None, f"{key} not found in {case.case_id}/ (looked for {key}.nii.gz, "
                    f"{key}.nii, {key}.mha, {key}.nrrd)",
                    f"add the {key} file, or list its path in dataset.json")

    mr_grid: Grid | None = None
    midline: float | None = None  # the body mask's, for the laterality rule of the labels
    for key in IMAGE_KEYS:  # mr first: it is the reference grid for the others
        path = case.paths.get(key)
        if path is None:
            continue
        duplicates = [p for p in find_volumes(path.parent, key) if p != path] if path.parent == case_dir else []
        if duplicates:
            problem(key, path, f"ambiguous: also found {', '.join(p.name for p in duplicates)}",
                    f"keep one {key} file per case")
        if not path.exists():
            problem(key, path, "file not found", "fix the path in dataset.json or add the file")
            continue
        try:
            volume = read_volume(path)
        except VolumeError as err:
            what, fix = _split_volume_error(err, path)
            problem(key, path, what, fix)
            continue
        if key == "mr":  # the rule radmtl infer applies too: geometry, finite, not constant
            for what, fix in mr_problems(volume):
                problem(key, path, what, fix)
            # A broken mr affine is reported once; comparing the other files with it would only
            # contradict itself ("spacing [nan, 3, 3] differs from mr [nan, 3, 3]").
            mr_grid = None if affine_problems(volume.affine) else volume.grid
        else:
            issues = affine_problems(volume.affine)
            for what, fix in issues:
                problem(key, path, what, fix)
            if not issues:
                _check_grid(key, path, volume.grid, mr_grid, problem)
            _check_values(key, path, volume.array, index, problem)
            if not issues and key == "mask":
                midline = midline_x(volume.array > 0, volume.affine)
            elif not issues and key == "labels" and index.labels is not None:
                for what in laterality_problems(check_laterality(volume.array, volume.affine, index.labels,
                                                                 midline)):
                    problem(key, path, f"left/right labels swapped: {what}",
                            "swap the *_left and *_right label values (RAS+ world: +x is the patient's right), "
                            "or fix the header if the image is mirrored")
        del volume  # drop the array before reading the next file of the case
    return problems


def _check_grid(key: str, path: Path, grid: Grid, mr_grid: Grid | None, problem: Callable) -> None:
    if mr_grid is None:
        return  # the mr itself is broken; that is reported, and there is nothing to compare with
    mismatch = grid_mismatch(grid, mr_grid)
    if mismatch is None:
        return
    mismatch = mismatch.replace(" differs from ", " differs from mr ", 1)
    if mismatch.startswith("direction"):
        mismatch = "direction (orientation) differs from mr"
    how = "nearest-neighbour interpolation" if key in ("mask", "labels") else "linear interpolation"
    problem(key, path, mismatch,
            f"resample {key} onto the mr grid ({how}, mr as reference), or correct its header "
            "if only the header is wrong")


def _check_values(key: str, path: Path, array: np.ndarray, index: DatasetIndex, problem: Callable) -> None:
    values, issue = finite_values(array)  # the remaining checks judge the finite voxels only
    if issue is not None:
        problem(key, path, *issue)
        if not values.size:
            return
    constant = constant_problem(values, key)
    if constant is not None:
        problem(key, path, *constant)
        return
    lo, hi = float(values.min()), float(values.max())
    if key == "ct":
        verdict = _hu_verdict(lo, hi)
        if verdict is not None:
            what, fix = verdict
            problem(key, path, f"values not HU: {what}", fix)
    elif key == "mask":
        found = _unique(values)
        extra = [v for v in found if v not in (0, 1)]
        if extra:
            problem(key, path, f"mask values other than 0/1: {_list(extra)}",
                    "binarise it (mask > 0) and save as 0/1")
        elif 1 not in found:
            problem(key, path, "empty mask: no foreground voxels",
                    "re-export the body mask, or delete it so radmtl derives one from the mr")
    elif key == "labels":
        _check_labels(path, values, index, problem)
    elif key == "ct_noise_sd" and lo < 0:
        problem(key, path, f"negative noise SD values (min {lo:g})",
                "store the standard deviation in HU (>= 0)")


def _hu_verdict(lo: float, hi: float) -> tuple[str, str] | None:
    rng = f"range [{lo:g}, {hi:g}]"
    if lo >= 0.0 and hi <= 1.0:
        return (f"{rng} looks normalised to [0, 1]",
                "use the original CT in HU (air ~ -1000, water 0, bone > 300)")
    if hi < HU_TISSUE_MIN:
        return (f"{rng}, max < {HU_TISSUE_MIN:g} means no soft tissue or bone in HU (scaled?)",
                "use the CT in HU (apply RescaleSlope/RescaleIntercept)")
    if lo > HU_AIR_MAX:
        return (f"{rng}, min > {HU_AIR_MAX:g} means no air; probably stored 0-based (HU + 1024)",
                "subtract the offset (usually 1024) or apply RescaleIntercept so air is ~ -1000 HU")
    if hi - lo > HU_RANGE_MAX:
        return (f"{rng} spans over {HU_RANGE_MAX:g} HU (raw scanner values or extended scale)",
                "apply RescaleSlope/RescaleIntercept, or clip to [-1024, 3071] HU")
    return None


def _check_labels(path: Path, values: np.ndarray, index: DatasetIndex, problem: Callable) -> None:
    non_integer = values[values != np.round(values)]
    if non_integer.size:
        problem("labels", path, f"non-integer label values (e.g. {_list(np.unique(non_integer)[:3])})",
                "save labels as integers; resample them with nearest neighbour, never linear")
        return
    found = _unique(values)
    if index.labels is not None:
        declared = set(index.labels.values())
        extra = [v for v in found if v not in declared]
        if extra:
            problem("labels", path,
                    f"label value(s) {_list(extra)} not in dataset.json labels {sorted(declared)}",
                    'add them to "labels" in dataset.json, or relabel the file')
    else:
        negative = [v for v in found if v < 0]
        if negative:
            problem("labels", path, f"negative label value(s) {_list(negative)}",
                    "use 0 for background and 1, 2, ... for organs")


def _unique(values: np.ndarray) -> list[int | float]:
    """Sorted distinct values, as ints where integral (bincount is much faster than np.unique)."""
    lo, hi = float(values.min()), float(values.max())
    if lo >= 0 and hi <= 65535 and np.array_equal(values, np.round(values)):
        counts = np.bincount(values.astype(np.int64, copy=False).ravel(), minlength=1)
        return [int(v) for v in np.flatnonzero(counts)]
    return [int(v) if float(v).is_integer() else float(v) for v in np.unique(values)]


def _list(values: Sequence) -> str:
    shown = [f"{v:g}" if isinstance(v, float) else str(v) for v in list(values)[:_MAX_LISTED]]
    return "[" + ", ".join(shown) + (", ..." if len(values) > _MAX_LISTED else "") + "]"


def _split_volume_error(err: VolumeError, path: Path) -> tuple[str, str]:
    """Turn :func:`read_volume`'s one-string message into (what, fix) without the path prefix."""
    if isinstance(err, VolumeHeaderError):
        return err.what, err.fix
    message = str(err)
    prefix = f"{path}: "
    if message.startswith(prefix):
        message = message[len(prefix):]
    if "expected a 3D image" in message or "components per voxel" in message:
        what, _, fix = message.partition("; ")
        return f"not a 3D scalar image: {what}", fix or "export a single 3D volume"
    # The path is already in the Problem; repeating it inside the detail only lengthens the line.
    what = message.split("; the file is corrupt")[0].replace(f'"{path}"', path.name).replace(str(path), path.name)
    # Decoder errors can be long (whole header dumps); the line only needs the gist.
    what = re.sub(r"\s+", " ", what)
    if len(what) > 160:
        what = what[:157] + "..."
    return f"corrupt or unreadable file: {what}", "re-export or re-copy the file"


def _display(path: Path | None, *bases: Path) -> str:
    """``path`` relative to the first base it lies under (the case folder, then the dataset)."""
    if path is None:
        return ""
    for base in bases:
        try:
            return Path(path).relative_to(base).as_posix()
        except ValueError:
            continue
    return str(path)
