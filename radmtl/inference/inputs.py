"""What ``radmtl infer`` is given: the cases of ``--input`` (a file, a folder, a dataset, a DICOM
series), the checks an MR must pass before the network runs, and each case read and preprocessed (:func:`prepare_case`) one case ahead of the network (:func:`read_ahead`).
The output folders they go to are :mod:`radmtl.inference.output_folders`."""

from __future__ import annotations

import logging
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from radmtl.data.dicom.series import SeriesInfo
from radmtl.data.io import VolumeError, Volume, has_volume_suffix, strip_volume_suffix
from radmtl.errors import RadmtlError
from radmtl.inference.output_folders import case_folder, make_parents, remove_if_empty

if TYPE_CHECKING:  # annotations only: infer imports this module
    from radmtl.inference.infer_options import InferOptions

log = logging.getLogger(__name__)

# A flat folder's files whose name says they are not an MR: the stem's last token ...
NOT_MR_TOKENS = frozenset({"ct", "sct", "mask", "labels", "label", "seg"})
# ... or a stem ending in a reference or radmtl output name that is more than one token long.
NOT_MR_ENDINGS = ("ct_noise_sd", "sct_sigma_aleatoric", "sct_sigma_epistemic", "sct_sigma_total",
                  "seg_entropy", "seg_mutual_info", "seg_probabilities")
_NNUNET_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_SHOWN = 5  # skipped files named in the log line
T = TypeVar("T")
R = TypeVar("R")


def find_cases(input_path: str | Path, series: str | None = None) -> list[tuple[str, Path | SeriesInfo | None]]:
    """Cases of ``--input``: ``(case id, MR path)`` pairs, sorted as found.

    One MR file → one case named after the file, whatever its name; a dataset folder
    (``dataset.json``, or folders at any depth holding ``mr.*``, ids like ``AB/1ABA005``) → its cases'
    ``mr``; else the MR volume files of the folder (:func:`flat_case_id` says which). A dataset case
    without an ``mr`` entry has path None and fails on its own. A folder without volume
    files is read as DICOM: one case named after the folder, its MR series (``series``, or the only
    one) checked and sorted already; a single DICOM file stands for its series in its folder.

    Raises:
        RadmtlError: the input does not exist or holds no MR volume; for DICOM, also no or several MR
            series, an unknown ``series``, or a slice geometry the network cannot be run on.
    """
    from radmtl.data.dicom.series import is_dicom_file, select_series
    from radmtl.data.discovery import DATASET_JSON, DatasetError, discover

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
    index = None
    if (path / DATASET_JSON).is_file():
        index = discover(path)
    elif any(p.is_dir() for p in visible):
        try:  # a case may sit several folders down (SynthRAD2025: Task1/AB/1ABA005/mr.mha)
            index = discover(path)
        except DatasetError:  # without dataset.json this only means "no folder holds an mr.*"
            index = None
    if index is not None:
        if files:
            log.warning("%s: is a dataset folder; ignoring %d volume file(s) at its top level", path, len(files))
        cases = [(case.case_id, case.paths.get("mr")) for case in index.cases]
    elif files:
        cases = _flat_mr_cases(path, files)
    else:
        return [(path.resolve().name or "dicom", select_series(path, series))]
    seen: dict[str, Path | None] = {}
    for case_id, mr in cases:
        if case_id in seen:
            raise VolumeError(f"{path}: case id {case_id!r} occurs twice ({seen[case_id]} and {mr}); "
                              "rename one of them")
        seen[case_id] = mr
    return cases


def find_input_cases(input_path: str | Path, options: InferOptions) -> list[tuple[str, Any]]:
    """The cases of ``--input`` (:func:`~radmtl.inference.inputs.find_cases`), checked against the options.

    Raises:
        RadmtlError: no usable input, or ``--dicom-grid`` on an input that writes no DICOM.
    """
    cases = find_cases(input_path, options.series)
    if options.dicom_grid != "input" and not options.dicom_out and not any(
            isinstance(mr, SeriesInfo) for _, mr in cases):
        raise RadmtlError(f"--dicom-grid {options.dicom_grid}: {input_path} is not DICOM, so nothing is written as "
                          "DICOM; add --dicom-out")
    return cases


