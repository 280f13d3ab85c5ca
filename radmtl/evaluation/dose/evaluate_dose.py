"""``radmtl evaluate --dose``: does the sCT give the dose the CT gives? (issue 28, point 1)

Per reference case with a CT, labels holding the target and a prediction with an ``sct``, and per modality
(photons, protons): the plan is optimised on the **reference CT** (:func:`~.engine.plan_on_ct`) and the
same plan — same beams, spots and weights — is recomputed on the sCT (:func:`~.engine.recompute`), both on
the reference CT grid. The CT dose is the optimised dose itself: a fixed-weight recompute on the same CT
gives it back within 1e-4 Gy (``tests/evaluation/test_dose.py``), so a second pencil-beam pass per case
and modality is saved.

Metrics per case and modality (sCT dose against CT dose): the dose MAE in the region where the CT dose
exceeds 10 % and 90 % of the prescription (Gy and % of the prescription), the global γ pass rate at
2 %/2 mm and 3 %/3 mm with a 10 % cut-off (:mod:`.gamma`), and DVH differences sCT − CT (:mod:`.dvh`):
the target's D98/D95/D50/D2 and Dmean, each OAR's (bladder, rectum, femoral heads, where labelled) Dmean
and D2. A figure per case and modality shows both doses, their difference and the DVHs.

With MC-dropout samples of the sCT (``radmtl infer --save-samples K``, ``PRED/<case>/sct_samples.*``) the same
plan is also recomputed on each sample (:mod:`.sample_dose`): a dose SD map, DVH bands, and whether the CT's
dose and DVH numbers fall inside them (coverage of a 95 % band); the figure gains the SD map and the bands.

An oblique case (its CT grid not axis-aligned) is moved onto the axial grid that covers it
(:func:`radmtl.data.axial.axial_grid`; CT and sCT alike, trilinearly) and planned and scored there, as the
engine plans on axis-aligned grids only; ``planned_on_axial_grid`` in the JSON names it.

Independently of the plan, the proton range check (:mod:`.range_check`, issue 28 point 2): per case and
lateral proton beam, the WEPL to the target's distal edge on the CT and on the sCT and, from the sCT's σ map
(``sct_sigma_total``, else ``sct_sigma_aleatoric``), σ_WEPL under correlated and independent voxel errors, and
from the samples, where present, the SD of the samples' WEPL.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from radmtl.errors import RadmtlError
from radmtl.evaluation.dose.engine import MODALITIES, PlanSettings
from radmtl.evaluation.dose.errors import DoseError
from radmtl.evaluation.dose.report import fmt, json_number, mean_sd_metrics, summary_json
from radmtl.evaluation.text_table import table_lines

log = logging.getLogger(__name__)

REGION_PERCENTS = (10.0, 90.0)  # MAE regions: CT dose above these % of the prescription
GAMMA_KEYS = {"gamma_2_2_pass_percent": "gamma_2mm2pct", "gamma_3_3_pass_percent": "gamma_3mm3pct"}
DOSE_FOLDER = "dose"  # the figures go to PRED/dose/<case id>_<modality>.png
# Columns of the printed per-case table.
KEY_METRICS = ("mae_gt10pct_gy", "mae_gt90pct_gy", "gamma_2mm2pct", "gamma_3mm3pct")
# Columns of the printed per-case table of the sample doses.
SAMPLE_KEY_METRICS = ("samples_n", "samples_dose_sd_median_gt90pct_gy", "samples_dose_covered_gt10pct",
                      "samples_dose_covered_gt90pct", "dvh_covered_fraction")


@dataclass(frozen=True)
class DoseOptions:
    """What ``--dose`` plans: the target's name, the modalities and the plan settings (HU table, grid)."""

    target: str = "prostate"
    modalities: tuple[str, ...] = MODALITIES
    settings: PlanSettings = field(default_factory=PlanSettings)
    # Recompute on the first N MC-dropout samples of PRED/<case>/sct_samples.*; None: all present, 0: none.
    samples: int | None = None

    def __post_init__(self) -> None:
        from radmtl.evaluation.dose.sample_dose import MIN_SAMPLES

        if self.samples is not None and self.samples != 0 and self.samples < MIN_SAMPLES:
            raise DoseError(f"--dose-samples must be 0 (none) or at least {MIN_SAMPLES} (an SD needs two), "
                            f"got {self.samples}")
        bad = [m for m in self.modalities if m not in MODALITIES]
        if bad or not self.modalities:
            raise DoseError(f"--dose-modalities must name some of {', '.join(MODALITIES)}, got "
                            f"{','.join(self.modalities) or 'nothing'}")


