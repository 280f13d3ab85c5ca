"""MLflow behind a small interface, with a local copy of every metric.

Training talks to a :class:`Tracker`; :func:`start_tracking` returns one backed by MLflow, or a
:class:`NullTracker` (DDP rank > 0, tests, a tracking server that cannot be reached, or a SQLite store
that cannot be written: :mod:`radmtl.tracking.store` finds both out in seconds). Whatever
MLflow does, each ``log_metrics`` call is also appended to ``<out>/metrics.jsonl``: a dead server
never costs data, and the training-curve PNG is drawn from that file.

MLflow is imported lazily so that importing radmtl (and ``radmtl --help``) stays fast.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from radmtl.errors import RadmtlError
from radmtl.tracking.environment import user_name
from radmtl.tracking.experiment import get_or_create_experiment
from radmtl.tracking.metrics_file import append_record, close_cut_line, logged_points
from radmtl.tracking.outage import END_WAIT_S, RETRY_AFTER_S, Outage, OutageHandling, unreachable_message
from radmtl.tracking.store import (  # noqa: F401  (default_tracking_uri, probe_http: public here too)
    default_tracking_uri, is_http, probe_http, sqlite_path, sqlite_write_problem)

logger = logging.getLogger(__name__)

# MLflow's documented limits (mlflow.utils.validation): longer values are rejected, larger
# batches are rejected by the REST API.
MAX_PARAM_VALUE_LENGTH = 6000
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_TAG_VALUE_LENGTH = 8000

RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")
# MLflow's client otherwise retries 7 times with exponential back-off and a 120 s timeout per
# request: a server that dies mid-run would stall training for minutes at every call.
HTTP_ENV_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
}
MODEL_NAME = "model"
_BAR_ENV = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


def make_run_name(out_dir: Path, weighting: str, data_dirs: list[Path], when: datetime | None = None) -> str:
    """``<out folder>-<loss weighting>-<data folder(s)>-<YYYYmmdd-HHMM>``: runs told apart in a list."""
    data = "+".join(Path(d).resolve().name or str(d) for d in data_dirs) or "data"
    return f"{Path(out_dir).resolve().name}-{weighting}-{data}-{(when or datetime.now()):%Y%m%d-%H%M}"


def _param_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        text = "[" + ", ".join(str(item) for item in value) + "]"
    else:
        text = str(value)
    if len(text) > MAX_PARAM_VALUE_LENGTH:
        text = text[: MAX_PARAM_VALUE_LENGTH - 3] + "..."
    return text


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Tracker:
    """What training needs from experiment tracking; this base class tracks nothing.

    Attributes:
        run_id: the MLflow run id, or None when there is no run.
        metrics_jsonl: where every ``log_metrics`` call is also appended, or None.
    """

    run_id: str | None = None
    client: Any = None
    uri: str | None = None

    def __init__(self, metrics_jsonl: Path | None = None) -> None:
        self.metrics_jsonl = Path(metrics_jsonl) if metrics_jsonl is not None else None
        if self.metrics_jsonl is not None:
            close_cut_line(self.metrics_jsonl)  # a resumed run appends after a killed one

    def log_params(self, params: dict[str, Any]) -> None:
        """Log ``params`` (lists become strings; values longer than MLflow allows are cut)."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Log scalar ``metrics`` at ``step``; always appended to ``metrics_jsonl`` when set."""
        self._append_local(metrics, step)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Upload the file ``path`` into the run's artifacts under ``artifact_path``."""

    def log_model(self, **pyfunc_kwargs: Any) -> str | None:
        """Log an MLflow pyfunc model named ``model`` (``mlflow.pyfunc.log_model`` arguments) as an
        output of the run; returns its URI ``models:/<model_id>``, or None when nothing was logged."""
        return None

    def log_inputs(self, datasets: list[tuple[Any, str]]) -> None:
        """Log ``(mlflow.data dataset, context)`` pairs as the run's dataset inputs."""

    def set_tags(self, tags: dict[str, str]) -> None:
        """Set run tags."""

    def metric_steps(self, key: str) -> set[int] | None:
        """Steps at which ``key`` is already in the run (to mend a resume), or None if unknown."""
        return None

    def end(self, status: str = "FINISHED") -> None:
        """Close the run with ``status`` (FINISHED, FAILED or KILLED)."""
        if status not in RUN_STATUSES:
            raise ValueError(f"status must be one of {RUN_STATUSES}, got {status!r}")

    @property
    def offline(self) -> bool:
        """True while the run's store does not answer (what it misses is kept, see :mod:`.outage`)."""
        return False

    def wait_for_store(self) -> bool:
        """Give a store that stopped answering a last chance (once per run, ``END_WAIT_S``) before what
        only it can hold is logged (the model); True when the store answers."""
        return not self.offline

    def note_unsent(self, key: str, value: Any) -> None:
        """Record what a caller could not log while the store did not answer (``model``: the checkpoint and
        registration to log), for ``radmtl train --sync-mlflow`` (:func:`radmtl.tracking.outage.write_unsent`)."""

    def take_unsent(self) -> dict[str, Any]:
        """Replay what ``<out>/mlflow_unsent.json`` kept for this run (files, params, tags) and return its
        notes (the final status, the model to log); the file is removed once the store has them."""
        return {}

    def mend(self, pending: list[tuple[int, dict[str, float]]]) -> int:
        """Record each (key, step) of ``pending`` that the run does not hold yet; returns how many
        points it added (metrics.jsonl and MLflow counted apart). For a resume: the killed process may have died between any two
        of its ``log_metrics`` calls, so sending the whole epoch again would log some points twice."""
        missing = 0
        if self.metrics_jsonl is not None:
            have = logged_points(self.metrics_jsonl)
            for step, metrics in pending:
                absent = {k: v for k, v in metrics.items() if (k, int(step)) not in have}
                if absent:
                    append_record(self.metrics_jsonl, absent, step)
                    missing += len(absent)
        return missing + self._mend_remote(pending)

    def _mend_remote(self, pending: list[tuple[int, dict[str, float]]]) -> int:
        return 0

    def _append_local(self, metrics: dict[str, float], step: int) -> None:
        if self.metrics_jsonl is not None:
            append_record(self.metrics_jsonl, metrics, step)


