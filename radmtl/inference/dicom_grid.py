"""The voxel grid the DICOM outputs are written on (``--dicom-grid``), and the maps put onto it.

``input`` (the default): the MR's own grid, so every CT voxel is a voxel of the NIfTI sCT. A DICOM MR
keeps its rows, columns and slices (CT slice k references MR slice k); a NIfTI MR, which has no
slices of record, has its array flipped and transposed into the scanners' order (row to the
patient's left, column to the posterior, ImageOrientationPatient 1\\0\\0\\0\\1\\0), voxel values unchanged.

``axial``: a transverse grid (ImageOrientationPatient 1\\0\\0\\0\\1\\0) whose box covers every voxel
of the MR, for an oblique MR whose oblique CT a planning system will not calculate dose on. Each
axis takes the spacing of the MR axis nearest to it. The sCT is interpolated trilinearly, labels and
the body outline by nearest neighbour, σ maps trilinearly as variances (so σ_total² =
σ_aleatoric² + σ_epistemic² still holds); voxels whose centre lies outside the MR's field of view
are outside the body (air in the CT), have no label and no σ (NaN).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from radmtl.data.axial import axial_grid, inside_field_of_view
from radmtl.data.dicom.common import scanner_axis_order
from radmtl.data.io import RAS_FROM_LPS
from radmtl.errors import RadmtlError

DICOM_GRIDS = ("input", "axial")


@dataclass(frozen=True)
class DicomGrid:
    """Where the DICOM outputs lie: ``affine`` (RAS) and ``shape``, and how an array on the MR grid
    gets there (:meth:`put`)."""

    kind: str
    affine: np.ndarray
    shape: tuple[int, int, int]
    mr_affine: np.ndarray
    mr_shape: tuple[int, int, int]
    # "input": the orientation transform into scanner order (None: the MR's order as it is).
    transform: np.ndarray | None = None
    # "axial": True where a voxel centre lies inside the MR's field of view.
    inside: np.ndarray | None = field(default=None, repr=False)

    def put(self, array: np.ndarray, how: str = "linear") -> np.ndarray:
        """An (X, Y, Z) array on the MR grid, on this grid.

        Args:
            how: ``linear`` (HU), ``nearest`` (labels, masks: 0 outside the MR), or ``variance``
                (a σ map: interpolated as σ², NaN outside the MR).
        """
        if how not in ("linear", "nearest", "variance"):
            raise ValueError(f"how: expected 'linear', 'nearest' or 'variance', got {how!r}")
        array = np.asarray(array)
        if self.kind == "input":
            if self.transform is None:
                return array
            from nibabel.orientations import apply_orientation

            return np.ascontiguousarray(apply_orientation(array, self.transform))
        return self._resample(array, how)

    def _resample(self, array: np.ndarray, how: str) -> np.ndarray:
        import torch

        from radmtl.inference.resample import resample_to_grid

        values = array.astype(np.float32) ** 2 if how == "variance" else array.astype(np.float32)
        out = resample_to_grid(torch.from_numpy(np.ascontiguousarray(values))[None], self.mr_affine, self.affine,
                               self.shape, mode="nearest" if how == "nearest" else "bilinear")[0]
        if how == "nearest":
            out = np.where(self.inside, np.rint(out), 0).astype(array.dtype)
        elif how == "variance":
            out = np.where(self.inside, np.sqrt(np.clip(out, 0.0, None)), np.float32(np.nan))
        return out

    def describe(self) -> dict[str, Any]:
        """The ``dicom.grid`` entry of ``provenance.json``."""
        lps = RAS_FROM_LPS @ self.affine
        spacing = np.linalg.norm(lps[:3, :3], axis=0)
        return {"kind": self.kind, "shape": list(self.shape), "spacing_mm": [round(float(s), 6) for s in spacing],
                "image_orientation_patient": [round(float(v), 6) for v in (lps[:3, :2] / spacing[:2]).T.ravel()],
                "origin_lps_mm": [round(float(v), 4) for v in lps[:3, 3]],
                "reordered_from_input": self.kind == "input" and self.transform is not None}


def dicom_grid(kind: str, mr_affine: np.ndarray, mr_shape: tuple[int, ...], *, scanner_order: bool) -> DicomGrid:
    """The grid of ``--dicom-grid kind`` for an MR on (``mr_affine``, ``mr_shape``).

    Args:
        scanner_order: for ``input``, reorder a grid that has no DICOM slices of its own (a NIfTI MR)
            into the scanners' row/column order.
    """
    mr_affine = np.asarray(mr_affine, dtype=np.float64)
    mr_shape = tuple(int(n) for n in mr_shape[:3])
    if kind == "input":
        if not scanner_order:
            return DicomGrid("input", mr_affine, mr_shape, mr_affine, mr_shape)
        transform, affine = scanner_axis_order(mr_affine, mr_shape)
        if np.array_equal(transform, [[0, 1], [1, 1], [2, 1]]):
            return DicomGrid("input", mr_affine, mr_shape, mr_affine, mr_shape)
        shape = tuple(int(mr_shape[int(axis)]) for axis in np.argsort(transform[:, 0]))
        return DicomGrid("input", affine, shape, mr_affine, mr_shape, transform=transform)
    if kind == "axial":
        affine, shape = axial_grid(mr_affine, mr_shape)
        return DicomGrid("axial", affine, shape, mr_affine, mr_shape,
                         inside=inside_field_of_view(mr_affine, mr_shape, affine, shape))
    raise RadmtlError(f"--dicom-grid: expected one of {', '.join(DICOM_GRIDS)}, got {kind!r}")
