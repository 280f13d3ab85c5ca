"""The output folders of ``radmtl infer``: the root (proven writable), each case's folder under it (a case id
may name sub-folders, ``AB/1ABA005``, never leave it), their parents made up front and removed again when
nothing was written into them, and whether a case is published already (``provenance.json`` in its folder).
One process prepares them (:func:`prepare_output`) before any case is written, by itself or by the ranks of
a cohort (:mod:`radmtl.inference.cohort`)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from radmtl.data.io import VolumeError
from radmtl.errors import RadmtlError
from radmtl.inference.provenance import PROVENANCE
from radmtl.inference.work_dirs import remove_stale_work_folders


def is_done(output: Path, case_id: str) -> bool:
    """Whether an earlier run published this case: its folder holds ``provenance.json``, the last file
    written into the hidden folder before the rename (an older result without it is run again)."""
    try:
        return (case_folder(output, case_id) / PROVENANCE).is_file()
    except RadmtlError:  # reported when the case runs
        return False


def work_folder_parents(output: Path, cases: list[tuple[str, Any]]) -> list[Path]:
    """Where the cases' hidden working folders live: OUT and beside each final folder (OUT/AB/.1ABA005.partial-*)."""
    return [output, *(_case_parent(output, case_id) for case_id, _ in cases)]


def _case_parent(output: Path, case_id: str) -> Path:
    try:
        return case_folder(output, case_id).parent
    except RadmtlError:  # reported when the case runs
        return output


def prepare_output_root(output: str | Path) -> tuple[Path, list[Path]]:
    """Create ``OUT`` and prove it writable by writing a probe file (``os.access`` lies for root).

    Returns:
        ``(OUT, the folders created for it, outermost first)``: a run that writes no case removes those
        again with :func:`remove_if_empty`.
    """
    output = Path(output).expanduser()
    created = [p for p in (output, *output.parents) if not p.exists()][::-1]
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / f".write-test-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        remove_if_empty(created)
        raise VolumeError(f"{output}: output folder is not writable ({err.strerror}); choose another "
                          "--output") from err
    return output, created


def case_folder(output: Path, case_id: str) -> Path:
    """``output/<case_id>``, where a case id may name sub-folders (``AB/1ABA005``) but never leave ``output``."""
    parts = PurePosixPath(case_id).parts
    if not parts or PurePosixPath(case_id).is_absolute() or any(p in ("..", ".") for p in parts):
        raise VolumeError(f"case {case_id!r}: the case id is not a folder path inside the output folder; "
                          "rename the case (dataset.json \"case\" or its folder)")
    return output.joinpath(*parts)


def make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; return those created, outermost first."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()][::-1]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise VolumeError(f"{folder}: cannot create output folder ({err.strerror}); check permissions") from err
    return missing


def remove_if_empty(folders: list[Path]) -> None:
    """Remove folders this attempt created for a case that was not written (innermost first)."""
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:  # not empty: another case landed there
            return


def prepare_output(output: str | Path, cases: list[tuple[str, Any]]) -> tuple[Path, list[Path]]:
    """What one process does before any case is written into ``output`` (by this process or by the ranks of a
    cohort, :mod:`radmtl.inference.cohort`).

    Creates the output root (proven writable), removes what killed runs left there (:func:`~radmtl.
    inference.work_dirs.remove_stale_work_folders`: folders of dead processes of this host only, so a live
    rank's are safe anyway), and creates each case's parent folder (``OUT/AB`` for ``AB/1ABA005``).

    Returns:
        ``(OUT, the folders created)``: :func:`remove_empty_folders` removes those still empty at the end.

    Raises:
        RadmtlError: the output folder cannot be created or written.
    """
    output, created = prepare_output_root(output)
    try:
        remove_stale_work_folders(work_folder_parents(output, cases))
        for case_id, _ in cases:
            try:
                parent = case_folder(output, case_id).parent
            except RadmtlError:  # reported by the case's rank
                continue
            created += make_parents(parent)
    except BaseException:
        remove_empty_folders(created)
        raise
    return output, created


def remove_empty_folders(folders: Sequence[Path]) -> None:
    """Remove those of ``folders`` that are empty, deepest first (a folder emptied by it goes too)."""
    for folder in sorted(set(folders), key=lambda p: len(p.parts), reverse=True):
        try:
            folder.rmdir()
        except OSError:  # not empty, or already gone
            pass
