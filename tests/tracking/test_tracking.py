from __future__ import annotations

import json
import logging
import socket
import time
from pathlib import Path

import mlflow
import pytest
import torch

from radmtl.errors import RadmtlError
from radmtl.tracking.tracker import (
    MlflowTracker,
    NullTracker,
    default_tracking_uri,
    start_tracking,
)
from radmtl.tracking.environment import run_tags
from radmtl.tracking.metrics_file import read_records
from radmtl.inference.model_uri import resolve_model_uri



def _client(uri: str):
    return mlflow.MlflowClient(tracking_uri=uri)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_default_tracking_uri(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert default_tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert default_tracking_uri(tmp_path).startswith("sqlite:////")  # absolute path
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert default_tracking_uri(tmp_path) == "http://tracking.example:5000"


def test_run_tags():
    tags = run_tags("cpu")
    assert tags["radmtl.device"] == "cpu"
    assert tags["radmtl.torch_version"] == torch.__version__
    assert tags["radmtl.mlflow_version"] == mlflow.__version__
    for key in ("radmtl.version", "radmtl.monai_version", "radmtl.python_version", "radmtl.hostname"):
        assert tags[key]
    if "radmtl.git_commit" in tags:  # only inside a git checkout
        assert len(tags["radmtl.git_commit"]) == 40
        assert tags["mlflow.source.git.commit"] == tags["radmtl.git_commit"]


def test_null_tracker_keeps_local_metrics_only(tmp_path):
    tracker = NullTracker(tmp_path / "metrics.jsonl")
    tracker.log_params({"a": 1})
    tracker.log_metrics({"loss_total": 0.5}, step=3)
    tracker.log_artifact(tmp_path / "nothing.png")
    tracker.end()
    assert tracker.run_id is None
    (record,) = _jsonl(tmp_path / "metrics.jsonl")
    assert record["step"] == 3 and record["loss_total"] == 0.5 and record["time"] > 0
    assert tracker.metric_steps("loss_total") is None  # unknown without MLflow
    NullTracker().log_metrics({"x": 1.0}, 0)  # rank > 0: writes nothing anywhere
    with pytest.raises(ValueError, match="status"):
        tracker.end("DONE")


def test_run_params_metrics_tags_artifacts(store, tmp_path):
    uri, folder = store
    tracker = start_tracking(uri, "exp-basic", "smoke", tmp_path)
    assert isinstance(tracker, MlflowTracker)
    params = {f"p{i:03d}": i for i in range(250)}  # more than one MLflow batch
    params.update({"data.patch_size": (64, 64, 32), "long": "x" * 7000})
    tracker.log_params(params)
    for epoch in range(3):
        tracker.log_metrics({"loss_total": 1.0 / (epoch + 1), "val_mae_hu": 100.0 - epoch}, step=epoch)
    tracker.set_tags(run_tags("cpu"))
    picture = tmp_path / "case_axial.png"
    picture.write_bytes(b"\x89PNG\r\n\x1a\n")
    tracker.log_artifact(picture, "qa")
    tracker.end()

    client = _client(uri)
    run = client.get_run(tracker.run_id)
    assert run.info.run_name == "smoke" and run.info.status == "FINISHED"
    assert len(run.data.params) == 252
    assert run.data.params["data.patch_size"] == "[64, 64, 32]"
    assert len(run.data.params["long"]) == 6000
    assert [m.value for m in client.get_metric_history(tracker.run_id, "val_mae_hu")] == [100.0, 99.0, 98.0]
    assert run.data.tags["radmtl.device"] == "cpu"
    assert [a.path for a in client.list_artifacts(tracker.run_id, "qa")] == ["qa/case_axial.png"]

    # Artifacts sit beside the database, so `mlflow ui` can serve them from any folder.
    experiment = client.get_experiment_by_name("exp-basic")
    assert experiment.artifact_location == (folder / "mlartifacts").as_uri()
    assert list((folder / "mlartifacts").rglob("case_axial.png"))

    records = _jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [0, 1, 2]
    assert records[2]["val_mae_hu"] == 98.0


def test_resume_continues_the_same_run(store, tmp_path, caplog):
    uri, _ = store
    first = start_tracking(uri, "exp-resume", "r", tmp_path)
    first.log_params({"train.lr": 0.001, "seed": 0})
    first.log_metrics({"loss_total": 1.0}, step=0)
    run_id = first.run_id  # the process is killed here: the run is never ended

    second = start_tracking(uri, "exp-resume", "ignored", tmp_path, resume_run_id=run_id)
    assert second.run_id == run_id
    with caplog.at_level(logging.WARNING, logger="radmtl.tracking"):
        second.log_params({"train.lr": 0.001, "seed": 1})  # same value again is fine
    assert "param seed changed" in caplog.text
    assert not second.disabled
    assert second.metric_steps("loss_total") == {0}  # what the killed process got to send
    second.log_metrics({"loss_total": 0.5}, step=1)
    second.end()

    client = _client(uri)
    experiment = client.get_experiment_by_name("exp-resume")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]
    assert runs[0].info.status == "FINISHED" and runs[0].data.params["seed"] == "0"
    assert [m.step for m in client.get_metric_history(run_id, "loss_total")] == [0, 1]
    assert [r["step"] for r in _jsonl(tmp_path / "metrics.jsonl")] == [0, 1]

    with pytest.raises(RadmtlError, match="cannot resume MLflow run 0123abcd"):
        start_tracking(uri, "exp-resume", None, tmp_path, resume_run_id="0123abcd")


