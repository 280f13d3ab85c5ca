"""``<out>/metrics.jsonl``: the local copy of every metric a run logs, one JSON record per line.

It is what survives a dead tracking server and what the training-curve PNG is drawn from, so it is
written one whole line per call and read back forgivingly (a kill can cut the last line).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from radmtl.errors import RadmtlError

logger = logging.getLogger(__name__)


def append_record(path: Path, metrics: dict[str, float], step: int) -> None:
    """Append ``metrics`` at ``step`` (with the wall-clock time) as one line."""
    record = {"step": int(step), "time": time.time(), **{k: float(v) for k, v in metrics.items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    # One write of one full line per call: a crash leaves at most one truncated last line,
    # which read_records skips.
    try:
        with path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
    except OSError as err:
        raise RadmtlError(f"{path}: cannot append the metrics of step {int(step)} ({err.strerror or err}); the "
                          "disk is probably full or not writable: free disk space and continue with --resume") from err


def close_cut_line(path: Path) -> None:
    """End a last line that a kill cut short, so that the next record starts a line of its own (glued
    to the cut one it would be unreadable, and lost with it). Once, when a run opens the file."""
    try:
        with path.open("rb+") as handle:
            handle.seek(-1, 2)
            if handle.read(1) != b"\n":
                handle.write(b"\n")
    except (FileNotFoundError, OSError):  # no file yet, or an empty one (seek before the start)
        pass


def read_records(path: Path) -> list[dict[str, float]]:
    """Records of a metrics file; a truncated last line (a killed run) is skipped."""
    records = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            logger.debug("%s:%d: skipping unreadable line", path, number)
            continue
        if isinstance(record, dict) and "step" in record:
            records.append(record)
    return records


def logged_points(path: Path) -> set[tuple[str, int]]:
    """Every (metric key, step) the file already holds; empty when there is no file yet."""
    if not Path(path).is_file():
        return set()
    return {(key, int(record["step"])) for record in read_records(path)
            for key in record if key not in ("step", "time")}
