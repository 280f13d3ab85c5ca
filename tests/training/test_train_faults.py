"""radmtl train on faults (issue 26, "nothing silent"): a value --set gave is blamed on --set, a disk that
fills up while a checkpoint is written, a kill between the latest and the best checkpoint's publication."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from radmtl.cli import main
from radmtl.config import load_config
from radmtl.errors import RadmtlError
from radmtl.nn.checkpoint import LATEST, load_checkpoint
from radmtl.tracking.metrics_file import read_records
from radmtl.tracking.tracker import NullTracker
from radmtl.training.train import train
from tiny_config import TINY

ROOT = Path(__file__).resolve().parents[2]


def _error_lines(err: str) -> list[str]:
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.strip()]


# --- where a bad value came from ------------------------------------------------------------------


def test_a_bad_value_from_set_is_blamed_on_set_not_on_the_config_file(tmp_path, capsys):
    smoke = ROOT / "configs" / "smoke.yaml"
    assert main(["train", "--config", str(smoke), "--set", "train.epochs=0", "--out", str(tmp_path / "run")]) == 1
    lines = _error_lines(capsys.readouterr().err)
    assert lines == [f"radmtl train: error: train.epochs: must be >= 1, got 0 (the value came from --set "
                     f"train.epochs=0, not {smoke})"]
    assert not (tmp_path / "run").exists()


def test_a_bad_value_in_the_config_file_is_still_blamed_on_the_file(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("train:\n  epochs: 0\n")
    assert main(["train", "--config", str(config), "--set", "train.lr=1e-3", "--out", str(tmp_path / "run")]) == 1
    assert _error_lines(capsys.readouterr().err) == [
        f"radmtl train: error: {config}: train.epochs: must be >= 1, got 0"]


# --- a disk that fills up ---------------------------------------------------------------------------


@pytest.mark.parametrize("failure", [
    RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4288 vs 4176"),
    OSError(errno.ENOSPC, "No space left on device"),
], ids=["torch-zip-writer", "ENOSPC"])
def test_a_full_disk_while_saving_a_checkpoint_is_one_line_and_keeps_the_last_whole_one(
        phantom_data, tmp_path, monkeypatch, failure):
    import torch

    from radmtl.nn import checkpoint as checkpoint_module

    real_save, saves = torch.save, []

    def save(payload, tmp):  # the first epoch's checkpoints are written; the disk is full in the second
        saves.append(tmp)
        if payload["epoch"] >= 2:
            Path(tmp).write_bytes(b"PK\x03\x04 half a zip")
            raise failure
        real_save(payload, tmp)

    monkeypatch.setattr(checkpoint_module.torch, "save", save)
    out = tmp_path / "run"
    with pytest.raises(RadmtlError) as raised:
        train(load_config(None, TINY), phantom_data, out, progress=False, tracker=NullTracker())
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"{out / LATEST}: the checkpoint could not be written (")
    assert "MiB free on its disk" in message and "disk is probably full" in message
    assert "free disk space" in message and "--resume" in message
    assert load_checkpoint(out / LATEST)["epoch"] == 1  # the previous checkpoint, whole
    assert [p.name for p in out.iterdir() if ".tmp." in p.name] == []  # no temporary file left


# --- a kill between publishing the latest and the best checkpoint -------------------------------------


class Killed(BaseException):
    """SIGKILL in the middle of a rename: no handler runs (an exception that no ``except Exception`` takes)."""


class Recording(NullTracker):
    def __init__(self, metrics_jsonl):
        super().__init__(metrics_jsonl)
        self.artifacts: list[tuple[Path, str | None]] = []
        self.metrics: list[tuple[int, dict]] = []

    def log_artifact(self, path, artifact_path=None):
        self.artifacts.append((Path(path), artifact_path))

    def log_metrics(self, metrics, step):
        super().log_metrics(metrics, step)
        self.metrics.append((step, dict(metrics)))


def test_a_kill_while_the_best_checkpoint_is_renamed_is_completed_on_resume(phantom_data, tmp_path, monkeypatch):
    """Every epoch improves (forced), so epoch 2 is published as latest, then as best; the kill falls between
    the two renames and leaves the complete new best file as a hidden temporary, as SIGKILL would. On resume
    the best checkpoint is epoch 2's, σ-scaling is fitted on it and it is the model logged."""
    import os
    import shutil

    import torch

    from radmtl.data import io as io_module
    from radmtl.nn.checkpoint import BEST
    from radmtl.training import train as train_module

    def always_better(state, epoch, val_metrics, cfg):
        state.best_metric, state.best_epoch = val_metrics[cfg.train.best_metric], epoch
        return True

    monkeypatch.setattr(train_module, "_update_best", always_better)
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst).name == BEST and load_checkpoint(src)["epoch"] == 2:
            shutil.copyfile(src, Path(src).with_name(".0badc0de.tmp." + BEST))  # what SIGKILL leaves behind
            raise Killed()
        return real_replace(src, dst)

    monkeypatch.setattr(io_module.os, "replace", replace)
    cfg = load_config(None, TINY + ["infer.mc_samples=2"])
    out = tmp_path / "run"
    with pytest.raises(Killed):
        train(cfg, phantom_data, out, progress=False, tracker=NullTracker(out / "metrics.jsonl"))
    monkeypatch.setattr(io_module.os, "replace", real_replace)
    latest = load_checkpoint(out / LATEST)
    assert latest["epoch"] == latest["best_epoch"] == 2 and load_checkpoint(out / BEST)["epoch"] == 1  # the fault

    tracker = Recording(out / "metrics.jsonl")
    state = train(cfg, phantom_data, out, resume=True, progress=False, tracker=tracker)
    best = load_checkpoint(out / BEST)
    assert (state.best_epoch, state.best_metric) == (2, latest["best_metric"])
    assert best["epoch"] == 2 and best["best_metric"] == latest["best_metric"]
    for name, tensor in latest["model_state"].items():  # epoch 2's weights, not epoch 1's
        assert torch.equal(best["model_state"][name], tensor), name
    assert "sigma_scaling" in best  # σ-scaling fitted into epoch 2's file
    assert (out / BEST, "checkpoints") in tracker.artifacts  # the model logged is that file
    assert [p.name for p in out.iterdir() if ".tmp." in p.name] == []  # the hidden temporary is gone


