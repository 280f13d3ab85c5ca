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
from radmtl.inference.model_uri import resolve_model_uri


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, Path]:
    """One SQLite store for the module: creating its tables costs seconds, experiments isolate tests."""
    folder = tmp_path_factory.mktemp("store")
    return f"sqlite:///{folder / 'mlflow.db'}", folder


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
    with caplog.at_level(logging.WARNING, logger="radmtl.tracking.tracker"):
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


def test_unreachable_server_falls_back_quickly(tmp_path, caplog, monkeypatch):
    for key in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"):
        monkeypatch.setenv(key, "")  # records the old state, so start_tracking's values are undone
        monkeypatch.delenv(key)
    uri = f"http://127.0.0.1:{_free_port()}"
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="radmtl.tracking.tracker"):
        tracker = start_tracking(uri, "exp", "r", tmp_path, resume_run_id="abc")
        tracker.log_params({"a": 1})
        tracker.log_metrics({"loss_total": 1.0}, step=0)
        tracker.log_metrics({"loss_total": 0.5}, step=1)
        tracker.end("FAILED")
    assert time.monotonic() - start < 5.0
    assert isinstance(tracker, NullTracker) and tracker.run_id == "abc"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
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
    tracker.log_metrics({"loss_total": 1.0}, step=0)

    def dead(*args, **kwargs):
        raise ConnectionError("server went away")

    monkeypatch.setattr(tracker.client, "log_batch", dead)
    monkeypatch.setattr(tracker.client, "log_artifact", dead)
    with caplog.at_level(logging.WARNING, logger="radmtl.tracking.tracker"):
        for step in range(1, 4):
            tracker.log_metrics({"loss_total": 1.0 / step}, step=step)
        tracker.log_artifact(tmp_path / "metrics.jsonl", "logs")
        tracker.end()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "server went away" in warnings[0]
    assert [r["step"] for r in _jsonl(tmp_path / "metrics.jsonl")] == [0, 1, 2, 3]


def test_log_model_carries_checkpoint_and_resolves(store, tmp_path):
    uri, _ = store
    tracker = start_tracking(uri, "exp-model", "m", tmp_path / "out")
    checkpoint = tmp_path / "checkpoint_best.pt"
    torch.save({"epoch": 3, "state_dict": {}}, checkpoint)
    tracker.log_model(torch.nn.Conv3d(1, 1, kernel_size=1), checkpoint)
    assert not tracker.disabled
    client = _client(uri)
    assert client.get_run(tracker.run_id).info.status == "RUNNING"  # logging a model ends nothing
    tracker.end()

    found = resolve_model_uri(f"runs:/{tracker.run_id}/model", uri, dst_dir=tmp_path / "dl")
    assert found.name == "checkpoint_best.pt" and found.parent.name == "extra_files"
    assert found.read_bytes() == checkpoint.read_bytes()
    model_folder = found.parent.parent
    assert (model_folder / "MLmodel").is_file()
    mlmodel = (model_folder / "MLmodel").read_text()
    assert "pickle_module_name" in mlmodel and "extra_files/checkpoint_best.pt" in mlmodel
    assert (model_folder / "data" / "model.pth").is_file()  # pickle format, not pt2

    (output,) = client.get_run(tracker.run_id).outputs.model_outputs
    assert resolve_model_uri(f"models:/{output.model_id}", uri).name == "checkpoint_best.pt"


def test_resolve_model_uri_errors(store, tmp_path):
    uri, _ = store
    with pytest.raises(RadmtlError, match="cannot fetch model runs:/0123abcd/model"):
        resolve_model_uri("runs:/0123abcd/model", uri)
    # A model folder that radmtl did not log: no checkpoint inside.
    tracker = start_tracking(uri, "exp-foreign", "f", tmp_path / "out")
    foreign = tmp_path / "model"
    foreign.mkdir()
    (foreign / "MLmodel").write_text("flavors: {}\n")
    tracker.client.log_artifacts(tracker.run_id, str(foreign), "model")
    with pytest.raises(RadmtlError, match="holds no radmtl checkpoint"):
        resolve_model_uri(f"runs:/{tracker.run_id}/model", uri, dst_dir=tmp_path / "dl")
    dead = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(RadmtlError, match="unreachable"):
        resolve_model_uri("runs:/0123abcd/model", dead)