@dataclass
class DoseEvaluation:
    """Per modality: case → metrics, their mean ± SD; the cases skipped or failed, figures and timings."""

    options: DoseOptions
    rows: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    summary: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    timings_s: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)
    range_rows: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # case → beam → metrics
    range_sigma: dict[str, str | None] = field(default_factory=dict)  # case → the σ map's file name, or None
    samples: dict[str, dict[str, Any]] = field(default_factory=dict)  # case → {"file", "used", "present"}
    axial: dict[str, dict[str, Any]] = field(default_factory=dict)  # oblique case → the axial grid it was planned on


def check_dependencies() -> None:
    """Import pyRadPlan and pymedphys now, so a missing extra fails before anything is computed or written.

    Raises:
        DoseDependencyError: one of them is missing; the message says how to install it.
    """
    from radmtl.evaluation.dose.engine import _pyradplan
    from radmtl.evaluation.dose.gamma import _pymedphys_gamma

    _pyradplan()
    _pymedphys_gamma()


def case_metrics(ct_dose: np.ndarray, sct_dose: np.ndarray, structures: Mapping[str, np.ndarray], target: str,
                 spacing: Sequence[float], prescription_gy: float) -> dict[str, float]:
    """The metrics of one case and modality (module docstring); keys without the modality."""
    from radmtl.evaluation.dose.dvh import dvh_metrics
    from radmtl.evaluation.dose.gamma import gamma_pass_rate

    ct_dose, sct_dose = np.asarray(ct_dose, np.float64), np.asarray(sct_dose, np.float64)
    row: dict[str, float] = {}
    error = np.abs(sct_dose - ct_dose)
    for percent in REGION_PERCENTS:
        region = ct_dose > percent / 100.0 * prescription_gy
        mae = float(error[region].mean()) if region.any() else math.nan
        row[f"mae_gt{percent:g}pct_gy"] = mae
        row[f"mae_gt{percent:g}pct_percent"] = 100.0 * mae / prescription_gy
    row.update({GAMMA_KEYS[k]: v for k, v in gamma_pass_rate(ct_dose, sct_dose, spacing).items()})
    on_ct, on_sct = dvh_metrics(ct_dose, structures, target), dvh_metrics(sct_dose, structures, target)
    row.update({f"delta_{name}": on_sct[name] - value for name, value in on_ct.items()})
    return row


def _dvh_structures(labels: np.ndarray, label_names: Mapping[str, int], target: str,
                    settings: PlanSettings) -> dict[str, np.ndarray]:
    """The target and the OARs with objectives that the labels hold (non-empty)."""
    wanted = [target, *(name for name in settings.oar_objectives if name != target)]
    masks = {name: labels == label_names[name] for name in wanted if name in label_names}
    return {name: mask for name, mask in masks.items() if mask.any()}


