"""A tracking store that stops answering mid-run, and what the run owes it until it answers again.

A SQLite store locked by another process, or a server restarting, fails every call for a while. The
tracker then keeps going locally (every metric point is in ``metrics.jsonl`` anyway), keeps what else
it could not send (files, params, tags) as :data:`Record` entries, and asks the store again at most every
``retry_after_s``. When the store answers, the points it lacks are sent from ``metrics.jsonl``
(:func:`missing_points`, by (key, step), so none is sent twice) and the kept records are replayed.

Should the store still not answer when the run ends, :func:`write_unsent` leaves ``<out>/mlflow_unsent.json``:
the run, its final status, the kept records and what the training could not log (its model).
``radmtl train --out OUT --sync-mlflow`` sends all of it once the store answers; a ``--resume`` of the
run replays the records too.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from radmtl.errors import shielded
from radmtl.tracking.metrics_file import read_records

logger = logging.getLogger(__name__)

# How often a store that stopped answering is asked again while the run goes on. A locked SQLite store
# holds each call for its busy timeout before failing, so asking at every call would stall training.
RETRY_AFTER_S = 60.0
# How long the end of a run waits for such a store before leaving mlflow_unsent.json (covers a store
# locked for a minute or two, e.g. by a backup or another process's long write).
END_WAIT_S = 120.0
POLL_S = 5.0
UNSENT = "mlflow_unsent.json"

# A call kept for the store, as JSON-safe data: {"kind": "artifact", "path": ..., "artifact_path": ...},
# {"kind": "params", "values": {...}} or {"kind": "tags", "values": {...}}.
Record = dict[str, Any]


@dataclass
class Outage:
    """Since when and why the store does not answer, when to ask again, and what it has not received."""

    reason: str
    since: float = field(default_factory=time.monotonic)
    retry_at: float = 0.0
    kept: list[Record] = field(default_factory=list)

    def seconds(self) -> float:
        return time.monotonic() - self.since


def missing_points(metrics_jsonl: Path,
                   steps_in_run: Callable[[str], set[int] | None]) -> list[tuple[str, float, int, int]]:
    """``(key, value, timestamp_ms, step)`` of every point of ``metrics_jsonl`` the run lacks; ``steps_in_run(key)``
    gives the steps the run holds (None: the store did not answer, and nothing is returned)."""
    if metrics_jsonl is None or not Path(metrics_jsonl).is_file():
        return []
    local: dict[str, dict[int, tuple[float, int]]] = {}
    for record in read_records(metrics_jsonl):
        when_ms = int(float(record.get("time", time.time())) * 1000)
        for key, value in record.items():
            if key not in ("step", "time"):
                local.setdefault(key, {})[int(record["step"])] = (float(value), when_ms)
    points = []
    for key in sorted(local):
        have = steps_in_run(key)
        if have is None:
            return []
        points += [(key, value, when_ms, step) for step, (value, when_ms) in sorted(local[key].items())
                   if step not in have]
    return points


def read_unsent(out_dir: Path) -> dict[str, Any] | None:
    """What ``out_dir/mlflow_unsent.json`` says the store still lacks; None when there is no such file."""
    path = Path(out_dir) / UNSENT
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_unsent(out_dir: Path, content: dict[str, Any]) -> Path:
    path = Path(out_dir) / UNSENT
    tmp = path.with_name(f".{UNSENT}.{os.getpid()}.tmp")  # renamed whole onto its name, or not at all
    tmp.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def remove_unsent(out_dir: Path) -> None:
    (Path(out_dir) / UNSENT).unlink(missing_ok=True)


def unreachable_message(uri: str, reason: str, metrics_jsonl: Path | None, retry_s: float | None = None) -> str:
    again = f", and MLflow is asked again every {retry_s:.0f} s" if retry_s is not None else ""
    return (
        f"MLflow tracking at {uri} unreachable ({reason}); training continues, "
        f"metrics are kept in {metrics_jsonl}{again}"
    )


class OutageHandling:
    """How :class:`radmtl.tracking.tracker.MlflowTracker` calls its store: through :meth:`_call`, which turns a
    store that stops answering into an :class:`Outage` and sends what it missed once it answers again.

    Expects ``client``, ``uri``, ``run_id``, ``metrics_jsonl``, ``outage``, ``retry_after_s``, ``end_wait_s``,
    ``_waited``, ``_notes``, ``metric_steps`` and ``_send_metrics`` of the tracker.
    """

    @property
    def offline(self) -> bool:
        return self.outage is not None

    @property
    def disabled(self) -> bool:  # the name older callers use
        return self.offline

    def _call(self, what: str, fn: Any, *args: Any, keep: Record | None = None, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` against the store; None when it does not answer (``keep``: what to send
        once it does)."""
        if self.outage is not None and not self._reconnect():
            if keep is not None:
                self.outage.kept.append(keep)
            return None
        try:
            with shielded():  # a SIGTERM mid-call could leave the store's write lock held
                return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - any MLflow/network/disk failure means the same
            reason = f"{what}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            resumed = self._resumed_outage
            self.outage = Outage(reason, retry_at=time.monotonic() + self.retry_after_s)
            if resumed is not None:  # failed again while sending what it missed: the same outage goes on
                self.outage.since = resumed.since
            if keep is not None:
                self.outage.kept.append(keep)
            if resumed is None:
                logger.warning(unreachable_message(self.uri, reason, self.metrics_jsonl, self.retry_after_s))
            logger.debug("MLflow failure details", exc_info=True)
            return None

    def _reconnect(self, force: bool = False) -> bool:
        """Ask a store that stopped answering again (when due); on an answer send what it missed."""
        outage = self.outage
        if outage is None:
            return True
        if not force and time.monotonic() < outage.retry_at:
            return False
        try:
            with shielded():
                self.client.get_run(self.run_id)
        except Exception:  # noqa: BLE001 - still not answering: ask again later
            outage.retry_at = time.monotonic() + self.retry_after_s
            return False
        self.outage, self._resumed_outage = None, outage
        try:
            points = self.resync()
            replayed = 0
            for index, record in enumerate(outage.kept):
                if self.outage is not None:  # failed again: what is left waits for the next answer
                    self.outage.kept.extend(outage.kept[index:])
                    return False
                self._replay(record)
                replayed += 1
            if self.outage is not None:
                return False
        finally:
            self._resumed_outage = None
        logger.info("MLflow tracking at %s answers again after %.0f s: sent %d metric point(s) from %s and %d "
                    "call(s) kept meanwhile", self.uri, outage.seconds(), points, self.metrics_jsonl, replayed)
        return self.outage is None

    def _replay(self, record: Record) -> None:
        from mlflow.entities import Param, RunTag

        if record["kind"] == "artifact":
            self._call("log_artifact", self.client.log_artifact, self.run_id, record["path"],
                       record.get("artifact_path"), keep=record)
        elif record["kind"] == "params":
            params = [Param(k, v) for k, v in record["values"].items()]
            self._call("log_params", self.client.log_batch, self.run_id, params=params, keep=record)
        elif record["kind"] == "tags":
            tags = [RunTag(k, v) for k, v in record["values"].items()]
            self._call("set_tags", self.client.log_batch, self.run_id, tags=tags, keep=record)

    def resync(self) -> int:
        """Send every point of ``metrics.jsonl`` the run lacks (by key and step, so none twice); how many."""
        from mlflow.entities import Metric

        points = missing_points(self.metrics_jsonl, self.metric_steps)
        if self.outage is not None:
            return 0
        self._send_metrics([Metric(key, value, when_ms, step) for key, value, when_ms, step in points])
        return len(points) if self.outage is None else 0

    def wait_for_store(self) -> bool:
        if self.outage is None:
            return True
        if self._waited:
            return self._reconnect(force=True)
        self._waited = True
        logger.info("waiting up to %.0f s for MLflow tracking at %s to answer again, to send what it missed",
                    self.end_wait_s, self.uri)
        deadline = time.monotonic() + self.end_wait_s
        while not self._reconnect(force=True):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(POLL_S, left))
        return True

    def note_unsent(self, key: str, value: Any) -> None:
        self._notes[key] = value

    def take_unsent(self) -> dict[str, Any]:
        unsent = read_unsent(self.metrics_jsonl.parent) if self.metrics_jsonl is not None else None
        if not unsent or unsent.get("run_id") != self.run_id:
            return {}
        for record in unsent.get("kept", []):
            self._replay(record)
        if self.outage is None:
            remove_unsent(self.metrics_jsonl.parent)
        return dict(unsent.get("notes") or {}) | {"status": unsent.get("status")}

    def leave_unsent(self, status: str) -> None:
        """The run ends with the store still silent: write ``mlflow_unsent.json`` and say how to send it."""
        if self.metrics_jsonl is None:
            return
        out_dir = self.metrics_jsonl.parent
        earlier = read_unsent(out_dir) or {}
        kept = (earlier.get("kept", []) if earlier.get("run_id") == self.run_id else []) + self.outage.kept
        write_unsent(out_dir, {"tracking_uri": self.uri, "run_id": self.run_id, "status": status,
                               "reason": self.outage.reason, "kept": kept, "notes": self._notes})
        logger.warning(
            "MLflow tracking at %s has not answered for %.0f s (%s): run %s stays RUNNING there without the points, "
            "files%s logged meanwhile; all of it is in %s: send it with `radmtl train --out %s --sync-mlflow` once "
            "the store answers",
            self.uri, self.outage.seconds(), self.outage.reason, self.run_id,
            " and model" if "model" in self._notes else "", out_dir, out_dir)
