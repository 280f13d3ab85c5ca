"""Uncertainty as a detector of large errors: AUROC, average precision and risk–coverage.

A σ map is useful to a physicist when it points at the voxels where the sCT is badly wrong. Here each
uncertainty map is scored as a detector of an *event* per body voxel — ``|sCT − CT| > 100 HU`` (or
200 HU) for the σ maps, a misclassified voxel for the segmentation entropy and mutual information:

- **AUROC**: the probability that a random event voxel has a higher uncertainty than a random
  non-event voxel, ties counting one half (the Mann–Whitney U divided by ``n_event · n_other``).
  0.5 is an uninformative map, 1 a perfect detector, 0 a perfectly inverted one.
- **Average precision** (AP) as scikit-learn defines it: ``Σ_k (R_k − R_{k−1}) · P_k`` over the
  distinct uncertainty values taken as thresholds from the highest down, so voxels of one value enter
  together. An uninformative map scores the event's prevalence (``fraction_*``), not 0.5.
- **Risk–coverage**: keep the ``coverage`` fraction of body voxels with the lowest σ and report the
  MAE of those; a useful σ makes the MAE fall as the most uncertain voxels are discarded.

An event that no body voxel has (or that every body voxel has) leaves nothing to separate: AUROC and
AP are ``nan`` for that case, and :func:`undefined_cases` lists such cases so that a summary over the
remaining cases does not pass for one over all of them.

Computed by hand rather than with ``monai.metrics.compute_roc_auc``: MONAI's loops over the voxels in
Python (seconds per million voxels, and a case has 2–5 million) and has no average precision;
scikit-learn is not a dependency. One stable ``argsort`` per map (:func:`rank_ties`) serves the
AUROC, AP and risk–coverage of that map.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from radmtl.evaluation.metrics import as_mask, check_same_shape

logger = logging.getLogger(__name__)

ERROR_THRESHOLDS_HU = (100, 200)
# Coverages of the curve drawn and integrated (1.00, 0.95, …, 0.50): discarding more than half of the
# body is no longer a review aid, it is a refusal.
RISK_COVERAGE_FRACTIONS = tuple(round(1.0 - 0.05 * i, 2) for i in range(11))
KEEP_FRACTIONS = (0.9, 0.8, 0.5)  # the coverages reported per case as mae_hu_keep90, …
# σ maps as radmtl infer names them, the detector's name in a metric key, in the order preferred for the
# risk–coverage numbers (σ_total when written; σ_aleatoric alone when infer ran with one sample).
SIGMA_MAPS = {"sct_sigma_total": "sigma_total", "sct_sigma_aleatoric": "sigma_aleatoric",
              "sct_sigma_epistemic": "sigma_epistemic"}
SEG_UNCERTAINTY_MAPS = ("seg_entropy", "seg_mutual_info")
ORACLE = "oracle"  # the risk–coverage curve of discarding by the true |error|: the best any σ could do
DETECTION_PREFIXES = ("auroc_", "ap_")


@dataclass(frozen=True)
class TieRanking:
    """One score sorted ascending: ``order`` (the argsort) and ``bounds``, where each run of equal
    scores starts, with the number of voxels appended (so run ``g`` is ``order[bounds[g]:bounds[g+1]]``)."""

    order: np.ndarray
    bounds: np.ndarray


def rank_ties(score: np.ndarray) -> TieRanking:
    """Sort ``score`` (1D, finite) once and find its runs of tied values."""
    score = np.asarray(score).ravel()
    if score.size and not np.all(np.isfinite(score)):
        raise ValueError(f"score must be finite, got {int(np.count_nonzero(~np.isfinite(score)))} NaN/Inf value(s)")
    order = np.argsort(score, kind="stable")
    ranked = score[order]
    starts = np.flatnonzero(ranked[1:] != ranked[:-1]) + 1
    return TieRanking(order, np.concatenate(([0], starts, [score.size])).astype(np.int64))


def _events_per_run(score: np.ndarray, is_event: np.ndarray, ranking: TieRanking | None
                    ) -> tuple[np.ndarray, np.ndarray] | None:
    """Events and non-events in each run of tied scores (ascending), or None when either is absent."""
    is_event = np.asarray(is_event, bool).ravel()
    if np.size(score) != is_event.size:
        raise ValueError(f"score and is_event must have one size, got {np.size(score)} and {is_event.size}")
    ranking = ranking if ranking is not None else rank_ties(score)
    n_event = int(np.count_nonzero(is_event))
    if n_event == 0 or n_event == is_event.size:
        return None
    events = np.add.reduceat(is_event[ranking.order].astype(np.int64), ranking.bounds[:-1])
    return events, np.diff(ranking.bounds) - events


def auroc(score: np.ndarray, is_event: np.ndarray, ranking: TieRanking | None = None) -> float:
    """Area under the ROC curve of ``score`` as a detector of ``is_event`` (mid-ranks for ties).

    Args:
        score: uncertainty per voxel (N,), higher meaning "more likely wrong".
        is_event: (N,) bool, the voxels to detect.
        ranking: :func:`rank_ties` of ``score``, when the caller already has it.

    Returns:
        AUROC in [0, 1]; ``nan`` without an event voxel or without a non-event voxel.
    """
    counts = _events_per_run(score, is_event, ranking)
    if counts is None:
        return math.nan
    events, others = counts
    others_below = np.cumsum(others) - others
    # Twice the U statistic, in integers: a tie between an event and a non-event counts one half.
    twice_u = int(np.sum(events * (2 * others_below + others)))
    return twice_u / (2.0 * int(events.sum()) * int(others.sum()))


def average_precision(score: np.ndarray, is_event: np.ndarray, ranking: TieRanking | None = None) -> float:
    """Average precision of ``score`` as a detector of ``is_event``, step-wise as scikit-learn's.

    Arguments as in :func:`auroc`. Tied voxels pass a threshold together, so the result does not
    depend on their order.

    Returns:
        AP in (0, 1]; ``nan`` without an event voxel or without a non-event voxel.
    """
    counts = _events_per_run(score, is_event, ranking)
    if counts is None:
        return math.nan
    events, others = counts[0][::-1], counts[1][::-1]  # thresholds from the highest score down
    true_positives = np.cumsum(events)
    precision = true_positives / (true_positives + np.cumsum(others))
    return float(np.sum(events * precision) / true_positives[-1])


def risk_coverage(abs_error_hu: np.ndarray, score: np.ndarray, fractions: Iterable[float] = RISK_COVERAGE_FRACTIONS,
                  ranking: TieRanking | None = None) -> np.ndarray:
    """MAE (HU) of the voxels kept when only the ``fraction`` with the lowest ``score`` is kept.

    ``round(fraction · N)`` voxels (at least one) are kept. Where the cut falls inside a run of tied
    scores, that run contributes its mean error for the part kept — the expectation over the order of
    the tied voxels — so a constant σ gives the MAE of all voxels at every coverage.

    Args:
        abs_error_hu: |sCT − CT| per voxel (N,).
        score: uncertainty per voxel (N,).
        fractions: coverages, each in (0, 1].
        ranking: :func:`rank_ties` of ``score``, when the caller already has it.

    Returns:
        MAE per fraction (float64); all ``nan`` when N = 0.
    """
    fractions = np.asarray(tuple(fractions), np.float64)
    if fractions.ndim != 1 or np.any((fractions <= 0) | (fractions > 1)):
        raise ValueError(f"fractions must be a 1D sequence in (0, 1], got {fractions.tolist()}")
    abs_error_hu = np.asarray(abs_error_hu).ravel()
    if abs_error_hu.size != np.size(score):
        raise ValueError(f"abs_error_hu and score must have one size, got {abs_error_hu.size} and {np.size(score)}")
    n = abs_error_hu.size
    if n == 0:
        return np.full(fractions.shape, math.nan)
    ranking = ranking if ranking is not None else rank_ties(score)
    summed = np.concatenate(([0.0], np.cumsum(abs_error_hu[ranking.order], dtype=np.float64)))
    kept = np.maximum(1, np.rint(fractions * n).astype(np.int64))
    run = np.searchsorted(ranking.bounds, kept, side="right") - 1
    start = ranking.bounds[run]
    end = ranking.bounds[np.minimum(run + 1, ranking.bounds.size - 1)]
    partial = np.where(end > start, (kept - start) / np.maximum(end - start, 1), 0.0)
    return (summed[start] + partial * (summed[end] - summed[start])) / kept


def risk_coverage_area(fractions: Iterable[float], mae_hu: np.ndarray) -> float:
    """Trapezoid area under the risk–coverage curve divided by its coverage span: a mean MAE in HU."""
    fractions = np.asarray(tuple(fractions), np.float64)
    order = np.argsort(fractions)
    fractions, mae_hu = fractions[order], np.asarray(mae_hu, np.float64)[order]
    span = fractions[-1] - fractions[0]
    if span == 0:
        return float(mae_hu[0])
    return float(np.sum((mae_hu[1:] + mae_hu[:-1]) / 2 * np.diff(fractions)) / span)


def _keep_key(fraction: float) -> str:
    return f"mae_hu_keep{round(fraction * 100)}"


def sct_error_detection(ct_hu: np.ndarray, sct_hu: np.ndarray, mask: np.ndarray,
                        sigmas_hu: Mapping[str, np.ndarray]) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Each σ map as a detector of sCT errors over 100 and 200 HU in the body, and risk–coverage.

    Args:
        ct_hu, sct_hu: (X, Y, Z) reference CT and sCT in HU.
        mask: (X, Y, Z) body mask, non-zero inside.
        sigmas_hu: ``{file stem: σ map (X, Y, Z) in HU}`` for the stems of :data:`SIGMA_MAPS` present.

    Returns:
        ``(row, curves)``. ``row``: ``fraction_err100``/``fraction_err200`` (share of body voxels with
        the event), ``auroc_<map>_err100``, ``ap_<map>_err100`` (and ``err200``) per map, and from the
        first map of :data:`SIGMA_MAPS` present ``mae_hu_keep90``/``80``/``50`` and ``mae_hu_aurc`` (the
        area under its risk–coverage curve over :data:`RISK_COVERAGE_FRACTIONS` per unit coverage).
        ``curves``: the MAE at :data:`RISK_COVERAGE_FRACTIONS` per map name and for :data:`ORACLE`.
    """
    unknown = set(sigmas_hu) - set(SIGMA_MAPS)
    if unknown:
        raise ValueError(f"sigmas_hu keys must be among {list(SIGMA_MAPS)}, got {sorted(unknown)}")
    check_same_shape(ct_hu=ct_hu, sct_hu=sct_hu, mask=mask, **sigmas_hu)
    inside = as_mask(mask)
    abs_error = np.abs(np.asarray(ct_hu, np.float32)[inside] - np.asarray(sct_hu, np.float32)[inside])
    events = {threshold: abs_error > threshold for threshold in ERROR_THRESHOLDS_HU}
    row = {f"fraction_err{t}": float(e.mean()) if e.size else math.nan for t, e in events.items()}
    curves = {}
    for stem, name in SIGMA_MAPS.items():
        if stem not in sigmas_hu:
            continue
        sigma = np.asarray(sigmas_hu[stem], np.float32)[inside]
        ranking = rank_ties(sigma)
        for threshold, is_event in events.items():
            row[f"auroc_{name}_err{threshold}"] = auroc(sigma, is_event, ranking)
            row[f"ap_{name}_err{threshold}"] = average_precision(sigma, is_event, ranking)
        curves[name] = risk_coverage(abs_error, sigma, RISK_COVERAGE_FRACTIONS, ranking)
    if curves:
        first = next(iter(curves.values()))
        row.update({_keep_key(f): float(first[RISK_COVERAGE_FRACTIONS.index(f)]) for f in KEEP_FRACTIONS})
        row["mae_hu_aurc"] = risk_coverage_area(RISK_COVERAGE_FRACTIONS, first)
        curves[ORACLE] = risk_coverage(abs_error, abs_error, RISK_COVERAGE_FRACTIONS)
    return row, curves


