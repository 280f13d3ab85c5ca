"""The synthetic CT as a DICOM CT Image Storage series, one instance per slice on the MR's grid.

Written with pydicom: a planning system needs plain single-frame CT with HU given by the rescale
attributes, and pydicom builds exactly the modules the CT Image IOD asks for without a higher-level
library between us and the attributes (``dciodvfy`` checks every instance in the tests).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from radmtl.data.dicom.common import (DicomError, DicomIdentity, SlicePlanes, SourceSeries, base_dataset,
                                      dicom_datetime, ds_text, grid_to_planes, new_uid, series_number_at)

log = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
# Stored value = HU + 1024, so air is 0; int16 storage holds HU in [-33792, 31743].
HU_INTERCEPT = -1024.0
INT16 = np.iinfo(np.int16)
# Image Type value 3 of a CT image: AXIAL (a transverse slice, the defined term) or, for slices in any
# other plane, OTHER. DICOM's AXIAL only sets a slice apart from a LOCALIZER, and scanners write it on
# gantry-tilted slices too, but readers take it to mean transverse; OTHER is not among the CT Image
# module's defined terms (dciodvfy warns, a defined term may be extended) and claims no plane.
IMAGE_TYPE_AXIAL = ("DERIVED", "SECONDARY", "AXIAL")
IMAGE_TYPE_NOT_AXIAL = ("DERIVED", "SECONDARY", "OTHER")


@dataclass(frozen=True)
class CtSeries:
    """What a written sCT series is, for the structure set that references it and for provenance."""

    series_instance_uid: str
    sop_instance_uids: tuple[str, ...]  # slice k = 0, 1, …
    files: tuple[Path, ...]
    planes: SlicePlanes
    clipped_voxels: int


def hu_to_stored(sct_hu: np.ndarray) -> tuple[np.ndarray, int]:
    """(X, Y, Z) HU → int16 stored values (HU − intercept, rounded) and how many were clipped."""
    stored = np.rint(np.asarray(sct_hu, dtype=np.float64) - HU_INTERCEPT)
    clipped = int(np.count_nonzero((stored < INT16.min) | (stored > INT16.max)))
    return np.clip(stored, INT16.min, INT16.max).astype(np.int16), clipped


def _set_laterality(ds, identity: DicomIdentity) -> None:
    """Image Laterality (0020,0062) and Body Part Examined (0018,0015); no Laterality (0020,0060).

    Laterality is type 2C: required for a paired body part when Image Laterality is absent, and not
    to be present otherwise. Empty means "unknown", which is wrong for the regions radmtl is for
    (pelvis, brain, head and neck, thorax, abdomen: unpaired) and dciodvfy warns about it. Image
    Laterality says the side per image instead: the MR's side when it names one, else U (unpaired),
    which is also what lets a validator see that Laterality is not required. The MR's body part is
    copied when it has one.
    """
    side = identity.image_laterality.strip().upper()
    ds.ImageLaterality = side if side in ("R", "L", "B", "U") else "U"
    if identity.body_part_examined:
        ds.BodyPartExamined = identity.body_part_examined[:16]


def write_ct_series(
    sct_hu: np.ndarray,
    affine: np.ndarray,
    folder: str | Path,
    identity: DicomIdentity,
    *,
    series_description: str,
    derivation_description: str,
    source: SourceSeries | None = None,
    series_number: int | None = None,
) -> CtSeries:
    """Write ``sct_hu`` (X, Y, Z) on the grid ``affine`` (RAS) as ``folder/CT_<k>.dcm``, one per slice.

    Args:
        sct_hu: synthetic CT in HU on the MR grid; rounded to integers, clipped to int16 storage.
        affine: the MR grid's RAS voxel→world affine.
        identity: patient/study/frame-of-reference identifiers (the MR's).
        series_description: shown in the planning system's series list (≤ 64 characters).
        derivation_description: how the series was made, naming the source MR series.
        source: the MR series (its slice k becomes the source image of CT slice k), if DICOM.
        series_number: SeriesNumber; by default :func:`~radmtl.data.dicom.common.series_number_at` now.

    Returns:
        The UIDs, files, planes and number of clipped voxels of the series.
    """
    sct_hu = np.asarray(sct_hu)
    if sct_hu.ndim != 3:
        raise DicomError(f"{folder}: sCT must be 3D (X, Y, Z), got shape {list(sct_hu.shape)}")
    if not np.all(np.isfinite(sct_hu)):
        raise DicomError(f"{folder}: the sCT holds NaN or Inf; it cannot be written as CT")
    planes = grid_to_planes(affine)
    stored, clipped = hu_to_stored(sct_hu)
    if clipped:
        log.warning("%s: %d sCT voxel(s) outside the int16 range were clipped", folder, clipped)
    if source is not None and len(source.sop_instance_uids) not in (0, sct_hu.shape[2]):
        raise DicomError(f"{folder}: the source MR series has {len(source.sop_instance_uids)} slices, the sCT "
                         f"{sct_hu.shape[2]}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    when = datetime.now()
    date, time = dicom_datetime(when)
    series_uid = new_uid()
    series_number = series_number_at(when) if series_number is None else int(series_number)
    image_type = list(IMAGE_TYPE_AXIAL if planes.is_axial() else IMAGE_TYPE_NOT_AXIAL)
    uids, files = [], []
    for k in range(sct_hu.shape[2]):
        uid = new_uid()
        ds = base_dataset(CT_IMAGE_STORAGE, uid, identity, when)
        ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "CT", series_uid, series_number
        ds.SeriesDescription = series_description[:64]
        ds.SeriesDate, ds.SeriesTime, ds.ContentDate, ds.ContentTime = date, time, date, time
        ds.PatientPosition = identity.patient_position or "HFS"
        _set_laterality(ds, identity)
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = identity.frame_of_reference_uid, ""
        ds.InstanceNumber = k + 1
        ds.ImageType = image_type
        ds.DerivationDescription = derivation_description[:1024]
        if source is not None and source.sop_instance_uids:
            from pydicom import Dataset

            item = Dataset()
            item.ReferencedSOPClassUID = source.sop_class_uid
            item.ReferencedSOPInstanceUID = source.sop_instance_uids[k]
            ds.SourceImageSequence = [item]
        ds.ImagePositionPatient = [ds_text(v) for v in planes.position(k)]
        ds.ImageOrientationPatient = [ds_text(v) for v in planes.orientation()]
        ds.PixelSpacing = [ds_text(v) for v in planes.pixel_spacing]
        ds.SliceThickness = ds_text(planes.slice_spacing)
        ds.SliceLocation = ds_text(float(np.dot(planes.position(k), np.cross(planes.row_cosines,
                                                                              planes.column_cosines))))
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = int(sct_hu.shape[1]), int(sct_hu.shape[0])
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = ds_text(HU_INTERCEPT), "1", "HU"
        ds.KVP, ds.AcquisitionNumber = "", ""
        ds.WindowCenter, ds.WindowWidth = "40", "400"
        # DICOM pixel data is row-major (rows = j, columns = i): the transpose of the (X, Y) slice.
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).astype("<i2").tobytes()
        path = folder / f"CT_{k + 1:04d}.dcm"
        try:
            ds.save_as(path, enforce_file_format=True)
        except OSError as err:
            raise DicomError(f"{path}: cannot write ({err.strerror}); check space and permissions") from err
        uids.append(uid)
        files.append(path)
    log.debug("wrote %d CT slices to %s", len(files), folder)
    return CtSeries(series_instance_uid=series_uid, sop_instance_uids=tuple(uids), files=tuple(files),
                    planes=planes, clipped_voxels=clipped)