def flat_case_id(stem: str, channels: bool = True) -> tuple[str | None, str]:
    """The case id of a volume file in a flat folder, from its stem (the name without suffix).

    ``CASE_0000`` (nnU-Net's first channel) and ``CASE_mr`` are case ``CASE``; other channels
    (``CASE_0001``) and names that say they are not an MR (last ``_``/``-`` token ct, sct, mask,
    labels, label or seg, or a radmtl output name such as ``sct_sigma_total``) are not cases.
    With ``channels`` False a four-digit ending is part of the id (``patient_0001`` numbered cases).

    Returns:
        ``(case id, "")`` for an MR, ``(None, why it is skipped)`` otherwise.
    """
    channel = _NNUNET_CHANNEL.match(stem) if channels else None
    if channel is not None:
        if channel["channel"] != "0000":
            return None, f"channel {channel['channel']}, not the first"
        stem = channel["case"]
    lower = stem.lower()
    tokens = re.split(r"[_-]", lower)
    if tokens[-1] in NOT_MR_TOKENS or any(lower == end or lower.endswith(("_" + end, "-" + end))
                                          for end in NOT_MR_ENDINGS):
        return None, "not an MR"
    if len(tokens) > 1 and tokens[-1] == "mr" and len(stem) > 3:
        stem = stem[:-3]
    return stem, ""


def _flat_mr_cases(folder: Path, files: list[Path]) -> list[tuple[str, Path]]:
    """The MR cases among a flat folder's volume files; one log line names the files skipped."""
    stems = [strip_volume_suffix(file.name) for file in files]
    # Four-digit endings are nnU-Net channels only in a folder that has first channels: files
    # numbered case_0001, case_0002 ... without any _0000 are cases.
    channels = any(stem.endswith("_0000") and _NNUNET_CHANNEL.match(stem) for stem in stems)
    cases, skipped = [], []
    for file, stem in zip(files, stems):
        case_id, why = flat_case_id(stem, channels)
        if case_id is None:
            skipped.append(f"{file.name} ({why})")
        else:
            cases.append((case_id, file))
    more = f" and {len(skipped) - _SHOWN} more" if len(skipped) > _SHOWN else ""
    if skipped:
        log.info("%s: skipped %d of %d volume file(s) by name: %s%s", folder, len(skipped), len(files),
                 ", ".join(skipped[:_SHOWN]), more)
    if not cases:
        raise VolumeError(
            f"{folder}: none of its {len(files)} volume file(s) is an MR by name ({', '.join(skipped[:_SHOWN])}"
            f"{more}); name the MR files CASE.nii.gz, CASE_mr.nii.gz or CASE_0000.nii.gz, or pass one file "
            "as --input")
    return cases


def check_mr(volume: Volume, name: str | Path | None = None, cfg: Any = None) -> None:
    """Refuse an MR the network cannot be run on, by the rule ``radmtl check`` applies
    (:func:`radmtl.data.volume_rules.mr_problems`: a usable affine, finite, not constant) and, given the
    model's config ``cfg``, its smallest extent (:func:`radmtl.data.volume_rules.network_min_extent_mm`).

    Raises:
        VolumeError: one line naming the file (``name``, else ``volume.path``), what is wrong, how to fix it.
    """
    from radmtl.data.volume_rules import extent_problems, mr_problems, network_min_extent_mm

    problems = mr_problems(volume)
    if not problems and cfg is not None:
        problems = extent_problems(volume, network_min_extent_mm(cfg.model.strides, cfg.data.spacing))
    if problems:
        raise VolumeError(f"{name or volume.path}: " + "; ".join(f"{what}; fix: {fix}" for what, fix in problems))


# --- one case, read and preprocessed (ahead of the network) ------------------------------------


@dataclass
class PreparedCase:
    """One case read, checked and preprocessed: everything the network and the writers need from the input.

    ``created`` are the output folders made for it (removed again if the case is not written).
    """

    case_id: str
    final_dir: Path
    created: list[Path]
    volume: Volume
    mr_path: Path  # the MR file, or the DICOM folder
    network_mr: Any  # radmtl.inference.case_maps.NetworkMR
    is_dicom: bool = False
    identity: Any = None
    source_series: Any = None
    timings: dict[str, float] = field(default_factory=dict)
    # The input MR's body outline (bool, the input grid), for the review and the DICOM outputs; None if neither.
    input_body: np.ndarray | None = None


