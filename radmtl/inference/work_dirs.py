"""The hidden working folders of ``radmtl infer``, named so that a later run can tell a killed run's leftovers.

A case is written into ``.<case>.partial-<host>-<pid>-<hex>`` beside its final folder, a DICOM MR is
converted in ``.<case>.mr-<host>-<pid>-<random>``, and a replaced result waits in
``.<case>.old-<host>-<pid>-<hex>`` for the instant between two renames. A run that is killed (SIGKILL,
power loss, out of memory) leaves them behind; the next run into the same output removes those whose
writer is gone: same host, and no process with that pid (a moved-aside result whose case folder is
missing is renamed back instead). A folder of another host, of a live process,
or of an older radmtl that did not put its pid in the name is never touched.

:class:`CaseWriter` writes a case's files into its partial folder concurrently and publishes the folder
(one rename) only when every file is complete.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Executor, Future
from concurrent.futures import wait as futures_wait
from pathlib import Path
from typing import Any

from radmtl.errors import RadmtlError

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
                try:
                    os.replace(entry, final)
                except FileNotFoundError:  # another process restored it first
                    continue
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


class PublishRaceError(RadmtlError):
    """Another process published the same case folder while this one did."""


# What rename(2) answers when another process got there first: the final folder (re)appeared, full, between
# moving the old result aside and renaming ours (ENOTEMPTY, EEXIST), or it was moved away under us (ENOENT).
_RACE_ERRNOS = (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT)


def publish(tmp_dir: Path, final_dir: Path) -> None:
    """Rename the finished hidden folder onto ``final_dir``, replacing an older result.

    Raises:
        PublishRaceError: another process published ``final_dir`` at the same moment; its result stays,
            this one is dropped (the caller discards ``tmp_dir``).
    """
    old = None
    try:
        if final_dir.exists():
            old = work_folder(final_dir, "old")
            os.replace(final_dir, old)
        os.replace(tmp_dir, final_dir)
    except OSError as err:
        if err.errno not in _RACE_ERRNOS or not tmp_dir.is_dir():
            raise
        if old is not None and not final_dir.exists():
            os.replace(old, final_dir)  # nothing took its place after all: the previous result goes back
        raise PublishRaceError(
            f"{final_dir}: another process published this case's output at the same moment ({err.strerror}); its "
            f"result is in {final_dir}, this run's was dropped: run one radmtl infer per --output (or give "
            "each its own), then rerun this case if you need this run's result") from err
    finally:
        if old is not None and old.exists() and final_dir.exists():
            shutil.rmtree(old, ignore_errors=True)


class CaseWriter:
    """One case's files, written into its hidden partial folder on a thread pool, then published.

    ``submit`` returns at once, so writing a map overlaps whatever the caller does next (resampling
    the next map, the next case's network): gzip (zlib) and SimpleITK release the GIL while they
    compress. ``wait`` returns when every file is complete and raises the first failed write (its own
    one-line :class:`~radmtl.data.io.VolumeError`); only then may the folder be published, so nothing
    half-written ever appears under the final name. ``discard`` removes the folder after a failure.

    Args:
        final_dir: where the case is published.
        pool: the writer threads; None writes in the calling thread (the same files, in order).
        max_pending: writes queued or running at once; ``submit`` waits beyond it, which bounds the
            full-resolution arrays held by pending writes.
    """

    def __init__(self, final_dir: Path, pool: Executor | None = None, max_pending: int = 3) -> None:
        self.final_dir = final_dir
        self.tmp_dir = work_folder(final_dir, "partial")
        self.write_s = 0.0  # seconds spent in the writes themselves (overlapping other work)
        self.blocked_s = 0.0  # seconds ``submit`` waited for a free slot
        self._pool = pool
        self._max_pending = max(1, max_pending)
        self._futures: list[Future] = []
        self._lock = threading.Lock()
        self.tmp_dir.mkdir()

    def _timed(self, write: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        t0 = time.perf_counter()
        try:
            return write(*args, **kwargs)
        finally:
            with self._lock:
                self.write_s += time.perf_counter() - t0

    def submit(self, write: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        """Run ``write(*args, **kwargs)`` (which writes into :attr:`tmp_dir`) on the pool; its future.

        Without a pool the write runs here and now, and its error is raised here.
        """
        if self._pool is None:
            future: Future = Future()
            future.set_result(self._timed(write, args, kwargs))
            return future
        pending = [f for f in self._futures if not f.done()]
        if len(pending) >= self._max_pending:
            t0 = time.perf_counter()
            futures_wait(pending, return_when=FIRST_COMPLETED)
            self.blocked_s += time.perf_counter() - t0
        future = self._pool.submit(self._timed, write, args, kwargs)
        self._futures.append(future)
        return future

    def wait(self) -> None:
        """Wait for every write; raise the first one's error (in submission order) if any failed."""
        futures_wait(self._futures)
        for future in self._futures:
            error = future.exception()
            if error is not None:
                raise error

    def publish(self) -> None:
        """Wait for every write, then rename the folder onto its final name."""
        self.wait()
        publish(self.tmp_dir, self.final_dir)

    def discard(self) -> None:
        """Drop what was queued, wait for what runs, and remove the hidden folder."""
        for future in self._futures:
            future.cancel()
        futures_wait(self._futures)
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
