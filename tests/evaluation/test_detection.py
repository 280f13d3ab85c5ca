"""Uncertainty as an error detector: AUROC, AP, risk–coverage, and what radmtl evaluate reports of them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from radmtl.evaluation import detection as D


# --- AUROC and average precision on hand-computed cases --------------------------------------------


def test_auroc_and_ap_of_a_textbook_example():
    # scikit-learn's documented example: roc_auc_score 0.75, average_precision_score 0.8333…
    score = np.array([0.1, 0.4, 0.35, 0.8])
    is_event = np.array([False, False, True, True])
    assert D.auroc(score, is_event) == pytest.approx(0.75)
    # thresholds 0.8: P 1, R ½; 0.4: P ½, R ½; 0.35: P ⅔, R 1 → ½·1 + 0 + ½·⅔
    assert D.average_precision(score, is_event) == pytest.approx(1 / 2 + 1 / 3)


def test_ties_count_one_half_and_enter_together():
    # events at 1, 1; non-events at 0, 1: each event beats 0 and ties 1 → (1 + ½)·2 / 4
    score = np.array([0.0, 1.0, 1.0, 1.0])
    is_event = np.array([False, False, True, True])
    assert D.auroc(score, is_event) == pytest.approx(0.75)
    # the three tied voxels pass the threshold 1 together: P ⅔ at R 1
    assert D.average_precision(score, is_event) == pytest.approx(2 / 3)
    # one event and one non-event at each of two values: ½ + 0 + 1 + ½ over 4
    assert D.auroc(np.array([1.0, 1.0, 2.0, 2.0]), np.array([False, True, False, True])) == pytest.approx(0.5)


def test_a_constant_map_is_uninformative():
    is_event = np.array([True, False, False, False, True])
    assert D.auroc(np.full(5, 7.0), is_event) == 0.5
    assert D.average_precision(np.full(5, 7.0), is_event) == pytest.approx(0.4)  # the prevalence


def test_perfect_and_inverted_detectors():
    score = np.array([1.0, 2.0, 3.0, 4.0])
    assert D.auroc(score, np.array([False, False, True, True])) == 1.0
    assert D.average_precision(score, np.array([False, False, True, True])) == 1.0
    assert D.auroc(score, np.array([True, True, False, False])) == 0.0
    # thresholds 4, 3: no event; 2: P ⅓ at R ½; 1: P ½ at R 1
    assert D.average_precision(score, np.array([True, True, False, False])) == pytest.approx(0.5 / 3 + 0.5 / 2)


@pytest.mark.parametrize("is_event", [np.zeros(4, bool), np.ones(4, bool)])
def test_nothing_to_separate_is_nan(is_event):
    score = np.array([1.0, 2.0, 3.0, 4.0])
    assert math.isnan(D.auroc(score, is_event))
    assert math.isnan(D.average_precision(score, is_event))


def test_empty_and_malformed_input():
    assert math.isnan(D.auroc(np.zeros(0), np.zeros(0, bool)))
    with pytest.raises(ValueError, match="one size"):
        D.auroc(np.zeros(3), np.zeros(4, bool))
    with pytest.raises(ValueError, match="finite"):
        D.average_precision(np.array([1.0, np.nan]), np.array([True, False]))


def _brute_force_ap(score: np.ndarray, is_event: np.ndarray) -> float:
    """AP by its definition: Σ (R_k − R_{k−1})·P_k over thresholds t = each distinct score, highest first."""
    ap, previous_recall = 0.0, 0.0
    for threshold in sorted(set(score.tolist()), reverse=True):
        flagged = score >= threshold
        recall = np.sum(flagged & is_event) / np.sum(is_event)
        precision = np.sum(flagged & is_event) / np.sum(flagged)
        ap += (recall - previous_recall) * precision
        previous_recall = recall
    return float(ap)


def _brute_force_auroc(score: np.ndarray, is_event: np.ndarray) -> float:
    """The fraction of (event, non-event) pairs ordered right, ties one half, over every pair."""
    difference = score[is_event][:, None] - score[~is_event][None, :]
    return float(np.mean((difference > 0) + 0.5 * (difference == 0)))


@pytest.mark.parametrize("seed", range(5))
def test_random_scores_with_many_ties_match_the_definitions(seed):
    rng = np.random.default_rng(seed)
    score = rng.integers(0, 6, 300).astype(np.float32)  # six values: every run of the score is tied
    is_event = rng.random(300) < 0.2 + 0.1 * seed
    assert D.auroc(score, is_event) == pytest.approx(_brute_force_auroc(score, is_event), abs=1e-12)
    assert D.average_precision(score, is_event) == pytest.approx(_brute_force_ap(score, is_event), abs=1e-12)
    shuffled = rng.permutation(300)  # the order of tied voxels must not matter
    assert D.average_precision(score[shuffled], is_event[shuffled]) == pytest.approx(
        D.average_precision(score, is_event), abs=1e-12)


def test_auroc_agrees_with_monai():
    import torch
    from monai.metrics import compute_roc_auc

    rng = np.random.default_rng(3)
    score = np.round(rng.normal(size=500), 1)
    is_event = rng.random(500) < 0.3
    expected = compute_roc_auc(torch.tensor(score), torch.tensor(is_event.astype(np.int64)))
    assert D.auroc(score, is_event) == pytest.approx(expected, abs=1e-12)


def test_one_ranking_serves_every_measure():
    rng = np.random.default_rng(1)
    score, is_event = rng.random(50), rng.random(50) < 0.5
    ranking = D.rank_ties(score)
    assert D.auroc(score, is_event, ranking) == D.auroc(score, is_event)
    assert D.average_precision(score, is_event, ranking) == D.average_precision(score, is_event)


# --- risk–coverage -------------------------------------------------------------------------------


def test_risk_coverage_keeps_the_least_uncertain_voxels():
    abs_error = np.arange(10.0)  # 0 … 9 HU
    fractions = (1.0, 0.9, 0.5, 0.1)
    np.testing.assert_allclose(D.risk_coverage(abs_error, abs_error, fractions), [4.5, 4.0, 2.0, 0.0])
    # σ ranks the voxels backwards: the best voxels are discarded first
    np.testing.assert_allclose(D.risk_coverage(abs_error, -abs_error, fractions), [4.5, 5.0, 7.0, 9.0])
    # a constant σ cannot choose: every coverage keeps the mean error
    np.testing.assert_allclose(D.risk_coverage(abs_error, np.zeros(10), fractions), [4.5] * 4)


def test_risk_coverage_splits_a_tied_run_by_its_mean():
    # keep 3 of 4: the run σ = 0 (errors 0, 2) and half of the run σ = 1 (errors 10, 20, mean 15)
    mae = D.risk_coverage(np.array([0.0, 2.0, 10.0, 20.0]), np.array([0.0, 0.0, 1.0, 1.0]), (0.75, 0.5, 0.25))
    np.testing.assert_allclose(mae, [(2 + 15) / 3, 1.0, 1.0])


def test_risk_coverage_edge_cases():
    assert np.isnan(D.risk_coverage(np.zeros(0), np.zeros(0), (1.0, 0.5))).all()
    np.testing.assert_allclose(D.risk_coverage(np.array([3.0]), np.array([1.0]), (0.01,)), [3.0])  # keeps ≥ 1
    # round(0.6·4) = 2 and round(0.7·4) = 3 voxels kept
    np.testing.assert_allclose(D.risk_coverage(np.arange(4.0), np.arange(4.0), (0.6, 0.7)), [0.5, 1.0])
    with pytest.raises(ValueError, match="fractions"):
        D.risk_coverage(np.ones(3), np.ones(3), (0.0, 1.0))


def test_risk_coverage_area_is_a_mean_mae_over_the_coverages():
    assert D.risk_coverage_area((1.0, 0.5), np.array([10.0, 6.0])) == pytest.approx(8.0)
    assert D.risk_coverage_area((0.5, 0.75, 1.0), np.array([2.0, 2.0, 10.0])) == pytest.approx(4.0)
    assert D.risk_coverage_area((0.9,), np.array([5.0])) == 5.0


# --- per case ------------------------------------------------------------------------------------


def _volume_case():
    """A 4 × 5 × 6 body (last x-plane outside) with errors 0, 150 or 300 HU and σ that ranks them."""
    rng = np.random.default_rng(0)
    ct = rng.normal(0, 50, (5, 5, 6)).astype(np.float32)
    mask = np.zeros(ct.shape, bool)
    mask[:4] = True
    error = np.zeros(ct.shape, np.float32)
    error.flat[::7] = 300.0
    error.flat[3::7] = 150.0
    sigma_aleatoric = np.full(ct.shape, 40.0, np.float32)
    sigma_epistemic = error.copy()
    sigma_epistemic[~mask] = 0.0
    sigma_epistemic[4] = 1e4  # outside the body: must be ignored
    return ct, ct + error, mask, error, sigma_aleatoric, sigma_epistemic


def test_sct_error_detection_scores_each_map():
    ct, sct, mask, error, aleatoric, epistemic = _volume_case()
    total = np.sqrt(aleatoric**2 + epistemic**2)
    row, curves = D.sct_error_detection(ct, sct, mask, {"sct_sigma_aleatoric": aleatoric,
                                                        "sct_sigma_epistemic": epistemic,
                                                        "sct_sigma_total": total})
    body_error = error[mask]
    assert row["fraction_err100"] == pytest.approx(np.mean(body_error > 100))
    assert row["fraction_err200"] == pytest.approx(np.mean(body_error > 200))
    for name in ("sigma_total", "sigma_epistemic"):
        assert row[f"auroc_{name}_err100"] == 1.0 and row[f"ap_{name}_err100"] == 1.0
        assert row[f"auroc_{name}_err200"] == 1.0 and row[f"ap_{name}_err200"] == 1.0
    assert row["auroc_sigma_aleatoric_err100"] == 0.5
    assert row["ap_sigma_aleatoric_err200"] == pytest.approx(row["fraction_err200"])
    # risk–coverage from σ_total, the first map present: here it discards the largest errors first
    kept = np.sort(body_error)
    for fraction in (0.9, 0.8, 0.5):
        assert row[f"mae_hu_keep{round(fraction * 100)}"] == pytest.approx(
            kept[:round(fraction * kept.size)].mean(), rel=1e-6)
    assert row["mae_hu_aurc"] == pytest.approx(D.risk_coverage_area(D.RISK_COVERAGE_FRACTIONS, curves["sigma_total"]))
    assert set(curves) == {"sigma_total", "sigma_aleatoric", "sigma_epistemic", D.ORACLE}
    np.testing.assert_allclose(curves[D.ORACLE], curves["sigma_total"], rtol=1e-6)
    np.testing.assert_allclose(curves["sigma_aleatoric"], body_error.mean(), rtol=1e-6)


def test_sct_error_detection_refuses_an_unknown_map():
    ct, sct, mask, *_ = _volume_case()
    with pytest.raises(ValueError, match="sct_sigma_grid"):
        D.sct_error_detection(ct, sct, mask, {"sct_sigma_grid": ct})


def test_seg_error_detection_in_the_body():
    labels = np.zeros((4, 4, 4), np.int64)
    labels[1:3, 1:3, 1:3] = 1
    mask = np.ones(labels.shape, bool)
    mask[0] = False
    seg = labels.copy()
    seg[2, 2, 2] = 0  # one misclassified body voxel …
    seg[0, 0, 0] = 2  # … and one outside the body, which does not count
    entropy = np.where(seg != labels, 0.7, 0.1).astype(np.float32)
    mutual_info = np.where(seg != labels, 0.0, 0.2).astype(np.float32)
    row = D.seg_error_detection(seg, labels, mask, {"seg_entropy": entropy, "seg_mutual_info": mutual_info})
    assert row == {"fraction_misclassified": pytest.approx(1 / 48),
                   "auroc_seg_entropy_misclassified": 1.0, "ap_seg_entropy_misclassified": 1.0,
                   "auroc_seg_mutual_info_misclassified": 0.0,
                   "ap_seg_mutual_info_misclassified": pytest.approx(1 / 48)}
    assert math.isnan(D.seg_error_detection(labels, labels, mask, {"seg_entropy": entropy})
                      ["auroc_seg_entropy_misclassified"])


def test_undefined_cases_are_listed_per_metric():
    rows = {"a": {"auroc_sigma_total_err200": 0.9, "mae_hu": math.nan},
            "b": {"auroc_sigma_total_err200": math.nan, "ap_sigma_total_err200": math.nan},
            "c": {"mae_hu": 1.0}}
    assert D.undefined_cases(rows) == {"auroc_sigma_total_err200": ["b"], "ap_sigma_total_err200": ["b"]}


def test_undefined_lines_name_each_set_of_cases_once():
    undefined = {"auroc_sigma_total_err200": ["b"], "ap_sigma_total_err200": ["b"],
                 "auroc_seg_entropy_misclassified": ["a", "b"], "auroc_sigma_total_err100": []}
    assert D.undefined_lines(undefined) == [
        "undefined in 1 case(s) without an event voxel or without a non-event voxel (b): auroc_sigma_total_err200, "
        "ap_sigma_total_err200",
        "undefined in 2 case(s) without an event voxel or without a non-event voxel (a, b): "
        "auroc_seg_entropy_misclassified"]
    assert D.undefined_lines({"auroc_sigma_total_err100": []}) == []

def test_mean_risk_coverage_weighs_cases_alike():
    curves = {"a": {"sigma_total": np.array([4.0, 2.0]), "oracle": np.array([4.0, 1.0])},
              "b": {"sigma_total": np.array([8.0, 6.0])}}
    means = D.mean_risk_coverage(curves)
    np.testing.assert_allclose(means["sigma_total"][0], [6.0, 4.0])
    assert means["sigma_total"][1] == 2 and means["oracle"][1] == 1


def test_risk_coverage_plot_writes_a_png(tmp_path):
    from radmtl.evaluation.plots import risk_coverage_plot

    coverage = np.array(D.RISK_COVERAGE_FRACTIONS)
    path = risk_coverage_plot(coverage, {"sigma_total": (coverage * 50, 2), D.ORACLE: (coverage * 30, 2)},
                              tmp_path / "risk_coverage.png")
    assert path.stat().st_size > 1000 and sorted(p.name for p in tmp_path.iterdir()) == ["risk_coverage.png"]
    with pytest.raises(ValueError, match="shape"):
        risk_coverage_plot(coverage, {"sigma_total": (np.ones(3), 1)}, tmp_path / "bad.png")



def test_evaluate_reads_every_map_infer_writes():
    from radmtl.evaluation.pred_files import PRED_FILES
    from radmtl.inference.case_maps import MAP_OUTPUTS

    written = {stem for stem, *_ in MAP_OUTPUTS.values()}
    assert set(D.SIGMA_MAPS) | set(D.SEG_UNCERTAINTY_MAPS) <= written
    assert set(PRED_FILES) - {"seg"} <= written


# --- radmtl evaluate --------------------------------------------------------------------------------


ERROR_PERIOD = 8  # every 8th voxel 300 HU wrong, the next one 150 HU wrong


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    from radmtl.data.phantom import generate_dataset

    root = tmp_path_factory.mktemp("ref")
    generate_dataset(root, cases=2, seed=5, shape=(32, 28, 20))
    return root


def _predict_errors_where_sigma_is_large(reference: Path, pred: Path) -> dict[str, np.ndarray]:
    """sCT = CT + 300/150 HU at fixed voxels (case_002: 150 HU only, so nothing is over 200 HU); σ_epistemic =
    the error, σ_aleatoric = 40 HU, σ_total their root sum of squares; seg wrong at other fixed voxels, where
    the entropy is high and the mutual information is not. Returns each case's body |error|."""
    from radmtl.data.io import read_volume, write_like

    body_errors = {}
    for case in ("case_001", "case_002"):
        ct = read_volume(reference / case / "ct.nii.gz")
        labels = read_volume(reference / case / "labels.nii.gz").array.astype(np.int64)
        index = np.arange(ct.array.size).reshape(ct.shape) % ERROR_PERIOD
        error = np.where(index == 1, 150.0, 0.0).astype(np.float32)
        if case == "case_001":
            error[index == 0] = 300.0
        write_like(ct.array + error, ct, pred / case / "sct.nii.gz", np.float32)
        write_like(np.full(ct.shape, 40.0), ct, pred / case / "sct_sigma_aleatoric.nii.gz", np.float32)
        write_like(error, ct, pred / case / "sct_sigma_epistemic.nii.gz", np.float32)
        write_like(np.sqrt(40.0**2 + error**2), ct, pred / case / "sct_sigma_total.nii.gz", np.float32)
        wrong = index == 5
        write_like(np.where(wrong, (labels + 1) % 6, labels), ct, pred / case / "seg.nii.gz", np.uint8)
        write_like(np.where(wrong, 0.9, 0.05), ct, pred / case / "seg_entropy.nii.gz", np.float32)
        write_like(np.full(ct.shape, 0.01), ct, pred / case / "seg_mutual_info.nii.gz", np.float32)
        body = read_volume(reference / case / "mask.nii.gz").array != 0
        body_errors[case] = error[body]
    return body_errors


