"""Organ labels as a DICOM RT Structure Set that references the sCT series.

Library choice: pydicom directly, with contourpy (already installed with matplotlib) tracing the
contours. rt-utils would add opencv-python (a ~60 MB wheel) for its contour tracing and writes holes
as separate contours or "pin holes" with its own conventions; highdicom has no RT Structure Set IOD.
The structure set is a handful of sequences, which pydicom writes attribute by attribute.

Contours: each slice's mask is traced with marching squares at level 0.5 (contourpy), so every
boundary — an island's outline or a hole's — is a closed polygon through the midpoints between
inside and outside pixel centres. Holes are separate contours on the same slice; planning systems
read the contours of one slice with the even-odd rule, so a contour inside another is a hole and one
inside a hole is an island again. Filling the polygons with that rule at the pixel centres gives the
mask back.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from radmtl.data.io import RAS_FROM_LPS
from radmtl.data.dicom.common import (DicomError, DicomIdentity, SlicePlanes, base_dataset,
                                      dicom_datetime, new_uid, planes_to_affine, series_number_at)
from radmtl.data.dicom.ct import CT_IMAGE_STORAGE, CtSeries

log = logging.getLogger(__name__)

RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
# The RT Referenced Study Sequence names the study with this (retired) SOP class by convention.
DETACHED_STUDY_MANAGEMENT = "1.2.840.10008.3.1.2.3.1"

# Display colours for the phantom's organs; other names take the fallback palette in order.
ORGAN_COLOURS = {
    "body": (0, 160, 0), "bladder": (255, 215, 0), "rectum": (139, 69, 19), "prostate": (0, 150, 255),
    "femoral_head_left": (255, 0, 255), "femoral_head_right": (0, 255, 255),
}
FALLBACK_COLOURS = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
                    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 190))


@dataclass(frozen=True)
class Roi:
    """One structure: ``mask`` (X, Y, Z) bool on the sCT grid; ``kind`` is its RTROIInterpretedType."""

    name: str
    mask: np.ndarray
    kind: str = "ORGAN"
    colour: tuple[int, int, int] | None = None


def roi_colour(name: str, index: int) -> tuple[int, int, int]:
    return ORGAN_COLOURS.get(name.lower(), FALLBACK_COLOURS[index % len(FALLBACK_COLOURS)])


def slice_contours(mask2d: np.ndarray) -> list[np.ndarray]:
    """Closed contours of a (X, Y) boolean slice as (N, 2) arrays of (i, j) voxel coordinates.

    Outlines and hole boundaries alike; the closing point is not repeated, and points on a straight
    run are dropped.
    """
    import contourpy

    mask2d = np.asarray(mask2d, dtype=bool)
    if not mask2d.any():
        return []
    # contourpy takes z[row, column] = z[y, x]; a zero border closes contours at the grid edge.
    padded = np.pad(mask2d.T.astype(np.float64), 1)
    lines = contourpy.contour_generator(z=padded, line_type=contourpy.LineType.Separate).lines(0.5)
    contours = []
    for line in lines:
        points = np.asarray(line, dtype=np.float64) - 1.0
        if len(points) > 1 and np.allclose(points[0], points[-1]):
            points = points[:-1]
        points = _drop_collinear(points)
        if len(points) >= 3:
            contours.append(points)
    return contours


def _drop_collinear(points: np.ndarray) -> np.ndarray:
    """Remove vertices of a closed polygon that lie on the straight line through their neighbours."""
    before, after = np.roll(points, 1, axis=0), np.roll(points, -1, axis=0)
    cross = (points[:, 0] - before[:, 0]) * (after[:, 1] - points[:, 1]) - \
        (points[:, 1] - before[:, 1]) * (after[:, 0] - points[:, 0])
    return points[np.abs(cross) > 1e-9]


def _contour_values(points_lps: np.ndarray) -> list[str]:
    # 0.1 µm is far below any voxel, and "%.4f" of a patient coordinate stays within DS's 16 characters.
    return [f"{v:.4f}" for v in points_lps.ravel()]


def write_rtstruct(
    rois: Iterable[Roi],
    ct: CtSeries,
    identity: DicomIdentity,
    path: str | Path,
    *,
    label: str = "radmtl",
    description: str = "",
    series_number: int | None = None,
) -> dict[str, int]:
    """Write the structures as one RT Structure Set instance referencing the sCT series ``ct``.

    Args:
        rois: structures in ROI-number order; a structure with an empty mask is listed without
            contours (the planning system shows it as empty).
        ct: the written sCT series; its planes are the masks' grid and its instances are referenced
            slice by slice.
        identity: patient/study/frame-of-reference identifiers (the sCT's).
        path: output file.
        series_number: SeriesNumber; by default one more than a CT series written now gets
            (:func:`~radmtl.data.dicom.common.series_number_at`).

    Returns:
        ROI name → number of contours written.
    """
    from pydicom import Dataset

    when = datetime.now()
    date, time = dicom_datetime(when)
    ds = base_dataset(RT_STRUCTURE_SET_STORAGE, new_uid(), identity, when)
    ds.Modality, ds.SeriesInstanceUID = "RTSTRUCT", new_uid()
    ds.SeriesNumber = series_number_at(when) + 1 if series_number is None else int(series_number)
    ds.SeriesDescription = f"{label} structures"[:64]
    ds.SeriesDate, ds.SeriesTime, ds.OperatorsName = date, time, ""
    # The Frame of Reference module is part of the RT Structure Set IOD since DICOM 2021.
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = identity.frame_of_reference_uid, ""
    ds.StructureSetLabel = label[:16]
    ds.StructureSetName = label[:64]
    if description:
        ds.StructureSetDescription = description[:1024]
    ds.StructureSetDate, ds.StructureSetTime = date, time
    ds.InstanceNumber = 1

    def image_ref(k: int) -> Dataset:
        item = Dataset()
        item.ReferencedSOPClassUID = CT_IMAGE_STORAGE
        item.ReferencedSOPInstanceUID = ct.sop_instance_uids[k]
        return item

    series_ref = Dataset()
    series_ref.SeriesInstanceUID = ct.series_instance_uid
    series_ref.ContourImageSequence = [image_ref(k) for k in range(len(ct.sop_instance_uids))]
    study_ref = Dataset()
    study_ref.ReferencedSOPClassUID = DETACHED_STUDY_MANAGEMENT
    study_ref.ReferencedSOPInstanceUID = identity.study_instance_uid
    study_ref.RTReferencedSeriesSequence = [series_ref]
    frame_ref = Dataset()
    frame_ref.FrameOfReferenceUID = identity.frame_of_reference_uid
    frame_ref.RTReferencedStudySequence = [study_ref]
    ds.ReferencedFrameOfReferenceSequence = [frame_ref]

    n_slices = len(ct.sop_instance_uids)
    structure_items, contour_items, observation_items = [], [], []
    counts: dict[str, int] = {}
    for number, roi in enumerate(rois, start=1):
        if roi.mask.ndim != 3 or roi.mask.shape[2] != n_slices:
            raise DicomError(f"{path}: ROI {roi.name} mask has shape {list(roi.mask.shape)}, the sCT series "
                             f"{n_slices} slices")
        structure = Dataset()
        structure.ROINumber = number
        structure.ReferencedFrameOfReferenceUID = identity.frame_of_reference_uid
        structure.ROIName = roi.name[:64]
        structure.ROIGenerationAlgorithm = "AUTOMATIC"
        structure.ROIGenerationDescription = description[:64] if description else label[:64]
        structure_items.append(structure)

        roi_contour = Dataset()
        roi_contour.ReferencedROINumber = number
        roi_contour.ROIDisplayColor = list(roi.colour or roi_colour(roi.name, number - 1))
        contours = []
        for k in range(n_slices):
            for points in slice_contours(roi.mask[:, :, k]):
                ijk = np.column_stack([points, np.full(len(points), float(k))])
                contour = Dataset()
                contour.ContourImageSequence = [image_ref(k)]
                contour.ContourGeometricType = "CLOSED_PLANAR"
                contour.NumberOfContourPoints = len(points)
                contour.ContourNumber = len(contours) + 1
                contour.ContourData = _contour_values(ct.planes.to_lps(ijk))
                contours.append(contour)
        if contours:
            roi_contour.ContourSequence = contours
        contour_items.append(roi_contour)
        counts[roi.name] = len(contours)

        observation = Dataset()
        observation.ObservationNumber = number
        observation.ReferencedROINumber = number
        observation.RTROIInterpretedType = roi.kind
        observation.ROIInterpreter = ""
        observation_items.append(observation)
    ds.StructureSetROISequence = structure_items
    ds.ROIContourSequence = contour_items
    ds.RTROIObservationsSequence = observation_items

    path = Path(path)
    try:
        ds.save_as(path, enforce_file_format=True)
    except OSError as err:
        raise DicomError(f"{path}: cannot write ({err.strerror}); check space and permissions") from err
    log.debug("wrote RT structure set %s: %s", path, counts)
    return counts


def rasterise_rtstruct(path: str | Path, planes: SlicePlanes, shape: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """Read an RT Structure Set back onto a voxel grid: ROI name → (X, Y, Z) bool mask.

    Contours of one slice are combined with the even-odd rule (a contour inside another is a hole)
    and filled at the pixel centres, as a planning system would.

    Raises:
        DicomError: the file is not an RT Structure Set, or a contour does not lie on a slice of the grid.
    """
    import pydicom
    from matplotlib.path import Path as Polygon

    ds = pydicom.dcmread(path)
    if str(ds.get("SOPClassUID", "")) != RT_STRUCTURE_SET_STORAGE:
        raise DicomError(f"{path}: not an RT Structure Set (SOP class {ds.get('SOPClassUID')})")
    names = {int(item.ROINumber): str(item.ROIName) for item in ds.StructureSetROISequence}
    world_to_voxel = np.linalg.inv(RAS_FROM_LPS @ planes_to_affine(planes))
    ii, jj = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    centres = np.column_stack([ii.ravel(), jj.ravel()]).astype(np.float64)
    masks = {}
    for roi_contour in ds.ROIContourSequence:
        mask = np.zeros(shape, dtype=bool)
        for contour in roi_contour.get("ContourSequence", []):
            lps = np.asarray([float(v) for v in contour.ContourData]).reshape(-1, 3)
            ijk = lps @ world_to_voxel[:3, :3].T + world_to_voxel[:3, 3]
            k = int(round(float(np.mean(ijk[:, 2]))))
            if np.max(np.abs(ijk[:, 2] - k)) > 1e-3 or not 0 <= k < shape[2]:
                raise DicomError(f"{path}: a contour of ROI {names.get(int(roi_contour.ReferencedROINumber))} "
                                 "does not lie on a slice of the grid")
            inside = Polygon(ijk[:, :2], closed=False).contains_points(centres).reshape(shape[:2])
            mask[:, :, k] ^= inside
        masks[names[int(roi_contour.ReferencedROINumber)]] = mask
    return masks
