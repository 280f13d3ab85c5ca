"""What a run trained on (dataset inputs with content digests) and ``--register`` (Model Registry versions,
their tags, the ``best`` alias)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import mlflow
import pytest
import torch

from radmtl.inference.model_uri import resolve_model_uri
from radmtl.tracking.tracker import NullTracker, start_tracking



def _client(uri: str):
    return mlflow.MlflowClient(tracking_uri=uri)


def _log_dummy_model(tracker, checkpoint: Path) -> str:
    from radmtl.inference.pyfunc_model import servable_model

    with servable_model(checkpoint) as spec:
        return tracker.log_model(**spec)



def _case(folder: Path, case_id: str, mr: bytes, ct: bytes) -> dict[str, Path]:
    (folder / case_id).mkdir(parents=True)
    (folder / case_id / "mr.nii.gz").write_bytes(mr)
    (folder / case_id / "ct.nii.gz").write_bytes(ct)
    return {"mr": folder / case_id / "mr.nii.gz", "ct": folder / case_id / "ct.nii.gz"}


def _table(folder: Path) -> str:
    return ("case,group,split,tasks,mr\n"
            f"a,,training,sct,{folder / 'a' / 'mr.nii.gz'}\nb,,training,sct,{folder / 'b' / 'mr.nii.gz'}\n"
            f"c,,validation,sct,{folder / 'c' / 'mr.nii.gz'}\n")


def test_data_digest_follows_the_file_contents(tmp_path):
    from radmtl.tracking.datasets import case_frames

    digests = {}
    for name, last_byte in (("one", b"1"), ("copy", b"1"), ("changed", b"2")):
        folder = tmp_path / name
        paths = {c: _case(folder, c, b"mr-" + c.encode(), b"ct-" + c.encode()) for c in "ab"}
        paths["c"] = _case(folder, "c", b"mr-c", b"ct-c" + last_byte)
        frames, digest = case_frames(_table(folder), paths)
        digests[name] = digest
        assert sorted(frames) == ["training", "validation"]
        assert list(frames["training"]["case"]) == ["a", "b"] and list(frames["validation"]["case"]) == ["c"]
    assert digests["one"] == digests["copy"]  # the same data in another folder
    assert digests["one"] != digests["changed"]  # one byte of one validation CT differs
    assert len(digests["one"]) == 64


def test_case_datasets_logged_as_training_and_validation_inputs(store, tmp_path):
    from radmtl.tracking.datasets import DATA_DIGEST_TAG, log_case_datasets

    uri, _ = store
    folder = tmp_path / "pelvis"
    paths = {c: _case(folder, c, b"mr-" + c.encode(), b"ct") for c in "abc"}
    tracker = start_tracking(uri, "exp-data", "d", tmp_path / "out", system_metrics=False)
    digest = log_case_datasets(tracker, _table(folder), paths, [folder])
    tracker.end()
    run = _client(uri).get_run(tracker.run_id)
    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert sorted(inputs) == ["training", "validation"]
    assert inputs["training"].name == "pelvis-training" and inputs["validation"].name == "pelvis-validation"
    assert json.loads(inputs["training"].profile)["num_rows"] == 2
    assert json.loads(inputs["training"].source)["uri"] == str(folder)
    assert inputs["training"].digest != inputs["validation"].digest and len(inputs["training"].digest) == 32
    assert run.data.tags[DATA_DIGEST_TAG] == digest
    assert log_case_datasets(NullTracker(), _table(folder), paths, [folder]) is None


def test_register_versions_tags_and_best_alias(store, tmp_path, caplog):
    from radmtl.tracking.registry import BEST_ALIAS, RegistryError, check_model_name, register_model

    uri, _ = store
    client = _client(uri)
    made = []
    for run, val_mae in (("first", 50.0), ("worse", 60.0), ("better", 40.0)):
        tracker = start_tracking(uri, "exp-registry", run, tmp_path / run, system_metrics=False)
        tracker.set_tags({"radmtl.data_digest": f"digest-{run}"})
        tracker.log_metrics({"epoch": 1, "val_mae_hu": val_mae + 5, "val_dice_mean": 0.1}, step=1)
        tracker.log_metrics({"epoch": 2, "val_mae_hu": val_mae, "val_dice_mean": 0.2}, step=2)
        checkpoint = tmp_path / run / "checkpoint_best.pt"
        torch.save({"run": run}, checkpoint)
        model_uri = _log_dummy_model(tracker, checkpoint)
        made.append(register_model(tracker, "pelvis-sct", model_uri, "val_mae_hu", "min", best_epoch=2))
        tracker.end()
        version = client.get_model_version("pelvis-sct", made[-1].version)
        assert version.tags["val_mae_hu"] == f"{val_mae:.6g}" and version.tags["val_dice_mean"] == "0.2"
        assert version.tags["radmtl.data_digest"] == f"digest-{run}" and version.tags["radmtl.best_epoch"] == "2"
        assert version.run_id == tracker.run_id
        best = client.get_model_version_by_alias("pelvis-sct", BEST_ALIAS)
        # torch.load of the checkpoint @best points at, through radmtl's own resolution
        found = resolve_model_uri(f"models:/pelvis-sct@{BEST_ALIAS}", uri)
        holder = {"first": "first", "worse": "first", "better": "better"}[run]
        assert torch.load(found, weights_only=True)["run"] == holder
    assert [m.version for m in made] == ["1", "2", "3"]
    assert [m.best_version for m in made] == ["1", "1", "3"] and str(best.version) == "3"
    assert made[1].line() == ("registered model pelvis-sct version 2 (models:/pelvis-sct/2); alias @best on version 1")
    with pytest.raises(RegistryError, match="--register 'a/b': the registered model name contains '/'"):
        check_model_name("a/b")
    with caplog.at_level(logging.WARNING):
        assert register_model(NullTracker(), "x", None, "val_mae_hu", "min", 1) is None
    assert "--register x: not registered" in caplog.text
