"""The per-case review: where a physicist should not trust the sCT, and whether to look at the case first.

A voxel is *flagged* where σ_total reaches a level fitted on the validation cases after training: the
lowest σ_total level τ at which the validation body voxels with σ_total ≥ τ have |sCT − CT| above an
error bound (``infer.review_error_hu``, default 100 HU) at a chosen precision (``infer.review_precision``,
default 0.5: at least half of the flagged validation voxels were wrong by more than the bound). So a
flag means "on cases like the validation cases, a voxel this uncertain was wrong by > 100 HU at least
half the time" — a statement about errors, not about σ's own scale.

A *case* asks for review when it is unlike the validation cases: the fraction of its body flagged
exceeds :data:`CASE_MARGIN` times the largest fraction of any validation case (likewise per organ) —
what a degraded input (a noisy MR, another sequence) does everywhere; or the fraction of its body whose
σ_total is *rare*, above all but the top :data:`RARE_QUANTILE` of the validation voxels, exceeds the same
margin over the validation cases — what a local anomaly (an implant, a structure never seen) does in
one place, where the flagged fraction barely moves; or an organ of the model's label set is missing; or
the laterality guard found a left/right pair swapped. An organ flagged beyond the margin over its validation
maximum is flagged in ``organs`` (``sct_uncertain``) without deciding the verdict.
The margin is a factor rather than a statistical tail because a run has a handful of validation cases
(five in the demo); two validation cases' worth of variation is what "unlike" is allowed to cost.

Nothing here reads files or draws: arrays in, JSON-ready dicts out (``radmtl infer`` writes them as
``review/review.json``; the pictures are :mod:`radmtl.evaluation.review_figure`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

# A case (or organ) whose flagged fraction exceeds this many times the largest validation case's is
# unlike the validation data (see the module docstring).
CASE_MARGIN = 2.0
# σ_total above this quantile of the validation voxels is rare: validation cases hold 1 − RARE_QUANTILE
# of their body there, scattered along bone edges; an anomaly puts it in one place.
RARE_QUANTILE = 0.999
# The fitted σ level must flag at least this many validation voxels: a precision read off the few most
# uncertain voxels is noise.
MIN_FLAGGED_VOXELS = 50
METHOD = ("flag: sigma_total >= the lowest level at which validation body voxels at or above it have "
          "|sct - ct| > error_hu with at least the target precision; case/organ: flagged fraction > "
          f"{CASE_MARGIN:g} x the largest validation case's; case: fraction of the body with sigma_total >= the "
          f"validation voxels' {RARE_QUANTILE} quantile > {CASE_MARGIN:g} x the largest validation case's")
VERDICT_OK, VERDICT_REVIEW = "ok", "review"


@dataclass(frozen=True)
class SigmaThreshold:
    """The fitted voxel flag: ``sigma_total_hu`` and what it achieved on the validation voxels."""

    sigma_total_hu: float
    precision: float  # of the flagged validation voxels, the share with |error| > error_hu
    recall: float  # of the validation voxels with |error| > error_hu, the share flagged
    flagged_fraction: float  # of all validation body voxels
    target_reached: bool  # False: no level reached the target; the level of highest precision is used


def fit_sigma_threshold(abs_error_hu: np.ndarray, sigma_total_hu: np.ndarray, error_hu: float,
                        precision: float, min_voxels: int = MIN_FLAGGED_VOXELS) -> SigmaThreshold:
    """The lowest σ_total level whose voxels at or above it reach ``precision`` for |error| > ``error_hu``.

    Voxels of equal σ are flagged together (a level cannot split a tie). Where no level reaches the
    target with at least ``min_voxels`` voxels, the level of highest precision is returned with
    ``target_reached`` False.

    Raises:
        ValueError: fewer than ``min_voxels`` voxels, or arrays of different sizes.
    """
    error = np.asarray(abs_error_hu, np.float64).ravel()
    sigma = np.asarray(sigma_total_hu, np.float64).ravel()
    if error.shape != sigma.shape:
        raise ValueError(f"abs_error_hu has {error.size} voxels, sigma_total_hu {sigma.size}")
    if sigma.size < min_voxels:
        raise ValueError(f"{sigma.size} voxels: at least {min_voxels} are needed to fit a flag level")
    order = np.argsort(-sigma, kind="stable")
    sigma_desc = sigma[order]
    wrong = np.cumsum(np.abs(error[order]) > error_hu)
    count = np.arange(1, sigma.size + 1)
    # A level cuts after the last voxel of a run of equal σ.
    cut = np.append(sigma_desc[1:] != sigma_desc[:-1], True) & (count >= min_voxels)
    prec = wrong / count
    reached = cut & (prec >= precision)
    k = int(np.flatnonzero(reached)[-1]) if reached.any() else int(np.flatnonzero(cut)[np.argmax(prec[cut])])
    total_wrong = int(wrong[-1])
    return SigmaThreshold(sigma_total_hu=float(sigma_desc[k]), precision=float(prec[k]),
                          recall=float(wrong[k] / total_wrong) if total_wrong else math.nan,
                          flagged_fraction=float(count[k] / sigma.size), target_reached=bool(reached.any()))


@dataclass(frozen=True)
class ReviewThresholds:
    """Everything a case's verdict is decided by; stored in the checkpoint as ``review_thresholds``."""

    sigma_total_hu: float
    error_hu: float
    precision_target: float
    precision: float
    recall: float
    target_reached: bool
    case_flagged_fraction: float  # a case above this asks for review
    rare_sigma_total_hu: float = math.inf  # the validation voxels' RARE_QUANTILE of σ_total
    case_rare_fraction: float = 1.0  # a case with more of its body at or above the rare level asks for review
    organ_flagged_fraction: dict[str, float] = field(default_factory=dict)
    validation_cases: list[str] = field(default_factory=list)
    validation_flagged_fraction: list[float] = field(default_factory=list)
    validation_rare_fraction: list[float] = field(default_factory=list)
    method: str = METHOD

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> "ReviewThresholds":
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in record.items() if k in names})