def test_evaluate_reports_sigma_as_a_detector_of_the_errors_it_marks(tmp_path, reference, capsys, mlflow_run):
    from radmtl.cli import main

    pred = tmp_path / "pred"
    body_errors = _predict_errors_where_sigma_is_large(reference, pred)
    assert main(["evaluate", "--pred", str(pred), "--ref", str(reference), *mlflow_run.args]) == 0
    doc = json.loads((pred / "metrics.json").read_text())
    first, second = doc["cases"]["case_001"], doc["cases"]["case_002"]
    for name in ("sigma_total", "sigma_epistemic"):
        for key in (f"auroc_{name}_err100", f"ap_{name}_err100", f"auroc_{name}_err200", f"ap_{name}_err200"):
            assert first[key] == 1.0, key
        assert second[f"auroc_{name}_err100"] == 1.0 and second[f"ap_{name}_err100"] == 1.0
    for case, row in doc["cases"].items():
        errors = body_errors[case]
        assert row["fraction_err100"] == pytest.approx(np.mean(errors > 100))
        assert row["auroc_sigma_aleatoric_err100"] == 0.5  # a constant σ cannot tell
        assert row["ap_sigma_aleatoric_err100"] == pytest.approx(row["fraction_err100"])
        kept = np.sort(errors)  # σ_total discards the largest errors first
        curve = [kept[:round(f * kept.size)].mean() for f in D.RISK_COVERAGE_FRACTIONS]
        for fraction in (90, 80, 50):
            expected = curve[D.RISK_COVERAGE_FRACTIONS.index(fraction / 100)]
            assert row[f"mae_hu_keep{fraction}"] == pytest.approx(expected, rel=1e-5, abs=1e-4)
        assert row["mae_hu_aurc"] == pytest.approx(-np.trapezoid(curve, D.RISK_COVERAGE_FRACTIONS) / 0.5, rel=1e-5)
        assert row["auroc_seg_entropy_misclassified"] == 1.0 and row["ap_seg_entropy_misclassified"] == 1.0
        assert row["auroc_seg_mutual_info_misclassified"] == 0.5
    assert first["mae_hu_keep50"] == 0.0 < first["mae_hu_keep90"] < first["mae_hu"]
    # case_002 has no error over 200 HU: nothing to detect, null, counted and not averaged in
    err200 = [f"{m}_{name}_err200" for name in D.SIGMA_MAPS.values() for m in ("auroc", "ap")]
    assert all(second[key] is None for key in err200) and second["fraction_err200"] == 0.0
    assert doc["undefined"] == {key: ["case_002"] if key in err200 else [] for key in doc["undefined"]}
    assert set(doc["undefined"]) == set(err200) | {k for k in first if k.startswith(("auroc_", "ap_"))}
    assert doc["summary"]["auroc_sigma_total_err200"] == {"mean": 1.0, "sd": None}
    assert (pred / "risk_coverage.png").stat().st_size > 1000
    out = capsys.readouterr().out
    assert "auroc_sigma_total_err100" in out.splitlines()[0] and "auroc_seg_entropy_misclassified" in out
    assert ("undefined in 1 case(s) without an event voxel or without a non-event voxel (case_002): "
            + ", ".join(err200)) in out.splitlines()
    metrics = mlflow_run.client.get_run(mlflow_run.run_id).data.metrics
    assert metrics["eval_auroc_sigma_total_err100"] == 1.0 and metrics["eval_ap_sigma_total_err100"] == 1.0
    assert metrics["eval_mae_hu_keep90"] == pytest.approx(doc["summary"]["mae_hu_keep90"]["mean"])
    assert metrics["eval_n_undefined_auroc_sigma_total_err200"] == 1.0
    assert metrics["eval_n_undefined_auroc_sigma_total_err100"] == 0.0
    artifacts = mlflow_run.client.list_artifacts(mlflow_run.run_id, "evaluation")
    assert "evaluation/risk_coverage.png" in {a.path for a in artifacts}