class NullTracker(Tracker):
    """No MLflow at all: for tests, DDP rank > 0, and an unreachable tracking server."""

    def __init__(self, metrics_jsonl: Path | None = None, run_id: str | None = None) -> None:
        super().__init__(metrics_jsonl)
        self.run_id = run_id


class MlflowTracker(OutageHandling, Tracker):
    """A run in an MLflow store, reached through an explicit ``MlflowClient``.

    A call that fails (a locked SQLite store, a server restarting) logs one warning and starts an
    :class:`~radmtl.tracking.outage.Outage`: training goes on, metric points stay in ``metrics.jsonl``,
    files, params and tags are kept, and the store is asked again every ``retry_after_s``. When it
    answers, the points it lacks and the kept calls are sent; at the end the run waits up to
    ``end_wait_s`` for it, and otherwise leaves ``mlflow_unsent.json`` for ``radmtl train --sync-mlflow``.
    Training never stops because tracking did.
    """

    def __init__(self, client: Any, uri: str, experiment_id: str, run_id: str, metrics_jsonl: Path) -> None:
        super().__init__(metrics_jsonl)
        self.client = client
        self.uri = uri
        self.experiment_id = experiment_id
        self.run_id = run_id
        self.outage: Outage | None = None
        self._resumed_outage: Outage | None = None  # the outage whose backlog is being sent
        self.retry_after_s = RETRY_AFTER_S
        self.end_wait_s = END_WAIT_S
        self._waited = False
        self._notes: dict[str, Any] = {}
        self._ended = False
        self._existing_params: dict[str, str] | None = None
        self._system_metrics: Any = None

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        if self._existing_params is None:
            run = self._call("get_run", self.client.get_run, self.run_id)
            self._existing_params = dict(run.data.params) if run is not None else {}
        new: list[Param] = []
        for key, value in params.items():
            text = _param_value(value)
            old = self._existing_params.get(key)
            if old == text:
                continue  # a resumed run logs its params again; MLflow rejects only changes
            if old is not None:
                # MLflow params are immutable; a changed value (e.g. --set on resume) is reported
                # instead of failing the whole batch.
                logger.warning("param %s changed from %r to %r; MLflow keeps the first value", key, old, text)
                continue
            new.append(Param(key, text))
        for batch in _chunks(new, MAX_PARAMS_PER_BATCH):
            self._call("log_params", self.client.log_batch, self.run_id, params=batch,
                       keep={"kind": "params", "values": {p.key: p.value for p in batch}})
            self._existing_params.update({p.key: p.value for p in batch})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        self._append_local(metrics, step)
        now_ms = int(time.time() * 1000)
        self._send_metrics([Metric(key, float(value), now_ms, int(step)) for key, value in metrics.items()])

    def _send_metrics(self, entries: list[Any]) -> None:
        for batch in _chunks(entries, MAX_METRICS_PER_BATCH):
            self._call("log_metrics", self.client.log_batch, self.run_id, metrics=batch)

    def _mend_remote(self, pending: list[tuple[int, dict[str, float]]]) -> int:
        # The local copy already holds ``pending`` (Tracker.mend); whatever of it, or of an earlier outage,
        # the run lacks is sent from there.
        return self.resync()

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self._call("log_artifact", self.client.log_artifact, self.run_id, str(path), artifact_path,
                   keep={"kind": "artifact", "path": str(Path(path).absolute()), "artifact_path": artifact_path})

    def log_model(self, **pyfunc_kwargs: Any) -> str | None:
        return self._call("log_model", self._log_model, pyfunc_kwargs)

    def _log_model(self, pyfunc_kwargs: dict[str, Any]) -> str:
        import mlflow.pyfunc
        from mlflow.models import Model
        from mlflow.tracking._tracking_service.utils import _use_tracking_uri

        # The LoggedModel is created through our client so that it lands in this run's experiment;
        # the fluent log_model would otherwise pick the globally active experiment. Model.log (what
        # mlflow.pyfunc.log_model calls, but taking the run id) records it as the run's output, which
        # MLflow's UI lists under "Training runs".
        logged = self.client.create_logged_model(
            experiment_id=self.experiment_id, name=MODEL_NAME, source_run_id=self.run_id
        )
        # Logging checks the input example by loading the model back, which MLflow draws as a
        # "Downloading artifacts" bar at the end of every training; nothing is downloaded.
        bar = os.environ.get(_BAR_ENV)
        os.environ[_BAR_ENV] = "false"
        try:
            with _use_tracking_uri(self.uri):
                info = Model.log(artifact_path=None, name=MODEL_NAME, flavor=mlflow.pyfunc, run_id=self.run_id,
                                 model_id=logged.model_id, **pyfunc_kwargs)
        finally:
            if bar is None:
                os.environ.pop(_BAR_ENV, None)
            else:
                os.environ[_BAR_ENV] = bar
        return info.model_uri

    def log_inputs(self, datasets: list[tuple[Any, str]]) -> None:
        from mlflow.entities import DatasetInput, InputTag

        entries = [DatasetInput(dataset._to_mlflow_entity(), [InputTag("mlflow.data.context", context)])
                   for dataset, context in datasets]
        self._call("log_inputs", self.client.log_inputs, self.run_id, datasets=entries)

    def start_system_metrics(self, resume: bool) -> None:
        """Sample CPU, memory, disk, network (and GPU with pynvml) into ``system/*`` metrics until
        :meth:`end`, as ``mlflow.start_run(log_system_metrics=True)`` would for a fluent run."""
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            monitor = SystemMetricsMonitor(self.run_id, resume_logging=resume, tracking_uri=self.uri)
        except ImportError as err:  # psutil is a radmtl dependency; an odd environment may lack it
            logger.warning("no system metrics in MLflow run %s (%s); pip install psutil", self.run_id, err)
            return
        monitor.start()
        self._system_metrics = monitor

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        entries = [RunTag(key, str(value)[:MAX_TAG_VALUE_LENGTH]) for key, value in tags.items()]
        for batch in _chunks(entries, MAX_PARAMS_PER_BATCH):
            self._call("set_tags", self.client.log_batch, self.run_id, tags=batch,
                       keep={"kind": "tags", "values": {t.key: t.value for t in batch}})

    def metric_steps(self, key: str) -> set[int] | None:
        history = self._call("metric_steps", self.client.get_metric_history, self.run_id, key)
        return {int(m.step) for m in history} if history is not None else None

    def end(self, status: str = "FINISHED") -> None:
        super().end(status)
        if self._ended:
            return
        self._ended = True
        if self._system_metrics is not None:
            self._system_metrics.finish()  # its last samples land before the run is closed
        if self.outage is not None:
            self.wait_for_store()
        self._call("end", self.client.set_terminated, self.run_id, status)
        if self.outage is not None:
            self.leave_unsent(status)