def dose_case(case_id: str, ct_hu: np.ndarray, sct_hu: np.ndarray, affine: np.ndarray, labels: np.ndarray,
              label_names: Mapping[str, int], body: np.ndarray, options: DoseOptions,
              figure_dir: Path | None, samples_hu: np.ndarray | None = None,
              ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]], list[Path]]:
    """Plan on the CT, recompute on the sCT and score, for each modality of ``options``; with ``samples_hu``
    ((X, Y, Z, K) MC-dropout sCT samples, K ≥ 2) also recompute on each sample (:mod:`.sample_dose`).

    Returns:
        ``{modality: metrics}``, ``{modality: timings in s}`` and the figures written.

    Raises:
        DoseError: the target is not labelled, or pyRadPlan cannot plan this case.
    """
    from radmtl.evaluation.dose.engine import plan_on_ct, recompute
    from radmtl.evaluation.dose.gamma import spacing_from_affine

    settings, target = options.settings, options.target
    structures = {name: labels == value for name, value in label_names.items()
                  if int(value) != 0 and np.any(labels == value)}
    if target not in structures:
        raise DoseError(f"case {case_id}: no {target!r} voxels in the reference labels")
    dvh_structures = _dvh_structures(labels, label_names, target, settings)
    spacing = spacing_from_affine(affine)
    rows, timings, figures = {}, {}, []
    for modality in options.modalities:
        log.info("case %s: %s plan on the CT …", case_id, modality)
        start = time.perf_counter()
        plan = plan_on_ct(ct_hu, affine, structures, target, body, modality, settings)
        plan_s = time.perf_counter() - start
        start = time.perf_counter()
        sct_dose = recompute(plan, sct_hu)
        recompute_s = time.perf_counter() - start
        start = time.perf_counter()
        rows[modality] = case_metrics(plan.dose_gy, sct_dose, dvh_structures, target, spacing, settings.prescription_gy)
        metrics_s = time.perf_counter() - start
        timings[modality] = {"plan_s": plan_s, "recompute_s": recompute_s, "metrics_s": metrics_s}
        log.info("case %s: %s plan %.1f s, sCT recompute %.1f s, metrics %.1f s; γ 2%%/2mm %.1f %%", case_id,
                 modality, plan_s, recompute_s, metrics_s, rows[modality]["gamma_2mm2pct"])
        doses = sd = None
        if samples_hu is not None:
            from radmtl.evaluation.dose.sample_dose import dose_sd, sample_dose_metrics, sample_doses

            start = time.perf_counter()
            doses = sample_doses(lambda hu: recompute(plan, hu), samples_hu)
            sd = dose_sd(doses)  # once, for the metrics and the figure
            rows[modality].update(sample_dose_metrics(plan.dose_gy, sct_dose, doses, dvh_structures, target,
                                                      settings.prescription_gy, sd=sd))
            timings[modality]["samples_s"] = time.perf_counter() - start
            log.info("case %s: %s on %d sCT samples %.1f s; CT dose inside the samples' 95 %% band in %.1f %% of the >10 %% "
                     "region", case_id, modality, len(doses), timings[modality]["samples_s"],
                     100 * rows[modality]["samples_dose_covered_gt10pct"])
        if figure_dir is not None:
            from radmtl.evaluation.dose.figure import dose_figure

            path = figure_dir / f"{case_id}_{modality}.png"
            figures.append(dose_figure(ct_hu, sct_hu, plan.dose_gy, sct_dose, dvh_structures, target, affine,
                                       settings.prescription_gy, f"case {case_id}: {modality}", path,
                                       sample_doses=doses, sample_sd=sd))
        del doses, sd
    return rows, timings, figures


