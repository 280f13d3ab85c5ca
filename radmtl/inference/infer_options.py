"""What ``radmtl infer`` runs with (:class:`InferOptions`) and the options it refuses before any case runs:
those wrong whatever the model (:func:`check_options`, before anything is read) and those the loaded model's
config tells (:func:`check_model_options`, right after it is loaded)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from radmtl.config import mc_samples_problem
from radmtl.data.io import OUTPUT_FORMATS
from radmtl.errors import RadmtlError
from radmtl.inference.dicom_grid import DICOM_GRIDS


@dataclass(frozen=True)
class InferOptions:
    """How to run the network; ``None`` fields fall back to the checkpoint's ``cfg.infer``."""

    mc_samples: int | None = None
    overlap: float | None = None
    sw_batch_size: int | None = None
    device: str = "auto"
    save_probabilities: bool = False
    progress: bool = False
    # Apply the checkpoint's σ-scaling factor (fitted on the validation cases after training).
    sigma_scaling: bool = True
    # The SeriesInstanceUID to run when a DICOM folder holds several series.
    series: str | None = None
    # Also write a DICOM CT series and RT Structure Set; None: only when the input is DICOM.
    dicom_out: bool | None = None
    # File format of the maps: "auto" (the input's own; NIfTI for DICOM), "nii.gz", "nii" or "mha".
    output_format: str = "auto"
    # PatientPosition of the DICOM outputs; None: the MR's, or HFS with a warning where it has none.
    patient_position: str | None = None
    # The grid of the DICOM outputs: "input" (the MR's) or "axial" (radmtl.inference.dicom_grid).
    dicom_grid: str = "input"
    # Write review/ (review.json, review.png, review.html) per case: radmtl.inference.review_out.
    review: bool = True
    # Run a case again although an earlier run published it (its folder holds provenance.json); else skip it.
    overwrite: bool = False
    # This process's place in a run over several processes (radmtl.inference.cohort), for provenance.json.
    rank: int = 0
    world_size: int = 1
    # K: also write sct_samples, the first K of the T MC-dropout samples of the sCT (0: not written).
    save_samples: int = 0


def mc_samples_of(options: InferOptions, cfg: Any) -> int:
    """T: ``--mc-samples``, else the checkpoint's ``infer.mc_samples``."""
    return int(options.mc_samples if options.mc_samples is not None else cfg.infer.mc_samples)


def check_options(options: InferOptions) -> None:
    """Refuse options no case can run with, before anything is read or written.

    Raises:
        RadmtlError: one line naming the option, the value and what it must be.
    """
    problem = mc_samples_problem(options.mc_samples) if options.mc_samples is not None else None
    if problem is not None:
        raise RadmtlError(f"--mc-samples: {problem}")
    if options.overlap is not None and not 0.0 <= options.overlap < 1.0:
        raise RadmtlError(f"--overlap: must be in [0, 1), got {options.overlap}")
    if options.sw_batch_size is not None and options.sw_batch_size < 1:
        raise RadmtlError(f"--batch-size: must be >= 1, got {options.sw_batch_size}")
    if options.output_format not in OUTPUT_FORMATS:
        raise RadmtlError(f"--output-format: must be one of {', '.join(OUTPUT_FORMATS)}, got "
                          f"{options.output_format!r}")
    if options.dicom_grid not in DICOM_GRIDS:
        raise RadmtlError(f"--dicom-grid: must be one of {', '.join(DICOM_GRIDS)}, got {options.dicom_grid!r}")
    if options.save_samples < 0:
        raise RadmtlError(f"--save-samples: must be >= 0 (0: no samples), got {options.save_samples}")
    if options.mc_samples is not None and options.save_samples > 0 and options.mc_samples < max(2, options.save_samples):
        why = "; at 1 dropout is off" if options.mc_samples == 1 else ""
        raise RadmtlError(f"--save-samples {options.save_samples}: needs --mc-samples of at least "
                          f"{max(2, options.save_samples)} (got --mc-samples {options.mc_samples}{why})")


def check_model_options(options: InferOptions, cfg: Any) -> None:
    """Refuse what only the loaded model's config (``cfg``) can tell: a ``--save-samples`` above the
    model's default T when ``--mc-samples`` is not given, or for a model without an sCT task.

    Raises:
        RadmtlError: one line naming the option, the value and the fix.
    """
    k = options.save_samples
    if k == 0:
        return
    if "sct" not in cfg.model.tasks:
        raise RadmtlError(f"--save-samples {k}: the model has no sCT task; leave --save-samples out")
    t = mc_samples_of(options, cfg)
    if t < max(2, k):  # at T = 1 dropout is off: the one "sample" would be the deterministic sCT
        given = f"got --mc-samples {t}" if options.mc_samples is not None else f"the model's default is {t}"
        raise RadmtlError(f"--save-samples {k}: needs --mc-samples of at least {max(2, k)} ({given})")
