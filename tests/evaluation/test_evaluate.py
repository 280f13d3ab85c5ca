"""radmtl evaluate on phantom references with predictions of known error."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from radmtl.cli import main
from radmtl.data.io import read_volume, write_like, write_volume
from radmtl.data.phantom import generate_dataset

NOISE_SD_HU = 40.0


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ref")
    generate_dataset(root, cases=2, seed=5, shape=(40, 36, 24))
    return root


def _predict(reference: Path, pred: Path, noise_sd: float, seed: int = 0) -> None:
    """Write a 'prediction' = reference CT + N(0, noise_sd²), σ maps = noise_sd, seg = reference labels."""
    rng = np.random.default_rng(seed)
    for case in ("case_001", "case_002"):
        ct = read_volume(reference / case / "ct.nii.gz")
        labels = read_volume(reference / case / "labels.nii.gz")
        sct = ct.array + rng.normal(0.0, noise_sd, ct.shape).astype(np.float32) if noise_sd else ct.array
        write_like(sct, ct, pred / case / "sct.nii.gz", np.float32)
        write_like(labels.array, ct, pred / case / "seg.nii.gz", np.uint8)
        if noise_sd:
            sigma = np.full(ct.shape, noise_sd, np.float32)
            write_like(sigma, ct, pred / case / "sct_sigma_aleatoric.nii.gz", np.float32)
            write_like(sigma, ct, pred / case / "sct_sigma_total.nii.gz", np.float32)


def test_known_gaussian_error_gives_calibrated_metrics(tmp_path, reference, capsys):
    pred = tmp_path / "pred"
    _predict(reference, pred, NOISE_SD_HU)
    assert main(["evaluate", "--pred", str(pred), "--ref", str(reference)]) == 0
    out = capsys.readouterr().out
    assert "mae_hu" in out and "coverage_95" in out and "±" in out
    summary = json.loads((pred / "metrics.json").read_text())["summary"]
    mean = {k: v["mean"] for k, v in summary.items()}
    assert mean["mae_hu"] == pytest.approx(NOISE_SD_HU * math.sqrt(2 / math.pi), rel=0.03)
    assert mean["coverage_95"] == pytest.approx(0.95, abs=0.01)
    assert mean["zscore_sd"] == pytest.approx(1.0, abs=0.03)
    assert abs(mean["zscore_mean"]) < 0.03
    # σ is constant, the true phantom noise SD is not: per case the ratio is the median over body
    # voxels with true SD > 0 of 40 / true SD, computed here from the reference files.
    ratios = []
    for case in ("case_001", "case_002"):
        true_sd = read_volume(reference / case / "ct_noise_sd.nii.gz").array.astype(np.float64)
        body = (read_volume(reference / case / "mask.nii.gz").array != 0) & (true_sd > 0)
        ratios.append(float(np.median(NOISE_SD_HU / true_sd[body])))
    assert not any(r == pytest.approx(1.0, abs=0.05) for r in ratios)  # a ratio of 1 would prove nothing
    assert mean["ratio_sigma_true_noise"] == pytest.approx(np.mean(ratios), rel=1e-5)
    assert mean["dice_bladder"] == 1.0 and mean["hd95_bladder_mm"] == 0.0
    assert (pred / "calibration.png").stat().st_size > 1000
    with open(pred / "metrics.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [r["case"] for r in rows] == ["case_001", "case_002", "mean", "sd"]
    assert [float(r["ratio_sigma_true_noise"]) for r in rows[:2]] == pytest.approx(ratios, rel=1e-5)
    per_case = [float(r["mae_hu"]) for r in rows[:2]]
    assert float(rows[2]["mae_hu"]) == pytest.approx(np.mean(per_case))
    assert float(rows[3]["mae_hu"]) == pytest.approx(np.std(per_case, ddof=1))


def test_prediction_equal_to_reference_is_perfect(tmp_path, reference):
    pred = tmp_path / "pred"
    _predict(reference, pred, 0.0)
    out_csv, out_json = tmp_path / "r" / "m.csv", tmp_path / "r" / "m.json"
    assert main(["evaluate", "--pred", str(pred), "--ref", str(reference), "--out", str(out_csv),
                 "--json", str(out_json)]) == 0
    doc = json.loads(out_json.read_text())
    assert doc["n_cases"] == 2 and doc["failed"] == {} and doc["missing"] == {}
    mean = {k: v["mean"] for k, v in doc["summary"].items()}
    assert mean["mae_hu"] == 0.0 and mean["mae_bone_hu"] == 0.0
    assert mean["psnr"] == "inf"
    assert mean["ssim"] == pytest.approx(1.0)
    assert all(mean[k] == 1.0 for k in mean if k.startswith("dice_"))
    assert "coverage_95" not in mean  # no σ maps, no uncertainty metrics
    assert out_csv.is_file()
    assert not (pred / "calibration.png").exists() and not (pred / "risk_coverage.png").exists()
    assert doc["undefined"] == {}  # no σ map, nothing scored as a detector


def test_grid_mismatch_is_reported_per_case(tmp_path, reference, capsys):
    pred = tmp_path / "pred"
    _predict(reference, pred, 0.0)
    ct = read_volume(reference / "case_002" / "ct.nii.gz")
    shifted = ct.affine.copy()
    shifted[:3, 3] += 5.0
    write_volume(ct.array, shifted, pred / "case_002" / "sct.nii.gz", np.float32)
    assert main(["evaluate", "--pred", str(pred), "--ref", str(reference)]) == 1
    captured = capsys.readouterr()
    assert "case_002" in captured.err and "not on the reference grid" in captured.err and "origin" in captured.err
    assert "Traceback" not in captured.err
    doc = json.loads((pred / "metrics.json").read_text())
    assert doc["n_cases"] == 1 and "case_002" in doc["failed"]


@pytest.mark.parametrize("what", ["no folder", "no sct"])
def test_a_reference_case_without_a_complete_prediction_is_listed_and_fails_the_run(tmp_path, reference, capsys,
                                                                                     what):
    import shutil

    pred = tmp_path / "pred"
    _predict(reference, pred, NOISE_SD_HU)
    if what == "no folder":
        shutil.rmtree(pred / "case_002")
    else:
        (pred / "case_002" / "sct.nii.gz").unlink()
    assert main(["evaluate", "--pred", str(pred), "--ref", str(reference)]) == 1
    captured = capsys.readouterr()
    reason = f"no prediction folder {pred / 'case_002'}" if what == "no folder" else \
        f"{pred / 'case_002'} has no sct file, although other cases have one"
    assert captured.err.strip().splitlines() == [
        f"radmtl evaluate: error: case case_002 not evaluated: {reason}; run radmtl infer on it, or pass "
        "--allow-missing"]
    assert "(n = 1 case(s); 1 reference case(s) without a complete prediction are not in it)" in captured.out
    doc = json.loads((pred / "metrics.json").read_text())
    assert doc["n_cases"] == 1 and doc["missing"] == {"case_002": reason} and list(doc["cases"]) == ["case_001"]
    # --allow-missing: the same report, a warning, exit 0
    assert main(["evaluate", "--pred", str(pred), "--ref", str(reference), "--allow-missing"]) == 0
    assert "radmtl evaluate: warning: case case_002 not evaluated" in capsys.readouterr().err


def test_a_nan_prediction_is_one_line_for_its_case_not_a_traceback(tmp_path, reference, capsys):
    pred = tmp_path / "pred"
    _predict(reference, pred, NOISE_SD_HU)
    sigma = read_volume(pred / "case_001" / "sct_sigma_total.nii.gz")
    broken = sigma.array.copy()
    broken[3, 4, 5] = np.nan
    write_like(broken, sigma, pred / "case_001" / "sct_sigma_total.nii.gz", np.float32)
    assert main(["evaluate", "--pred", str(pred), "--ref", str(reference)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines() == [
        "radmtl evaluate: error: case case_001: prediction sct_sigma_total.nii.gz holds 1 NaN or Inf voxel(s); the "
        "model that wrote it is broken (check its checkpoint) or the file was damaged: rerun radmtl infer"]
    assert list(json.loads((pred / "metrics.json").read_text())["cases"]) == ["case_002"]


def test_no_matching_cases_is_one_line(tmp_path, reference, capsys):
    (tmp_path / "pred" / "other").mkdir(parents=True)
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(reference)]) == 1
    err = capsys.readouterr().err
    assert "no case folder matches" in err and "Traceback" not in err


def test_run_id_logs_metrics_and_reports_to_mlflow(tmp_path, reference, mlflow_run):
    pred = tmp_path / "pred"
    _predict(reference, pred, NOISE_SD_HU)
    assert main(["evaluate", "--pred", str(pred), "--ref", str(reference), *mlflow_run.args]) == 0
    client, run_id = mlflow_run.client, mlflow_run.run_id
    run = client.get_run(run_id)
    assert run.data.metrics["eval_mae_hu"] == pytest.approx(NOISE_SD_HU * math.sqrt(2 / math.pi), rel=0.03)
    assert "eval_coverage_95" in run.data.metrics
    names = {a.path for a in client.list_artifacts(run_id, "evaluation")}
    assert names == {"evaluation/metrics.csv", "evaluation/metrics.json", "evaluation/calibration.png",
                     "evaluation/risk_coverage.png"}


# --- SynthRAD2025-like trees: nested ids, .mha predictions, per-group summaries ------------------------


GROUP_NOISE_HU = {"AB": 20.0, "HN": 60.0}  # one noise level per group, so the group means differ


@pytest.fixture(scope="module")
def grouped_reference(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("task1")
    for i, group in enumerate(GROUP_NOISE_HU):
        generate_dataset(root / group, cases=2, seed=10 + i, shape=(32, 24, 20))
    (root / "overview").mkdir()
    return root


def _predict_grouped(reference: Path, pred: Path) -> None:
    """Nested prediction folders PRED/<group>/<case>/ with .mha maps, as radmtl infer writes for .mha input."""
    rng = np.random.default_rng(7)
    for group, noise_sd in GROUP_NOISE_HU.items():
        for case in ("case_001", "case_002"):
            ct = read_volume(reference / group / case / "ct.nii.gz")
            sct = ct.array + rng.normal(0.0, noise_sd, ct.shape).astype(np.float32)
            write_like(sct, ct, pred / group / case / "sct.mha", np.float32)
            write_like(np.full(ct.shape, noise_sd), ct, pred / group / case / "sct_sigma_total.mha", np.float32)
            write_like(read_volume(reference / group / case / "labels.nii.gz").array, ct,
                       pred / group / case / "seg.nii", np.uint8)


def test_two_groups_give_per_group_summaries(tmp_path, grouped_reference, capsys, mlflow_run):
    pred = tmp_path / "pred"
    _predict_grouped(grouped_reference, pred)
    assert main(["evaluate", "--pred", str(pred), "--ref", str(grouped_reference), *mlflow_run.args]) == 0
    doc = json.loads((pred / "metrics.json").read_text())
    assert doc["n_cases"] == 4 and doc["failed"] == {}
    assert list(doc["cases"]) == ["AB/case_001", "AB/case_002", "HN/case_001", "HN/case_002"]
    assert set(doc["groups"]) == {"AB", "HN"}
    metrics = mlflow_run.client.get_run(mlflow_run.run_id).data.metrics
    for group in GROUP_NOISE_HU:
        rows = [doc["cases"][f"{group}/case_00{i}"] for i in (1, 2)]
        summary = doc["groups"][group]["summary"]
        assert doc["groups"][group]["n_cases"] == 2
        assert doc["groups"][group]["cases"] == [f"{group}/case_001", f"{group}/case_002"]
        for name in ("mae_hu", "coverage_95", "dice_mean"):
            assert summary[name]["mean"] == pytest.approx(np.mean([r[name] for r in rows]))
        assert summary["mae_hu"]["sd"] == pytest.approx(np.std([r["mae_hu"] for r in rows], ddof=1))
        assert metrics[f"eval_{group}_mae_hu"] == pytest.approx(summary["mae_hu"]["mean"])
    # The group means are what they should be, and differ: MAE of N(0, σ²) noise is σ·√(2/π).
    for group, noise_sd in GROUP_NOISE_HU.items():
        assert doc["groups"][group]["summary"]["mae_hu"]["mean"] == pytest.approx(
            noise_sd * math.sqrt(2 / math.pi), rel=0.05)
    assert metrics["eval_mae_hu"] == pytest.approx(doc["summary"]["mae_hu"]["mean"])
    out = capsys.readouterr().out
    assert "mean ± sd per group" in out and "AB (n = 2)" in out and "HN (n = 2)" in out


def test_one_group_adds_nothing(tmp_path, reference, capsys):
    pred = tmp_path / "pred"
    _predict(reference, pred, 0.0)
    assert main(["evaluate", "--pred", str(pred), "--ref", str(reference)]) == 0
    assert "groups" not in json.loads((pred / "metrics.json").read_text())
    assert "per group" not in capsys.readouterr().out


def test_mlflow_group_names_are_sanitised():
    from radmtl.evaluation.evaluate import mlflow_group_name

    assert mlflow_group_name("AB") == "AB"
    assert mlflow_group_name("Task 1/pelvis (MR)") == "Task_1_pelvis_MR"
    assert mlflow_group_name("(top level)") == "top_level"
