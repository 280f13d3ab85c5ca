"""The published SynthRAD trees end to end: check, train, infer and evaluate from the task root.

The trees are phantom cases laid out as SynthRAD2023 Task 1 (NIfTI, int16 CT, ``overview/``, no
labels), SynthRAD2025 Task 1 (``.mha``, two centre folders) and a mixed tree (some cases labelled,
one with labels but no CT); see ``synthrad_trees`` in conftest.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from radmtl.cli import main
from radmtl.data.io import read_volume
from radmtl.nn.checkpoint import BEST, load_checkpoint

pytestmark = pytest.mark.slow

TINY = ["data.spacing=[12.0, 12.0, 12.0]", "data.patch_size=[16, 16, 16]", "data.patches_per_volume=2",
        "model.channels=[4, 8]", "model.strides=[2]", "train.epochs=1", "train.steps_per_epoch=3",
        "train.val_every=1", "train.log_every=1", "data.val_fraction=0.25", "infer.overlap=0.25"]


def _train(data: list[Path], out: Path, db: str | None = None) -> None:
    sets = [a for s in TINY for a in ("--set", s)]
    tracking = ["--tracking-uri", db] if db else ["--tracking-uri", "http://127.0.0.1:9"]
    assert main(["-q", "train", "--data", *map(str, data), "--out", str(out), "--no-progress",
                 *tracking, *sets]) == 0


@pytest.fixture(scope="module")
def trained_2025(synthrad_trees, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("run2025")
    db = f"sqlite:///{out / 'mlflow.db'}"
    _train([synthrad_trees["2025"]], out / "run", db)
    return out / "run", db


@pytest.mark.parametrize(("tree", "summary"), [
    ("2023", "4 case(s) in pelvis (4); trains sCT 4 of 4, segmentation 0 of 4 (no labels: radmtl train "
             "trains the sCT alone); no problems"),
    ("2025", "4 case(s) in AB (2), TH (2); trains sCT 4 of 4, segmentation 0 of 4 (no labels: radmtl "
             "train trains the sCT alone); no problems"),
    ("mixed", "4 case(s); trains sCT 3 of 4, segmentation 3 of 4; no problems"),
])
def test_check_from_the_task_root(synthrad_trees, capsys, tree, summary):
    assert main(["check", str(synthrad_trees[tree])]) == 0
    assert capsys.readouterr().out.strip() == f"{synthrad_trees[tree]}: {summary}"


def test_check_refuses_clashing_folders_together(synthrad_trees, capsys):
    root = synthrad_trees["2025"]
    assert main(["check", str(root), str(root / "AB")]) == 0  # ids AB/1ABA001 and 1ABA001 differ
    assert main(["check", str(root), str(root)]) == 1
    assert 'case id "AB/1ABA001" is also a case of' in capsys.readouterr().out


def test_synthrad2025_trains_the_sct_alone_and_records_centres(trained_2025):
    import mlflow

    run_dir, db = trained_2025
    payload = load_checkpoint(run_dir / BEST)
    assert payload["label_names"] == {}  # no invented label_1 ... label_5
    assert payload["config"]["loss"]["tasks"] == ["sct"] and payload["config"]["model"]["tasks"] == ["sct"]
    cases = (run_dir / "cases.csv").read_text().splitlines()
    assert cases[0] == "case,group,split,tasks,mr" and len(cases) == 5
    assert sorted(line.split(",")[1] for line in cases[1:]) == ["AB", "AB", "TH", "TH"]
    client = mlflow.MlflowClient(tracking_uri=db)
    run = client.get_run(payload["mlflow_run_id"])
    assert run.data.params["data.groups"] == "AB=2, TH=2"
    assert run.data.params["data.cases_sct"] == "4" and run.data.params["loss.tasks"] == "[sct]"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"cases.csv", "config.yaml"} <= artifacts


def test_synthrad2025_infer_writes_mha_per_centre_and_evaluate_splits_them(trained_2025, synthrad_trees,
                                                                         tmp_path, capsys):
    run_dir, _ = trained_2025
    root = synthrad_trees["2025"]
    pred = tmp_path / "pred"
    assert main(["-q", "infer", "--no-review", "--model", str(run_dir / BEST), "--input", str(root), "--output", str(pred),
                 "--mc-samples", "2", "--no-progress"]) == 0
    for case in ("AB/1ABA001", "AB/1ABA002", "TH/1THA003", "TH/1THA004"):
        written = sorted(p.name for p in (pred / case).iterdir())
        assert "sct.mha" in written and "sct_sigma_total.mha" in written and "seg.mha" not in written
        sct, mr = read_volume(pred / case / "sct.mha"), read_volume(root / case / "mr.mha")
        np.testing.assert_allclose(sct.affine, mr.affine, atol=1e-6)
        assert sct.shape == mr.shape
    assert main(["evaluate", "--pred", str(pred), "--ref", str(root)]) == 0
    report = json.loads((pred / "metrics.json").read_text())
    assert report["n_cases"] == 4 and set(report["groups"]) == {"AB", "TH"}
    rows = report["cases"]
    mean_ab = np.mean([rows[c]["mae_hu"] for c in ("AB/1ABA001", "AB/1ABA002")])
    assert report["groups"]["AB"]["summary"]["mae_hu"]["mean"] == pytest.approx(mean_ab)


def test_mha_and_nifti_inputs_of_one_case_give_the_same_outputs(trained_2025, synthrad_trees, tmp_path):
    run_dir, _ = trained_2025
    outputs = {}
    for name, path in (("nifti", synthrad_trees["2023"] / "pelvis/1PA001/mr.nii.gz"),
                       ("mha", synthrad_trees["2025"] / "AB/1ABA001/mr.mha")):
        assert main(["-q", "infer", "--no-review", "--model", str(run_dir / BEST), "--input", str(path), "--output",
                     str(tmp_path / name), "--mc-samples", "2", "--output-format", "nii.gz", "--no-progress"]) == 0
        (case,) = [p for p in (tmp_path / name).iterdir() if p.is_dir()]
        outputs[name] = {stem: read_volume(case / f"{stem}.nii.gz")
                         for stem in ("sct", "sct_sigma_aleatoric", "sct_sigma_total")}
    for stem, nifti in outputs["nifti"].items():
        mha = outputs["mha"][stem]
        np.testing.assert_allclose(mha.affine, nifti.affine, atol=1e-5)
        np.testing.assert_allclose(mha.array, nifti.array, atol=1e-2, rtol=1e-4)
    assert float(np.abs(outputs["nifti"]["sct"].array).max()) > 100  # real HU, not an empty map


def test_synthrad2023_from_the_task_root(synthrad_trees, tmp_path):
    root = synthrad_trees["2023"]
    _train([root], tmp_path / "run")
    assert load_checkpoint(tmp_path / "run" / BEST)["label_names"] == {}
    pred = tmp_path / "pred"
    assert main(["-q", "infer", "--no-review", "--model", str(tmp_path / "run" / BEST), "--input", str(root), "--output",
                 str(pred), "--mc-samples", "1", "--no-progress"]) == 0
    assert sorted(p.name for p in (pred / "pelvis").iterdir()) == ["1PA001", "1PA002", "1PA003", "1PA004"]
    assert (pred / "pelvis/1PA001/sct.nii.gz").is_file()
    assert main(["evaluate", "--pred", str(pred), "--ref", str(root)]) == 0
    report = json.loads((pred / "metrics.json").read_text())
    assert report["n_cases"] == 4 and "groups" not in report  # one anatomy folder: no split
    assert all(0 < row["mae_hu"] < 2000 for row in report["cases"].values())


def test_mixed_tree_trains_both_heads(synthrad_trees, tmp_path):
    _train([synthrad_trees["mixed"]], tmp_path / "run")
    payload = load_checkpoint(tmp_path / "run" / BEST)
    assert payload["config"]["loss"]["tasks"] == ["sct", "seg"]
    assert set(payload["label_names"]) == {"background", "label_1", "label_2", "label_3", "label_4", "label_5"}
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "step_loss_total" in r]
    assert len(steps) == 3
    # both tasks trained: each step with a sample of the task logs its loss
    assert any("step_loss_sct" in r for r in steps) and any("step_loss_seg" in r for r in steps)
    epoch = next(r for r in rows if "train_loss_total" in r)
    assert np.isfinite(epoch["train_loss_sct"]) and np.isfinite(epoch["train_loss_seg"])
    cases = (tmp_path / "run" / "cases.csv").read_text()
    assert ",sct," in cases and ",seg," in cases and ",sct+seg," in cases  # c3, c4, c1/c2
