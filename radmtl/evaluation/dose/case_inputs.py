"""What the dose evaluation of one case reads, on one axis-aligned grid: the reference CT, labels and body,
the predicted sCT, its σ map (for the range check) and its MC-dropout samples (for the dose bands).

Every file must lie on the reference CT's grid (``radmtl infer`` writes on the input's grid). An oblique case
(its grid not axis-aligned) is moved onto the axial grid that covers it (:func:`radmtl.data.axial.axial_grid`),
as the dose engine plans on axis-aligned grids only: CT, sCT, samples and σ (as a variance) trilinearly,
labels and body by nearest neighbour; outside the oblique grid air, no label, σ 0. CT and sCT are moved
alike, so their dose difference is still the sCT's. The range check, which traces rays in world mm, keeps
the native arrays (``native``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from radmtl.data.axial import is_axis_aligned

log = logging.getLogger(__name__)

AIR_HU = -1000.0  # outside an oblique CT's field of view on the axial grid that covers it
BODY_HU = -400.0  # without a mask or an MR, the body is the CT above this


@dataclass
class DoseCaseInputs:
    """One case's arrays on one axis-aligned grid (``affine``: voxel → RAS mm) and where they came from."""

    ct_hu: np.ndarray
    sct_hu: np.ndarray
    affine: np.ndarray
    labels: np.ndarray  # int64 label values
    body: np.ndarray  # bool
    sigma_hu: np.ndarray | None  # the σ map of the range check, None without one
    sigma_file: str | None
    samples_hu: np.ndarray | None  # (X, Y, Z, K), K ≥ 2, or None
    samples_file: dict[str, Any] | None  # {"file", "present", "used"}
    axial_grid: dict[str, Any] | None = None  # {"shape", "spacing_mm"} of an oblique case's axial grid
    # An oblique case's inputs on their own grid: the range check traces rays in world mm on them, so the
    # interpolation onto the axial grid (which smooths the samples' voxel-to-voxel spread) does not enter it.
    native: DoseCaseInputs | None = None


def read_dose_case(case_id: str, paths: Mapping[str, Path], sct_path: Path, pred_dir: Path,
                   label_names: Mapping[str, int], options: Any) -> DoseCaseInputs | str:
    """The case's inputs, or the reason (a string) it is skipped: its labels hold no target.

    Args:
        paths: the reference case's files (``ct``, ``labels``; ``mask`` or ``mr`` for the body).
        sct_path: the predicted sCT; ``pred_dir`` holds the σ map and samples, if any.
        options: :class:`~.evaluate_dose.DoseOptions` (``target``, ``samples``).

    Raises:
        VolumeError: a file off the reference grid, unreadable or holding NaN.
    """
    from radmtl.data.io import read_volume
    from radmtl.data.transforms import derive_body_mask
    from radmtl.evaluation.pred_files import read_on_grid

    reference = read_volume(paths["ct"])
    labels = np.rint(read_on_grid(paths["labels"], reference, case_id, "reference labels")).astype(np.int64)
    if options.target not in label_names or not np.any(labels == label_names[options.target]):
        log.warning("dose: case %s skipped: its labels hold no %r (pass --target with a labelled structure)",
                    case_id, options.target)
        return f"no {options.target!r} voxels in the reference labels"
    if "mask" in paths:
        body = read_on_grid(paths["mask"], reference, case_id, "reference mask") != 0
    elif "mr" in paths:
        body = derive_body_mask(read_on_grid(paths["mr"], reference, case_id, "reference mr")) != 0
    else:
        body = reference.array > BODY_HU
    samples, samples_file = _samples_of(case_id, pred_dir, reference, options.samples)
    sigma, sigma_file = _sigma_of(case_id, pred_dir, reference)
    inputs = DoseCaseInputs(reference.array, read_on_grid(sct_path, reference, case_id, "prediction"),
                            reference.affine, labels, body, sigma, sigma_file, samples, samples_file)
    return inputs if is_axis_aligned(reference.affine) else _onto_axial(case_id, inputs)


