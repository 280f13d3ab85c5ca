"""The per-case review's rule: the fitted flag level, the case and organ limits, and the verdict."""

from __future__ import annotations

import math

import numpy as np
import pytest

from radmtl.evaluation.review import (CASE_MARGIN, ReviewThresholds, ValidationCase, fit_review_thresholds,
                                      fit_sigma_threshold, review_case)

LABELS = {"background": 0, "bladder": 1, "rectum": 2}


def _ranked(n_wrong_top: int, n_half: int, n_rest: int) -> tuple[np.ndarray, np.ndarray]:
    """σ = n, n−1, …, 1 (distinct); the top ``n_wrong_top`` voxels wrong by 150 HU, the next ``n_half``
    wrong every other voxel, the rest right (error 10 HU). Shuffled, so order cannot matter."""
    n = n_wrong_top + n_half + n_rest
    sigma = np.arange(n, 0, -1, dtype=np.float64)
    error = np.full(n, 10.0)
    error[:n_wrong_top] = 150.0
    error[n_wrong_top:n_wrong_top + n_half:2] = 150.0
    order = np.random.default_rng(0).permutation(n)
    return error[order], sigma[order]


def test_flag_level_is_the_lowest_reaching_the_precision():
    error, sigma = _ranked(100, 100, 800)  # precision 1 down to rank 100, 0.75 at 200, 150/k beyond
    fit = fit_sigma_threshold(error, sigma, error_hu=100.0, precision=0.5)
    # 150 wrong voxels among the 300 most uncertain: precision exactly 0.5 at rank 300, below it after
    assert fit.sigma_total_hu == 1000 - 299
    assert fit.precision == pytest.approx(0.5)
    assert fit.recall == pytest.approx(1.0)
    assert fit.flagged_fraction == pytest.approx(0.3)
    assert fit.target_reached
    strict = fit_sigma_threshold(error, sigma, error_hu=100.0, precision=0.75)
    assert strict.sigma_total_hu == 1000 - 199 and strict.precision == pytest.approx(0.75)
    # a bound above every error: nothing is ever "wrong", the target cannot be reached
    none = fit_sigma_threshold(error, sigma, error_hu=200.0, precision=0.5)
    assert not none.target_reached and none.precision == 0.0 and math.isnan(none.recall)


def test_ties_are_flagged_together_and_tiny_sets_do_not_count():
    # 40 voxels at σ 500, all wrong; 60 at σ 100, a third wrong: a level of 500 flags 40 voxels, fewer
    # than the 50 a precision needs, so the level is 100 (all 100 voxels, precision 0.6).
    sigma = np.r_[np.full(40, 500.0), np.full(60, 100.0)]
    error = np.r_[np.full(40, 300.0), np.tile([300.0, 0.0, 0.0], 20)]
    fit = fit_sigma_threshold(error, sigma, error_hu=100.0, precision=0.5)
    assert fit.sigma_total_hu == 100.0 and fit.precision == pytest.approx(0.6) and fit.flagged_fraction == 1.0
    assert fit_sigma_threshold(error, sigma, 100.0, 0.5, min_voxels=10).sigma_total_hu == 100.0
    with pytest.raises(ValueError, match="at least 50"):
        fit_sigma_threshold(error[:10], sigma[:10], 100.0, 0.5)


def test_case_and_organ_limits_are_the_margin_times_the_largest_validation_case():
    # case A: 20 of 100 voxels at σ 300 (wrong), case B: 40 of 100 (wrong); the rest σ 10, right.
    def case(name: str, n_high: int) -> ValidationCase:
        sigma = np.r_[np.full(n_high, 300.0), np.full(100 - n_high, 10.0)]
        error = np.r_[np.full(n_high, 250.0), np.zeros(100 - n_high)]
        labels = np.r_[np.ones(80), np.zeros(20)].astype(np.uint8)  # bladder: the first 80 voxels
        return ValidationCase(name, error, sigma, labels)

    t = fit_review_thresholds([case("a", 20), case("b", 40)], LABELS, error_hu=100.0, precision=0.9)
    assert t.sigma_total_hu == 300.0 and t.precision == 1.0 and t.recall == 1.0
    assert t.validation_flagged_fraction == [0.2, 0.4]
    assert t.case_flagged_fraction == pytest.approx(CASE_MARGIN * 0.4)
    # bladder: 20 and 40 of its 80 voxels flagged; rectum never present in the validation labels
    assert t.organ_flagged_fraction == {"bladder": pytest.approx(CASE_MARGIN * 0.5)}
    # the rare level: the pooled 0.999 quantile (60 of 200 voxels at 300 HU), reached by 20 % and 40 %
    assert t.rare_sigma_total_hu == 300.0 and t.validation_rare_fraction == [0.2, 0.4]
    assert t.case_rare_fraction == pytest.approx(CASE_MARGIN * 0.4)
    assert ReviewThresholds.from_dict(t.as_dict()) == t


