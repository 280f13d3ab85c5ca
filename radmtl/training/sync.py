"""``radmtl train --out RUN_FOLDER --sync-mlflow``: send the MLflow store what a run could not log while
the store did not answer.

A run whose store stopped answering and had not come back by the end (:mod:`radmtl.tracking.outage`) leaves
``RUN_FOLDER/mlflow_unsent.json`` and stays RUNNING in MLflow. Once the store answers, this sends every
metric point of ``metrics.jsonl`` the run lacks (none twice), the files, params and tags it kept, logs the
model from the run's checkpoint (and registers it, had ``--register`` been given), and ends the run with the
status the training ended with. The file is removed only when all of it reached the store.
"""

from __future__ import annotations

from pathlib import Path

from radmtl.errors import RadmtlError, shielded
from radmtl.tracking.outage import UNSENT, read_unsent
from radmtl.tracking.store import is_http, probe_http, sqlite_path
from radmtl.tracking.tracker import HTTP_ENV_DEFAULTS, MlflowTracker


def sync_run(out_dir: Path, tracking_uri: str | None = None) -> str:
    """Send what ``out_dir/mlflow_unsent.json`` lists; returns a one-line summary.

    Raises:
        RadmtlError: nothing to send, or the store still does not answer (the file stays for the next try).
    """
    out_dir = Path(out_dir)
    unsent = read_unsent(out_dir)
    if unsent is None:
        raise RadmtlError(f"{out_dir}: nothing to send: no readable {UNSENT} (a run writes it only when its MLflow "
                          "store did not answer by the end); pass the --out folder of such a training")
    uri = tracking_uri or unsent["tracking_uri"]
    run_id = unsent["run_id"]
    tracker = _connect(uri, run_id, out_dir)
    points = tracker.resync()
    notes = tracker.take_unsent()
    model = notes.get("model")
    registered = None
    if model is not None and not tracker.offline:
        from radmtl.inference.pyfunc_model import log_servable_model
        from radmtl.tracking.registry import register_model

        model_uri = log_servable_model(tracker, out_dir / model["checkpoint"])
        if model_uri is None:
            tracker.note_unsent("model", model)
        elif model.get("register"):
            registered = register_model(tracker, model["register"], model_uri, model["best_metric"],
                                        model["best_mode"], model["best_epoch"])
    status = notes.get("status") or "FINISHED"
    tracker.end_wait_s = 0.0  # a store that fails again here: the file is written anew with what is left
    tracker.end(status)
    if tracker.offline:
        raise RadmtlError(_still(uri, out_dir, tracker.outage.reason))
    parts = [f"run {run_id} at {uri}: {points} metric point(s) sent", f"status {status}"]
    if model is not None:
        parts.insert(1, f"model logged from {model['checkpoint']}")
    if registered is not None:
        parts.append(registered.line())
    return "; ".join(parts)


def _still(uri: str, out_dir: Path, reason: str) -> str:
    return (f"MLflow tracking at {uri} still does not answer ({reason}); {out_dir / UNSENT} is kept: run radmtl "
            f"train --out {out_dir} --sync-mlflow again later (or pass --tracking-uri if the store has moved)")


def _connect(uri: str, run_id: str, out_dir: Path) -> MlflowTracker:
    """The run in its store, or one line saying why the store cannot be reached (MLflow's own client would
    retry for minutes, or create an empty SQLite file)."""
    import os

    import mlflow

    if is_http(uri):
        for key, value in HTTP_ENV_DEFAULTS.items():
            os.environ.setdefault(key, value)
        reason = probe_http(uri)
        if reason is not None:
            raise RadmtlError(_still(uri, out_dir, reason))
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise RadmtlError(f"{out_dir}: the run's MLflow store {db} does not exist; pass the store with --tracking-uri")
    client = mlflow.MlflowClient(tracking_uri=uri)
    try:
        with shielded():
            run = client.get_run(run_id)
    except Exception as err:  # noqa: BLE001 - a locked database, a server error, a deleted run
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise RadmtlError(_still(uri, out_dir, f"{type(err).__name__}: {first}")) from err
    return MlflowTracker(client, uri, run.info.experiment_id, run_id, out_dir / "metrics.jsonl")