def test_a_best_file_that_cannot_be_mended_gives_the_metric_it_holds(tmp_path):
    """A best checkpoint of another epoch than latest names, where no kill explains it (latest is not that
    epoch): the run goes on from the file on disk, its own metric; a missing one is chosen anew."""
    from radmtl.nn.checkpoint import BEST, make_payload, save_checkpoint
    from radmtl.nn.model import build_model
    from radmtl.training.best_checkpoint import reconcile_best

    cfg = load_config(None, TINY)
    model = build_model(cfg.model)

    def payload(epoch, best_metric, best_epoch):
        return make_payload(cfg=cfg, label_names={"background": 0}, model=model, epoch=epoch,
                            best_metric=best_metric, best_epoch=best_epoch, with_rng=False)

    latest = payload(3, 40.0, 2)
    save_checkpoint(tmp_path / LATEST, latest)
    save_checkpoint(tmp_path / BEST, payload(1, 55.0, 1))
    assert reconcile_best(tmp_path, latest) == (55.0, 1)
    (tmp_path / BEST).unlink()
    assert reconcile_best(tmp_path, latest) == (None, None)
    save_checkpoint(tmp_path / BEST, payload(2, 40.0, 2))
    assert reconcile_best(tmp_path, latest) == (40.0, 2)  # they agree: nothing to do


# --- an MLflow store that stops answering mid-run -----------------------------------------------------


@pytest.fixture
def lockable_store(tmp_path, monkeypatch):
    """A SQLite store whose clients fail every call while ``lock["on"]`` (as a store locked by another process
    does: MLflow logs the failure with its traceback, then raises it), asked again at once when due."""
    import logging
    import sqlite3

    import mlflow
    from mlflow.exceptions import MlflowException

    from radmtl.tracking import outage, tracker

    lock = {"on": False}
    store_calls = {"log_batch", "get_run", "get_metric_history", "log_artifact", "set_terminated",
                   "create_logged_model", "log_inputs", "update_run", "search_logged_models"}

    class LockingClient(mlflow.MlflowClient):
        def __getattribute__(self, name):
            method = super().__getattribute__(name)
            if name not in store_calls:
                return method

            def call(*args, **kwargs):
                if lock["on"]:
                    try:
                        raise sqlite3.OperationalError("database is locked")
                    except sqlite3.OperationalError as err:
                        logging.getLogger("mlflow.store.db.utils").exception("SQLAlchemy database error.")
                        raise MlflowException("(sqlite3.OperationalError) database is locked") from err
                return method(*args, **kwargs)

            return call

    monkeypatch.setattr(mlflow, "MlflowClient", LockingClient)
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")  # its thread stops within a second

    def qa_images(out_dir, prefix, **_):  # a picture file per validation, without matplotlib's seconds
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        path = Path(out_dir) / f"{prefix}_axial.png"
        path.write_bytes(b"png")
        return [path]

    monkeypatch.setattr("radmtl.evaluation.qa.qa_images", qa_images)
    monkeypatch.setattr(tracker, "RETRY_AFTER_S", 0.0)
    monkeypatch.setattr(tracker, "END_WAIT_S", 0.2)
    monkeypatch.setattr(outage, "POLL_S", 0.05)
    return f"sqlite:///{tmp_path / 'mlflow.db'}", lock


