"""A long run that dies loses nothing: resume after SIGKILL/SIGTERM retraces the uninterrupted run, and
the --out folder's lock keeps two runs from writing one folder (separate from test_train.py so that a
parallel test run can give these process-heavy tests their own worker)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from radmtl.config import load_config
from radmtl.nn.checkpoint import LATEST, load_checkpoint
from radmtl.tracking.metrics_file import read_records
from radmtl.tracking.tracker import NullTracker
from radmtl.training.train import train
from tiny_config import TINY
from train_runs import epoch_rows, train_process, wait_for_epoch

RESUME_EPOCHS = 8  # room to be killed mid-run however fast the epochs are
RESUME_SETS = [a for s in TINY + [f"train.epochs={RESUME_EPOCHS}", "data.patches_per_volume=6"] for a in ("--set", s)]


@pytest.fixture(scope="module")
def straight_run(phantom_data, tmp_path_factory) -> Path:
    """The uninterrupted run both kill tests retrace: one training process for the two of them."""
    where = tmp_path_factory.mktemp("straight")
    straight = train_process(["--data", str(phantom_data), "--tracking-uri", f"sqlite:///{where / 'mlflow.db'}",
                              "--no-progress", "--out", str(where / "run"), *RESUME_SETS], where)
    assert straight.wait(timeout=300) == 0, straight.stdout.read()
    return where / "run" / "metrics.jsonl"


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_resume_after_kill_continues_same_run(phantom_data, straight_run, tmp_path, stop):
    import mlflow

    epochs, sets = RESUME_EPOCHS, RESUME_SETS
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = ["--data", str(phantom_data), "--tracking-uri", db, "--experiment", "resume-test", "--no-progress"]

    killed = train_process(common + ["--out", str(tmp_path / "killed"), *sets], tmp_path)
    latest = tmp_path / "killed" / LATEST
    wait_for_epoch(killed, latest, 2)
    time.sleep(0.05)  # into the next epoch, well before the last
    os.kill(killed.pid, stop)
    output = killed.communicate(timeout=60)[0]
    done_before = load_checkpoint(latest)["epoch"]
    assert 2 <= done_before < epochs
    if stop == signal.SIGTERM:  # handled like Ctrl-C: one line, the run marked KILLED, not left RUNNING
        assert killed.returncode == 128 + signal.SIGTERM, output
        assert output.strip().splitlines()[-1] == "radmtl train: terminated (SIGTERM)"
        client = mlflow.MlflowClient(tracking_uri=db)
        run_id = load_checkpoint(latest)["mlflow_run_id"]
        assert client.get_run(run_id).info.status == "KILLED"

    resumed = train_process(common + ["--out", str(tmp_path / "killed"), "--resume", *sets], tmp_path)
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read()

    client = mlflow.MlflowClient(tracking_uri=db)
    exp = client.get_experiment_by_name("resume-test")
    found = client.search_runs([exp.experiment_id])
    # runs are named <out folder>-<weighting>-<data folder>-<date>; resume keeps the name
    assert len(found) == 1, [r.info.run_name for r in found]  # resume did not open a second run
    run = found[0]
    assert run.info.run_name.startswith(f"killed-hetero_homo-{phantom_data.name}-")
    assert run.info.status == "FINISHED"
    for metric in ("epoch", "val_mae_hu", "train_loss_total"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, metric)]
        assert sorted(steps) == list(range(1, epochs + 1)), (metric, steps)
    step_points = [m.step for m in client.get_metric_history(run.info.run_id, "step_loss_total")]
    assert len(step_points) == len(set(step_points))
    # The local copy too holds every point once (a kill inside an epoch's send is mended, not resent),
    # and every validation picture written reached MLflow.
    local = [(key, r["step"]) for r in read_records(tmp_path / "killed" / "metrics.jsonl") for key in r
             if key not in ("step", "time")]
    assert len(local) == len(set(local))
    assert sorted((step for key, step in local if key == "step_loss_total")) == list(range(1, len(step_points) + 1))
    pictures = sorted(f"qa/{p.name}" for p in (tmp_path / "killed" / "qa").glob("epoch_*.png"))
    assert len(pictures) >= epochs
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id, "qa")) == pictures
    # Reseeding per epoch makes the resumed run retrace the uninterrupted one exactly.
    straight_rows = epoch_rows(straight_run)
    killed_rows = epoch_rows(tmp_path / "killed" / "metrics.jsonl")
    assert sorted(killed_rows) == list(range(1, epochs + 1))
    for epoch in range(1, epochs + 1):
        assert killed_rows[epoch]["train_loss_total"] == pytest.approx(straight_rows[epoch]["train_loss_total"], rel=1e-5)
        assert killed_rows[epoch]["val_mae_hu"] == pytest.approx(straight_rows[epoch]["val_mae_hu"], rel=1e-4)
    assert np.isfinite(killed_rows[epochs]["val_mae_hu"])


def test_second_train_on_the_same_out_is_refused_with_the_owner_named(phantom_data, tmp_path):
    from radmtl.training.run_lock import LOCK_NAME

    sets = [a for s in TINY for a in ("--set", s)]
    common = ["--data", str(phantom_data), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
              "--no-progress", "--out", str(tmp_path / "run"), *sets]
    first = train_process(common, tmp_path)
    lock = tmp_path / "run" / LOCK_NAME
    deadline = time.time() + 120
    while time.time() < deadline and not (lock.exists() and lock.read_text().strip()):
        time.sleep(0.05)
    # Freeze the first run while it holds the lock (a stopped process keeps its flock), so that on a
    # loaded machine it cannot finish, and free the folder, before the second run gets there.
    os.kill(first.pid, signal.SIGSTOP)
    try:
        started = json.loads(lock.read_text())["started_utc"]
        second = train_process(common, tmp_path)
        output = second.communicate(timeout=120)[0]
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert second.returncode == 1
    assert output.strip().splitlines() == [
        f"radmtl train: error: {tmp_path / 'run'}: in use by another radmtl train (pid {first.pid} on "
        f"{socket.gethostname()}, started {started}); wait for it to "
        "finish, or choose another --out"]
    assert first.wait(timeout=300) == 0, first.stdout.read()
    assert lock.read_text() == ""  # released
    steps = [r["step"] for r in read_records(tmp_path / "run" / "metrics.jsonl") if "step_loss_total" in r]
    assert steps == [1, 2, 3, 4]  # one run's steps only


def test_lock_left_by_a_dead_run_is_taken_over_and_another_hosts_is_refused(phantom_data, tmp_path, caplog):
    from radmtl.training.run_lock import LOCK_NAME, RunFolderError, run_lock

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "run").mkdir()
    lock = tmp_path / "run" / LOCK_NAME
    lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started_utc": "then"}))
    cfg = load_config(None, TINY + ["train.epochs=1"])
    with caplog.at_level("WARNING"):
        train(cfg, phantom_data, tmp_path / "run", progress=False, tracker=NullTracker())
    assert f"taking over the lock left by a run that is no longer running (pid {dead.pid}" in caplog.text
    lock.write_text(json.dumps({"pid": 1, "host": "elsewhere.example", "started_utc": "then"}))
    with pytest.raises(RunFolderError, match="names another radmtl train .pid 1 on elsewhere.example"):
        with run_lock(tmp_path / "run"):
            pass


def test_resume_mends_the_checkpointed_epochs_metrics_and_pictures(tmp_path):
    """What the killed process may not have sent of its last checkpointed epoch reaches the run on
    resume: the missing metric points once, and the epoch's QA pictures that are on disk."""
    from radmtl.training.train import _flush_pending

    class Recording(NullTracker):
        def __init__(self, metrics_jsonl):
            super().__init__(metrics_jsonl)
            self.artifacts = []

        def log_artifact(self, path, artifact_path=None):
            self.artifacts.append((Path(path), artifact_path))

    out = tmp_path / "run"
    (out / "qa").mkdir(parents=True)
    (out / "qa" / "epoch_0003_case_000_axial.png").write_bytes(b"png")
    tracker = Recording(out / "metrics.jsonl")
    tracker.log_metrics({"step_loss_total": 0.7}, step=5)  # sent before the kill; step 6 and the epoch row not
    payload = {"epoch": 3,
               "pending_metrics": [(5, {"step_loss_total": 0.7}), (6, {"step_loss_total": 0.6}),
                                   (3, {"epoch": 3, "val_mae_hu": 50.0})],
               "pending_artifacts": ["qa/epoch_0003_case_000_axial.png", "qa/epoch_0003_deleted_coronal.png"]}
    _flush_pending(tracker, payload, out)
    assert tracker.artifacts == [(out / "qa" / "epoch_0003_case_000_axial.png", "qa")]
    rows = [(r["step"], {k: v for k, v in r.items() if k not in ("step", "time")})
            for r in read_records(out / "metrics.jsonl")]
    assert rows == [(5, {"step_loss_total": 0.7}), (6, {"step_loss_total": 0.6}),
                    (3, {"epoch": 3.0, "val_mae_hu": 50.0})]
