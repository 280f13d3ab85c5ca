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