def _lock_around_epochs(monkeypatch, lock, first: int, last: int | None) -> None:
    """The store locks just before epoch ``first``'s points are sent and answers again after epoch ``last``'s."""
    from radmtl.training import train as train_module

    real_send = train_module._send

    def send(tracker, pending):
        epoch = max(int(metrics["epoch"]) for _, metrics in pending if "epoch" in metrics)
        lock["on"] = lock["on"] or epoch == first
        real_send(tracker, pending)
        if epoch == last:
            lock["on"] = False

    monkeypatch.setattr(train_module, "_send", send)


def _train_tracked(phantom_data, out: Path, uri: str, epochs: int) -> int:
    sets = [a for s in TINY + [f"train.epochs={epochs}", "train.recalibrate=false"] for a in ("--set", s)]
    return main(["-q", "train", "--data", str(phantom_data), "--out", str(out), "--tracking-uri", uri,
                 "--experiment", "outage", "--no-progress", *sets])


def _assert_complete(uri: str, run_id: str, out: Path, epochs: int) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    for key in ("epoch", "val_mae_hu", "train_loss_total"):
        assert sorted(m.step for m in client.get_metric_history(run_id, key)) == list(range(1, epochs + 1)), key
    local = sorted(r["step"] for r in read_records(out / "metrics.jsonl") if "step_loss_total" in r)
    assert sorted(m.step for m in client.get_metric_history(run_id, "step_loss_total")) == local
    pictures = sorted(f"qa/{p.name}" for p in (out / "qa").glob("epoch_*.png"))
    assert sorted(a.path for a in client.list_artifacts(run_id, "qa")) == pictures and len(pictures) >= epochs
    assert len(run.outputs.model_outputs) == 1  # the model is logged
    assert not (out / "mlflow_unsent.json").exists()


def test_a_store_locked_mid_run_gets_every_point_and_the_model_when_it_answers_again(
        phantom_data, tmp_path, monkeypatch, capfd, lockable_store):
    uri, lock = lockable_store
    _lock_around_epochs(monkeypatch, lock, first=2, last=3)
    out = tmp_path / "run"
    assert _train_tracked(phantom_data, out, uri, epochs=4) == 0
    err = capfd.readouterr().err
    assert "Traceback" not in err and "SQLAlchemy" not in err
    warnings = [line for line in err.splitlines() if line.strip() and "laterality" not in line]
    assert len(warnings) == 1 and "unreachable (log_metrics: MlflowException: (sqlite3.OperationalError) " \
                                  "database is locked); training continues" in warnings[0], warnings
    _assert_complete(uri, load_checkpoint(out / LATEST)["mlflow_run_id"], out, 4)


def test_a_store_still_locked_at_the_end_is_marked_and_sync_mlflow_sends_it_all(
        phantom_data, tmp_path, monkeypatch, capfd, lockable_store):
    import json

    uri, lock = lockable_store
    _lock_around_epochs(monkeypatch, lock, first=2, last=None)
    out = tmp_path / "run"
    assert _train_tracked(phantom_data, out, uri, epochs=3) == 0  # training finishes all the same
    err = capfd.readouterr().err
    assert "Traceback" not in err and "SQLAlchemy" not in err
    last = err.strip().splitlines()[-1]
    assert f"send it with `radmtl train --out {out} --sync-mlflow` once the store answers" in last
    run_id = load_checkpoint(out / LATEST)["mlflow_run_id"]
    unsent = json.loads((out / "mlflow_unsent.json").read_text())
    assert unsent["status"] == "FINISHED" and unsent["notes"]["model"]["checkpoint"] == "checkpoint_best.pt"

    assert main(["train", "--out", str(out), "--sync-mlflow"]) == 1  # still locked: one line, the file kept
    err = capfd.readouterr().err
    assert err.strip().splitlines() == [
        f"radmtl train: error: MLflow tracking at {uri} still does not answer (MlflowException: "
        f"(sqlite3.OperationalError) database is locked); {out / 'mlflow_unsent.json'} is kept: run radmtl train "
        f"--out {out} --sync-mlflow again later (or pass --tracking-uri if the store has moved)"]
    lock["on"] = False
    assert main(["train", "--out", str(out), "--sync-mlflow"]) == 0
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err
    assert captured.out.startswith(f"run {run_id} at {uri}: ")
    assert "model logged from checkpoint_best.pt" in captured.out
    _assert_complete(uri, run_id, out, 3)