def prepare_case(loaded: Any, case_id: str, mr_path: Path | SeriesInfo | None, output: Path,
                 dicom_out: bool | None, body_mask: bool = False) -> PreparedCase:
    """Read and check one case's MR, make its output parents, and run the training preprocessing.

    The MR's body outline on its own grid is derived here too when ``body_mask`` (the review needs it) or the
    case gets DICOM outputs: this runs read ahead, while the network works on the case before.

    Raises:
        RadmtlError: the MR cannot be used (one line naming the file and the fix); the folders made
            for the case are removed again.
    """
    from radmtl.data.dicom.common import generated_identity
    from radmtl.data.dicom.series import read_series
    from radmtl.data.io import read_volume, write_volume
    from radmtl.inference.case_maps import preprocess_mr
    from radmtl.inference.work_dirs import work_prefix

    if mr_path is None:
        raise VolumeError(f"case {case_id}: has no mr file; add mr.nii.gz to the case folder")
    final_dir = case_folder(output, case_id)
    t0 = time.perf_counter()
    is_dicom = isinstance(mr_path, SeriesInfo)
    identity, source_series = None, None
    if is_dicom:
        dicom_mr = read_series(mr_path)
        volume, identity, source_series = dicom_mr.volume, dicom_mr.identity, dicom_mr.source
        mr_path = mr_path.folder
    else:
        volume = read_volume(mr_path)
    check_mr(volume, cfg=loaded.cfg)
    if (is_dicom if dicom_out is None else dicom_out) and identity is None:
        identity = generated_identity(case_id, mr_path)
    read_s = time.perf_counter() - t0
    # The hidden folders sit beside the final one (OUT/AB/.1ABA005.partial-*), so the rename stays
    # within one folder and a nested id never creates OUT/.AB/.
    created = make_parents(final_dir.parent)
    # The network reads a file; a DICOM MR goes to it as a NIfTI copy that is not an output.
    scratch = (tempfile.TemporaryDirectory(prefix=work_prefix(final_dir.name, "mr"), dir=final_dir.parent)
               if is_dicom else None)
    try:
        t0 = time.perf_counter()
        network_input = mr_path
        if scratch is not None:
            network_input = write_volume(volume.array, volume.affine, Path(scratch.name) / "mr.nii.gz", np.float32)
        network_mr = preprocess_mr(loaded, network_input)
        preprocess_s = time.perf_counter() - t0
    except BaseException:
        remove_if_empty(created)
        raise
    finally:
        if scratch is not None:
            scratch.cleanup()
    timings = {"read_s": read_s, "preprocess_s": preprocess_s}
    input_body = None
    if body_mask or (is_dicom if dicom_out is None else dicom_out):
        from radmtl.data.transforms import derive_body_mask

        t0 = time.perf_counter()
        input_body = derive_body_mask(volume.array) != 0
        timings["body_mask_s"] = time.perf_counter() - t0
    return PreparedCase(case_id=case_id, final_dir=final_dir, created=created, volume=volume, mr_path=Path(mr_path),
                        network_mr=network_mr, is_dicom=is_dicom, identity=identity, source_series=source_series,
                        timings=timings, input_body=input_body)


def read_ahead(items: Sequence[T], prepare: Callable[[T], R]) -> Iterator[tuple[T, Future]]:
    """``(item, future of prepare(item))`` for each item, preparing the next one on a background thread.

    The next item's ``prepare`` starts when its predecessor is handed out, so it runs while the
    caller works on that one (the network), and at most two prepared items exist at once. An error
    of ``prepare`` is raised by its future's ``result()``; the items after it are still prepared.
    """
    if not items:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="radmtl-read") as pool:
        future = pool.submit(prepare, items[0])
        try:
            for index, item in enumerate(items):
                current = future
                futures_wait([current])  # one case ahead, not two
                future = pool.submit(prepare, items[index + 1]) if index + 1 < len(items) else None
                yield item, current
        finally:
            if future is not None:
                future.cancel()  # the caller stopped early: do not start what it will not take