def test_mend_after_a_kill_mid_send_logs_each_point_once(store, tmp_path):
    """A kill can land between two log calls of an epoch already checkpointed: resume sends only
    what is missing, to MLflow and to metrics.jsonl alike (CI once saw steps 3 and 4 logged twice)."""
    uri, _ = store
    pending = [(3, {"step_loss_total": 0.9, "lr": 1e-3}), (4, {"step_loss_total": 0.8, "lr": 1e-3}),
               (2, {"train_loss_total": 0.85, "val_mae_hu": 60.0, "epoch": 2})]
    first = start_tracking(uri, "exp-mend", "r", tmp_path)
    first.log_metrics({"step_loss_total": 1.0, "lr": 1e-3}, step=1)
    first.log_metrics(*reversed(pending[0]))  # killed here: step 4 and the epoch row never sent

    second = start_tracking(uri, "exp-mend", "ignored", tmp_path, resume_run_id=first.run_id)
    assert second.mend(pending) == 2 * (2 + 3)  # step 4 and the epoch row, in MLflow and locally
    assert second.mend(pending) == 0  # nothing left to send
    second.end()

    client = _client(uri)
    assert [m.step for m in client.get_metric_history(first.run_id, "step_loss_total")] == [1, 3, 4]
    assert [m.step for m in client.get_metric_history(first.run_id, "lr")] == [1, 3, 4]
    assert [m.value for m in client.get_metric_history(first.run_id, "val_mae_hu")] == [60.0]
    records = _jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 3, 4, 2]
    assert records[-1]["epoch"] == 2 and records[-1]["val_mae_hu"] == 60.0


def test_mend_without_mlflow_completes_the_local_copy(tmp_path):
    local = tmp_path / "metrics.jsonl"
    NullTracker(local).log_metrics({"step_loss_total": 0.9}, step=3)
    local.write_text(local.read_text() + '{"step": 4, "step_lo')  # the line the kill cut
    resumed = NullTracker(local)
    assert resumed.mend([(3, {"step_loss_total": 0.9}), (4, {"step_loss_total": 0.8})]) == 1
    assert [(r["step"], r["step_loss_total"]) for r in read_records(local)] == [(3, 0.9), (4, 0.8)]