def start_tracking(
    uri: str | None,
    experiment: str,
    run_name: str | None,
    out_dir: Path,
    resume_run_id: str | None = None,
    system_metrics: bool = True,
) -> Tracker:
    """Start (or, with ``resume_run_id``, continue) an MLflow run.

    Args:
        uri: tracking URI; None means :func:`default_tracking_uri`.
        experiment: experiment name, created when missing.
        run_name: display name of a new run (ignored on resume).
        out_dir: training output folder; ``metrics.jsonl`` is written there.
        resume_run_id: continue this run instead of creating one, so a resumed training stays
            one run in the UI.
        system_metrics: sample CPU/memory/disk/network/GPU use into the run's ``system/*`` metrics.

    Returns:
        An :class:`MlflowTracker`, or a :class:`NullTracker` that still writes ``metrics.jsonl``
        when the store cannot be reached or written (one warning says so, within seconds).

    Raises:
        RadmtlError: ``resume_run_id`` is not in a reachable store, or the experiment is deleted.
    """
    uri = uri or default_tracking_uri()
    metrics_jsonl = Path(out_dir) / "metrics.jsonl"
    if is_http(uri):
        for key, value in HTTP_ENV_DEFAULTS.items():
            os.environ.setdefault(key, value)
        reason = probe_http(uri)
        if reason is not None:
            logger.warning(unreachable_message(uri, reason, metrics_jsonl))
            return NullTracker(metrics_jsonl, run_id=resume_run_id)
    db = sqlite_path(uri)
    problem = sqlite_write_problem(db) if db is not None else None
    if problem is not None:
        logger.warning(f"MLflow tracking store {uri} cannot be written ({problem}); training continues "
                       f"without MLflow, metrics are kept in {metrics_jsonl}; pass a writable --tracking-uri")
        return NullTracker(metrics_jsonl, run_id=resume_run_id)

    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        client = mlflow.MlflowClient(tracking_uri=uri)
        if resume_run_id is not None:
            try:
                run = client.get_run(resume_run_id)
            except MlflowException as err:
                if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise  # a store that fails for another reason: fall back below
                raise RadmtlError(
                    f"cannot resume MLflow run {resume_run_id}: not found at {uri} "
                    "(pass the --tracking-uri the run was started with)"
                ) from err
            experiment_id = run.info.experiment_id
            client.update_run(resume_run_id, status="RUNNING")
            run_id = resume_run_id
            logger.info("continuing MLflow run %s at %s", run_id, uri)
        else:
            experiment_id = get_or_create_experiment(client, uri, experiment)
            # The fluent API would add these; the explicit client does not, and the UI shows them.
            tags = {"mlflow.user": user_name(), "mlflow.source.name": "radmtl train", "mlflow.source.type": "LOCAL"}
            run_id = client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
            logger.info("MLflow run %s in experiment %r at %s", run_id, experiment, uri)
    except RadmtlError:
        raise
    except Exception as err:  # noqa: BLE001 - a store we cannot use must not stop training
        reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        logger.warning(unreachable_message(uri, reason, metrics_jsonl))
        return NullTracker(metrics_jsonl, run_id=resume_run_id)
    tracker = MlflowTracker(client, uri, experiment_id, run_id, metrics_jsonl)
    if system_metrics:
        tracker.start_system_metrics(resume=resume_run_id is not None)
    return tracker
