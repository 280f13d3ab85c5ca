"""The hidden working folders of ``radmtl infer``, named so that a later run can tell a killed run's leftovers.

A case is written into ``.<case>.partial-<host>-<pid>-<hex>`` beside its final folder, a DICOM MR is
converted in ``.<case>.mr-<host>-<pid>-<random>``, and a replaced result waits in
``.<case>.old-<host>-<pid>-<hex>`` for the instant between two renames. A run that is killed (SIGKILL,
power loss, out of memory) leaves them behind; the next run into the same output removes those whose
writer is gone: same host, and no process with that pid (a moved-aside result whose case folder is
missing is renamed back instead). A folder of another host, of a live process,
or of an older radmtl that did not put its pid in the name is never touched.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import uuid
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

_KINDS = ("partial", "mr", "old")
_WORK_NAME = re.compile(r"^\.(?P<case>.+)\.(?P<kind>partial|mr|old)-(?P<host>[A-Za-z0-9._-]+)-(?P<pid>\d+)-\w{8}$")
_SHOWN = 3  # stale folders named in the log line


def _host() -> str:
    """This host's name, reduced to characters that are safe in a file name."""
    return re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname() or "localhost")


def work_prefix(final_name: str, kind: str) -> str:
    """``.<final_name>.<kind>-<host>-<pid>-``: the start of a working folder name of this process."""
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
    return f".{final_name}.{kind}-{_host()}-{os.getpid()}-"


def work_folder(final_dir: Path, kind: str) -> Path:
    """A new hidden working folder name beside ``final_dir`` (not created)."""
    return final_dir.with_name(work_prefix(final_dir.name, kind) + uuid.uuid4().hex[:8])


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # another user's process (PermissionError) is alive
        return True
    return True


def stale_work_folders(folder: Path) -> list[Path]:
    """The working folders in ``folder`` left by a dead ``radmtl infer`` of this host."""
    if not folder.is_dir():
        return []
    host = _host()
    stale = []
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return []
    for entry in entries:
        match = _WORK_NAME.match(entry.name)
        if match is None or match["host"] != host or not entry.is_dir() or entry.is_symlink():
            continue
        if not _pid_alive(int(match["pid"])):
            stale.append(entry)
    return stale


def remove_stale_work_folders(folders: Iterable[Path]) -> list[Path]:
    """Remove the dead runs' working folders in each of ``folders``; one log line names them."""
    removed: list[Path] = []
    for folder in dict.fromkeys(folders):  # each folder once, in order
        for entry in stale_work_folders(folder):
            final = entry.with_name(_WORK_NAME.match(entry.name)["case"])
            if entry.name.startswith(f".{final.name}.old-") and not final.exists():
                # Killed between the two renames of a publish: the previous result is all there is.
                os.replace(entry, final)
                log.info("%s: restored the previous result that a killed radmtl infer run had moved aside",
                         final)
                continue
            shutil.rmtree(entry, ignore_errors=True)
            if not entry.exists():
                removed.append(entry)
    if removed:
        more = f" and {len(removed) - _SHOWN} more" if len(removed) > _SHOWN else ""
        log.info("removed %d hidden folder(s) left by killed radmtl infer runs: %s%s", len(removed),
                 ", ".join(str(p) for p in removed[:_SHOWN]), more)
    return removed
