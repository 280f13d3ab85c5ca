"""What an image must be before anything runs on it: one rule for ``radmtl check`` and ``radmtl infer``.

Each rule returns ``(what, fix)`` pairs: what is wrong, and how to fix it. ``radmtl check`` turns them
into :class:`radmtl.data.check.Problem` lines; ``radmtl infer`` into one :class:`radmtl.data.io.VolumeError`
line per case. Both call :func:`mr_problems` for an MR, so an MR that ``check`` passes is one ``infer``
and ``train`` can run on, and the other way round.

Geometry (every file): the voxel→world affine must be finite, every voxel axis must have a size
(column norm of the 3×3 above :data:`MIN_VOXEL_MM`), and the axes must be independent (the direction
matrix's |det| above :data:`MIN_DIRECTION_DET`). A header with a zero pixdim in the sform, or NaN from a
broken converter, reads without complaint but makes every resampling step fail or divide by zero.

Content: every voxel finite (no NaN/Inf); an MR or CT must not be constant (an all-zero image is
what a failed conversion leaves, and the network would turn it into a plausible-looking sCT).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from radmtl.data.io import Volume

Issue = tuple[str, str]  # (what is wrong, how to fix it)

MIN_VOXEL_MM = 1e-6  # a voxel axis shorter than this has no size
MIN_DIRECTION_DET = 1e-6  # |det| of the unit-column direction matrix: 1 for orthogonal axes, 0 for parallel ones
NOT_CONSTANT = ("mr", "ct")  # images whose content is lost when every voxel has one value

_REEXPORT_GEOMETRY = ("re-export the image with its true geometry (NIfTI: a valid sform/qform and pixdim; "
                      ".mha/.nrrd: spacing, origin and direction), or repair the header")


def _mm(values: np.ndarray) -> str:
    return "[" + ", ".join(f"{float(v):.4g}" for v in values) + "]"


def affine_problems(affine: np.ndarray) -> list[Issue]:
    """The first thing wrong with a voxel→world ``affine`` (4×4), or ``[]`` if it is usable."""
    affine = np.asarray(affine, dtype=np.float64)
    linear = affine[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    if not np.all(np.isfinite(affine[:3, :4])):
        return [(f"the header's voxel-to-world affine has NaN or Inf entries (voxel size {_mm(spacing)} mm, "
                 f"origin {_mm(affine[:3, 3])} mm), so the image has no place in space", _REEXPORT_GEOMETRY)]
    flat = [i + 1 for i in range(3) if spacing[i] <= MIN_VOXEL_MM]
    if flat:
        axes = " and ".join(str(i) for i in flat)
        return [(f"voxel size {_mm(spacing)} mm in the header: axis {axes} has no size",
                 "re-export the image with its true voxel spacing (NIfTI pixdim/sform, .mha/.nrrd spacing)")]
    direction_det = float(np.linalg.det(linear / spacing))
    if abs(direction_det) <= MIN_DIRECTION_DET:
        return [(f"the header's voxel-to-world affine is singular: the voxel axes are not independent "
                 f"(direction determinant {direction_det:.2g})", _REEXPORT_GEOMETRY)]
    return []


def finite_values(array: np.ndarray) -> tuple[np.ndarray, Issue | None]:
    """``(the finite voxels, the problem if some are NaN/Inf)``; the array itself when all are finite."""
    finite = np.isfinite(array)
    n_bad = int(finite.size - np.count_nonzero(finite))
    if not n_bad:
        return array, None
    n_nan = int(np.count_nonzero(np.isnan(array)))
    counts = " and ".join(f"{n} {kind}" for n, kind in ((n_nan, "NaN"), (n_bad - n_nan, "Inf")) if n)
    return array[finite], (f"{counts} voxel(s) of {array.size}",
                           "replace them with a valid value (e.g. the background value) and re-export")


def constant_problem(values: np.ndarray, key: str) -> Issue | None:
    """The problem of an image (``key`` mr or ct) whose finite ``values`` are all equal."""
    if key not in NOT_CONSTANT or not values.size:
        return None
    lo, hi = float(values.min()), float(values.max())
    if lo != hi:
        return None
    return (f"empty image: every voxel is {lo:g}", f"re-export the {key}; the conversion lost the image content")


def content_problems(array: np.ndarray, key: str) -> list[Issue]:
    """Non-finite voxels, and for an MR or CT a constant image."""
    values, issue = finite_values(array)
    problems = [issue] if issue is not None else []
    constant = constant_problem(values, key)
    return problems + ([constant] if constant is not None else [])


def network_min_extent_mm(strides: Sequence[int], spacing: Sequence[float]) -> tuple[float, float, float]:
    """The smallest extent (mm, RAS x, y, z) of an MR the network can be run on: one cell of its deepest
    level, ``prod(model.strides)`` voxels of ``data.spacing``. Below it, that level sees padding rather than
    the MR along an axis, and the sCT is made up (a 2-slice series, a 3×3×3 volume)."""
    cell = math.prod(int(s) for s in strides)
    return tuple(float(cell * s) for s in spacing)


def extent_problems(volume: Volume, min_extent_mm: Sequence[float]) -> list[Issue]:
    """The MR's extent against ``min_extent_mm`` (RAS x, y, z; :func:`network_min_extent_mm`), ``[]`` when it
    covers it. Each voxel axis covers ``shape × voxel size`` along the RAS axis it points most along."""
    affine = np.asarray(volume.affine, dtype=np.float64)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    extent = np.asarray(volume.shape, dtype=np.float64) * spacing
    short = []
    for axis in range(3):
        ras = int(np.argmax(np.abs(affine[:3, axis])))
        if extent[axis] < min_extent_mm[ras] - 1e-6:
            short.append(f"{extent[axis]:.4g} mm along {'xyz'[ras]} ({volume.shape[axis]} voxels of "
                         f"{spacing[axis]:.4g} mm), below {min_extent_mm[ras]:.4g} mm")
    if not short:
        return []
    need = " × ".join(f"{v:.4g}" for v in min_extent_mm)
    return [(f"the MR is too small for the network: {'; '.join(short)}; the model needs at least {need} mm "
             f"(RAS x × y × z: one cell of its deepest level, model.strides × data.spacing), or its sCT would be "
             "made up", "give an MR that covers at least that much of the patient")]


def mr_problems(volume: Volume) -> list[Issue]:
    """Everything wrong with an MR's own geometry and content (``[]``: the network can run on it)."""
    return affine_problems(volume.affine) + content_problems(volume.array, "mr")
