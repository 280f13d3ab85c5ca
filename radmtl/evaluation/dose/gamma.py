"""The γ index (Low et al., Med. Phys. 25:656, 1998) of an evaluated dose against a reference dose, over
``pymedphys.gamma`` (pymedphys 0.41.0, the optional ``dose`` extra; numba compiles its kernels once per
process).

Settings, as SynthRAD2025 reports them: global γ, the dose criterion a percentage of the reference's
maximum, a 10 % low-dose cut-off applied to the reference (voxels below 10 % of its maximum are not
evaluated), the evaluated dose interpolated at a tenth of the distance criterion. The pass rate is the
percentage of evaluated voxels with γ ≤ 1. Distances are in mm along the array's axes, so the grid must
have orthogonal axes (any axis-aligned or rotated grid; not a sheared one).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

import numpy as np

from radmtl.evaluation.dose.errors import INSTALL_HINT, DoseDependencyError, DoseError

logger = logging.getLogger(__name__)

CRITERIA = ((2.0, 2.0), (3.0, 3.0))  # (dose %, distance mm)
LOW_DOSE_CUTOFF_PERCENT = 10.0
# The search stops once γ cannot fall below this; it bounds the time on badly failing voxels and does not
# change a pass rate (γ ≤ 1) — only γ values above it, which are reported as found so far.
MAX_GAMMA = 2.0


def _pymedphys_gamma():
    try:
        from pymedphys import gamma
    except Exception as err:  # an ImportError, or numba failing to load its LLVM
        raise DoseDependencyError(f"the γ index needs pymedphys and numba (import failed: {err}); "
                                  f"install them with: {INSTALL_HINT}") from err
    return gamma


def spacing_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm along each array axis; refuses a sheared grid, where axis distances are not mm."""
    linear = np.asarray(affine, np.float64)[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    gram = (linear / spacing).T @ (linear / spacing)
    if not np.allclose(gram, np.eye(3), atol=1e-4):
        raise DoseError("γ needs a grid with orthogonal axes; resample the dose onto an orthogonal grid first")
    return tuple(float(s) for s in spacing)


def gamma_index(dose_reference: np.ndarray, dose_evaluation: np.ndarray, spacing_mm: Iterable[float],
                dose_percent: float, distance_mm: float, cutoff_percent: float = LOW_DOSE_CUTOFF_PERCENT,
                max_gamma: float = MAX_GAMMA) -> np.ndarray:
    """Global γ of each reference voxel; ``nan`` where the reference is below the cut-off.

    Args:
        dose_reference: (X, Y, Z) reference dose in Gy (the dose on the CT).
        dose_evaluation: (X, Y, Z) evaluated dose on the same grid (the dose on the sCT).
        spacing_mm: voxel size along each array axis.
        dose_percent: dose criterion in % of the reference maximum.
        distance_mm: distance-to-agreement criterion.
        cutoff_percent: reference voxels below this % of the reference maximum are not evaluated.
        max_gamma: the search stops once γ cannot fall below it.
    """
    reference, evaluation = np.asarray(dose_reference, np.float64), np.asarray(dose_evaluation, np.float64)
    if reference.shape != evaluation.shape or reference.ndim != 3:
        raise DoseError(f"γ needs two 3D doses on one grid, got {reference.shape} and {evaluation.shape}")
    spacing = [float(s) for s in spacing_mm]
    if len(spacing) != 3 or min(spacing) <= 0:
        raise DoseError(f"spacing_mm must be three positive voxel sizes, got {spacing}")
    if not reference.max() > 0:
        raise DoseError("the reference dose is zero everywhere: no plan was delivered")
    gamma = _pymedphys_gamma()
    axes = tuple(np.arange(n, dtype=np.float64) * s for n, s in zip(reference.shape, spacing))
    # pymedphys logs each call at INFO, on the root logger itself (logging.info), one line of it with an
    # array that the logging module cannot format; radmtl's log stays about radmtl.
    logging.getLogger("pymedphys").setLevel(logging.WARNING)
    root = logging.getLogger()
    root.addFilter(_drop_pymedphys_records)
    try:
        return np.asarray(gamma(axes, reference, axes, evaluation, dose_percent, distance_mm,
                                lower_percent_dose_cutoff=cutoff_percent, interp_fraction=10,
                                max_gamma=max_gamma, local_gamma=False), dtype=np.float64)
    finally:
        root.removeFilter(_drop_pymedphys_records)


def _drop_pymedphys_records(record: logging.LogRecord) -> bool:
    """False for a record that pymedphys logged through the root logger."""
    return "pymedphys" not in record.pathname.replace("\\", "/").split("/")


def gamma_pass_rate(dose_reference: np.ndarray, dose_evaluation: np.ndarray, spacing_mm: Iterable[float],
                    criteria: Iterable[tuple[float, float]] = CRITERIA,
                    cutoff_percent: float = LOW_DOSE_CUTOFF_PERCENT) -> dict[str, float]:
    """γ pass rates (%) for each (dose %, distance mm) criterion: keys ``gamma_2_2_pass_percent`` …

    The pass rate is over the voxels evaluated (reference ≥ cut-off); ``nan`` if there are none.
    """
    spacing = tuple(spacing_mm)
    out = {}
    for dose_percent, distance_mm in criteria:
        values = gamma_index(dose_reference, dose_evaluation, spacing, dose_percent, distance_mm, cutoff_percent)
        evaluated = np.isfinite(values)
        rate = 100.0 * float(np.mean(values[evaluated] <= 1.0)) if evaluated.any() else math.nan
        out[f"gamma_{dose_percent:g}_{distance_mm:g}_pass_percent"] = rate
        logger.debug("γ %g%%/%gmm: %.2f %% of %d voxels", dose_percent, distance_mm, rate, int(evaluated.sum()))
    return out