@dataclass(frozen=True)
class ValidationCase:
    """One validation case's body voxels on its own grid (what infer writes there)."""

    case_id: str
    abs_error_hu: np.ndarray
    sigma_total_hu: np.ndarray
    labels: np.ndarray | None = None  # reference labels of the same voxels


def fit_review_thresholds(cases: Sequence[ValidationCase], label_names: Mapping[str, int], error_hu: float,
                          precision: float) -> ReviewThresholds:
    """The voxel flag level over all validation voxels, then each case's (and organ's) flagged fraction."""
    if not cases:
        raise ValueError("no validation cases to fit the review thresholds on")
    sigma = np.concatenate([c.sigma_total_hu for c in cases])
    fit = fit_sigma_threshold(np.concatenate([c.abs_error_hu for c in cases]), sigma, error_hu, precision)
    rare = float(np.quantile(sigma, RARE_QUANTILE))
    fractions = [float(np.mean(c.sigma_total_hu >= fit.sigma_total_hu)) for c in cases]
    rare_fractions = [float(np.mean(c.sigma_total_hu >= rare)) for c in cases]
    organ_fractions: dict[str, float] = {}
    for name, label in label_names.items():
        seen = [float(np.mean(c.sigma_total_hu[c.labels == label] >= fit.sigma_total_hu))
                for c in cases if c.labels is not None and np.any(c.labels == label)]
        if label != 0 and seen:
            organ_fractions[name] = CASE_MARGIN * max(seen)
    return ReviewThresholds(
        sigma_total_hu=fit.sigma_total_hu, error_hu=float(error_hu), precision_target=float(precision),
        precision=fit.precision, recall=fit.recall, target_reached=fit.target_reached,
        case_flagged_fraction=CASE_MARGIN * max(fractions), rare_sigma_total_hu=rare,
        case_rare_fraction=CASE_MARGIN * max(rare_fractions), organ_flagged_fraction=organ_fractions,
        validation_cases=[c.case_id for c in cases], validation_flagged_fraction=fractions,
        validation_rare_fraction=rare_fractions)


