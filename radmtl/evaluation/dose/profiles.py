"""Dose profiles: the distal range of a proton depth–dose curve.

``R80`` is the depth, past the profile's maximum, at which the dose first falls to 80 % of that maximum,
linearly interpolated between the two samples around the crossing (the usual distal range of a proton
field; for a spread-out Bragg peak it is the distal edge of the plateau).
"""

from __future__ import annotations

import math

import numpy as np

from radmtl.evaluation.dose.errors import DoseError


def range_r80_mm(depth_mm: np.ndarray, dose: np.ndarray, level: float = 0.8) -> float:
    """Distal depth where ``dose`` falls to ``level`` × its maximum; ``nan`` if it never does.

    Args:
        depth_mm: (N,) increasing depths along the beam.
        dose: (N,) dose at those depths.
        level: fraction of the maximum (0.8 for R80).
    """
    depth, dose = np.asarray(depth_mm, np.float64), np.asarray(dose, np.float64)
    if depth.shape != dose.shape or depth.ndim != 1 or depth.size < 2 or np.any(np.diff(depth) <= 0):
        raise DoseError("range needs two 1D arrays of one length ≥ 2 with increasing depths")
    if not 0 < level < 1:
        raise DoseError(f"level must lie in (0, 1), got {level}")
    peak = int(np.argmax(dose))
    threshold = level * dose[peak]
    below = np.flatnonzero(dose[peak:] < threshold)
    if dose[peak] <= 0 or below.size == 0:
        return math.nan
    j = peak + int(below[0])
    d0, d1 = dose[j - 1], dose[j]
    return float(depth[j - 1] + (d0 - threshold) / (d0 - d1) * (depth[j] - depth[j - 1]))