def evaluate_dose(pred: Path, ref: Path, options: DoseOptions, case_ids: Sequence[str] | None = None,
                  figures: bool = True) -> DoseEvaluation:
    """Dose metrics of every reference case with a CT, labels holding the target and a predicted sCT.

    Args:
        pred: ``radmtl infer``'s output folder (``PRED/<case id>/sct.*``); figures go to ``PRED/dose/``.
        ref: the reference dataset folder.
        options: target, modalities, plan settings.
        case_ids: evaluate only these cases (``radmtl evaluate``'s complete ones); default all in common.
        figures: write a PNG per case and modality.
    """
    from radmtl.data.discovery import discover
    from radmtl.evaluation.dose.case_inputs import read_dose_case
    from radmtl.evaluation.dose.range_check import beams_for, range_case
    from radmtl.evaluation.pred_files import pred_file

    check_dependencies()
    pred, index = Path(pred), discover(ref)
    label_names = index.labels
    if label_names is None:
        from radmtl.data.phantom.cases import PHANTOM_LABELS

        label_names = PHANTOM_LABELS
        log.info("dose: %s names no labels (no dataset.json); reading them as the phantom's %s", index.root,
                 ", ".join(f"{k}={v}" for k, v in PHANTOM_LABELS.items() if v))
    result = DoseEvaluation(options)
    per_modality: dict[str, dict[str, dict[str, float]]] = {m: {} for m in options.modalities}
    for case in index.cases:
        case_id, paths = case.case_id, case.paths
        if case_ids is not None and case_id not in case_ids:
            continue
        sct_path = pred_file(pred / case_id, "sct") if (pred / case_id).is_dir() else None
        lacking = [what for what, ok in (("ct", "ct" in paths), ("labels", "labels" in paths),
                                         ("predicted sct", sct_path is not None)) if not ok]
        if lacking:
            result.skipped[case_id] = f"no {' or '.join(lacking)}"
            log.warning("dose: case %s skipped: no %s", case_id, " or ".join(lacking))
            continue
        try:
            inputs = read_dose_case(case_id, paths, sct_path, pred / case_id, label_names, options)
            if isinstance(inputs, str):
                result.skipped[case_id] = inputs
                continue
            result.range_sigma[case_id] = inputs.sigma_file
            if inputs.samples_file is not None:
                result.samples[case_id] = inputs.samples_file
            if inputs.axial_grid is not None:
                result.axial[case_id] = inputs.axial_grid
            on_grid = inputs.native or inputs  # rays are traced in world mm: an oblique case on its own grid
            result.range_rows[case_id] = range_case(
                on_grid.ct_hu, on_grid.sct_hu, on_grid.affine, on_grid.body,
                on_grid.labels == label_names[options.target], on_grid.sigma_hu, options.settings.hlut,
                beams_for(options.settings.proton_gantry_deg), on_grid.samples_hu)
            rows, timings, written = dose_case(
                case_id, inputs.ct_hu, inputs.sct_hu, inputs.affine, inputs.labels, label_names, inputs.body, options,
                pred / DOSE_FOLDER if figures else None, inputs.samples_hu)
            del inputs
        except RadmtlError as err:
            result.failures[case_id] = f"dose: {err}"
            log.debug("dose: case %s failed", case_id, exc_info=True)
            continue
        for modality, row in rows.items():
            per_modality[modality][case_id] = row
            result.timings_s.setdefault(modality, {})[case_id] = timings[modality]
        result.figures += written
    from radmtl.evaluation.metrics import summarise

    result.rows = per_modality
    result.summary = {m: summarise(list(rows.values())) for m, rows in per_modality.items()}
    return result


