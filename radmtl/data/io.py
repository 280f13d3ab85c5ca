"""Volume I/O: read and write NIfTI (and .mha/.nrrd through SimpleITK) on a reference grid, atomically (:mod:`radmtl.data.atomic`).

Every volume is handled as a :class:`Volume`: a 3D array in the file's own voxel order plus the
4×4 voxel→world affine in nibabel's RAS+ millimetre convention. Writes copy the reference's
affine and qform/sform codes but build a fresh header, so the on-disk dtype and scaling of an
int16 CT header can never leak into a float32 σ map or a uint8 label map. A ``.mha``/``.nrrd``
destination is written through SimpleITK with the exact inverse of the reading conversion (RAS
affine → LPS origin, spacing, direction), so a SynthRAD2025 ``.mha`` comes back with its geometry.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from radmtl.errors import RadmtlError
from radmtl.data.metaimage_header import stored_metaimage_problem
from radmtl.data.nifti_header import stored_header_problem
from radmtl.data.atomic import atomic_path
from radmtl.data.grid import Grid

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
ITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")
VOLUME_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES

# RAS <-> LPS: ITK/DICOM world coordinates are LPS, nibabel's are RAS (the flip is its own inverse).
RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])

# gzip level of .nii.gz outputs, set here rather than left to nibabel's default (1 today). Measured on
# 400×400×120 maps of radmtl infer (float32 76.8 MB, uint8 labels 19.2 MB), zlib CPU time and size:
# sCT level 1: 1.6 s, 69.6 MB; 3: 1.8 s, 69.6 MB; 6: 2.0 s, 69.2 MB; 9: 2.0 s, 69.2 MB. σ: 1.5 s 63.7 MB
# at 1 against 2.6 s 63.3 MB at 6 or 9. Labels: 0.07 s 1.7 MB at 1, 0.26 s 1.1 MB at 6, 2.6 s 1.0 MB at 9.
# Float maps hardly compress beyond level 1 (random low mantissa bits), so a higher level costs up to
# 1.7× the time (40× for labels) for < 1 % of the size; ``--output-format nii`` skips compression.
NIFTI_GZIP_LEVEL = 1

# The gzip stream of .nii.gz outputs comes from ISA-L (the ``isal`` package, python-isal: Intel's
# deflate with SIMD, a drop-in gzip.GzipFile) where it is installed, not from zlib. On a 400×400×120
# float32 sCT-like map (76.8 MB; /tmp-free measurement, 2 cores): zlib level 1 1.79 s → 64.7 MB,
# isal level 1 0.16 s → 66.5 MB (level 3: 0.30 s, 66.4 MB; zlib-ng level 1: 0.73 s, 81.3 MB). The files
# are standard gzip members that nibabel, SimpleITK, ITK-SNAP and gunzip read. Without isal (a
# platform it has no wheel for) zlib writes them, slower, with the same content.
try:
    from isal import igzip as _gzip_module
except ImportError:  # pragma: no cover - isal is a dependency; a broken install falls back to zlib
    import gzip as _gzip_module
GZIP_COMPRESSOR = "isal" if _gzip_module.__name__.startswith("isal") else "zlib"

# ``radmtl infer --output-format``; "auto" writes in the input's own format.
OUTPUT_FORMATS = ("auto", "nii.gz", "nii", "mha")
# Single-file formats only: a .mhd/.nhdr header names its data file, which an atomic rename would orphan.
WRITE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".nrrd")
_AUTO_SUFFIX = {".nii.gz": ".nii.gz", ".nii": ".nii", ".mha": ".mha", ".mhd": ".mha",
                ".nrrd": ".nrrd", ".nhdr": ".nrrd"}


class VolumeError(RadmtlError, ValueError):
    """A volume cannot be read, written or used; the message names the file and how to fix it."""


class VolumeHeaderError(VolumeError):
    """A file that reads, but whose header cannot be used as it stands; ``what`` and ``fix`` apart, so that
    ``radmtl check`` reports it as what it is rather than as an unreadable file."""

    def __init__(self, path: Path, what: str, fix: str) -> None:
        super().__init__(f"{path}: {what}; {fix}")
        self.what, self.fix = what, fix


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D image: ``array`` (X, Y, Z) in file voxel order, ``affine`` voxel→RAS world (mm).

    ``header`` is the NIfTI header when the file was NIfTI (used to carry qform/sform codes
    into outputs), else None.
    """

    array: np.ndarray
    affine: np.ndarray
    path: Path | None = None
    header: nib.Nifti1Header | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.array.shape[:3])

    @property
    def grid(self) -> Grid:
        return Grid.from_affine(self.shape, self.affine)


