"""An MR series from a folder of DICOM files: find the series, check its geometry, read the volume.

pydicom reads the headers (series grouping, descriptions, identifiers, slice geometry); SimpleITK's
``ImageSeriesReader`` (GDCM) decodes the pixels, including compressed transfer syntaxes and the
rescale slope/intercept. The geometry is checked here before any pixel is read, so that a series the
network must not be run on (one slice, mixed orientations, uneven or sheared slice positions) is
refused with one line instead of being silently resampled by a reader.

Non-uniform slice gaps are refused, not resampled: the MR grid is the grid every output lands on,
and a planning system expects the sCT slices where the MR slices were.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from radmtl.data.dicom.common import (ORIENTATION_TOL, DicomError, DicomIdentity, SlicePlanes, SourceSeries,
                                      planes_to_affine)
from radmtl.data.io import Volume

log = logging.getLogger(__name__)

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
# Slice positions are exported as decimal strings; allow rounding, not a missing slice.
GAP_TOL_MM = 0.01
GAP_TOL_FRACTION = 1e-3


@dataclass(frozen=True)
class SeriesInfo:
    """One series of a DICOM folder: its files and the headers needed to choose and read it."""

    folder: Path
    uid: str
    description: str
    modality: str
    number: str
    files: tuple[Path, ...]
    headers: tuple  # pydicom Datasets without pixel data, one per file, same order as files

    def describe(self) -> str:
        """``"T2 axial" (MR, 24 slices, UID 1.2.3)``: how the error lines list a series."""
        return f'"{self.description or "no description"}" ({self.modality or "?"}, {len(self.files)} ' \
               f'slice{"s" if len(self.files) != 1 else ""}, UID {self.uid})'


@dataclass(frozen=True)
class DicomMR:
    """A read MR series: the volume (RAS affine, (X, Y, Z) = (columns, rows, slices)), the
    identifiers its outputs keep, and the series they derive from."""

    volume: Volume
    identity: DicomIdentity
    source: SourceSeries
    planes: SlicePlanes


def is_dicom_file(path: Path) -> bool:
    """True when ``path`` has a DICOM Part 10 header (the ``DICM`` marker)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def scan_folder(folder: str | Path) -> list[SeriesInfo]:
    """Every image series under ``folder`` (searched recursively), sorted by series number.

    Raises:
        DicomError: the folder holds no DICOM file, or a DICOM file cannot be parsed.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not any(
        part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        raise DicomError(f"{folder}: folder is empty; pass a folder of DICOM MR slices or an MR volume file")
    grouped: dict[str, list[tuple[Path, object]]] = {}
    not_dicom: list[Path] = []
    for path in files:
        if not is_dicom_file(path):
            not_dicom.append(path)
            continue
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError) as err:
            raise DicomError(f"{path}: cannot parse the DICOM header ({err}); the file is truncated or "
                             "corrupt, re-export the series") from err
        sop_class = str(getattr(getattr(header, "file_meta", None), "MediaStorageSOPClassUID", ""))
        if sop_class == DICOMDIR_SOP_CLASS or "SeriesInstanceUID" not in header:
            continue
        grouped.setdefault(str(header.SeriesInstanceUID), []).append((path, header))
    if not grouped:
        example = not_dicom[0].name if not_dicom else files[0].name
        raise DicomError(f"{folder}: none of its {len(files)} file(s) is a DICOM image (e.g. {example}); pass "
                         "a folder of DICOM MR slices, or an MR volume file (.nii/.nii.gz/.mha/.nrrd)")
    if not_dicom:
        log.warning("%s: ignoring %d non-DICOM file(s), e.g. %s", folder, len(not_dicom), not_dicom[0].name)
    series = []
    for uid, members in grouped.items():
        first = members[0][1]
        series.append(SeriesInfo(
            folder=folder, uid=uid, description=str(first.get("SeriesDescription", "") or ""),
            modality=str(first.get("Modality", "") or ""), number=str(first.get("SeriesNumber", "") or ""),
            files=tuple(p for p, _ in members), headers=tuple(h for _, h in members)))
    return sorted(series, key=lambda s: (_number(s.number), s.uid))


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("inf")


def select_series(folder: str | Path, series_uid: str | None = None) -> SeriesInfo:
    """The MR series of ``folder`` to run on, with its files sorted along the slice normal.

    Without ``series_uid`` the folder must hold exactly one MR series; otherwise the error lists the
    series found (description, slice count, UID) so the user can pick one with ``--series``.

    Raises:
        DicomError: no or several MR series, an unknown or non-MR ``series_uid``, or a geometry the
            network cannot be run on.
    """
    folder = Path(folder)
    found = scan_folder(folder)
    listing = "; ".join(s.describe() for s in found)
    if series_uid is not None:
        chosen = [s for s in found if s.uid == series_uid.strip()]
        if not chosen:
            raise DicomError(f"{folder}: no series with UID {series_uid}; found: {listing}")
        series = chosen[0]
        if series.modality != "MR":
            raise DicomError(f"{folder}: series {series.describe()} is {series.modality or 'of no modality'}, "
                             "not MR; pick an MR series with --series")
    else:
        mr = [s for s in found if s.modality == "MR"]
        if not mr:
            raise DicomError(f"{folder}: no MR series found (found: {listing}); pass the folder of an MR series")
        if len(mr) > 1:
            raise DicomError(f"{folder}: {len(mr)} MR series found, pick one with --series UID: "
                             + "; ".join(s.describe() for s in mr))
        series = mr[0]
    return sort_slices(series)


def _vector(header, keyword: str, path: Path, length: int) -> np.ndarray:
    value = header.get(keyword)
    if value is None or len(value) != length:
        raise DicomError(f"{path}: {keyword} is missing or malformed; radmtl needs the slice geometry "
                         "(ImagePositionPatient, ImageOrientationPatient, PixelSpacing), re-export the series")
    return np.asarray([float(v) for v in value], dtype=np.float64)


def sort_slices(series: SeriesInfo) -> SeriesInfo:
    """Check the series' slice geometry and sort its files along the slice normal.

    Raises:
        DicomError: multi-frame or single-slice series, slices of different orientation, size or
            pixel spacing, two slices at one position, non-uniform gaps or sheared slices.
    """
    name = f"{series.folder}: series {series.describe()}"
    first_path, first = series.files[0], series.headers[0]
    if int(first.get("NumberOfFrames", 1) or 1) > 1:
        raise DicomError(f"{name} is a multi-frame (enhanced) object; export it as classic single-frame "
                         "MR slices")
    if len(series.files) < 2:
        raise DicomError(f"{name} has a single slice; radmtl needs a 3D series of at least 2 slices "
                         "(export the whole volume)")
    orientation = _vector(first, "ImageOrientationPatient", first_path, 6)
    spacing = _vector(first, "PixelSpacing", first_path, 2)
    size = (int(first.get("Rows", 0) or 0), int(first.get("Columns", 0) or 0))
    positions = []
    for path, header in zip(series.files, series.headers):
        other = _vector(header, "ImageOrientationPatient", path, 6)
        if not np.allclose(other, orientation, atol=ORIENTATION_TOL):
            raise DicomError(
                f"{name} mixes slice orientations ({path.name}: {np.round(other, 4).tolist()}, {first_path.name}: "
                f"{np.round(orientation, 4).tolist()}); export one orientation (a localizer is its own series)")
        if (int(header.get("Rows", 0) or 0), int(header.get("Columns", 0) or 0)) != size:
            raise DicomError(f"{name}: {path.name} is {header.get('Rows')}×{header.get('Columns')} pixels, "
                             f"{first_path.name} {size[0]}×{size[1]}; export one volume per series")
        if not np.allclose(_vector(header, "PixelSpacing", path, 2), spacing, atol=1e-4):
            raise DicomError(f"{name}: {path.name} has another PixelSpacing than {first_path.name}; export one "
                             "volume per series")
        positions.append(_vector(header, "ImagePositionPatient", path, 3))
    row, column = orientation[:3], orientation[3:]
    if abs(np.dot(row, column)) > 1e-3 or abs(np.linalg.norm(row) - 1) > 1e-3 or \
            abs(np.linalg.norm(column) - 1) > 1e-3:
        raise DicomError(f"{first_path}: ImageOrientationPatient {orientation.tolist()} is not two orthogonal "
                         "unit vectors; fix the export")
    normal = np.cross(row, column)
    positions = np.asarray(positions)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    along, positions = along[order], positions[order]
    gaps = np.diff(along)
    files = tuple(series.files[i] for i in order)
    if np.min(gaps) < GAP_TOL_MM:
        k = int(np.argmin(gaps))
        raise DicomError(f"{name}: {files[k].name} and {files[k + 1].name} lie at the same position; the "
                         "series holds several volumes (echoes, phases or repeats), export one")
    mean_gap = float(np.mean(gaps))
    if np.max(np.abs(gaps - mean_gap)) > GAP_TOL_MM + GAP_TOL_FRACTION * mean_gap:
        raise DicomError(f"{name}: slice gaps are not uniform ({gaps.min():.3f} to {gaps.max():.3f} mm; missing "
                         "slices?); radmtl refuses rather than resamples, export the complete series or "
                         "resample it to uniform slices")
    in_plane = (positions - positions[0]) - np.outer(along - along[0], normal)
    if np.max(np.linalg.norm(in_plane, axis=1)) > GAP_TOL_MM + GAP_TOL_FRACTION * abs(along[-1] - along[0]):
        raise DicomError(f"{name}: slices are sheared (positions do not move along the slice normal, as after "
                         "a gantry tilt); resample the series to an orthogonal grid first")
    headers = tuple(series.headers[i] for i in order)
    return SeriesInfo(folder=series.folder, uid=series.uid, description=series.description,
                      modality=series.modality, number=series.number, files=files, headers=headers)


def series_planes(series: SeriesInfo) -> SlicePlanes:
    """The image planes of a sorted series (:func:`sort_slices`)."""
    first, last = series.headers[0], series.headers[-1]
    orientation = np.asarray([float(v) for v in first.ImageOrientationPatient])
    origin = np.asarray([float(v) for v in first.ImagePositionPatient])
    end = np.asarray([float(v) for v in last.ImagePositionPatient])
    normal = np.cross(orientation[:3], orientation[3:])
    step = normal * float(np.dot(end - origin, normal)) / (len(series.files) - 1)
    spacing = tuple(float(v) for v in first.PixelSpacing)
    return SlicePlanes(row_cosines=orientation[:3], column_cosines=orientation[3:], pixel_spacing=spacing,
                       slice_step=step, origin=origin)


def _text(header, keyword: str) -> str:
    value = header.get(keyword)
    return "" if value is None else str(value)


def series_identity(series: SeriesInfo) -> DicomIdentity:
    """The identifiers of the MR series that its outputs keep.

    Raises:
        DicomError: the series has no StudyInstanceUID or FrameOfReferenceUID.
    """
    first = series.headers[0]
    for keyword in ("StudyInstanceUID", "FrameOfReferenceUID"):
        if not _text(first, keyword):
            raise DicomError(f"{series.files[0]}: {keyword} is missing; outputs could not be registered to the "
                             "MR in a planning system, re-export the series with it")
    if not _text(first, "PatientID"):
        log.warning("%s: PatientID is empty; the outputs carry an empty PatientID too", series.files[0])
    return DicomIdentity(
        patient_id=_text(first, "PatientID"), patient_name=_text(first, "PatientName"),
        study_instance_uid=_text(first, "StudyInstanceUID"),
        frame_of_reference_uid=_text(first, "FrameOfReferenceUID"),
        patient_birth_date=_text(first, "PatientBirthDate"), patient_sex=_text(first, "PatientSex"),
        study_id=_text(first, "StudyID"), study_date=_text(first, "StudyDate"), study_time=_text(first, "StudyTime"),
        accession_number=_text(first, "AccessionNumber"),
        referring_physician_name=_text(first, "ReferringPhysicianName"),
        study_description=_text(first, "StudyDescription"), patient_position=_text(first, "PatientPosition"),
        image_laterality=(_text(first, "Laterality") or _text(first, "ImageLaterality")).strip().upper(),
        body_part_examined=_text(first, "BodyPartExamined"),
    )


def pixel_data_problem(path: Path) -> str | None:
    """What is wrong with one slice's pixel data (missing, cut short), in a few words; None when it looks whole."""
    import pydicom

    try:
        ds = pydicom.dcmread(path)
    except Exception as err:  # noqa: BLE001 - pydicom raises many types for a file cut in a header
        return f"cannot be read to its end ({type(err).__name__}); the file is truncated or corrupt"
    if "PixelData" not in ds:
        return "has no pixel data (no PixelData element): the slice holds a header only"
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None and syntax.is_compressed:
        return None  # encapsulated frames: their size says nothing
    try:
        need = (int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * int(ds.BitsAllocated) // 8
                * int(ds.get("NumberOfFrames", 1) or 1))
    except (AttributeError, TypeError, ValueError):
        return None
    have = len(ds.PixelData)
    if have < need:
        return (f"holds {have} bytes of pixel data where {ds.Rows}×{ds.Columns} pixels of {ds.BitsAllocated} bits "
                f"need {need}: the file is truncated")
    return None


