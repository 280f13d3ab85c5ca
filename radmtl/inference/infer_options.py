"""What ``radmtl infer`` runs with (:class:`InferOptions`) and the options it refuses before any case is read."""

from __future__ import annotations

from dataclasses import dataclass

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