def test_unreachable_server_falls_back_quickly(tmp_path, caplog, monkeypatch):
    for key in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"):
        monkeypatch.setenv(key, "")  # records the old state, so start_tracking's values are undone
        monkeypatch.delenv(key)
    uri = f"http://127.0.0.1:{_free_port()}"
    with caplog.at_level(logging.WARNING, logger="radmtl.tracking"):
        tracker = start_tracking(uri, "exp", "r", tmp_path, resume_run_id="abc")
        tracker.log_params({"a": 1})
        tracker.log_metrics({"loss_total": 1.0}, step=0)
        tracker.log_metrics({"loss_total": 0.5}, step=1)
        tracker.end("FAILED")
    assert isinstance(tracker, NullTracker) and tracker.run_id == "abc"
    # MLflow's own client, had it been asked, would add its "Retrying (Retry(...))" warnings
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"MLflow tracking at {uri} unreachable (")
    assert f"metrics are kept in {tmp_path / 'metrics.jsonl'}" in warnings[0]
    assert [r["loss_total"] for r in _jsonl(tmp_path / "metrics.jsonl")] == [1.0, 0.5]
    # A server dying mid-run must not hang training in MLflow's retry loop.
    import os

    assert int(os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]) <= 2
    assert int(os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"]) <= 30


def test_failure_mid_run_warns_once_and_keeps_metrics(store, tmp_path, caplog, monkeypatch):
    uri, _ = store
    tracker = start_tracking(uri, "exp-dies", "r", tmp_path)
    tracker.end_wait_s = 0.0  # the store does not come back: no waiting for it at the end
    tracker.log_metrics({"loss_total": 1.0}, step=0)

    def dead(*args, **kwargs):
        raise ConnectionError("server went away")

    monkeypatch.setattr(tracker.client, "log_batch", dead)
    monkeypatch.setattr(tracker.client, "log_artifact", dead)
    with caplog.at_level(logging.WARNING, logger="radmtl.tracking"):
        for step in range(1, 4):
            tracker.log_metrics({"loss_total": 1.0 / step}, step=step)
        tracker.log_artifact(tmp_path / "metrics.jsonl", "logs")
        tracker.end()
    # one warning when it fails, one at the end that says how the run gets what it missed
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "server went away" in warnings[0]
    assert f"send it with `radmtl train --out {tmp_path} --sync-mlflow` once the store answers" in warnings[1]
    assert [r["step"] for r in _jsonl(tmp_path / "metrics.jsonl")] == [0, 1, 2, 3]
    unsent = json.loads((tmp_path / "mlflow_unsent.json").read_text())
    assert unsent["run_id"] == tracker.run_id and unsent["status"] == "FINISHED"
    assert unsent["kept"] == [{"kind": "artifact", "path": str(tmp_path / "metrics.jsonl"), "artifact_path": "logs"}]


def _log_dummy_model(tracker, checkpoint: Path) -> str:
    from radmtl.inference.pyfunc_model import servable_model

    with servable_model(checkpoint) as spec:
        return tracker.log_model(**spec)


def test_log_model_is_a_pyfunc_carrying_the_checkpoint_read_in_place(store, tmp_path, monkeypatch):
    uri, folder = store
    tracker = start_tracking(uri, "exp-model", "m", tmp_path / "out", system_metrics=False)
    checkpoint = tmp_path / "checkpoint_best.pt"
    torch.save({"epoch": 3, "state_dict": {}}, checkpoint)
    model_uri = _log_dummy_model(tracker, checkpoint)
    assert not tracker.disabled
    client = _client(uri)
    assert client.get_run(tracker.run_id).info.status == "RUNNING"  # logging a model ends nothing
    tracker.end()

    (output,) = client.get_run(tracker.run_id).outputs.model_outputs  # a training run's model output
    assert model_uri == f"models:/{output.model_id}"
    # A local store is read where it keeps the model: nothing is copied to a temporary folder.
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "no-temp-here"))
    found = resolve_model_uri(f"runs:/{tracker.run_id}/model", uri)
    assert found.is_relative_to(folder / "mlartifacts") and found.parent.name == "artifacts"
    assert found.read_bytes() == checkpoint.read_bytes()
    mlmodel = (found.parent.parent / "MLmodel").read_text()
    assert "loader_module: mlflow.pyfunc.loaders.code_model" in mlmodel  # models from code, no pickled object
    assert "pytorch" not in mlmodel and "python_model.pkl" not in mlmodel
    assert "radmtl==" in (found.parent.parent / "requirements.txt").read_text()
    assert resolve_model_uri(model_uri, uri) == found
    # dst_dir asks for a copy
    copied = resolve_model_uri(f"runs:/{tracker.run_id}/model", uri, dst_dir=tmp_path / "dl")
    assert copied.is_relative_to(tmp_path / "dl") and copied.read_bytes() == checkpoint.read_bytes()


