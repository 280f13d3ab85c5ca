"""The MLflow model on requests it cannot run as given (issue 26, "nothing silent"): an ``mc_samples`` that is
not a whole number in range, or missing ``mr``/``output``, is one error row naming the pyfunc's column,
never a traceback from MLflow's schema check and never a silently rounded T."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pytest

from radmtl.data.phantom import generate_case
from radmtl.inference.pyfunc_model import OUTPUT_COLUMNS, servable_model

TINY_MODEL = ["model.channels=[4,8]", "model.strides=[2]", "data.patch_size=[16,16,16]",
              "data.spacing=[6.0,6.0,6.0]", "infer.mc_samples=1", "model.dropout=0.2"]
SHAPE, SPACING = (30, 27, 19), (5.0, 4.5, 6.5)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """The pyfunc model of an untrained tiny checkpoint, saved and loaded back through MLflow (which
    checks every request against the signature before radmtl sees it)."""
    import torch

    from radmtl.config import load_config
    from radmtl.data.phantom import PHANTOM_LABELS
    from radmtl.nn.checkpoint import make_payload, save_checkpoint
    from radmtl.nn.model import build_model

    root = tmp_path_factory.mktemp("pyfunc")
    cfg = load_config(None, TINY_MODEL)
    torch.manual_seed(0)
    checkpoint = save_checkpoint(root / "checkpoint_best.pt", make_payload(
        cfg=cfg, label_names=dict(PHANTOM_LABELS), model=build_model(cfg.model), with_rng=False))
    with servable_model(checkpoint) as spec:
        mlflow.pyfunc.save_model(path=str(root / "model"), **spec)
    return mlflow.pyfunc.load_model(str(root / "model"))


@pytest.fixture(scope="module")
def mr(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mr") / "patient7.nii.gz"
    affine = np.diag([*SPACING, 1.0])
    nib.save(nib.Nifti1Image(generate_case(3, SHAPE, SPACING).mr.astype(np.float32), affine), str(path))
    return path


@pytest.mark.parametrize(("mc_samples", "words"), [
    (2.7, "'mc_samples' (the MC-dropout samples T) must be a whole number of samples, got 2.7"),
    (0, "'mc_samples' (the MC-dropout samples T) must be from 1 to 1000, got 0"),
    ("four", "'mc_samples' (the MC-dropout samples T) must be a whole number of samples, got 'four'"),
    (100000, "'mc_samples' (the MC-dropout samples T) must be from 1 to 1000, got 100000"),
], ids=["2.7", "0", "four", "100000"])
def test_an_mc_samples_the_model_cannot_run_is_an_error_row_naming_the_column(model, mr, tmp_path, mc_samples,
                                                                              words):
    frame = model.predict([{"mr": str(mr), "output": str(tmp_path / "out"), "mc_samples": mc_samples}])
    assert list(frame.columns) == list(OUTPUT_COLUMNS) and len(frame) == 1
    row = frame.iloc[0]
    assert row["case"] == "patient7.nii.gz" and row["sct"] is None
    assert row["error"].startswith(f"record 1: {words}")
    assert row["error"].endswith("give a whole number, or leave 'mc_samples' out for the model's own")
    assert "--mc-samples" not in row["error"] and "\n" not in row["error"]
    assert not (tmp_path / "out").exists()


def test_records_without_mr_or_output_are_error_rows_and_the_others_run(model, mr, tmp_path):
    frame = model.predict([
        {"output": str(tmp_path / "out")},
        {"mr": str(mr)},
        {"mr": str(mr), "output": str(tmp_path / "out"), "mc_samples": 2.0},  # a whole number read as a float
        {"mr": str(mr), "output": str(tmp_path / "out2")},  # mc_samples left out here only: the model's own
    ])
    rows = frame.to_dict(orient="records")
    assert rows[0]["case"] == "record 1" and rows[0]["error"].startswith(
        "record 1: 'mr' must be the path of an MR file as a string, got none; give records like {")
    assert rows[1]["case"] == "patient7.nii.gz" and rows[1]["error"].startswith(
        "record 2: 'output' must be the path of an output folder as a string, got none;")
    assert rows[2]["error"] is None and rows[2]["mc_samples"] == 2
    assert json.loads((tmp_path / "out" / "patient7" / "provenance.json").read_text())["inference"]["mc_samples"] == 2
    assert rows[3]["error"] is None and rows[3]["mc_samples"] == 1  # infer.mc_samples of the checkpoint