def to_json(result: DoseEvaluation) -> dict[str, Any]:
    """The ``dose`` section of ``metrics.json``."""
    from radmtl.evaluation.dose.range_check import range_json

    settings = result.options.settings
    return {
        "target": result.options.target,
        "prescription_gy": settings.prescription_gy,
        "fractions": settings.fractions,
        "hlut": settings.hlut.name,
        "dose_grid_mm": settings.dose_grid_mm if settings.dose_grid_mm is not None else "ct",
        "planned_on_axial_grid": result.axial,
        "ct_dose": "the dose optimised on the reference CT (equal to a fixed-weight recompute on it)",
        "modalities": {
            modality: {
                "n_cases": len(rows),
                "cases": {c: {k: json_number(v) for k, v in row.items()} for c, row in rows.items()},
                "summary": summary_json(result.summary[modality]),
                "timings_s": result.timings_s.get(modality, {}),
            } for modality, rows in result.rows.items()},
        "skipped": result.skipped,
        "failed": result.failures,
        "figures": [str(p) for p in result.figures],
        "range": range_json(result.range_rows, result.range_sigma, settings.hlut.name),
        "samples": {
            "what": "the plan recomputed on MC-dropout sCT samples (radmtl infer --save-samples): samples_dose_covered_* "
                    "= share of voxels above 10/90 % of the prescription where |sCT dose - CT dose| <= k SD of the "
                    "sample doses; dvh_covered_<metric> = |sCT - CT| <= k SD of that metric over the samples "
                    "(its summary mean is the coverage fraction over cases); k = samples_band_multiplier = "
                    "t(0.975, K-1) * sqrt(1 + 1/K), the 95 % prediction interval from K samples (2.51 at K = 8)",
            "cases": result.samples,
        },
    }


def mlflow_metrics(result: DoseEvaluation) -> dict[str, float]:
    """``dose_<modality>_<metric>_mean`` and ``_sd`` of every finite summary value; the range check's
    ``dose_range_<beam>_<metric>_mean`` and ``_sd``."""
    from radmtl.evaluation.dose.range_check import range_mlflow_metrics

    return {**range_mlflow_metrics(result.range_rows), **mean_sd_metrics("dose", result.summary)}


def format_tables(result: DoseEvaluation) -> str:
    """Per modality: a per-case table of the key metrics, then every metric as mean ± SD."""
    lines = []
    for modality, rows in result.rows.items():
        settings = result.options.settings
        lines.append(f"dose, {modality}: plan on the CT, recomputed on the sCT ({result.options.target} "
                     f"{settings.prescription_gy:g} Gy, HU table {settings.hlut.name}; n = {len(rows)} case(s))")
        if not rows:
            lines.append("  no case evaluated")
            continue
        lines += _table(["case", *KEY_METRICS], rows, KEY_METRICS)
        # The per-structure band SDs and flags of the sample doses stay in metrics.json and MLflow; the terminal
        # gets the target's (and the per-case table below), not two more lines per OAR metric.
        target_prefixes = (f"dvh_sd_{result.options.target}_", f"dvh_covered_{result.options.target}_")
        summary = {k: v for k, v in result.summary[modality].items()
                   if not k.startswith(("dvh_sd_", "dvh_covered_")) or k.startswith(target_prefixes)
                   or k == "dvh_covered_fraction"}
        width = max(len(k) for k in summary)
        lines += [f"{name.ljust(width)}  {fmt(m)} ± {fmt(s)}" for name, (m, s) in summary.items()]
        lines.append("")
        sampled = {c: r for c, r in rows.items() if "samples_n" in r}
        if sampled:
            lines.append(f"dose, {modality}: plan recomputed on the MC-dropout sCT samples; covered = |sCT − CT| ≤ "
                         "k·SD of the sample doses, k the 95 % prediction multiplier for K samples (voxels above "
                         "10/90 % of the prescription; DVH numbers)")
            lines += _table(["case", *SAMPLE_KEY_METRICS], sampled, SAMPLE_KEY_METRICS)
            lines.append("")
    from radmtl.evaluation.dose.range_check import format_range

    lines += [format_range(result.range_rows, result.options.settings.hlut.name), ""]
    lines += [f"dose: case {c} skipped: {why}" for c, why in result.skipped.items()]
    return "\n".join(lines).rstrip()


def _table(header: list[str], rows: Mapping[str, Mapping[str, float]], keys: Sequence[str]) -> list[str]:
    """One row per case of the ``keys`` of its metrics."""
    return table_lines(header, [[c, *(fmt(r.get(k, math.nan)) for k in keys)] for c, r in rows.items()])