def seg_error_detection(seg: np.ndarray, labels: np.ndarray, mask: np.ndarray,
                        uncertainties: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Each segmentation uncertainty map as a detector of misclassified body voxels.

    Args:
        seg, labels: (X, Y, Z) predicted and reference integer labels.
        mask: (X, Y, Z) body mask, non-zero inside.
        uncertainties: ``{name: map (X, Y, Z)}`` for the names of :data:`SEG_UNCERTAINTY_MAPS` present
            (entropy and mutual information in nats).

    Returns:
        ``fraction_misclassified`` and ``auroc_<name>_misclassified``, ``ap_<name>_misclassified``.
    """
    unknown = set(uncertainties) - set(SEG_UNCERTAINTY_MAPS)
    if unknown:
        raise ValueError(f"uncertainties keys must be among {list(SEG_UNCERTAINTY_MAPS)}, got {sorted(unknown)}")
    check_same_shape(seg=seg, labels=labels, mask=mask, **uncertainties)
    inside = as_mask(mask)
    wrong = np.asarray(seg)[inside] != np.asarray(labels)[inside]
    row = {"fraction_misclassified": float(wrong.mean()) if wrong.size else math.nan}
    for name in SEG_UNCERTAINTY_MAPS:
        if name in uncertainties:
            score = np.asarray(uncertainties[name], np.float32)[inside]
            ranking = rank_ties(score)
            row[f"auroc_{name}_misclassified"] = auroc(score, wrong, ranking)
            row[f"ap_{name}_misclassified"] = average_precision(score, wrong, ranking)
    return row


def undefined_cases(rows: Mapping[str, Mapping[str, float]]) -> dict[str, list[str]]:
    """``{detection metric: cases where it is nan}`` for every AUROC/AP key that any row holds.

    A case whose body has no voxel with the event (or only such voxels) cannot score a detector; the
    summary's mean leaves it out, and this says how many were left out. Keys with no such case map to
    an empty list, so a reader sees "none" rather than nothing.
    """
    keys: dict[str, None] = {}
    for row in rows.values():
        keys.update(dict.fromkeys(k for k in row if k.startswith(DETECTION_PREFIXES)))
    return {key: [case for case, row in rows.items() if key in row and math.isnan(row[key])] for key in keys}


def undefined_lines(undefined: Mapping[str, list[str]]) -> list[str]:
    """One line per set of cases that :func:`undefined_cases` found, naming the metrics it leaves out."""
    # One line per set of cases rather than per metric: a case without a 200 HU error voids six metrics.
    grouped: dict[tuple[str, ...], list[str]] = {}
    for name, cases in undefined.items():
        if cases:
            grouped.setdefault(tuple(cases), []).append(name)
    return [f"undefined in {len(cases)} case(s) without an event voxel or without a non-event voxel "
            f"({', '.join(cases)}): {', '.join(names)}" for cases, names in grouped.items()]


def mean_risk_coverage(curves: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, tuple[np.ndarray, int]]:
    """Mean over cases of the per-case risk–coverage curves, per map name: ``{name: (mean MAE, n cases)}``.

    Each case weighs the same, as in the per-case summary; pooling the voxels of all cases instead would
    let the largest body decide, and would hold every case's voxels in memory at once.
    """
    names: dict[str, None] = {}
    for per_case in curves.values():
        names.update(dict.fromkeys(per_case))
    means = {}
    for name in names:
        stacked = np.stack([per_case[name] for per_case in curves.values() if name in per_case])
        means[name] = (stacked.mean(axis=0), stacked.shape[0])
    return means