def _mean(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if values.size else None


def _percent(fraction: float) -> str:
    return f"{100.0 * fraction:.2f} %"


def review_case(*, case_id: str, sigma_total_hu: np.ndarray | None, labels: np.ndarray | None, body: np.ndarray,
                voxel_ml: float, label_names: Mapping[str, int], thresholds: ReviewThresholds | None,
                entropy: np.ndarray | None = None, mutual_info: np.ndarray | None = None,
                laterality: Mapping[str, Any] | None = None,
                sigma_scale: float | None = None) -> tuple[dict[str, Any], np.ndarray]:
    """The review of one case on its own grid: ``(review.json content, flagged voxels (X, Y, Z) bool)``.

    Args:
        sigma_total_hu: σ_total (HU), or None (a model without an sCT σ, or T = 1): no voxel is flagged
            and the case asks for review, since nothing can vouch for its sCT.
        labels: predicted labels, or None (no segmentation task).
        body: the body mask; fractions are of body voxels.
        voxel_ml: one voxel's volume in millilitres.
        thresholds: the model's fitted thresholds, or None (the case asks for review: nothing fitted).
        laterality: the laterality guard's result (``provenance.json``'s ``laterality``).
        sigma_scale: the σ-scaling factor applied to σ_aleatoric, recorded.
    """
    body = np.asarray(body, bool)
    reasons: list[tuple[str, str]] = []  # (code, sentence)
    if sigma_total_hu is not None and thresholds is not None:
        flagged = body & (sigma_total_hu >= thresholds.sigma_total_hu)
    else:
        flagged = np.zeros(body.shape, bool)
        reasons.append(("no_sigma", "no σ map to flag with (the model predicts no sCT σ)") if sigma_total_hu is None else
                       ("no_thresholds", "the model has no fitted review thresholds (train with train.recalibrate "
                        "and validation cases with a CT)"))
    n_body = int(body.sum())
    fraction = float(flagged.sum() / n_body) if n_body else 0.0
    if thresholds is not None and fraction > thresholds.case_flagged_fraction:
        reasons.append(("body_flagged", f"{_percent(fraction)} of the body flagged (σ_total ≥ {thresholds.sigma_total_hu:.0f} HU), "
                       f"above the {_percent(thresholds.case_flagged_fraction)} allowed ({CASE_MARGIN:g} × the "
                       f"largest validation case)"))
    rare = 0.0
    if sigma_total_hu is not None and thresholds is not None and n_body:
        rare = float(np.count_nonzero(sigma_total_hu[body] >= thresholds.rare_sigma_total_hu) / n_body)
        if rare > thresholds.case_rare_fraction:
            reasons.append(("rare_sigma", f"{_percent(rare)} of the body has σ_total ≥ "
                            f"{thresholds.rare_sigma_total_hu:.0f} HU, a level only {100 * (1 - RARE_QUANTILE):g} % of "
                            f"the validation voxels reached; above the {_percent(thresholds.case_rare_fraction)} "
                            f"allowed ({CASE_MARGIN:g} × the largest validation case): unlike the training data"))
    organs: dict[str, dict[str, Any]] = {}
    if labels is not None:
        for name, label in label_names.items():
            if label == 0:
                continue
            inside = labels == label
            n = int(inside.sum())
            flags: list[str] = []
            stats: dict[str, Any] = {"volume_ml": n * voxel_ml}
            if n == 0:
                flags.append("missing")
                reasons.append(("organ_missing", f"{name} missing from the segmentation"))
            else:
                if sigma_total_hu is not None:
                    sigma = sigma_total_hu[inside]
                    stats["sigma_total_mean_hu"] = float(sigma.mean())
                    stats["sigma_total_p95_hu"] = float(np.percentile(sigma, 95))
                stats["entropy_mean"] = _mean(entropy[inside]) if entropy is not None else None
                stats["mutual_info_mean"] = _mean(mutual_info[inside]) if mutual_info is not None else None
                organ_fraction = float(flagged[inside].mean())
                stats["flagged_fraction"] = organ_fraction
                allowed = thresholds.organ_flagged_fraction.get(name) if thresholds is not None else None
                # An organ flag informs; it does not decide the verdict: a small organ's flagged fraction
                # over a handful of validation cases is noisy (the demo model's limit for the prostate, ~100
                # voxels of 7 × 7 × 6 mm, was 32 %; in-distribution test phantoms reached 34 % and 40 %).
                if allowed is not None and organ_fraction > allowed:
                    flags.append("sct_uncertain")
            stats["flags"] = flags
            organs[name] = stats
    if laterality is not None and laterality.get("status") == "swapped":
        reasons.append(("laterality", "laterality: a left/right pair lies on the wrong side (see provenance.json)"))
    review = {
        "case": case_id,
        "verdict": VERDICT_REVIEW if reasons else VERDICT_OK,
        "reasons": [sentence for _, sentence in reasons],
        "codes": sorted({code for code, _ in reasons}),
        "flagged_fraction_body": fraction,
        "rare_sigma_fraction_body": rare,
        "flagged_voxels": int(flagged.sum()),
        "body_voxels": n_body,
        "organs": organs,
        "laterality": None if laterality is None else laterality.get("status"),
        "sigma_scale": sigma_scale,
        "thresholds": None if thresholds is None else thresholds.as_dict(),
        "thresholds_source": ("fitted on the validation cases after training (checkpoint 'review_thresholds')"
                              if thresholds is not None else None),
    }
    return review, flagged


__all__ = ["CASE_MARGIN", "RARE_QUANTILE", "ReviewThresholds", "SigmaThreshold", "ValidationCase", "fit_review_thresholds",
           "fit_sigma_threshold", "review_case"]