def has_volume_suffix(path: str | Path) -> bool:
    return str(path).lower().endswith(VOLUME_SUFFIXES)


def strip_volume_suffix(name: str) -> str:
    """``case_001.nii.gz`` -> ``case_001``."""
    lower = name.lower()
    for suffix in VOLUME_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_volume(path: str | Path, channels: bool = False) -> Volume:
    """Read a 3D volume as float32.

    Args:
        channels: read a 4D (X, Y, Z, C) image — a NIfTI's fourth axis or an .mha's vector components, as
            ``radmtl infer`` writes ``seg_probabilities`` and ``sct_samples`` — keeping C; a 3D file gives C = 1.

    Raises:
        VolumeError: missing, unreadable or corrupt file, or not a 3D image. The message names the
            file, what is wrong and how to fix it.
    """
    path = Path(path)
    if not path.exists():
        raise VolumeError(f"{path}: file not found; check the path or the dataset layout")
    if path.is_dir():
        raise VolumeError(f"{path}: is a folder, expected an image file")
    lower = path.name.lower()
    if lower.endswith(NIFTI_SUFFIXES):
        volume = _read_nifti(path, channels)
    elif lower.endswith(ITK_SUFFIXES):
        volume = _read_itk(path, channels)
    else:
        raise VolumeError(
            f"{path}: unsupported file type; use NIfTI (.nii/.nii.gz) or .mha/.nrrd"
        )
    return volume


def _squeeze_to_3d(path: Path, array: np.ndarray, channels: bool = False) -> np.ndarray:
    if channels:  # (X, Y, Z, C) wanted: a 3D file is one channel
        array = array[..., None] if array.ndim == 3 else array
        if array.ndim != 4 or min(array.shape) < 1:
            raise VolumeError(f"{path}: expected a 3D or 4D (X, Y, Z, C) image, got shape {list(array.shape)}; "
                              "write it again with radmtl infer")
        return array
    # A 4D NIfTI with a single volume (X, Y, Z, 1) is common output of converters; accept it.
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise VolumeError(
            f"{path}: expected a 3D image, got {array.ndim}D with shape {list(array.shape)}; "
            "export a single 3D volume"
        )
    if min(array.shape) < 1:
        raise VolumeError(f"{path}: image is empty (shape {list(array.shape)})")
    return array


def _read_nifti(path: Path, channels: bool = False) -> Volume:
    problem = stored_header_problem(path)
    if problem is not None:
        raise VolumeHeaderError(path, *problem)
    try:
        img = nib.load(str(path))
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise VolumeError(f"{path}: not a NIfTI image ({type(img).__name__})")
        # get_fdata applies scl_slope/inter; float32 halves memory against the float64 default.
        array = np.asarray(img.get_fdata(dtype=np.float32))
    except VolumeError:
        raise
    except Exception as err:  # nibabel/gzip/zlib raise many unrelated types for a corrupt file
        raise VolumeError(
            f"{path}: cannot read as NIfTI ({type(err).__name__}: {err}); the file is corrupt or "
            "truncated, re-export it"
        ) from err
    array = _squeeze_to_3d(path, array, channels)
    return Volume(array=array, affine=np.asarray(img.affine, dtype=np.float64), path=path,
                  header=img.header.copy())