def read_series(series: SeriesInfo) -> DicomMR:
    """Read a series chosen by :func:`select_series` as a float32 volume with its identifiers.

    Raises:
        DicomError: the pixel data cannot be decoded or has another size than the headers say.
    """
    import SimpleITK as sitk

    planes = series_planes(series)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in series.files])
    try:
        image = reader.Execute()
    except RuntimeError as err:
        for index, path in enumerate(series.files):  # GDCM says "Cannot read requested file", not which or why
            problem = pixel_data_problem(path)
            if problem is not None:
                raise DicomError(f"{path}: {problem} (slice {index + 1} of {len(series.files)} of series "
                                 f"{series.describe()}); re-export the series") from err
        raise DicomError(f"{series.folder}: cannot decode the pixel data of series {series.describe()} "
                         f"({str(err).strip().splitlines()[-1]}); re-export it uncompressed") from err
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise DicomError(f"{series.folder}: series {series.describe()} is not greyscale; radmtl needs an MR "
                         "magnitude series")
    array = np.transpose(sitk.GetArrayFromImage(image)).astype(np.float32)  # (z, y, x) → (x, y, z)
    first = series.headers[0]
    expected = (int(first.Columns), int(first.Rows), len(series.files))
    if array.shape != expected:
        raise DicomError(f"{series.folder}: series {series.describe()} decoded to {list(array.shape)} voxels, "
                         f"the headers say {list(expected)}; re-export the series")
    volume = Volume(array=array, affine=planes_to_affine(planes), path=series.folder, header=None)
    source = SourceSeries(series_instance_uid=series.uid, series_description=series.description,
                          series_number=series.number, sop_class_uid=_text(first, "SOPClassUID"),
                          sop_instance_uids=tuple(_text(h, "SOPInstanceUID") for h in series.headers))
    log.info("%s: read MR series %s, %s voxels", series.folder, series.describe(), list(array.shape))
    return DicomMR(volume=volume, identity=series_identity(series), source=source, planes=planes)
