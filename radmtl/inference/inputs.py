"""What ``radmtl infer`` is given: the cases of ``--input`` (a file, a folder, a dataset, a DICOM
series), the checks an MR must pass before the network runs, and a writable output folder."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import numpy as np

from radmtl.data.dicom_series import SeriesInfo
from radmtl.data.io import VolumeError, Volume, has_volume_suffix, strip_volume_suffix

log = logging.getLogger(__name__)


def find_cases(input_path: str | Path, series: str | None = None) -> list[tuple[str, Path | SeriesInfo | None]]:
    """Cases of ``--input``: ``(case id, MR path)`` pairs, sorted as found.

    One MR file → one case named after the file; a dataset folder (``dataset.json`` or case
    sub-folders holding ``mr.*``) → its cases' ``mr``; else every volume file in the folder. A
    dataset case without an ``mr`` entry has path None and fails on its own. A folder without volume
    files is read as DICOM: one case named after the folder, its MR series (``series``, or the only
    one) checked and sorted already; a single DICOM file stands for its series in its folder.

    Raises:
        RadmtlError: the input does not exist or holds no MR volume; for DICOM, also no or several MR
            series, an unknown ``series``, or a slice geometry the network cannot be run on.
    """
    from radmtl.data.dicom_series import is_dicom_file, select_series
    from radmtl.data.discovery import DATASET_JSON, discover, find_volumes

    path = Path(input_path).expanduser()
    if not path.exists():
        raise VolumeError(f"{path}: input not found; pass an MR file, a folder of MR files, a dataset folder "
                          "or a folder of DICOM MR slices")
    if path.is_file() and not has_volume_suffix(path.name) and is_dicom_file(path):
        import pydicom

        uid = series or str(pydicom.dcmread(path, stop_before_pixels=True).get("SeriesInstanceUID", ""))
        return [(path.parent.name or "dicom", select_series(path.parent, uid or None))]
    if series is not None and (path.is_file() or any(has_volume_suffix(p.name) for p in path.iterdir())):
        raise VolumeError(f"{path}: --series applies to a folder of DICOM files, not to volume files; drop it")
    if path.is_file():
        if not has_volume_suffix(path.name):
            raise VolumeError(f"{path}: unsupported file type; use NIfTI (.nii/.nii.gz), .mha/.nrrd or a "
                              "folder of DICOM slices")
        stem = strip_volume_suffix(path.name)
        # DATA/case_007/mr.nii.gz is case_007, as it would be when the dataset folder is given.
        return [(path.parent.name if stem == "mr" and path.parent.name else stem, path)]
    visible = [p for p in sorted(path.iterdir()) if not p.name.startswith(".")]
    files = [p for p in visible if p.is_file() and has_volume_suffix(p.name)]
    is_dataset = (path / DATASET_JSON).is_file() or any(p.is_dir() and find_volumes(p, "mr") for p in visible)
    if is_dataset:
        if files:
            log.warning("%s: is a dataset folder; ignoring %d volume file(s) at its top level", path, len(files))
        cases = [(case.case_id, case.paths.get("mr")) for case in discover(path).cases]
    elif files:
        cases = [(strip_volume_suffix(p.name), p) for p in files]
    else:
        return [(path.resolve().name or "dicom", select_series(path, series))]
    seen: dict[str, Path | None] = {}
    for case_id, mr in cases:
        if case_id in seen:
            raise VolumeError(f"{path}: case id {case_id!r} occurs twice ({seen[case_id]} and {mr}); "
                              "rename one of them")
        seen[case_id] = mr
    return cases


def check_mr(volume: Volume) -> None:
    """Reject MR volumes the network cannot be run on (non-finite values, degenerate geometry)."""
    bad = int(np.size(volume.array) - np.count_nonzero(np.isfinite(volume.array)))
    if bad:
        raise VolumeError(f"{volume.path}: {bad} voxel(s) are NaN or Inf; fix or re-export the MR")
    if abs(np.linalg.det(volume.affine[:3, :3])) < 1e-12:
        raise VolumeError(f"{volume.path}: the affine is singular (zero voxel size); fix the header")


def prepare_output_root(output: str | Path) -> Path:
    """Create ``OUT`` and prove it writable by writing a probe file (``os.access`` lies for root)."""
    output = Path(output).expanduser()
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / f".write-test-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise VolumeError(f"{output}: output folder is not writable ({err.strerror}); choose another "
                          "--output") from err
    return output