def _read_itk(path: Path, channels: bool = False) -> Volume:
    import SimpleITK as sitk  # only needed for non-NIfTI inputs

    if path.name.lower().endswith((".mha", ".mhd")):
        problem = stored_metaimage_problem(path)
        if problem is not None:
            raise VolumeHeaderError(path, *problem)
    try:
        img = sitk.ReadImage(str(path))
    except Exception as err:
        raise VolumeError(
            f"{path}: cannot read with SimpleITK ({_itk_reason(err, path)}); the file is corrupt or truncated, "
            "re-export it"
        ) from err
    if img.GetNumberOfComponentsPerPixel() != 1 and not channels:
        raise VolumeError(f"{path}: has {img.GetNumberOfComponentsPerPixel()} components per voxel; "
                          "expected a scalar image")
    # SimpleITK arrays are (z, y, x), a vector image's (z, y, x, c); transpose to nibabel's (x, y, z[, c]).
    array = sitk.GetArrayFromImage(img)
    vector = img.GetNumberOfComponentsPerPixel() > 1 and array.ndim == 4
    array = (np.transpose(array, (2, 1, 0, 3)) if vector else np.transpose(array)).astype(np.float32)
    array = _squeeze_to_3d(path, array, channels)
    if img.GetDimension() != 3:
        raise VolumeError(f"{path}: expected a 3D image, got {img.GetDimension()}D")
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine_lps = np.eye(4)
    affine_lps[:3, :3] = direction @ np.diag(img.GetSpacing())
    affine_lps[:3, 3] = img.GetOrigin()
    return Volume(array=array, affine=RAS_FROM_LPS @ affine_lps, path=path, header=None)


