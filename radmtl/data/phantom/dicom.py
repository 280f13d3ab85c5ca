"""A phantom MR written as a DICOM MR series (pydicom), axial or oblique, so that the DICOM path of
``radmtl infer`` can be tried and tested without any patient data.

The slices are classic single-frame MR Image Storage instances; their geometry comes from the
volume's RAS affine through :func:`radmtl.data.dicom.common.grid_to_planes`, the same mapping the
writers use, so a grid goes out and comes back through one definition of LPS.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

import numpy as np

from radmtl.data.dicom.common import DicomError, dicom_datetime, ds_text, file_dataset, grid_to_planes, new_uid
from radmtl.data.phantom.grids import axial_affine, oblique_affine  # noqa: F401  (tests import them here)

log = logging.getLogger(__name__)

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def phantom_mr_series(folder: str | Path, seed: int, shape: tuple[int, int, int],
                      spacing: tuple[float, float, float] | None = None, orientation: str = "axial",
                      **series: object) -> list[Path]:
    """The MR of :func:`radmtl.data.phantom.cases.generate_case` as a DICOM series in ``folder``.

    ``orientation``: ``"axial"`` (the usual row/column order, x and y flipped from the phantom's RAS
    storage, the anatomy where the phantom puts it) or ``"oblique"`` (that grid rotated about its centre).
    ``series`` goes to :func:`write_mr_series`.
    """
    from radmtl.data.phantom.cases import generate_case

    if orientation not in ("axial", "oblique"):
        raise DicomError(f"orientation: expected 'axial' or 'oblique', got {orientation!r}")
    case = generate_case(seed, shape, spacing)
    spacing = tuple(float(s) for s in np.linalg.norm(case.affine[:3, :3], axis=0))
    affine = axial_affine(shape, spacing) if orientation == "axial" else oblique_affine(shape, spacing)
    series.setdefault("series_description", f"T2 {orientation} (radmtl phantom, seed {seed})")
    # Both grids are centred on the world origin, so flipping i and j keeps every voxel in place.
    return write_mr_series(case.mr[::-1, ::-1, :], affine, folder, **series)


def write_mr_series(
    mr: np.ndarray,
    affine: np.ndarray,
    folder: str | Path,
    *,
    series_description: str = "T2 axial (radmtl phantom)",
    patient_id: str = "PHANTOM001",
    patient_name: str = "Phantom^Pelvis",
    study_instance_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    series_instance_uid: str | None = None,
    series_number: int = 1,
) -> list[Path]:
    """Write ``mr`` (X, Y, Z) on the grid ``affine`` (RAS) as one MR Image Storage file per slice.

    Voxel (i, j, k) becomes column i, row j of slice k. Intensities are rounded to uint16 (MR values
    are in arbitrary units; the network normalises each case).

    Returns:
        The written files, in slice order.
    """
    mr = np.asarray(mr)
    if mr.ndim != 3:
        raise DicomError(f"mr: expected a 3D array (X, Y, Z), got shape {list(mr.shape)}")
    planes = grid_to_planes(affine)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    study_instance_uid = study_instance_uid or new_uid()
    frame_of_reference_uid = frame_of_reference_uid or new_uid()
    series_instance_uid = series_instance_uid or new_uid()
    date, time = dicom_datetime(datetime(2024, 1, 15, 9, 30, 0))
    pixels = np.clip(np.rint(mr), 0, 65535).astype(np.uint16)
    paths = []
    for k in range(mr.shape[2]):
        ds = file_dataset(MR_IMAGE_STORAGE, new_uid())
        ds.SpecificCharacterSet = "ISO_IR 100"  # a scanner export's charset, not radmtl's UTF-8
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient_name, patient_id, "", "O"
        ds.StudyInstanceUID, ds.StudyID, ds.StudyDate, ds.StudyTime = study_instance_uid, "1", date, time
        ds.AccessionNumber, ds.ReferringPhysicianName = "", ""
        ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "MR", series_instance_uid, series_number
        ds.SeriesDescription, ds.PatientPosition = series_description, "HFS"
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_of_reference_uid, ""
        ds.Manufacturer = "radmtl phantom"
        ds.InstanceNumber = k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "SE", "NONE", ""
        ds.MRAcquisitionType, ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = "2D", "4000", "90", 1
        ds.ImagePositionPatient = [ds_text(v) for v in planes.position(k)]
        ds.ImageOrientationPatient = [ds_text(v) for v in planes.orientation()]
        ds.PixelSpacing = [ds_text(v) for v in planes.pixel_spacing]
        ds.SliceThickness = ds_text(planes.slice_spacing)
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = int(mr.shape[1]), int(mr.shape[0])
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        # DICOM pixel data is row-major (rows = j, columns = i): the transpose of the (X, Y) slice.
        ds.PixelData = np.ascontiguousarray(pixels[:, :, k].T).tobytes()
        path = folder / f"slice_{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    log.debug("wrote %d MR slices to %s", len(paths), folder)
    return paths


def write_dataset_mr_series(data: str | Path, case_ids: list[str], out: str | Path) -> list[Path]:
    """Each case's ``DATA/<case>/mr.nii.gz`` as a DICOM MR series in ``OUT/<case>/``, on the NIfTI's grid,
    with the case id as PatientID: DICOM inputs for trying ``radmtl infer`` on phantom cases."""
    from radmtl.data.io import read_volume

    folders = []
    for case_id in case_ids:
        volume = read_volume(Path(data) / case_id / "mr.nii.gz")
        write_mr_series(volume.array, volume.affine, Path(out) / case_id, patient_id=case_id,
                        patient_name=f"Phantom^{case_id}", series_description=f"T2 (radmtl phantom {case_id})")
        folders.append(Path(out) / case_id)
    return folders
