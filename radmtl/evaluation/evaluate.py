"""``radmtl evaluate``: metrics of ``radmtl infer`` outputs against a reference dataset.

Per case: image metrics (SynthRAD2023 + Bragman region MAE) when ``sct`` exists, Dice/HD95 when
``seg`` and reference labels exist, calibration metrics when a σ map exists (``sct_sigma_total``,
else ``sct_sigma_aleatoric``) and σ-vs-true-noise when the reference has ``ct_noise_sd``, and each σ
map, ``seg_entropy`` and ``seg_mutual_info`` as a detector of large errors
(:mod:`radmtl.evaluation.detection`). Then mean ± SD over cases
(:func:`radmtl.evaluation.metrics.summarise`), a CSV, a JSON, calibration and risk–coverage plots and,
with ``--run-id``, the same logged to an MLflow run. ``--dose`` adds photon and proton dose metrics of the
sCT against the CT (:mod:`radmtl.evaluation.dose.evaluate_dose`), a ``dose`` section in the JSON.

Predictions are found by the reference's case ids (``PRED/AB/1ABA005`` for a SynthRAD2025 case) in any
format infer writes. When the reference's cases sit in more than one group (:attr:`Case.group`: the
centre or anatomy folder), every summary is also given per group.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from radmtl.evaluation import calibration as C
from radmtl.evaluation import detection as D
from radmtl.evaluation import metrics as M
from radmtl.errors import RadmtlError
from radmtl.data.io import VolumeError, read_volume
from radmtl.data.atomic import atomic_path
from radmtl.evaluation.pred_files import PRED_FILES, PRED_SUFFIXES, pred_file, read_on_grid
from radmtl.evaluation.text_table import table_lines

log = logging.getLogger(__name__)

TOP_LEVEL_GROUP = "(top level)"  # the name of the group of cases directly in the reference folder
CALIBRATION_PNG = "calibration.png"
RISK_COVERAGE_PNG = "risk_coverage.png"
# Columns of the compact per-case table printed to the terminal (when present).
KEY_METRICS = ("mae_hu", "psnr", "ssim", "mae_bone_hu", "dice_mean", "coverage_95", "zscore_sd",
               "auroc_sigma_total_err100", "ap_sigma_total_err100", "auroc_seg_entropy_misclassified")


@dataclass
class Evaluation:
    """Per-case metric rows, their summary and the cases that could not be evaluated.

    ``groups`` holds a summary per group (centre/anatomy folder) when the reference has more than
    one, else nothing; ``case_groups`` maps each evaluated case to its group.
    """

    rows: dict[str, dict[str, float]]
    summary: dict[str, tuple[float, float]]
    failures: dict[str, str] = field(default_factory=dict)
    # Reference cases without a (complete) prediction: case → what is missing. A summary over the
    # cases present would otherwise look complete, and a model would score better by skipping a case.
    missing: dict[str, str] = field(default_factory=dict)
    groups: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    case_groups: dict[str, str] = field(default_factory=dict)
    calibration: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    # case → {σ map name or "oracle": MAE at D.RISK_COVERAGE_FRACTIONS}
    risk_coverage: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    # AUROC/AP key → cases where it is undefined (no body voxel with the event, or no voxel without)
    undefined: dict[str, list[str]] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    # With --dose: :class:`radmtl.evaluation.dose.evaluate_dose.DoseEvaluation` (the "dose" section).
    dose: Any = None


def evaluate_case(case_id: str, pred_dir: Path, ref_paths: dict[str, Path],
                  label_names: dict[str, int] | None) -> tuple[dict[str, float], Any, dict[str, np.ndarray]]:
    """Metrics of one case; also the calibration curve (or None) and the risk–coverage curves.

    Raises:
        RadmtlError: missing reference/prediction files or grids that do not match.
    """
    from radmtl.data.transforms import derive_body_mask

    preds = {stem: pred_file(pred_dir, stem) for stem in PRED_FILES}
    if preds["sct"] is None and preds["seg"] is None:
        raise VolumeError(f"case {case_id}: {pred_dir} holds neither an sct nor a seg file "
                          f"({'/'.join(PRED_SUFFIXES)}); run radmtl infer with --output {pred_dir.parent}")
    grid_key = "ct" if "ct" in ref_paths else "labels" if "labels" in ref_paths else "mr"
    if grid_key not in ref_paths:
        raise VolumeError(f"case {case_id}: reference has no ct, labels or mr file")
    reference = read_volume(ref_paths[grid_key])
    row: dict[str, float] = {}
    curve, risk_curves = None, {}
    mask = None
    if "mask" in ref_paths:
        mask = read_on_grid(ref_paths["mask"], reference, case_id, "reference mask") != 0
    elif "mr" in ref_paths:
        mask = derive_body_mask(read_on_grid(ref_paths["mr"], reference, case_id, "reference mr")) != 0
    labels = (np.rint(read_on_grid(ref_paths["labels"], reference, case_id, "reference labels")).astype(np.int64)
              if "labels" in ref_paths else None)

    if preds["sct"] is not None:
        if "ct" not in ref_paths:
            raise VolumeError(f"case {case_id}: reference has no ct file to compare sct.nii.gz with")
        if mask is None:
            raise VolumeError(f"case {case_id}: reference has no mask (or mr to derive one); add mask.nii.gz")
        ct = reference.array
        sct = read_on_grid(preds["sct"], reference, case_id, "prediction")
        row.update(M.image_metrics(ct, sct, mask, labels, label_names))
        sigmas = {stem: read_on_grid(preds[stem], reference, case_id, "prediction")
                  for stem in D.SIGMA_MAPS if preds[stem] is not None}
        sigma = sigmas.get("sct_sigma_total", sigmas.get("sct_sigma_aleatoric"))
        if sigma is not None:
            aleatoric = sigmas.get("sct_sigma_aleatoric")
            true_sd = (read_on_grid(ref_paths["ct_noise_sd"], reference, case_id, "reference ct_noise_sd")
                       if "ct_noise_sd" in ref_paths else None)
            row.update(C.uncertainty_metrics(ct, sct, sigma, mask, aleatoric, true_sd))
            curve = C.calibration_curve(ct, sct, sigma, mask)
        if sigmas:
            detection, risk_curves = D.sct_error_detection(ct, sct, mask, sigmas)
            row.update(detection)
    if preds["seg"] is not None and labels is not None:
        seg = np.rint(read_on_grid(preds["seg"], reference, case_id, "prediction")).astype(np.int64)
        seg_metrics = M.segmentation_metrics(seg, labels, label_names, reference.grid.spacing)
        row.update(seg_metrics)
        dices = [v for k, v in seg_metrics.items() if k.startswith("dice_") and not math.isnan(v)]
        row["dice_mean"] = float(np.mean(dices)) if dices else math.nan
        uncertainties = {stem: read_on_grid(preds[stem], reference, case_id, "prediction")
                         for stem in D.SEG_UNCERTAINTY_MAPS if preds[stem] is not None}
        if uncertainties and mask is None:
            log.warning("case %s: no reference mask (or mr) to tell the body; seg uncertainty not scored", case_id)
        elif uncertainties:
            row.update(D.seg_error_detection(seg, labels, mask, uncertainties))
    return row, curve, risk_curves


def evaluate(pred: str | Path, ref: str | Path) -> Evaluation:
    """Evaluate every case that has both a prediction folder and a reference case.

    Raises:
        RadmtlError: no case in common, or the folders do not exist.
    """
    from radmtl.data.discovery import discover

    pred = Path(pred).expanduser()
    if not pred.is_dir():
        raise RadmtlError(f"{pred}: prediction folder not found; pass the --output folder of radmtl infer")
    index = discover(ref)
    ref_cases = {case.case_id: case for case in index.cases}
    # By the reference's ids, so a nested id (AB/1ABA005) finds PRED/AB/1ABA005.
    common = sorted(c for c in ref_cases if (pred / c).is_dir())
    if not common:
        pred_folders = sorted(p.name for p in pred.iterdir() if p.is_dir() and not p.name.startswith("."))
        raise RadmtlError(
            f"{pred}: no case folder matches a case of {index.root} (predictions: "
            f"{', '.join(pred_folders[:5]) or 'none'}; reference: {', '.join(list(ref_cases)[:5])}); pass "
            "the --output folder of radmtl infer run on this reference"
        )
    result = Evaluation(rows={}, summary={})
    result.missing = {c: f"no prediction folder {pred / c}" for c in ref_cases if c not in common}
    # What infer wrote for some case it should have written for every case whose reference can be
    # compared with it: an sCT where the reference has a CT, a seg where it has labels.
    written = {stem for c in common for stem in ("sct", "seg") if pred_file(pred / c, stem) is not None}
    for case_id in common:
        for stem, ref_key in (("sct", "ct"), ("seg", "labels")):
            if stem in written and ref_key in ref_cases[case_id].paths and pred_file(pred / case_id, stem) is None:
                result.missing[case_id] = f"{pred / case_id} has no {stem} file, although other cases have one"
    if result.missing:
        log.debug("%d of %d reference case(s) have no complete prediction: %s", len(result.missing),
                    len(ref_cases), ", ".join(result.missing))
    for case_id in common:
        if case_id in result.missing:
            continue
        try:
            row, curve, risk_curves = evaluate_case(case_id, pred / case_id, ref_cases[case_id].paths, index.labels)
        except RadmtlError as err:
            result.failures[case_id] = str(err)
            continue
        result.rows[case_id] = row
        if curve is not None:
            result.calibration[case_id] = curve
        if risk_curves:
            result.risk_coverage[case_id] = risk_curves
    result.summary = M.summarise(list(result.rows.values()))
    result.undefined = D.undefined_cases(result.rows)
    result.case_groups = {c: ref_cases[c].group or TOP_LEVEL_GROUP for c in result.rows}
    if len({case.group for case in index.cases}) > 1:
        for group in dict.fromkeys(result.case_groups.values()):
            result.groups[group] = M.summarise([row for c, row in result.rows.items()
                                                if result.case_groups[c] == group])
    return result


def group_sizes(result: Evaluation) -> dict[str, int]:
    """Evaluated cases per group, in the order of ``result.groups``."""
    return {g: sum(1 for c in result.case_groups.values() if c == g) for g in result.groups}


# --- writing and printing ----------------------------------------------------------------------


def _json_number(value: float) -> float | str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"  # JSON has no infinity; PSNR of identical images is +inf
    return value


def _json_summary(summary: dict[str, tuple[float, float]]) -> dict[str, dict[str, Any]]:
    return {k: {"mean": _json_number(m), "sd": _json_number(s)} for k, (m, s) in summary.items()}


def write_reports(result: Evaluation, csv_path: Path, json_path: Path, pred: Path, ref: Path) -> list[Path]:
    """CSV (one row per case, then ``mean`` and ``sd``), JSON, the calibration and risk–coverage PNGs."""
    from radmtl.evaluation.plots import calibration_plot, risk_coverage_plot

    names: dict[str, None] = {}
    for row in result.rows.values():
        names.update(dict.fromkeys(row))
    columns = list(names)
    written = []
    try:
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(csv_path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as stream:
            writer = csv.writer(stream)
            writer.writerow(["case", *columns])
            for case_id, row in result.rows.items():
                writer.writerow([case_id, *(row.get(c, math.nan) for c in columns)])
            for i, label in enumerate(("mean", "sd")):
                writer.writerow([label, *(result.summary[c][i] for c in columns)])
        written.append(csv_path)
        document = {
            "pred": str(pred.resolve()), "ref": str(Path(ref).resolve()),
            "n_cases": len(result.rows),
            "missing": result.missing,
            "cases": {case_id: {k: _json_number(v) for k, v in row.items()} for case_id, row in result.rows.items()},
            "summary": _json_summary(result.summary),
            "undefined": result.undefined,
            "failed": result.failures,
        }
        if result.groups:
            document["groups"] = {
                group: {"n_cases": group_sizes(result)[group],
                        "cases": [c for c, g in result.case_groups.items() if g == group],
                        "summary": _json_summary(summary)}
                for group, summary in result.groups.items()}
        if result.dose is not None:
            from radmtl.evaluation.dose.evaluate_dose import to_json

            document["dose"] = to_json(result.dose)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(json_path) as tmp:
            tmp.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        written.append(json_path)
        if result.calibration:
            written.append(calibration_plot(result.calibration, pred / CALIBRATION_PNG))
        if result.risk_coverage:
            written.append(risk_coverage_plot(np.array(D.RISK_COVERAGE_FRACTIONS),
                                              D.mean_risk_coverage(result.risk_coverage), pred / RISK_COVERAGE_PNG))
    except OSError as err:
        raise RadmtlError(f"cannot write evaluation reports ({err.strerror}: {err.filename}); "
                          "check --out/--json and permissions") from err
    return written


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "inf"
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"


def format_tables(result: Evaluation) -> str:
    """A compact per-case table of key metrics, then every metric as mean ± SD."""
    keys = [k for k in KEY_METRICS if k in result.summary]
    lines = []
    if keys:
        header = ["case", *keys]
        rows = [[c, *(_fmt(r.get(k, math.nan)) for k in keys)] for c, r in result.rows.items()]
        lines += table_lines(header, rows)
        lines.append("")
    width = max((len(k) for k in result.summary), default=6)
    missing = f"; {len(result.missing)} reference case(s) without a complete prediction are not in it" \
        if result.missing else ""
    lines.append(f"{'metric'.ljust(width)}  mean ± sd (n = {len(result.rows)} case(s){missing})")
    for name, (mean, sd) in result.summary.items():
        lines.append(f"{name.ljust(width)}  {_fmt(mean)} ± {_fmt(sd)}")
    lines += D.undefined_lines(result.undefined)  # the cases the means above left out
    if result.groups:
        sizes = group_sizes(result)
        header = ["metric", *(f"{g} (n = {sizes[g]})" for g in result.groups)]
        rows = [[name, *(f"{_fmt(s.get(name, (math.nan,) * 2)[0])} ± {_fmt(s.get(name, (math.nan,) * 2)[1])}"
                         for s in result.groups.values())] for name in result.summary]
        lines += ["", "mean ± sd per group", *table_lines(header, rows)]
    return "\n".join(lines)


def mlflow_group_name(group: str) -> str:
    """``group`` in the characters every MLflow store accepts in a metric name (others become ``_``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", group).strip("_") or "group"


def log_to_mlflow(result: Evaluation, files: list[Path], run_id: str, tracking_uri: str | None) -> int:
    """Log mean metrics as ``eval_<name>`` (per group ``eval_<group>_<name>``), for each AUROC/AP the
    number of cases where it is undefined as ``eval_n_undefined_<name>``, and the report files as
    artifacts of an existing run; return the number of metrics logged."""
    import mlflow
    from mlflow.entities import Metric

    from radmtl.tracking.tracker import default_tracking_uri

    uri = tracking_uri or default_tracking_uri()
    client = mlflow.MlflowClient(tracking_uri=uri)
    timestamp = int(time.time() * 1000)
    entries = [Metric(f"eval_{name}", float(mean), timestamp, 0)
               for name, (mean, _) in result.summary.items() if math.isfinite(mean)]
    entries += [Metric(f"eval_{mlflow_group_name(group)}_{name}", float(mean), timestamp, 0)
                for group, summary in result.groups.items()
                for name, (mean, _) in summary.items() if math.isfinite(mean)]
    entries += [Metric(f"eval_n_undefined_{name}", float(len(cases)), timestamp, 0)
                for name, cases in result.undefined.items()]
    if result.dose is not None:
        from radmtl.evaluation.dose.evaluate_dose import mlflow_metrics

        entries += [Metric(name, value, timestamp, 0) for name, value in mlflow_metrics(result.dose).items()]
    try:
        client.get_run(run_id)
        for start in range(0, len(entries), 500):
            client.log_batch(run_id, metrics=entries[start:start + 500])
        for path in files:
            client.log_artifact(run_id, str(path), artifact_path="evaluation")
    except Exception as err:  # noqa: BLE001 - MlflowException, connection and store errors alike
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise RadmtlError(f"--run-id {run_id}: cannot log to MLflow at {uri} ({first_line}); check the "
                          "run id and --tracking-uri") from err
    return len(entries)


def _dose_options(args: argparse.Namespace):
    """The ``--dose`` settings of the command line (``--target``, ``--hlut``, ``--dose-modalities``,
    ``--dose-grid-mm``, ``--dose-samples``)."""
    from radmtl.evaluation.dose.engine import PlanSettings
    from radmtl.evaluation.dose.evaluate_dose import DoseOptions
    from radmtl.evaluation.dose.hlut import load_hlut

    modalities = tuple(m.strip() for m in str(args.dose_modalities).split(",") if m.strip())
    settings = PlanSettings(hlut=load_hlut(args.hlut), dose_grid_mm=args.dose_grid_mm)
    return DoseOptions(target=args.target, modalities=modalities, settings=settings,
                       samples=getattr(args, "dose_samples", None))


def evaluate_from_cli(args: argparse.Namespace) -> int:
    """``radmtl evaluate``: print tables, write CSV/JSON/PNG, optionally log to MLflow."""
    dose_options = _dose_options(args) if getattr(args, "dose", False) else None
    if dose_options is not None:
        from radmtl.evaluation.dose.evaluate_dose import check_dependencies

        check_dependencies()  # a missing extra fails here, before anything is computed or written
    result = evaluate(args.pred, args.ref)
    if dose_options is not None:
        from radmtl.evaluation.dose.evaluate_dose import evaluate_dose

        complete = [c for c in result.rows]
        result.dose = evaluate_dose(args.pred, args.ref, dose_options, case_ids=complete)
        result.failures.update({c: m for c, m in result.dose.failures.items() if c not in result.failures})
    csv_path = args.out if args.out is not None else args.pred / "metrics.csv"
    json_path = args.json if args.json is not None else args.pred / "metrics.json"
    files = write_reports(result, csv_path, json_path, args.pred, args.ref)
    print(format_tables(result))
    if result.dose is not None:
        from radmtl.evaluation.dose.evaluate_dose import format_tables as format_dose_tables

        print()
        print(format_dose_tables(result.dose))
        files += result.dose.figures
    print(f"wrote {', '.join(str(p) for p in files)}")
    if args.run_id:
        n_logged = log_to_mlflow(result, files, args.run_id, args.tracking_uri)
        print(f"logged {n_logged} metric(s) to MLflow run {args.run_id}")
    for case_id, message in result.failures.items():
        print(f"radmtl evaluate: error: {message if message.startswith('case ') else f'case {case_id}: {message}'}",
              file=sys.stderr)
    allow = getattr(args, "allow_missing", False)
    for case_id, what in result.missing.items():
        print(f"radmtl evaluate: {'warning' if allow else 'error'}: case {case_id} not evaluated: {what}; "
              f"{'left out as --allow-missing asks' if allow else 'run radmtl infer on it, or pass --allow-missing'}",
              file=sys.stderr)
    return 1 if result.failures or (result.missing and not allow) else 0