def _itk_reason(err: Exception, path: Path) -> str:
    """ITK's reason in one line: its message spans several, and says "No such file or directory" (the last
    errno, not the cause) for a file that exists but does not read."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    reasons = [line for line in lines if "ERROR" in line or line.startswith("Reason")] or lines[-1:]
    text = " ".join(reason.split(": ", 1)[-1] if "ERROR" in reason else reason for reason in reasons)
    if "No such file or directory" in text and path.is_file():
        text = text.replace("Reason: No such file or directory", "").strip() or "unreadable"
    return text or type(err).__name__


def volume_suffix(path: str | Path) -> str | None:
    """The volume suffix of ``path`` as written (``.nii.gz``, ``.mha``, ...), lower case; None if not a volume."""
    lower = str(path).lower()
    return next((suffix for suffix in VOLUME_SUFFIXES if lower.endswith(suffix)), None)


def output_suffix(fmt: str, input_path: str | Path | None) -> str:
    """The suffix of the files written for an input, for ``--output-format`` ``fmt``.

    Args:
        fmt: one of :data:`OUTPUT_FORMATS`; ``auto`` keeps the input's format (``.mhd`` → ``.mha``,
            ``.nhdr`` → ``.nrrd``, since only single-file formats are written), with ``.nii.gz`` for a
            DICOM folder or anything else.
        input_path: the input MR file (a folder or None for DICOM).

    Returns:
        ``.nii.gz``, ``.nii``, ``.mha`` or ``.nrrd``.
    """
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"output format must be one of {', '.join(OUTPUT_FORMATS)}, got {fmt!r}")
    if fmt != "auto":
        return f".{fmt}"
    suffix = volume_suffix(input_path) if input_path is not None else None
    return _AUTO_SUFFIX.get(suffix, ".nii.gz")


def _check_writable_dir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise VolumeError(f"{folder}: cannot create output folder ({err.strerror})") from err
    if not os.access(folder, os.W_OK):
        raise VolumeError(f"{folder}: output folder is not writable; choose another --output")


def write_like(
    array: np.ndarray,
    reference: Volume,
    path: str | Path,
    dtype: np.dtype | type,
) -> Path:
    """Write ``array`` on ``reference``'s grid, atomically, in the format ``path`` names.

    Args:
        array: (X, Y, Z) or (X, Y, Z, C) on the reference's voxel grid (C: a vector image in .mha/.nrrd).
        reference: the input volume whose affine (and, for NIfTI, qform/sform codes) the output must carry.
        path: destination: ``.nii.gz``/``.nii`` (nibabel) or ``.mha``/``.nrrd`` (SimpleITK, compressed).
        dtype: on-disk dtype, explicit: float32 for HU and σ, uint8 for labels.

    Returns:
        The final path.
    """
    path = Path(path)
    suffix = volume_suffix(path)
    if suffix not in WRITE_SUFFIXES:
        raise VolumeError(f"{path}: cannot write this file type; name it .nii.gz, .nii, .mha or .nrrd")
    array = np.asarray(array)
    if array.shape[:3] != reference.shape:
        raise VolumeError(
            f"{path}: array shape {list(array.shape)} does not match the reference grid "
            f"{list(reference.shape)}"
        )
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise VolumeError(f"{path}: values outside the range of {dtype.name}")
        array = np.rint(array) if np.issubdtype(array.dtype, np.floating) else array
    data = np.ascontiguousarray(array.astype(dtype, copy=False))
    if suffix in (".mha", ".nrrd"):
        _check_writable_dir(path.parent)
        _write_itk(data, reference.affine, path)
        log.debug("wrote %s %s %s", path, list(data.shape), dtype.name)
        return path

    img = nib.Nifti1Image(data, reference.affine)
    header = img.header
    ref_header = reference.header
    if ref_header is not None and isinstance(ref_header, nib.Nifti1Header):
        qform_code = int(ref_header["qform_code"])
        sform_code = int(ref_header["sform_code"])
        # Copy the matrices the reference actually stores, not its "best" affine, so a file whose
        # qform and sform disagree comes back exactly as it went in.
        img.set_qform(ref_header.get_qform(), code=qform_code)
        img.set_sform(ref_header.get_sform(), code=sform_code)
        header.set_xyzt_units(*ref_header.get_xyzt_units())
    else:
        img.set_qform(reference.affine, code=1)
        img.set_sform(reference.affine, code=1)
        header.set_xyzt_units("mm", "sec")
    header.set_data_dtype(dtype)
    # A fresh header has no scaling, but make it explicit: slope 1, intercept 0.
    header["scl_slope"] = 1.0
    header["scl_inter"] = 0.0
    header["descrip"] = b"radmtl"

    _check_writable_dir(path.parent)
    try:
        with atomic_path(path) as tmp:
            if suffix == ".nii.gz":
                # No name and mtime 0 in the gzip header: the same maps give the same bytes (gzip stores
                # the file's name, here the temporary one, and a time stamp otherwise).
                with open(tmp, "wb") as raw, _gzip_module.GzipFile(
                        filename="", mode="wb", fileobj=raw, compresslevel=NIFTI_GZIP_LEVEL, mtime=0) as stream:
                    img.to_file_map({"image": nib.fileholders.FileHolder(filename=str(tmp), fileobj=stream)})
            else:
                nib.save(img, str(tmp))
    except OSError as err:
        raise VolumeError(f"{path}: cannot write ({err.strerror}); check space and permissions") from err
    log.debug("wrote %s %s %s", path, list(data.shape), dtype.name)
    return path


def _write_itk(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write (X, Y, Z[, C]) ``data`` with RAS ``affine`` through SimpleITK: the inverse of :func:`_read_itk`."""
    import SimpleITK as sitk

    # SimpleITK arrays are (z, y, x[, c]); a trailing channel axis becomes a vector pixel.
    img = sitk.GetImageFromArray(np.transpose(data, (2, 1, 0, *range(3, data.ndim))), isVector=data.ndim == 4)
    affine_lps = RAS_FROM_LPS @ np.asarray(affine, dtype=np.float64)  # the diagonal flip is its own inverse
    linear = affine_lps[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    if np.any(spacing <= 0):
        raise VolumeError(f"{path}: the reference affine has a zero voxel size; fix the input header")
    img.SetSpacing([float(s) for s in spacing])
    img.SetDirection([float(d) for d in (linear / spacing).ravel()])
    img.SetOrigin([float(o) for o in affine_lps[:3, 3]])
    try:
        with atomic_path(path) as tmp:  # the temporary name keeps the suffix: SimpleITK picks the writer by it
            # SimpleITK's own default level: 1.0 s and 69.1 MB for the sCT map measured above (its level 1
            # wrote 80.5 MB, more than the raw data).
            sitk.WriteImage(img, str(tmp), useCompression=True)
    except RuntimeError as err:  # SimpleITK reports I/O failures as RuntimeError
        first_line = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise VolumeError(f"{path}: cannot write ({first_line}); check space and permissions") from err


def write_volume(array: np.ndarray, affine: np.ndarray, path: str | Path, dtype: np.dtype | type) -> Path:
    """Write ``array`` with ``affine`` (qform and sform code 1, scanner), atomically."""
    # broadcast_to gives a shape-only placeholder without allocating a second volume.
    reference = Volume(array=np.broadcast_to(np.uint8(0), np.asarray(array).shape[:3]), affine=np.asarray(affine))
    return write_like(array, reference, path, dtype)