def test_model_from_a_remote_store_is_a_temporary_download_recorded_by_uri(store, tmp_path, monkeypatch, capfd):
    from radmtl.inference import model_uri as mu

    uri, _ = store
    tracker = start_tracking(uri, "exp-remote", "m", tmp_path / "out", system_metrics=False)
    checkpoint = tmp_path / "checkpoint_best.pt"
    torch.save({"epoch": 1}, checkpoint)
    _log_dummy_model(tracker, checkpoint)
    tracker.end()
    # A store whose artifacts are not on this machine (s3, an HTTP server): seen as not local here.
    monkeypatch.setattr(mu, "_local_folder", lambda location: None)
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(temp))
    model = f"runs:/{tracker.run_id}/model"
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # what radmtl -q / --no-progress set
    capfd.readouterr()
    found = mu.resolve_model_uri(model, uri)
    assert "Downloading artifacts" not in "".join(capfd.readouterr())
    assert found.is_relative_to(temp) and found.read_bytes() == checkpoint.read_bytes()
    source = mu.ModelSource(argument=model, checkpoint=found, sha256=mu.sha256_of(found))
    assert source.recorded == f"{model} (checkpoint_best.pt)"  # not the path about to be deleted
    mu.release_downloads()
    assert list(temp.iterdir()) == []
    local = mu.ModelSource(argument=str(checkpoint), checkpoint=checkpoint, sha256="x")
    assert local.recorded == str(checkpoint.resolve())


def test_quiet_cli_turns_off_mlflow_download_bars(monkeypatch, tmp_path):
    from radmtl.cli import main

    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    monkeypatch.setenv("MLFLOW_LOGGING_LEVEL", "WARNING")
    assert main(["-q", "infer", "--model", str(tmp_path / "none.pt"), "--input", str(tmp_path),
                 "--output", str(tmp_path / "o")]) == 1
    import os

    assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"


def test_lookup_without_a_store_says_so_and_creates_none(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RadmtlError, match=r"no MLflow store at sqlite:///.*mlflow.db \(.* does not exist\)"):
        resolve_model_uri("models:/anything@best")
    assert list(tmp_path.iterdir()) == []  # MLflow would have left an empty mlflow.db here


def test_resolve_model_uri_errors(store, tmp_path):
    uri, _ = store
    with pytest.raises(RadmtlError, match="cannot fetch model runs:/0123abcd/model"):
        resolve_model_uri("runs:/0123abcd/model", uri)
    # A model folder that radmtl did not log: no checkpoint inside.
    tracker = start_tracking(uri, "exp-foreign", "f", tmp_path / "out", system_metrics=False)
    foreign = tmp_path / "model"
    foreign.mkdir()
    (foreign / "MLmodel").write_text("flavors: {}\n")
    tracker.client.log_artifacts(tracker.run_id, str(foreign), "model")
    with pytest.raises(RadmtlError, match="holds no radmtl checkpoint"):
        resolve_model_uri(f"runs:/{tracker.run_id}/model", uri, dst_dir=tmp_path / "dl")
    dead = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(RadmtlError, match="unreachable"):
        resolve_model_uri("runs:/0123abcd/model", dead)


# --- the experiment, the run's name, an unusable store ------------------------------------------


