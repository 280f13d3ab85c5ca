"""What every DICOM object radmtl writes shares: the UID root, the patient/study identity it copies
from the MR, and the mapping between radmtl's RAS voxel grids and DICOM's LPS image planes.

radmtl's volumes carry a voxel→world affine in nibabel's RAS+ millimetres; DICOM patient coordinates
are LPS+ (x to the patient's left, y to the posterior). Converting is a sign flip of x and y, done in
this module only (:func:`grid_to_planes`), so no writer or reader flips on its own.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from radmtl import __version__
from radmtl.data.io import RAS_FROM_LPS
from radmtl.errors import RadmtlError

# A UUID-derived OID arc (ISO/IEC 9834-8, "2.25.<uuid as integer>") needs no registration; the UUID is
# the name-based uuid5 of the project URL, so the root is fixed and every radmtl UID can be recognised.
# pydicom's generate_uid fills the remaining 19 digits (of the 64 allowed) with a hash.
RADMTL_UID_ROOT = "2.25.100659078145993937827790086689120173693."

MANUFACTURER = "radmtl"

# How far apart two direction cosines may be and still count as one orientation (DS values carry
# about 6 decimals after export).
ORIENTATION_TOL = 1e-4

# SeriesNumber of a written series: seconds since this instant (UTC), so that every run gets its own
# number, later runs larger ones, and the value fits DICOM's IS (< 2**31) until the year 2092.
SERIES_NUMBER_EPOCH = datetime(2024, 1, 1, tzinfo=timezone.utc)


class DicomError(RadmtlError, ValueError):
    """A DICOM input cannot be used or an output cannot be written; the message names the file or
    folder, what is wrong and how to fix it."""


def new_uid(*entropy: str) -> str:
    """A UID under :data:`RADMTL_UID_ROOT`; the same ``entropy`` strings give the same UID."""
    from pydicom.uid import generate_uid

    return str(generate_uid(prefix=RADMTL_UID_ROOT, entropy_srcs=list(entropy) or None))


@dataclass(frozen=True)
class DicomIdentity:
    """Patient, study and frame-of-reference identifiers that every output of one case carries.

    Copied from the MR series for a DICOM input; invented (``generated=True``) for a NIfTI input, so
    that a research result can still be imported into a planning system.
    """

    patient_id: str
    patient_name: str
    study_instance_uid: str
    frame_of_reference_uid: str
    patient_birth_date: str = ""
    patient_sex: str = ""
    study_id: str = ""
    study_date: str = ""
    study_time: str = ""
    accession_number: str = ""
    referring_physician_name: str = ""
    study_description: str = ""
    patient_position: str = ""
    # (0020,0062) R, L, B or U as the MR says (its Laterality or Image Laterality); empty when it says none.
    image_laterality: str = ""
    body_part_examined: str = ""
    generated: bool = False

    def describe(self) -> dict:
        """JSON-safe summary for ``provenance.json`` (identifiers only, no dates)."""
        return {"patient_id": self.patient_id, "study_instance_uid": self.study_instance_uid,
                "frame_of_reference_uid": self.frame_of_reference_uid, "generated": self.generated}


# DICOM's defined terms for (0018,5100) Patient Position: head/feet first, supine/prone/decubitus.
PATIENT_POSITIONS = ("HFS", "HFP", "HFDR", "HFDL", "FFS", "FFP", "FFDR", "FFDL",
                     "LFP", "LFS", "RFP", "RFS", "AFDR", "AFDL", "PFDR", "PFDL")


@dataclass(frozen=True)
class SourceSeries:
    """The MR series an output derives from: its UIDs, description and one SOP instance per slice
    (in the slice order of the volume, k = 0, 1, …)."""

    series_instance_uid: str
    series_description: str
    series_number: str
    sop_class_uid: str
    sop_instance_uids: tuple[str, ...] = field(default_factory=tuple)


def series_number_at(when: datetime) -> int:
    """The SeriesNumber of a series written at ``when``: whole seconds since :data:`SERIES_NUMBER_EPOCH`.

    A fixed number (radmtl used 901) gives every rerun the same one, and a planning system lists
    several series under one number; this one differs between runs and grows with time.
    """
    if when.tzinfo is None:
        when = when.astimezone()  # local time, as datetime.now() gives it
    return int((when - SERIES_NUMBER_EPOCH).total_seconds())


def generated_identity(case_id: str, mr_path: Path) -> DicomIdentity:
    """Identifiers for an MR that came without any (a NIfTI file).

    The UIDs are derived from the MR file's content, so outputs of two runs on the same file share
    one study and one frame of reference in the planning system; the identity says it was generated.
    """
    digest = hashlib.sha256()
    with open(mr_path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    content = digest.hexdigest()
    now = datetime.now()
    return DicomIdentity(
        patient_id=f"RADMTL-{content[:12].upper()}",
        patient_name=f"radmtl^{case_id[:50]}",
        study_instance_uid=new_uid("study", content),
        frame_of_reference_uid=new_uid("frame-of-reference", content),
        study_id=content[:8].upper(),
        study_date=now.strftime("%Y%m%d"),
        study_time=now.strftime("%H%M%S"),
        study_description="radmtl: generated identifiers (NIfTI MR input)",
        patient_position="",  # a NIfTI file does not say how the patient lay
        generated=True,
    )


@dataclass(frozen=True)
class SlicePlanes:
    """A voxel grid as DICOM image planes: what goes into each slice's Image Plane module.

    Voxel (i, j, k) of an (X, Y, Z) array is column i, row j of slice k.
    """

    row_cosines: np.ndarray  # (3,) LPS direction of increasing column index i
    column_cosines: np.ndarray  # (3,) LPS direction of increasing row index j
    pixel_spacing: tuple[float, float]  # (between rows, between columns) in mm, DICOM's order
    slice_step: np.ndarray  # (3,) LPS mm from slice k to slice k + 1
    origin: np.ndarray  # (3,) LPS mm of voxel (0, 0, 0)

    @property
    def slice_spacing(self) -> float:
        return float(np.linalg.norm(self.slice_step))

    def position(self, k: int) -> np.ndarray:
        """ImagePositionPatient of slice k (LPS mm)."""
        return self.origin + k * self.slice_step

    def orientation(self) -> list[float]:
        """ImageOrientationPatient (row cosines then column cosines)."""
        return [float(v) for v in (*self.row_cosines, *self.column_cosines)]

    def is_axial(self) -> bool:
        """True when the slices are transverse: rows and columns in the patient's x-y plane (the slice
        normal along the feet-head axis), to within :data:`ORIENTATION_TOL`."""
        return bool(abs(self.row_cosines[2]) <= ORIENTATION_TOL and abs(self.column_cosines[2]) <= ORIENTATION_TOL)

    def to_lps(self, ijk: np.ndarray) -> np.ndarray:
        """(N, 3) voxel coordinates (i, j, k) → (N, 3) LPS mm."""
        ijk = np.asarray(ijk, dtype=np.float64)
        return (self.origin + ijk[:, :1] * self.row_cosines * self.pixel_spacing[1]
                + ijk[:, 1:2] * self.column_cosines * self.pixel_spacing[0] + ijk[:, 2:3] * self.slice_step)


def grid_to_planes(affine_ras: np.ndarray) -> SlicePlanes:
    """The image planes of a voxel grid given by its RAS affine (i → columns, j → rows, k → slices)."""
    lps = RAS_FROM_LPS @ np.asarray(affine_ras, dtype=np.float64)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    if np.any(spacing <= 0):
        raise DicomError(f"voxel spacing {spacing.tolist()} has a zero axis; cannot describe it as DICOM planes")
    cosines = lps[:3, :3] / spacing
    return SlicePlanes(row_cosines=cosines[:, 0], column_cosines=cosines[:, 1],
                       pixel_spacing=(float(spacing[1]), float(spacing[0])), slice_step=lps[:3, 2].copy(),
                       origin=lps[:3, 3].copy())


def scanner_axis_order(affine_ras: np.ndarray, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """How to flip and transpose a voxel array so that its planes follow the scanners' convention.

    An axial scanner series runs along a row to the patient's left (+x in LPS), down a column to
    the posterior (+y) and from slice to slice to the head (+z): ImageOrientationPatient 1\\0\\0\\0\\1\\0.
    A NIfTI volume stored RAS would otherwise give −1\\0\\0\\0\\−1\\0, which is valid DICOM but not what
    planning systems are used to. Each array axis goes to the LPS axis nearest to it, pointing along
    it; the voxels stay where they are in the world.

    Returns:
        (nibabel orientation transform for :func:`nibabel.orientations.apply_orientation`, the RAS
        affine of the reordered array).
    """
    from nibabel import orientations

    affine_ras = np.asarray(affine_ras, dtype=np.float64)
    start = orientations.io_orientation(RAS_FROM_LPS @ affine_ras)  # array axes against L, P, S
    transform = orientations.ornt_transform(start, np.array([[0, 1], [1, 1], [2, 1]], dtype=np.float64))
    return transform, affine_ras @ orientations.inv_ornt_aff(transform, shape)


def planes_to_affine(planes: SlicePlanes) -> np.ndarray:
    """Inverse of :func:`grid_to_planes`: the RAS voxel→world affine of the planes."""
    lps = np.eye(4)
    lps[:3, 0] = planes.row_cosines * planes.pixel_spacing[1]
    lps[:3, 1] = planes.column_cosines * planes.pixel_spacing[0]
    lps[:3, 2] = planes.slice_step
    lps[:3, 3] = planes.origin
    return RAS_FROM_LPS @ lps


def ds_text(value: float) -> str:
    """A float as a DICOM decimal string (at most 16 characters), rounded to 1e-6 mm where it fits."""
    for decimals in (6, 5, 4, 3, 2, 1, 0):
        text = f"{value:.{decimals}f}"
        if "." in text:
            text = text.rstrip("0").rstrip(".")
        if text in ("-0", ""):
            text = "0"
        if len(text) <= 16:
            return text
    raise DicomError(f"value {value} does not fit a DICOM decimal string")


def dicom_datetime(when: datetime) -> tuple[str, str]:
    """(DA, TM) strings."""
    return when.strftime("%Y%m%d"), when.strftime("%H%M%S.%f")[:13]


def file_dataset(sop_class_uid: str, sop_instance_uid: str) -> Any:
    """An empty dataset with its file meta (explicit VR little endian) and SOP class/instance UIDs."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class_uid, sop_instance_uid
    return ds


def base_dataset(sop_class_uid: str, sop_instance_uid: str, identity: DicomIdentity, when: datetime) -> Any:
    """A dataset with the file meta, SOP Common, Patient, General Study and General Equipment modules."""
    ds = file_dataset(sop_class_uid, sop_instance_uid)
    date, time = dicom_datetime(when)
    # UTF-8, whatever the MR used: pydicom has decoded its names to str already.
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.PatientName, ds.PatientID = identity.patient_name, identity.patient_id
    ds.PatientBirthDate, ds.PatientSex = identity.patient_birth_date, identity.patient_sex
    if identity.generated:
        ds.PatientComments = "identifiers generated by radmtl for an MR without a patient record (NIfTI input)"
    ds.StudyInstanceUID, ds.StudyID = identity.study_instance_uid, identity.study_id
    ds.StudyDate, ds.StudyTime = identity.study_date, identity.study_time
    ds.AccessionNumber, ds.ReferringPhysicianName = identity.accession_number, identity.referring_physician_name
    if identity.study_description:
        ds.StudyDescription = identity.study_description
    ds.Manufacturer, ds.ManufacturerModelName, ds.SoftwareVersions = MANUFACTURER, "radmtl", __version__
    return ds