def _samples_of(case_id: str, pred_dir: Path, reference, wanted: int | None) -> tuple[np.ndarray | None, dict | None]:
    """The case's MC-dropout sCT samples (X, Y, Z, K), the first ``wanted`` of them (None: all), and what was
    read; (None, None) when there is no ``sct_samples`` file, ``wanted`` is 0, or it holds fewer than two
    (with a log line)."""
    from radmtl.evaluation.dose.sample_dose import MIN_SAMPLES, SAMPLES_STEM
    from radmtl.evaluation.pred_files import pred_file, read_on_grid

    path = pred_file(pred_dir, SAMPLES_STEM) if wanted != 0 else None
    if path is None:
        return None, None
    samples = read_on_grid(path, reference, case_id, "sCT samples", channels=True)
    present = samples.shape[-1]
    # A copy, not a view: a view would keep all K samples of the file in memory for the whole case.
    samples = samples[..., :wanted].copy() if wanted is not None and wanted < present else samples
    if samples.shape[-1] < MIN_SAMPLES:
        log.warning("dose: case %s: %s holds %d sample(s); a dose SD needs %d (radmtl infer --save-samples K "
                    "with K >= %d); no sample doses", case_id, path.name, present, MIN_SAMPLES, MIN_SAMPLES)
        return None, None
    if wanted is not None and present < wanted:
        log.warning("dose: case %s: %s holds %d samples, fewer than --dose-samples %d; using %d", case_id,
                    path.name, present, wanted, present)
    return samples, {"file": path.name, "present": int(present), "used": int(samples.shape[-1])}


def _sigma_of(case_id: str, pred_dir: Path, reference) -> tuple[np.ndarray | None, str | None]:
    """The σ map in HU of the range check (``sct_sigma_total``, else ``sct_sigma_aleatoric``) and its file
    name; (None, None), with a log line, without one."""
    from radmtl.evaluation.dose.range_check import SIGMA_STEMS
    from radmtl.evaluation.pred_files import pred_file, read_on_grid

    path = next((p for p in (pred_file(pred_dir, stem) for stem in SIGMA_STEMS) if p is not None), None)
    if path is None:
        log.info("dose: case %s: no %s in %s; range check without σ_WEPL", case_id, " or ".join(SIGMA_STEMS),
                 pred_dir)
        return None, None
    return read_on_grid(path, reference, case_id, "prediction σ"), path.name


def _onto_axial(case_id: str, inputs: DoseCaseInputs) -> DoseCaseInputs:
    """An oblique case's inputs on the axial grid covering it (module docstring)."""
    from radmtl.data.axial import axial_grid, resample_onto

    affine = inputs.affine
    axial, shape = axial_grid(affine, inputs.ct_hu.shape)
    spacing = [round(float(v), 6) for v in np.linalg.norm(axial[:3, :3], axis=0)]
    log.info("dose: case %s: oblique grid; planned on the axial grid covering it, %s voxels of %s mm", case_id,
             "×".join(map(str, shape)), "×".join(f"{v:.3g}" for v in spacing))

    def onto(array: np.ndarray, order: int, outside: float) -> np.ndarray:
        return resample_onto(array, affine, axial, shape, order, outside)

    sigma = inputs.sigma_hu
    if sigma is not None:  # as a variance, as infer resamples σ maps
        sigma = np.sqrt(np.clip(onto(np.square(sigma, dtype=np.float64), 1, 0.0), 0.0, None))
    samples = None
    if inputs.samples_hu is not None:  # one sample at a time into one array: no list of K beside the stack
        samples = np.empty((*shape, inputs.samples_hu.shape[-1]), np.float32)
        for k in range(samples.shape[-1]):
            samples[..., k] = onto(inputs.samples_hu[..., k], 1, AIR_HU)
    return DoseCaseInputs(onto(inputs.ct_hu, 1, AIR_HU), onto(inputs.sct_hu, 1, AIR_HU), axial,
                          onto(inputs.labels, 0, 0), onto(inputs.body.astype(np.uint8), 0, 0) != 0, sigma,
                          inputs.sigma_file, samples, inputs.samples_file,
                          {"shape": list(shape), "spacing_mm": spacing}, native=inputs)
