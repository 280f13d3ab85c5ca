"""One training run per ``--out`` folder: the folder is checked, then held with an exclusive lock.

Two ``radmtl train`` runs into one folder would interleave ``metrics.jsonl`` and ``train.log`` and
overwrite each other's checkpoints, so the second is refused and told who holds the folder. The
lock is ``OUT/.radmtl-train.lock``, held with ``fcntl.flock``: the kernel drops it when the owner
dies, however it dies, so a run killed with SIGKILL never leaves a lock that blocks its own
``--resume``. The file's content names the owner (pid, host, start time) for the refusal message;
content left by a dead owner is taken over with a notice. ``flock`` does not reach across hosts on
every network file system, so a lock naming another host is refused even when the kernel lock is
free: radmtl cannot tell from here whether that run is alive.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from radmtl.errors import RadmtlError

log = logging.getLogger(__name__)

LOCK_NAME = ".radmtl-train.lock"


class RunFolderError(RadmtlError):
    """The ``--out`` folder cannot be used: not a folder, not writable, or held by another run."""


def prepare_run_dir(out_dir: Path) -> bool:
    """Create ``out_dir`` if needed and prove it writable; True when this call created it."""
    if out_dir.exists() and not out_dir.is_dir():
        raise RunFolderError(f"{out_dir}: --out is an existing file, not a folder; choose a folder for --out")
    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-test-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")  # os.access says yes to root on a read-only mount; a write does not lie
        probe.unlink()
    except OSError as err:
        raise RunFolderError(f"{out_dir}: --out folder cannot be written ({err.strerror}); choose another "
                             "--out") from err
    return created


def _owner() -> dict[str, object]:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _describe(owner: dict) -> str:
    return f"pid {owner.get('pid')} on {owner.get('host')}, started {owner.get('started_utc')}"


def _read_owner(stream) -> dict | None:
    stream.seek(0)
    text = stream.read().strip()
    if not text:
        return None
    try:
        owner = json.loads(text)
    except json.JSONDecodeError:
        return {"pid": None, "host": None, "started_utc": None, "raw": text[:80]}
    return owner if isinstance(owner, dict) else None


@contextlib.contextmanager
def run_lock(out_dir: Path, created: bool = False) -> Iterator[None]:
    """Hold ``out_dir`` for this process for the duration of the block.

    Args:
        out_dir: the run folder (exists).
        created: the folder was made by this run; when the run leaves nothing in it but the lock
            (it failed before writing anything), the folder is removed again.

    Raises:
        RunFolderError: another run holds the folder; the message names it.
    """
    path = out_dir / LOCK_NAME
    stream = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held open for the whole run
    try:
        try:
            fcntl.flock(stream.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            owner = _read_owner(stream) or {}
            raise RunFolderError(f"{out_dir}: in use by another radmtl train ({_describe(owner)}); wait for it "
                                 "to finish, or choose another --out") from err
        previous = _read_owner(stream)
        if previous is not None:
            here = socket.gethostname()
            # On this host the kernel lock is the truth (a live owner would still hold it, even if
            # its pid has since been reused); another host's owner cannot be checked from here.
            if previous.get("host") not in (here, None):
                fcntl.flock(stream.fileno(), fcntl.LOCK_UN)
                raise RunFolderError(f"{out_dir}: {LOCK_NAME} names another radmtl train ({_describe(previous)}) "
                                     f"that cannot be checked from {here}; if it is no longer running, delete "
                                     f"{path} and start again")
            log.warning("%s: taking over the lock left by a run that is no longer running (%s)", out_dir,
                        _describe(previous))
        stream.seek(0)
        stream.truncate()
        stream.write(json.dumps(_owner()) + "\n")
        stream.flush()
        try:
            yield
        finally:
            stream.seek(0)
            stream.truncate()  # an empty lock file is a free folder
            stream.flush()
            fcntl.flock(stream.fileno(), fcntl.LOCK_UN)
            if created and [p.name for p in out_dir.iterdir()] == [LOCK_NAME]:
                path.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    out_dir.rmdir()
    finally:
        stream.close()
