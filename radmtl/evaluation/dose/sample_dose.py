"""Dose uncertainty from the sCT's MC-dropout samples, and whether the CT's dose falls inside it (issue 28,
point 2, second half).

``radmtl infer --save-samples K`` writes ``sct_samples`` (X, Y, Z, K): K sCT realisations of MC dropout,
each one dropout draw over every window, so spatially correlated the way the network's own uncertainty is
(a voxel-wise σ map cannot say whether a bone edge errs the same way along a whole beam; a sample does).
The plan optimised on the reference CT is recomputed with fixed weights on each sample
(:func:`~.engine.recompute`), giving K doses. From them:

* **dose SD map**: the per-voxel SD of the K doses (ddof 1). It is *centred* on the dose of the sCT itself
  (the mean of the T samples, what a user plans on), and the CT dose is **covered** at a voxel where
  ``|D_sCT − D_CT| ≤ k_K · SD`` with ``k_K`` = :func:`band_multiplier` (2.51 for K = 8): the 95 % prediction
  interval of one more draw from the distribution the K samples come from, the SD being estimated from
  only K of them (Student's t with K − 1 degrees of freedom, and √(1 + 1/K) for the centre's own
  uncertainty). With 1.96 a calibrated band would cover 89 % at K = 8 and 64 % at K = 2. Reported: the
  covered fraction of the voxels whose CT dose exceeds 10 % and 90 % of the prescription, and the median SD.
* **DVH bands**: each DVH number of :func:`~.dvh.dvh_metrics` (target D98 … Dmean, OAR Dmean and D2) on each
  sample dose; its SD over the K samples; covered when ``|value on sCT − value on CT| ≤ k_K · SD``. Over
  cases, the mean of a covered flag is that metric's coverage fraction; per case ``dvh_covered_fraction``
  is the share of its DVH numbers covered.

What the samples leave out (said in docs/inference.md): the aleatoric σ (voxel-independent noise, which
averages out along a beam) and σ_grid; and at window overlaps a sample is a Gaussian-weighted blend of two
draws, a little less spread than σ_epistemic. Coverage below 95 % therefore says the epistemic samples alone
do not explain the dose error, as the HU calibration says for σ_epistemic alone.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping

import numpy as np

from radmtl.evaluation.dose.dvh import dvh_metrics

log = logging.getLogger(__name__)

SAMPLES_STEM = "sct_samples"  # radmtl infer --save-samples K
MIN_SAMPLES = 2  # an SD needs two
COVERAGE = 0.95  # the band's nominal coverage
REGION_PERCENTS = (10.0, 90.0)  # dose regions scored: above 10 % and 90 % of the prescription


def band_multiplier(k: int) -> float:
    """``k_K``: |x − mean| ≤ k_K · SD holds for 95 % of new draws x when mean and SD (ddof 1) come from K
    normal samples: Student's t quantile with K − 1 degrees of freedom times √(1 + 1/K)."""
    from scipy import stats

    if k < MIN_SAMPLES:
        raise ValueError(f"a band needs at least {MIN_SAMPLES} samples, got {k}")
    return float(stats.t.ppf(0.5 + COVERAGE / 2, k - 1) * np.sqrt(1.0 + 1.0 / k))


def sample_doses(recompute: Callable[[np.ndarray], np.ndarray], samples_hu: np.ndarray) -> np.ndarray:
    """``recompute`` (a plan's fixed-weight dose on a CT) on each sample: (K, X, Y, Z) float32 doses."""
    samples_hu = np.asarray(samples_hu)
    doses = np.empty((samples_hu.shape[-1], *samples_hu.shape[:3]), np.float32)  # filled in place: no list + stack
    for k in range(len(doses)):
        start = time.perf_counter()
        doses[k] = recompute(samples_hu[..., k])
        log.debug("sample %d of %d: dose in %.1f s", k + 1, len(doses), time.perf_counter() - start)
    return doses


def dose_sd(doses: np.ndarray) -> np.ndarray:
    """The per-voxel SD (ddof 1) of (K, X, Y, Z) doses, float32, computed in float64 one x-slab at a time:
    a float64 copy of all K doses of a clinical grid would take gigabytes."""
    doses = np.asarray(doses)
    out = np.empty(doses.shape[1:], np.float32)
    for i in range(doses.shape[1]):
        out[i] = np.std(doses[:, i].astype(np.float64), axis=0, ddof=1)
    return out


def sample_dose_metrics(ct_dose: np.ndarray, sct_dose: np.ndarray, doses: np.ndarray,
                        structures: Mapping[str, np.ndarray], target: str, prescription_gy: float,
                        sd: np.ndarray | None = None) -> dict[str, float]:
    """The sample-band numbers of one case and modality (module docstring); keys start ``samples_`` or
    ``dvh_``.

    Args:
        ct_dose, sct_dose: (X, Y, Z) the plan's dose on the CT and on the sCT.
        doses: (K, X, Y, Z) its doses on the K samples, K ≥ 2.
        structures: the DVH structures (target and OARs).
        sd: :func:`dose_sd` of ``doses`` when the caller has it already (the figure draws it too).
    """
    ct_dose, sct_dose = np.asarray(ct_dose, np.float64), np.asarray(sct_dose, np.float64)
    k = int(np.shape(doses)[0])
    if k < MIN_SAMPLES:
        raise ValueError(f"a dose SD needs at least {MIN_SAMPLES} samples, got {k}")
    sd = (dose_sd(doses) if sd is None else np.asarray(sd)).astype(np.float64)
    error = np.abs(sct_dose - ct_dose)
    multiplier = band_multiplier(k)
    row: dict[str, float] = {"samples_n": float(k), "samples_band_multiplier": multiplier}
    for percent in REGION_PERCENTS:
        region = ct_dose > percent / 100.0 * prescription_gy
        tag = f"gt{percent:g}pct"
        if region.any():
            row[f"samples_dose_sd_median_{tag}_gy"] = float(np.median(sd[region]))
            row[f"samples_dose_covered_{tag}"] = float(np.mean(error[region] <= multiplier * sd[region]))
        else:
            row[f"samples_dose_sd_median_{tag}_gy"] = row[f"samples_dose_covered_{tag}"] = math.nan
    on_ct, on_sct = dvh_metrics(ct_dose, structures, target), dvh_metrics(sct_dose, structures, target)
    per_sample = [dvh_metrics(dose, structures, target) for dose in doses]
    flags = []
    for name, ct_value in on_ct.items():
        values = np.array([sample[name] for sample in per_sample], np.float64)
        band_sd = float(np.std(values, ddof=1)) if np.all(np.isfinite(values)) else math.nan
        row[f"dvh_sd_{name}"] = band_sd
        if math.isfinite(band_sd) and math.isfinite(ct_value) and math.isfinite(on_sct[name]):
            covered = float(abs(on_sct[name] - ct_value) <= multiplier * band_sd)
            flags.append(covered)
        else:
            covered = math.nan
        row[f"dvh_covered_{name}"] = covered
    row["dvh_covered_fraction"] = float(np.mean(flags)) if flags else math.nan
    return row


def dvh_band(doses: np.ndarray, mask: np.ndarray, bins_gy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The lowest and highest cumulative DVH (0–1) over the sample doses, at each dose of ``bins_gy``."""
    from radmtl.evaluation.dose.dvh import cumulative_dvh

    curves = np.stack([cumulative_dvh(dose, mask, bins_gy) for dose in doses])
    return curves.min(axis=0), curves.max(axis=0)
