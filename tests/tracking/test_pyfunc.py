"""The MLflow model radmtl train logs: served by ``mlflow models predict``, run by ``radmtl infer`` from a
run or the Model Registry, and what a registered, tracked training run records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
MODEL_NAME = "pelvis-test"
TINY = [
    "data.spacing=[12.0, 12.0, 12.0]", "data.patch_size=[16, 16, 16]", "data.patches_per_volume=2",
    "model.channels=[4, 8]", "model.strides=[2]", "model.dropout=0.1", "train.epochs=2",
    "train.steps_per_epoch=2", "train.val_every=1", "infer.overlap=0.25", "infer.mc_samples=2",
]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """One tiny ``radmtl train --register`` into a SQLite store (system metrics sampled every second)."""
    from radmtl.config import load_config
    from radmtl.data.phantom import generate_dataset
    from radmtl.training.train import train

    root = tmp_path_factory.mktemp("pyfunc")
    data = root / "pelvis"
    generate_dataset(data, cases=4, seed=3, shape=(32, 32, 24))
    store = root / "store"
    store.mkdir()
    uri = f"sqlite:///{store / 'mlflow.db'}"
    old = os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL")
    os.environ["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] = "1"
    try:
        state = train(load_config(None, TINY), data, root / "run", tracking_uri=uri, experiment="pyfunc-test",
                      progress=False, register=MODEL_NAME)
    finally:
        if old is None:
            os.environ.pop("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL")
        else:
            os.environ["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] = old
    return {"root": root, "data": data, "store": store, "uri": uri, "state": state, "out": root / "run"}


def _env(uri: str, tmp: Path) -> dict[str, str]:
    tmp.mkdir(exist_ok=True)
    return os.environ | {"MLFLOW_TRACKING_URI": uri, "TMPDIR": str(tmp), "MLFLOW_DISABLE_TELEMETRY": "true",
                         "DO_NOT_TRACK": "true"}


def _mr_on_an_odd_grid(case_mr: Path, path: Path) -> Path:
    """The case's MR with its first axis flipped (LAS) and a shifted origin: not the network's grid."""
    image = nib.load(str(case_mr))
    affine = image.affine.copy()
    affine[:3, 0] *= -1
    affine[:3, 3] += [40.0, -7.0, 3.0]
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj, dtype=np.float32)[::-1], affine), str(path))
    return path


def test_mlflow_models_predict_writes_the_sct_on_the_mr_grid(trained, tmp_path):
    run_id = trained["state"].run_id
    mr = _mr_on_an_odd_grid(trained["data"] / "case_001" / "mr.nii.gz", tmp_path / "in" / "patient7.nii.gz")
    request = {"dataframe_records": [
        {"mr": str(mr), "output": str(tmp_path / "pred"), "mc_samples": 3},
        {"mr": str(tmp_path / "missing.nii.gz"), "output": str(tmp_path / "pred"), "mc_samples": 3},
    ]}  # fmt: skip
    (tmp_path / "input.json").write_text(json.dumps(request))
    done = subprocess.run(
        [sys.executable, "-m", "mlflow", "models", "predict", "-m", f"runs:/{run_id}/model", "-i",
         str(tmp_path / "input.json"), "-o", str(tmp_path / "predictions.json"), "-t", "json", "--env-manager",
         "local"],
        cwd=tmp_path, env=_env(trained["uri"], tmp_path / "tmp"), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    found, missing = json.loads((tmp_path / "predictions.json").read_text())["predictions"]
    folder = tmp_path / "pred" / "patient7"
    assert found["case"] == "patient7" and found["error"] is None and found["folder"] == str(folder)
    assert found["sct"] == str(folder / "sct.nii.gz") and found["seg"] == str(folder / "seg.nii.gz")
    assert found["sigma"] == str(folder / "sct_sigma_total.nii.gz") and found["mc_samples"] == 3
    assert found["seconds"] > 0
    sct, source = nib.load(found["sct"]), nib.load(str(mr))
    assert sct.shape == source.shape == (32, 32, 24)
    np.testing.assert_allclose(sct.affine, source.affine, atol=1e-5)  # the MR's own grid, not 12 mm RAS
    assert sct.get_data_dtype() == np.float32 and np.isfinite(sct.get_fdata()).all()
    assert json.loads((folder / "provenance.json").read_text())["inference"]["mc_samples"] == 3
    assert missing["case"] == "missing.nii.gz" and missing["sct"] is None
    assert missing["error"].startswith(f"{tmp_path / 'missing.nii.gz'}: MR not found;")


def test_pyfunc_from_the_registry_predicts_records(trained, tmp_path, monkeypatch):
    from radmtl.inference.pyfunc_model import OUTPUT_COLUMNS

    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained["uri"])
    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@best")
    assert model.metadata.get_input_schema().input_names() == ["mr", "output", "mc_samples"]
    mr = trained["data"] / "case_002" / "mr.nii.gz"
    frame = model.predict([{"mr": str(mr), "output": str(tmp_path / "out")}])  # mc_samples: the model's
    assert list(frame.columns) == list(OUTPUT_COLUMNS) and len(frame) == 1
    row = frame.iloc[0]
    assert row["case"] == "case_002" and row["error"] is None and row["mc_samples"] == 2  # infer.mc_samples
    assert nib.load(row["sct"]).shape == nib.load(str(mr)).shape


def test_radmtl_infer_from_a_run_and_from_the_registry_leaves_nothing_behind(trained, tmp_path):
    run_id = trained["state"].run_id
    mr = trained["data"] / "case_003" / "mr.nii.gz"
    temp = tmp_path / "tmp"
    for model in (f"runs:/{run_id}/model", f"models:/{MODEL_NAME}@best", f"models:/{MODEL_NAME}/1"):
        out = tmp_path / model.replace(":/", "_").replace("/", "_").replace("@", "_")
        done = subprocess.run([sys.executable, "-m", "radmtl", "-q", "infer", "--model", model, "--input", str(mr),
                               "--output", str(out), "--no-progress", "--mc-samples", "1"],
                              cwd=tmp_path, env=_env(trained["uri"], temp), capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr
        # The briefly trained network's femoral heads may still be scattered, and the laterality guard
        # then warns (tests/inference/test_infer_laterality.py); nothing else may reach stderr.
        stderr = [line for line in done.stderr.splitlines() if "laterality check failed" not in line]
        assert stderr == [] and "Downloading artifacts" not in done.stdout
        provenance = json.loads((out / "case_003" / "provenance.json").read_text())["model"]
        assert provenance["source"] == model and provenance["mlflow_run_id"] == run_id
        checkpoint = Path(provenance["checkpoint"])  # read where the store keeps it: a lasting path
        assert checkpoint.is_file() and checkpoint.is_relative_to(trained["store"] / "mlartifacts")
        assert list(temp.iterdir()) == []  # no model download left in the temporary folder
    # From a folder without mlflow.db and without --tracking-uri: one line, and no empty store left there.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = _env(trained["uri"], temp)
    env.pop("MLFLOW_TRACKING_URI")
    done = subprocess.run([sys.executable, "-m", "radmtl", "infer", "--model", f"models:/{MODEL_NAME}@best",
                           "--input", str(mr), "--output", str(elsewhere / "o"), "--no-progress"],
                          cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"radmtl infer: error: cannot fetch model models:/{MODEL_NAME}@best: no MLflow store at "
        f"sqlite:///{elsewhere / 'mlflow.db'} ({elsewhere / 'mlflow.db'} does not exist); run from the folder that "
        "holds the training's mlflow.db, or pass --tracking-uri (or set MLFLOW_TRACKING_URI)"]
    assert list(elsewhere.iterdir()) == []


def test_the_run_records_name_data_system_metrics_and_registered_version(trained):
    from datetime import datetime

    from radmtl.tracking.datasets import case_frames
    from radmtl.training.data_setup import prepare_training_data
    from radmtl.config import load_config

    client = mlflow.MlflowClient(trained["uri"])
    state = trained["state"]
    run = client.get_run(state.run_id)
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    name, weighting, data, day, minute = run.info.run_name.split("-")
    assert (name, weighting, data) == ("run", "hetero_homo", "pelvis")
    assert abs((datetime.strptime(f"{day}-{minute}", "%Y%m%d-%H%M") - datetime.now()).total_seconds()) < 3600
    # the model is the run's output (MLflow's UI lists the run under "Training runs")
    (output,) = run.outputs.model_outputs
    # system metrics, sampled while training and stopped with the run
    assert run.data.metrics["system/cpu_utilization_percentage"] >= 0
    assert "system/system_memory_usage_megabytes" in run.data.metrics
    assert not [t for t in threading.enumerate() if t.name == "SystemMetricsMonitor"]
    # the cases as dataset inputs, digested by content
    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert sorted(inputs) == ["training", "validation"] and inputs["training"].name == "pelvis-training"
    table = (trained["out"] / "cases.csv").read_text()
    prepared = prepare_training_data(load_config(None, TINY), [trained["data"]])
    paths = {c.case_id: c.paths for c in prepared.train_cases + prepared.val_cases}
    frames, digest = case_frames(table, paths)
    assert run.data.tags["radmtl.data_digest"] == digest
    assert json.loads(inputs["training"].profile)["num_rows"] == len(frames["training"]) == 3
    # the registered version: the run's model, the best epoch's validation metrics, the data digest, @best
    registered = state.registered
    assert (registered.name, registered.version, registered.best_version) == (MODEL_NAME, "1", "1")
    version = client.get_model_version_by_alias(MODEL_NAME, "best")
    assert version.run_id == state.run_id and version.source == f"models:/{output.model_id}"
    best = [json.loads(line) for line in (trained["out"] / "metrics.jsonl").read_text().splitlines()
            if json.loads(line).get("epoch") == state.best_epoch][-1]
    assert version.tags["val_mae_hu"] == f"{best['val_mae_hu']:.6g}"
    assert version.tags["val_dice_mean"] == f"{best['val_dice_mean']:.6g}"
    assert version.tags["radmtl.best_metric"] == "val_mae_hu"
    assert version.tags["radmtl.best_epoch"] == str(state.best_epoch)
    assert version.tags["radmtl.data_digest"] == digest


def test_no_pickled_pytorch_model_anywhere():
    sources = [p for p in (ROOT / "radmtl").rglob("*.py") if "mlflow.pytorch" in p.read_text()]
    assert sources == []