def test_experiment_is_marked_model_training_when_made_and_when_used(store, tmp_path):
    from radmtl.tracking.experiment import EXPERIMENT_KIND_TAG

    uri, _ = store
    client = _client(uri)
    start_tracking(uri, "exp-kind-new", "r", tmp_path, system_metrics=False).end()
    assert client.get_experiment_by_name("exp-kind-new").tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    made_by_hand = client.create_experiment("exp-kind-old")  # e.g. by an older radmtl: no kind
    start_tracking(uri, "exp-kind-old", "r", tmp_path, system_metrics=False).end()
    assert client.get_experiment(made_by_hand).tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    chosen = client.create_experiment("exp-kind-genai", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    start_tracking(uri, "exp-kind-genai", "r", tmp_path, system_metrics=False).end()
    assert client.get_experiment(chosen).tags[EXPERIMENT_KIND_TAG] == "genai_development"  # a user's choice stays


def test_run_name_tells_runs_apart(tmp_path):
    from datetime import datetime

    from radmtl.tracking.tracker import make_run_name

    when = datetime(2026, 3, 4, 5, 6)
    assert make_run_name(tmp_path / "run", "hetero_homo", [tmp_path / "Task1"], when) == \
        "run-hetero_homo-Task1-20260304-0506"
    assert make_run_name(tmp_path / "run", "fixed", [tmp_path / "a", tmp_path / "b"], when) == \
        "run-fixed-a+b-20260304-0506"


def _unusable_sqlite_stores(tmp_path: Path) -> list[tuple[str, str]]:
    """Stores MLflow cannot open, even as root: the database path is a folder, a folder under a file."""
    (tmp_path / "is_a_folder.db").mkdir()
    (tmp_path / "a_file").write_text("x")
    stores = [(f"sqlite:///{tmp_path / 'is_a_folder.db'}", "is a folder or special file"),
              (f"sqlite:///{tmp_path / 'a_file' / 'mlflow.db'}", "is a file, not a folder")]
    if Path("/proc/self").is_dir():  # a location that takes no files (procfs)
        stores.append(("sqlite:////proc/radmtl-mlflow.db", "does not take new files"))
    return stores


def test_unwritable_sqlite_store_falls_back_at_once_with_one_line(tmp_path, caplog, monkeypatch):
    sleeps: list[float] = []
    monkeypatch.setattr(time, "sleep", sleeps.append)
    for uri, words in _unusable_sqlite_stores(tmp_path):
        caplog.clear()
        sleeps.clear()
        with caplog.at_level(logging.DEBUG):
            tracker = start_tracking(uri, "exp", "r", tmp_path / "out")
        # MLflow itself retries engine creation with sleeps adding up to ~100 s; none may be asked for.
        assert sleeps == [], uri
        assert isinstance(tracker, NullTracker)
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1 and "\n" not in warnings[0], warnings
        assert warnings[0].startswith(f"MLflow tracking store {uri} cannot be written (") and words in warnings[0]
        assert f"metrics are kept in {tmp_path / 'out' / 'metrics.jsonl'}" in warnings[0]
    assert not (tmp_path / "a_file").is_dir()


@pytest.mark.slow
def test_training_on_an_unusable_store_warns_once_and_trains(tmp_path):
    """The whole command: one warning line and no MLflow retries (each would add its own warning lines and
    sleep, ~100 s in all), and the epoch's metrics kept in metrics.jsonl. No wall-clock bound: the probe's
    test above checks that no retry sleep is asked for, which a loaded machine cannot make flaky."""
    import subprocess
    import sys

    from radmtl.data.phantom import generate_dataset

    data = tmp_path / "data"
    generate_dataset(data, cases=3, seed=1, shape=(24, 24, 16))
    (tmp_path / "is_a_folder.db").mkdir()
    uri = f"sqlite:///{tmp_path / 'is_a_folder.db'}"
    sets = ["data.spacing=[12.0, 12.0, 12.0]", "data.patch_size=[16, 16, 16]", "model.channels=[4, 8]",
            "model.strides=[2]", "train.epochs=1", "train.steps_per_epoch=1"]
    command = [sys.executable, "-m", "radmtl", "-q", "train", "--data", str(data), "--out", str(tmp_path / "run"),
               "--tracking-uri", uri, "--no-progress", *(a for s in sets for a in ("--set", s))]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    out, err = done.stdout, done.stderr
    assert done.returncode == 0, err
    rows = _jsonl(tmp_path / "run" / "metrics.jsonl")
    assert any(row["step"] == 1 and "train_loss_total" in row for row in rows), rows
    assert err.strip().splitlines() == [
        f"MLflow tracking store {uri} cannot be written ({tmp_path / 'is_a_folder.db'} is a folder or special "
        f"file, not a database file); training continues without MLflow, metrics are kept in "
        f"{tmp_path / 'run' / 'metrics.jsonl'}; pass a writable --tracking-uri"]
    assert "MLflow run:" not in out
