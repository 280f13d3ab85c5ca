"""Proton range check on the lateral beam rays: WEPL on CT and sCT and the sCT's σ_WEPL (issue 28, point 2).

Per case and lateral proton beam, one ray along the beam through the target's centroid: from where it
enters the body to the target's distal edge along it (:func:`~.wepl.distal_edge_mm`). On that ray the WEPL
on the reference CT and on the sCT (:func:`~.wepl.wepl_with_sigma`, the one HU table), their difference
(sCT − CT) and, from the sCT's σ map in HU, σ_WEPL under fully correlated and under independent voxel
errors. The sCT's range error is *covered* under a bound when ``|error| ≤ 1.96 σ``; over cases the mean of
those 0/1 flags is the coverage fraction. The check needs no plan: it is a few ray traversals per case.

Beam directions: one ray per proton field of the plan (:class:`~.engine.PlanSettings`' ``proton_gantry_deg``;
by default gantry 270°, entering from the patient's right, and 90°, from the patient's left), for a
head-first supine patient and couch 0° as the engine plans (IEC 61217: gantry 0° enters from anterior, 90° from
the patient's left). radmtl's world frame is RAS+ (:mod:`radmtl.data.laterality`): +x points to the patient's
**right**, so the patient's left lies at ``LEFT_SIGN_RAS_X`` · x > 0, and +y is anterior. A beam entering from
the right therefore travels towards the patient's left, along RAS ``LEFT_SIGN_RAS_X``·x = −x; one from the left
along +x; gantry 0° along −y. Everything is done in world mm, so a volume stored LAS, LPS or oblique gives the
same rays.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from radmtl.data.laterality import LEFT_SIGN_RAS_X, world_centroid
from radmtl.evaluation.dose.hlut import DEFAULT_HLUT, Hlut
from radmtl.evaluation.dose.report import fmt, json_number, mean_sd_metrics, summary_json
from radmtl.evaluation.text_table import table_lines
from radmtl.evaluation.dose.wepl import grid_entry_distance, distal_edge_mm, ray_voxels, wepl_with_sigma

log = logging.getLogger(__name__)

Z_COVERAGE = 1.96  # |error| ≤ 1.96 σ: inside the two-sided 95 % interval of a normal error


def beam_direction(gantry_deg: float) -> tuple[float, float, float]:
    """The unit direction of travel, RAS world, of a coplanar beam at ``gantry_deg`` (module docstring)."""
    theta = np.deg2rad(float(gantry_deg))
    # Source: towards the patient's left (RAS LEFT_SIGN·x) by sin θ, anterior (+y) by cos θ; travel is opposite.
    x, y = -LEFT_SIGN_RAS_X * np.sin(theta), -np.cos(theta)
    return (float(np.round(x, 12)) + 0.0, float(np.round(y, 12)) + 0.0, 0.0)


def beams_for(gantry_deg: Sequence[float]) -> dict[str, tuple[float, tuple[float, float, float]]]:
    """beam name → (gantry angle in degrees, unit direction of travel in RAS world mm), one per field."""
    return {f"gantry_{angle:g}": (float(angle), beam_direction(angle)) for angle in gantry_deg}


# The engine's default proton fields: 270° enters from the patient's right and travels to the left (RAS −x),
# 90° enters from the left and travels to the right (+x).
BEAMS = beams_for((270.0, 90.0))
SIGMA_STEMS = ("sct_sigma_total", "sct_sigma_aleatoric")  # the σ map read, first found (radmtl infer's, HU)
# Columns of the printed per-case table.
KEY_METRICS = ("wepl_ct_mm", "wepl_sct_mm", "wepl_error_mm", "sigma_wepl_correlated_mm",
               "sigma_wepl_independent_mm", "sigma_wepl_samples_mm", "covered_correlated", "covered_independent",
               "covered_samples")


def beam_ray(body: np.ndarray, target: np.ndarray, affine: np.ndarray,
             direction: Sequence[float]) -> tuple[np.ndarray, np.ndarray] | None:
    """``(entry_mm, distal_mm)`` of the ray along ``direction`` through the target's centroid; None if none.

    ``entry_mm`` is where the ray, coming from outside the grid, first enters a ``body`` voxel;
    ``distal_mm`` the exit plane of the last target voxel it crosses. None when the ray misses the target
    (a non-convex target whose centroid lies outside it along this line) or the body before it.
    """
    affine = np.asarray(affine, np.float64)
    centroid = world_centroid(target, affine)
    if centroid is None:
        return None
    unit = np.asarray(direction, np.float64)
    unit = unit / np.linalg.norm(unit)
    shape = np.shape(target)
    corners = np.array([[i, j, k, 1.0] for i in (-1, shape[0]) for j in (-1, shape[1])
                        for k in (-1, shape[2])]) @ affine.T
    reach = max(float(np.linalg.norm(c[:3] - centroid)) for c in corners)
    source = centroid - unit * reach  # outside the grid, upstream
    distal = distal_edge_mm(target, affine, source, centroid)
    if distal is None:
        return None
    indices, lengths = ray_voxels(shape, affine, source, distal)
    hits = np.flatnonzero(np.asarray(body)[tuple(indices.T)] != 0)
    if hits.size == 0:
        return None
    entry = grid_entry_distance(shape, affine, source, distal) + float(np.sum(lengths[: hits[0]]))
    return source + unit * entry, distal


def range_case(ct_hu: np.ndarray, sct_hu: np.ndarray, affine: np.ndarray, body: np.ndarray, target: np.ndarray,
               sigma_hu: np.ndarray | None = None, hlut: Hlut = DEFAULT_HLUT,
               beams: Mapping[str, tuple[float, Sequence[float]]] = BEAMS,
               samples_hu: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """WEPL on CT and sCT, their error and the sCT's σ_WEPL bounds, per beam (module docstring).

    Args:
        samples_hu: (X, Y, Z, K) MC-dropout sCT samples (``radmtl infer --save-samples``), K ≥ 2: adds the SD
            of their WEPLs on the same ray, ``sigma_wepl_samples_mm``, and ``covered_samples`` (|error| within
            :func:`~.sample_dose.band_multiplier` (K) times it, Student's 95 % prediction interval).

    Returns:
        ``{beam: metrics}`` (beams whose ray misses the body or target are left out, with a log line);
        without ``sigma_hu`` the σ and coverage entries are NaN. Coverage flags are 1.0 or 0.0.
    """
    rows = {}
    for name, (_, direction) in beams.items():
        ray = beam_ray(body, target, affine, direction)
        if ray is None:
            log.warning("range: beam %s: the ray through the target's centroid misses the target or body; skipped",
                        name)
            continue
        entry, distal = ray
        on_ct = wepl_with_sigma(ct_hu, affine, entry, distal, None, hlut)
        on_sct = wepl_with_sigma(sct_hu, affine, entry, distal, sigma_hu, hlut)
        error = on_sct.wepl_mm - on_ct.wepl_mm
        row = {"wepl_ct_mm": on_ct.wepl_mm, "wepl_sct_mm": on_sct.wepl_mm, "wepl_error_mm": error,
               "wepl_error_percent": 100.0 * error / on_ct.wepl_mm if on_ct.wepl_mm > 0 else math.nan,
               "geometric_mm": on_ct.geometric_mm}
        if sigma_hu is None:
            row.update(dict.fromkeys(("sigma_wepl_correlated_mm", "sigma_wepl_independent_mm",
                                      "sigma_wepl_correlated_percent", "sigma_wepl_independent_percent",
                                      "covered_correlated", "covered_independent"), math.nan))
        else:
            row.update({"sigma_wepl_correlated_mm": on_sct.sigma_correlated_mm,
                        "sigma_wepl_independent_mm": on_sct.sigma_independent_mm,
                        "sigma_wepl_correlated_percent": on_sct.sigma_correlated_percent,
                        "sigma_wepl_independent_percent": on_sct.sigma_independent_percent,
                        "covered_correlated": float(abs(error) <= Z_COVERAGE * on_sct.sigma_correlated_mm),
                        "covered_independent": float(abs(error) <= Z_COVERAGE * on_sct.sigma_independent_mm)})
        if samples_hu is not None:
            from radmtl.evaluation.dose.sample_dose import band_multiplier

            sigma = sample_wepl_sd(samples_hu, affine, entry, distal, hlut)
            # K samples estimate the SD: the band's multiplier is Student's, as for the sample doses.
            row.update({"sigma_wepl_samples_mm": sigma,
                        "sigma_wepl_samples_percent": 100.0 * sigma / on_sct.wepl_mm if on_sct.wepl_mm > 0 else math.nan,
                        "covered_samples": float(abs(error) <= band_multiplier(np.shape(samples_hu)[-1]) * sigma)})
        rows[name] = row
    return rows


def sample_wepl_sd(samples_hu: np.ndarray, affine: np.ndarray, start_mm, end_mm, hlut: Hlut = DEFAULT_HLUT) -> float:
    """The SD (ddof 1) over the K samples (X, Y, Z, K) of the WEPL from ``start_mm`` to ``end_mm``: each
    sample is one correlated realisation, so this needs no assumption on how voxel errors correlate."""
    samples_hu = np.asarray(samples_hu)
    indices, lengths = ray_voxels(samples_hu.shape[:3], affine, start_mm, end_mm)
    hu = np.asarray(samples_hu[tuple(indices.T)], np.float64)  # (M, K): the ray's voxels in every sample
    wepls = (hlut.to_spr(hu) * lengths[:, None]).sum(axis=0)
    return float(np.std(wepls, ddof=1))


def summarise_range(rows: Mapping[str, Mapping[str, Mapping[str, float]]]) -> dict[str, dict[str, tuple[float, float]]]:
    """Per beam, mean ± SD over cases of every metric (``rows``: case → beam → metrics).

    The mean of a ``covered_*`` flag is the coverage fraction (over the cases with a σ map).
    """
    from radmtl.evaluation.metrics import summarise

    beams: dict[str, list[Mapping[str, float]]] = {}
    for per_beam in rows.values():
        for beam, row in per_beam.items():
            beams.setdefault(beam, []).append(row)
    return {beam: summarise(beam_rows) for beam, beam_rows in beams.items()}


def range_json(rows: Mapping[str, Mapping[str, Mapping[str, float]]], sigma_maps: Mapping[str, str | None],
               hlut_name: str) -> dict[str, Any]:
    """The ``range`` entry of the ``dose`` section of ``metrics.json``."""
    summary = summarise_range(rows)
    return {
        "what": "WEPL from the body entry to the target's distal edge on the ray through the target's centroid",
        "hlut": hlut_name,
        "coverage": f"covered_* = |wepl_error_mm| <= {Z_COVERAGE} sigma; the summary mean is the coverage fraction",
        "sigma_map": dict(sigma_maps),
        "beams": {
            beam: {"gantry_deg": _gantry_of(beam),
                   "direction_ras": list(beam_direction(_gantry_of(beam))) if _gantry_of(beam) is not None else None,
                   "cases": {c: {k: json_number(v) for k, v in per_beam[beam].items()}
                             for c, per_beam in rows.items() if beam in per_beam},
                   "summary": summary_json(stats)}
            for beam, stats in summary.items()},
    }


def _gantry_of(beam: str) -> float | None:
    """The gantry angle in a beam name of :func:`beams_for` (``gantry_270`` → 270.0), else None."""
    try:
        return float(beam.removeprefix("gantry_")) if beam.startswith("gantry_") else None
    except ValueError:
        return None


def range_mlflow_metrics(rows: Mapping[str, Mapping[str, Mapping[str, float]]]) -> dict[str, float]:
    """``dose_range_<beam>_<metric>_mean`` and ``_sd`` of every finite summary value."""
    return mean_sd_metrics("dose_range", summarise_range(rows))


def format_range(rows: Mapping[str, Mapping[str, Mapping[str, float]]], hlut_name: str) -> str:
    """A per-case and beam table of the key numbers, then per beam every number as mean ± SD."""
    lines = [f"dose, proton range: WEPL body entry → target's distal edge through its centroid, sCT − CT, σ_WEPL "
             f"from the sCT's σ map (HU table {hlut_name}; n = {len(rows)} case(s))"]
    table = [[case, beam, *(fmt(row.get(k, math.nan)) for k in KEY_METRICS)]
             for case, per_beam in rows.items() for beam, row in per_beam.items()]
    if not table:
        lines.append("  no case evaluated")
        return "\n".join(lines)
    lines += table_lines(["case", "beam", *KEY_METRICS], table)
    for beam, stats in summarise_range(rows).items():
        width = max(len(k) for k in stats)
        lines.append(f"{beam} (covered_*: mean = coverage fraction)")
        lines += [f"  {name.ljust(width)}  {fmt(m)} ± {fmt(s)}" for name, (m, s) in stats.items()]
    return "\n".join(lines)