def _thresholds(**changes) -> ReviewThresholds:
    base = dict(sigma_total_hu=200.0, error_hu=100.0, precision_target=0.5, precision=0.6, recall=0.4,
                target_reached=True, case_flagged_fraction=0.10, organ_flagged_fraction={"bladder": 0.2})
    return ReviewThresholds(**(base | changes))


def _case(flag_x: slice):
    """A 20×10×10 body; bladder x 0–9, rectum x 10–19; σ 300 HU on ``flag_x`` else 50 HU."""
    body = np.ones((20, 10, 10), bool)
    labels = np.zeros(body.shape, np.uint8)
    labels[:10], labels[10:] = 1, 2
    sigma = np.full(body.shape, 50.0, np.float32)
    sigma[flag_x] = 300.0
    return body, labels, sigma


def test_a_case_like_the_validation_cases_is_ok():
    body, labels, sigma = _case(slice(19, 20))  # 5 % of the body, all in the rectum (10 % of it)
    review, flagged = review_case(case_id="c1", sigma_total_hu=sigma, labels=labels, body=body, voxel_ml=0.012,
                                  label_names=LABELS, thresholds=_thresholds(), sigma_scale=1.3,
                                  entropy=np.full(body.shape, 0.25, np.float32))
    assert review["verdict"] == "ok" and review["reasons"] == [] and review["codes"] == []
    assert flagged.sum() == 100 and review["flagged_fraction_body"] == pytest.approx(0.05)
    bladder, rectum = review["organs"]["bladder"], review["organs"]["rectum"]
    assert bladder["volume_ml"] == pytest.approx(1000 * 0.012) and bladder["flagged_fraction"] == 0.0
    assert rectum["flagged_fraction"] == pytest.approx(0.1) and rectum["flags"] == []
    assert rectum["sigma_total_mean_hu"] == pytest.approx(0.9 * 50 + 0.1 * 300)
    assert rectum["sigma_total_p95_hu"] == pytest.approx(300.0)
    assert bladder["entropy_mean"] == pytest.approx(0.25) and bladder["mutual_info_mean"] is None
    assert review["sigma_scale"] == 1.3 and review["thresholds"]["sigma_total_hu"] == 200.0


def test_too_much_flagged_a_missing_organ_or_swapped_sides_ask_for_review():
    body, labels, sigma = _case(slice(0, 6))  # 30 % of the body, 60 % of the bladder
    review, _ = review_case(case_id="c2", sigma_total_hu=sigma, labels=labels, body=body, voxel_ml=1.0,
                            label_names=LABELS, thresholds=_thresholds())
    assert review["verdict"] == "review"
    assert review["codes"] == ["body_flagged"]  # the organ's flag informs, the body's decides
    assert review["organs"]["bladder"]["flags"] == ["sct_uncertain"]
    assert "30.00 % of the body flagged" in review["reasons"][0]

    labels[labels == 2] = 0  # the rectum is gone
    body, _, sigma = _case(slice(0, 0))
    review, _ = review_case(case_id="c3", sigma_total_hu=sigma, labels=labels, body=body, voxel_ml=1.0,
                            label_names=LABELS, thresholds=_thresholds(), laterality={"status": "swapped"})
    assert review["codes"] == ["laterality", "organ_missing"]
    assert review["organs"]["rectum"] == {"volume_ml": 0.0, "flags": ["missing"]}


def test_without_thresholds_or_sigma_nothing_vouches_for_the_case():
    body, labels, sigma = _case(slice(0, 0))
    review, flagged = review_case(case_id="c4", sigma_total_hu=sigma, labels=labels, body=body, voxel_ml=1.0,
                                  label_names=LABELS, thresholds=None)
    assert review["verdict"] == "review" and review["codes"] == ["no_thresholds"] and not flagged.any()
    review, _ = review_case(case_id="c5", sigma_total_hu=None, labels=labels, body=body, voxel_ml=1.0,
                            label_names=LABELS, thresholds=_thresholds())
    assert review["codes"] == ["no_sigma"]


def test_rare_sigma_in_one_place_asks_for_review_where_the_flagged_fraction_does_not():
    # 5 % of the body at σ 300 HU: within the flagged-fraction limit (10 %), but the validation voxels
    # reached 280 HU in at most 1 % of a case's body (limit 2 %): a local anomaly.
    body, labels, sigma = _case(slice(19, 20))
    thresholds = _thresholds(rare_sigma_total_hu=280.0, case_rare_fraction=0.02)
    review, _ = review_case(case_id="c6", sigma_total_hu=sigma, labels=labels, body=body, voxel_ml=1.0,
                            label_names=LABELS, thresholds=thresholds)
    assert review["codes"] == ["rare_sigma"] and review["rare_sigma_fraction_body"] == pytest.approx(0.05)
    assert "5.00 % of the body has σ_total ≥ 280 HU" in review["reasons"][0]
    relaxed, _ = review_case(case_id="c6", sigma_total_hu=sigma, labels=labels, body=body, voxel_ml=1.0,
                             label_names=LABELS, thresholds=_thresholds(rare_sigma_total_hu=280.0,
                                                                         case_rare_fraction=0.06))
    assert relaxed["verdict"] == "ok"
