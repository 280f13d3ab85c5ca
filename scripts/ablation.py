#!/usr/bin/env python
"""Bragman et al. 2018, Table 1 ablation and calibration study on radmtl phantoms, over training seeds.

Generates (or takes) a phantom dataset with a fixed train/validation/test split, trains every model of
``MODELS`` — one recipe (``configs/quick.yaml``, the demo's, by default) with only the loss changed, so
every model gets the same optimiser steps — once per training seed (``--seeds``; the config's ``seed``:
initialisation, patch sampling, dropout) on the same data, in one MLflow experiment (each (model, seed)
a child run of one parent run), runs ``radmtl infer`` with MC dropout on the test cases (for σ models
also without the σ-scaling factor: calibration before and after recalibration) and ``radmtl evaluate``
on the outputs, and writes ``results.md``: mean ± SD over seeds, paired differences between models with
95 % t-intervals, the learned s against its optimum and the gradient balance in the shared encoder, run
ids, timings, machine and command, plus figures.

The phantoms' seeds are radmtl.data.phantom's: training/validation cases of TRAIN_SEED, test cases of
TEST_SEED, on which no recipe choice was made (those were made on DESIGN_SEED cases).

    python scripts/ablation.py                         # quick: 8 models × seeds 0 1 2 on 2 CPU cores
    python scripts/ablation.py --mode budget           # the 6 mm grid, configs/budget.yaml
    python scripts/ablation.py --mode full             # a GPU: more/larger phantoms, more epochs
    python scripts/ablation.py --mode tiny --out DIR   # seconds per run, seeds 0 1; for the test; writes under DIR only
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from radmtl.data.phantom import DESIGN_SEED, TEST_SEED, TRAIN_SEED
from radmtl.data.phantom.realism import Realism

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"  # resolved at import: the recipes always come from the repository
# (name, paper model, overrides) in table order. Every model is the mode's recipe with only these keys
# changed, so equal optimiser steps and equal everything else. All but the last run the default
# optimisation (train.grad_clip_mode: global, the weighted loss back-propagated as it is).
MODELS = [
    ("m1_sct", "M1 sCT only", ["loss.tasks=[sct]", "loss.weighting=fixed"]),
    ("m1_seg", "M1 seg only", ["loss.tasks=[seg]", "loss.weighting=fixed", "train.best_metric=val_dice_mean",
                               "train.best_mode=max"]),
    ("mt_fixed", "MT fixed 1:1", ["loss.weighting=fixed"]),
    # a constant coefficient on one task, as in the seed experiment where 0.08·BCE against BCE changed
    # the result: does a hand-set weight do what the learned σ does?
    ("mt_fixed_seg008", "MT fixed, w_seg 0.08", ["loss.weighting=fixed", "loss.fixed_weight_seg=0.08"]),
    ("m3_homoscedastic", "M3 homoscedastic", ["loss.weighting=homoscedastic"]),
    ("hetero_homo", "σ(x) sCT + scalar seg (default)", []),
    ("m4_hetero", "M4 hetero (both)", ["loss.weighting=hetero"]),
    # equal task norms on the shared encoder replace the σ weighting there (DESIGN.md section 1)
    ("hetero_homo_balanced", "default + balanced encoder norms (departure)", ["train.grad_clip_mode=balanced"]),
]
DEFAULT_MODEL = "hetero_homo"
# paired differences are taken against these: the fixed-weight multi-task model and the single-task ones
SCT_REFERENCES = ("mt_fixed", "m1_sct")
SEG_REFERENCES = ("mt_fixed", "m1_seg")
ORGANS = ["bladder", "rectum", "prostate", "femoral_head_left", "femoral_head_right"]
HD95_MEAN = "hd95_mean_mm"  # derived per seed: the mean over organs of the per-organ HD95 means
# Per mode: the recipe, phantom grid (generated at the recipe's spacing, so σ and the true noise SD
# share one grid), case counts, MC samples, and overrides applied identically to every model.
# tiny: one window per volume (patch = grid) and one torch thread: tensors this small gain nothing from a
# second thread, and on shared cores its spin-waiting doubled the test's time (56 s against 130 s).
MODES = {
    "tiny": dict(base="quick.yaml", shape=(32, 24, 20), spacing=(12.0, 12.0, 9.6), n_train=2, n_val=1,
                 n_test=1, mc=2, threads=1, overrides=[
                     "train.epochs=1", "train.steps_per_epoch=2", "train.log_every=1", "train.val_every=1", "model.channels=[4,8]",
                     "model.strides=[2]", "data.spacing=[12.0,12.0,9.6]", "data.patch_size=[32,24,20]",
                     "train.warmup_epochs=0", "data.cache=false", "infer.mc_samples=2"]),
    # the demo's recipe and grid: the only one in which 8 models × 3 seeds fit a CPU budget
    "quick": dict(base="quick.yaml", shape=(56, 40, 32), spacing=(7.0, 7.0, 6.0), n_train=19, n_val=5,
                  n_test=6, mc=8, overrides=[]),
    "budget": dict(base="budget.yaml", shape=(64, 48, 40), spacing=(6.0, 6.0, 4.8), n_train=19, n_val=5,
                   n_test=6, mc=8, overrides=[]),
    "full": dict(base="default.yaml", shape=(96, 96, 64), spacing=(4.0, 3.0, 3.0), n_train=24, n_val=4,
                 n_test=8, mc=20, overrides=["data.spacing=[4.0,3.0,3.0]"]),
}
DEFAULT_SEEDS = {"tiny": [0, 1]}  # two seeds keep the test fast; every other mode: 0 1 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=list(MODES), default="quick")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="training seeds, each model trained once per seed (default 0 1 2; 0 1 in tiny mode)")
    p.add_argument("--out", type=Path, default=None, help="work folder (default runs/ablation-<mode>)")
    p.add_argument("--tracking-uri", default=None, help="MLflow URI (default sqlite OUT/mlflow.db)")
    p.add_argument("--data", type=Path, default=None,
                   help="existing phantom dataset (dataset.json with training/validation) + DATA/test/")
    p.add_argument("--docs", type=Path, default=None,
                   help="where results.md and figures/ go (default docs/; OUT/docs in tiny mode)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config override applied to every model (repeatable)")
    p.add_argument("--models", default=None, help="comma-separated subset of models (default all)")
    args = p.parse_args(argv)
    if args.seeds is None:
        args.seeds = DEFAULT_SEEDS.get(args.mode, [0, 1, 2])
    if len(set(args.seeds)) != len(args.seeds):  # a repeated seed would pair a run with itself
        p.error(f"--seeds repeats a seed: {args.seeds}")
    return args


def make_data(data_dir: Path, mode: dict) -> tuple[Path, Path]:
    """Phantom train/val dataset of TRAIN_SEED (fixed split in dataset.json) and a test dataset of TEST_SEED."""
    from radmtl.data.phantom import generate_dataset

    test_dir = data_dir / "test"
    if (data_dir / "dataset.json").is_file() and test_dir.is_dir():
        return data_dir, test_dir
    n_tv = mode["n_train"] + mode["n_val"]
    generate_dataset(data_dir, n_tv, seed=TRAIN_SEED, shape=mode["shape"], spacing=mode["spacing"])
    doc = json.loads((data_dir / "dataset.json").read_text())
    entries = doc["training"]
    doc["training"], doc["validation"] = entries[: mode["n_train"]], entries[mode["n_train"]:]
    (data_dir / "dataset.json").write_text(json.dumps(doc, indent=2) + "\n")
    generate_dataset(test_dir, mode["n_test"], seed=TEST_SEED, shape=mode["shape"], spacing=mode["spacing"])
    return data_dir, test_dir


def load_configs(names: list[str], base: str, overrides: list[str]) -> dict:
    """Each model's config: the recipe ``base`` with the model's overrides, then ``overrides``."""
    from radmtl.config import load_config

    loss = {name: extra for name, _, extra in MODELS}
    return {name: load_config(CONFIG_DIR / base, loss[name] + overrides) for name in names}


def run_model(name: str, cfg, data_dir: Path, test_dir: Path, out: Path, uri: str, experiment: str,
              parent_id: str | None, mc: int, tags: dict[str, str] | None = None) -> dict:
    """Train, infer (MC dropout) and evaluate one run named ``name``; returns ids, timings and the evaluation.

    ``parent_id`` makes the run a child of that MLflow run; ``tags`` are set on it as well.
    """
    from radmtl.tracking.tracker import start_tracking
    from radmtl.training.train import train

    run_dir = out / "runs" / name
    if run_dir.exists():
        shutil.rmtree(run_dir)
    tracker = start_tracking(uri, experiment, name, run_dir)
    all_tags = ({"mlflow.parentRunId": parent_id} if parent_id is not None else {}) | (tags or {})
    if all_tags:
        tracker.set_tags(all_tags)
    t0 = time.perf_counter()
    state = train(cfg, data_dir, run_dir, tracker=tracker, progress=False)
    t1 = time.perf_counter()
    t_train = t1 - t0
    evaluation = infer_and_evaluate(name, run_dir, test_dir, out / "pred" / name, out / "eval" / f"{name}.json",
                                    mc, uri, state.run_id)
    result = {"run_id": state.run_id, "best_epoch": state.best_epoch, "train_s": t_train, "eval": evaluation,
              "pred": out / "pred" / name, "history": read_history(run_dir / "metrics.jsonl")}
    if cfg.model.sct_log_var:  # the same model without its σ-scaling factor: calibration before recalibration
        result["eval_raw"] = infer_and_evaluate(name, run_dir, test_dir, out / "pred_raw" / name,
                                                out / "eval" / f"{name}_raw.json", mc, uri, None,
                                                ["--no-sigma-scaling"])
    t_end = time.perf_counter()  # infer_s covers both inferences of a σ model: train_s + infer_s = total_s
    result["infer_s"], result["total_s"] = t_end - t1, t_end - t0
    return result


def infer_and_evaluate(name: str, run_dir: Path, test_dir: Path, pred: Path, report: Path, mc: int, uri: str,
                       run_id: str | None, infer_flags: list[str] = ()) -> dict:
    from radmtl.cli import main as radmtl

    if pred.exists():
        shutil.rmtree(pred)
    # --no-review: the ablation reads metrics.json only; each case's review figure cost ~1 s (about a quarter of
    # the tiny mode's time, profiled).
    rc = radmtl(["-q", "infer", "--model", str(run_dir / "checkpoint_best.pt"), "--input", str(test_dir),
                 "--output", str(pred), "--mc-samples", str(mc), "--no-progress", "--no-review", *infer_flags])
    if rc != 0:
        raise SystemExit(f"{name}: radmtl infer failed (exit {rc})")
    log_to = ["--run-id", run_id, "--tracking-uri", uri] if run_id else []
    rc = radmtl(["-q", "evaluate", "--pred", str(pred), "--ref", str(test_dir), "--json", str(report),
                 "--out", str(report.with_suffix(".csv")), *log_to])
    if rc != 0:
        raise SystemExit(f"{name}: radmtl evaluate failed (exit {rc})")
    return json.loads(report.read_text())


def read_history(metrics_jsonl: Path) -> dict[str, list[tuple[int, float]]]:
    """Per-step series of the run: ``{metric: [(step, value), ...]}`` (the ``step_*`` records)."""
    series: dict[str, list[tuple[int, float]]] = {}
    for line in metrics_jsonl.read_text().splitlines():
        record = json.loads(line)
        if "epoch" in record:
            continue
        for key, value in record.items():
            if key.startswith("step_"):
                series.setdefault(key[len("step_"):], []).append((int(record["step"]), float(value)))
    return series


def log_var_trajectories(results: dict, fig_dir: Path) -> tuple[list[list[str]], list[Path]]:
    """M3's learned s against the analytic optimum of the current task loss (log L, log 2L)."""
    from matplotlib.figure import Figure

    rows, figs = [], []
    for name, res in results.items():
        hist = res["history"]
        pairs = [(task, f"log_var_{task}", f"loss_{task}", 1.0 if task == "sct" else 2.0) for task in ("sct", "seg")
                 if f"log_var_{task}" in hist]
        if not pairs:
            continue
        fig = Figure(figsize=(6.0, 3.6), layout="constrained")
        ax = fig.subplots()
        for task, s_key, loss_key, factor in pairs:
            steps, s = zip(*hist[s_key])
            optimum = [float(np.log(factor * v)) for _, v in hist[loss_key]]
            ax.plot(steps, s, label=f"s_{task} (learned)")
            ax.plot(steps, optimum, linestyle="--", label=f"log {'2' if factor == 2 else ''}L_{task} (optimum)")
            tail = max(1, len(s) // 10)
            rows.append([name, task, f"{s[0]:.2f}", f"{np.mean(s[-tail:]):.2f}", f"{np.mean(optimum[-tail:]):.2f}",
                         str(steps[-1])])
        ax.set_xlabel("step")
        ax.set_ylabel("s = log σ²")
        ax.set_title(f"{name}: learned task log-variances")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        path = fig_dir / f"log_var_trajectory_{name}.png"
        fig.savefig(path, dpi=100)
        figs.append(path)
    return rows, figs


def gradient_balance(results: dict) -> list[list[str]]:
    """Encoder gradient ratio sCT/seg: at the first logged step, median over the run, last step."""
    rows = []
    for name, res in results.items():
        hist = res["history"]
        for key, what in (("grad_ratio_encoder_sct_seg", "raw"), ("grad_ratio_encoder_sct_seg_applied", "applied")):
            if key in hist:
                values = [v for _, v in hist[key]]
                rows.append([name, what, f"{values[0]:.3g}", f"{np.median(values):.3g}", f"{values[-1]:.3g}"])
    return rows


def voxels(pred: Path, test_dir: Path) -> dict[str, np.ndarray] | None:
    """Body voxels of all test cases: ct, sct, σ_total (or None without an sCT)."""
    from radmtl.data.io import read_volume

    out: dict[str, list] = {"ct": [], "sct": [], "sigma": []}
    for case in sorted(p for p in pred.iterdir() if p.is_dir()):
        sigma_file = next((case / f for f in ("sct_sigma_total.nii.gz", "sct_sigma_aleatoric.nii.gz")
                           if (case / f).is_file()), None)
        if not (case / "sct.nii.gz").is_file() or sigma_file is None:
            return None
        body = read_volume(test_dir / case.name / "mask.nii.gz").array > 0
        out["ct"].append(read_volume(test_dir / case.name / "ct.nii.gz").array[body])
        out["sct"].append(read_volume(case / "sct.nii.gz").array[body])
        out["sigma"].append(read_volume(sigma_file).array[body])
    return {k: np.concatenate(v).astype(np.float64) for k, v in out.items()} if out["ct"] else None


def figures(results: dict, test_dir: Path, fig_dir: Path) -> list[Path]:
    from radmtl.evaluation import calibration as C
    from radmtl.data.io import read_volume
    from radmtl.evaluation.plots import calibration_plot, error_vs_sigma_plot
    from radmtl.evaluation.qa import qa_images

    fig_dir.mkdir(parents=True, exist_ok=True)
    written, curves = [], {}
    for name, res in results.items():
        v = voxels(res["pred"], test_dir)
        if v is None:
            continue
        written.append(error_vs_sigma_plot(np.abs(v["ct"] - v["sct"]), v["sigma"], fig_dir / f"error_vs_sigma_{name}.png",
                                           label=name, title=f"{name}: |error| vs σ_total (test body voxels)"))
        col = {k: a.reshape(-1, 1, 1) for k, a in v.items()}  # metrics want 3D arrays; pool all cases
        curves[name] = C.calibration_curve(col["ct"], col["sct"], col["sigma"], np.ones(col["ct"].shape, bool))
    if curves:
        written.append(calibration_plot(curves, fig_dir / "calibration.png",
                                        title="sCT calibration, σ_total, all test body voxels"))
    qa_model = next((m for m in ("hetero_homo", "m4_hetero") if m in results), None)
    if qa_model is not None:
        case = sorted(p for p in results[qa_model]["pred"].iterdir() if p.is_dir())[0]
        ref = test_dir / case.name
        mr = read_volume(ref / "mr.nii.gz")
        sigma = case / "sct_sigma_total.nii.gz"
        written += qa_images(mr.array, read_volume(ref / "ct.nii.gz").array, read_volume(case / "sct.nii.gz").array,
                             read_volume(sigma).array if sigma.is_file() else None,
                             read_volume(case / "seg.nii.gz").array, read_volume(ref / "labels.nii.gz").array,
                             read_volume(ref / "mask.nii.gz").array, fig_dir, f"qa_{qa_model}_{case.name}",
                             mr.grid.spacing, label_names=json.loads((test_dir / "dataset.json").read_text())["labels"],
                             views=("coronal",))
    return written


# --- numbers over seeds -----------------------------------------------------------------------------
# Each (model, seed) run is summarised by radmtl evaluate as mean ± SD over the test cases; a model's
# number here is the mean ± SD over seeds of those per-seed case means: the seed-to-seed spread is what
# tells whether two models differ, the case-to-case spread is the same cases for every model.


def case_mean(summary: dict, key: str) -> float | None:
    """One run's value of ``key``: the mean over its test cases (None where evaluate has none)."""
    if key == HD95_MEAN:
        per_organ = [case_mean(summary, f"hd95_{organ}_mm") for organ in ORGANS]
        return None if any(v is None for v in per_organ) else float(np.mean(per_organ))
    value = (summary.get(key) or {}).get("mean")
    return None if value is None else float(value)  # float() also reads evaluate's "inf"


def per_seed(runs: dict[int, dict], key: str, which: str = "eval") -> list[float | None]:
    """``key`` for each seed's run, in seed order (``which``: ``eval``, or ``eval_raw`` before σ-scaling)."""
    return [case_mean(run.get(which, {}).get("summary", {}), key) for run in runs.values()]


def mean_sd(values: list[float | None]) -> tuple[float, float | None] | None:
    """Mean and sample SD over seeds (SD None with one seed); None if a seed lacks the value."""
    if not values or any(v is None for v in values):
        return None
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), (float(a.std(ddof=1)) if a.size > 1 else None)


def seed_mean(values: list[float | None]) -> float | None:
    stats = mean_sd(values)
    return None if stats is None else stats[0]


def fmt(values: list[float | None], digits: int = 1) -> str:
    """'mean ± SD' over seeds ('mean' with one seed, '—' where a seed lacks the value)."""
    stats = mean_sd(values)
    if stats is None:
        return "—"
    mean, sd = stats
    return f"{mean:.{digits}f}" + ("" if sd is None else f" ± {sd:.{digits}f}")


def paired_difference(a: list[float | None], b: list[float | None]) -> dict | None:
    """``a − b`` paired by seed: the per-seed differences, their mean, the 95 % t-interval of the mean
    (None with one seed: no spread to judge by) and whether that interval excludes 0."""
    if not a or len(a) != len(b) or any(v is None for v in a + b):
        return None
    from scipy import stats

    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    mean = float(d.mean())
    if d.size < 2:
        return {"diffs": d.tolist(), "mean": mean, "ci": None, "resolved": False}
    half = float(stats.t.ppf(0.975, d.size - 1) * d.std(ddof=1) / np.sqrt(d.size))
    ci = (mean - half, mean + half)
    return {"diffs": d.tolist(), "mean": mean, "ci": ci, "resolved": bool(ci[0] > 0 or ci[1] < 0)}


def comparisons(results: dict, cfgs: dict) -> list[dict]:
    """Body MAE of every sCT model and mean Dice of every segmentation model, each minus each reference's.

    The references against each other once, in the order of ``*_REFERENCES``: mt_fixed − m1_sct (does
    multi-task training help?), not also its mirror image.
    """
    rows = []
    for key, what, task, refs, unit, digits in (("mae_hu", "body MAE", "sct", SCT_REFERENCES, " HU", 2),
                                                ("dice_mean", "mean Dice", "seg", SEG_REFERENCES, "", 3)):
        for name in results:
            if task not in cfgs[name].loss.tasks:
                continue
            for ref in refs[refs.index(name) + 1:] if name in refs else refs:
                if ref not in results:
                    continue
                seeds = [s for s in results[name] if s in results[ref]]  # paired: both runs of one training seed
                diff = paired_difference(per_seed({s: results[name][s] for s in seeds}, key),
                                         per_seed({s: results[ref][s] for s in seeds}, key))
                rows.append({"model": name, "ref": ref, "what": what, "unit": unit, "digits": digits, "diff": diff})
    return rows


def comparison_rows(rows: list[dict]) -> list[list[str]]:
    out = []
    for r in rows:
        d, k = r["diff"], r["digits"]
        if d is None:
            out.append([r["model"], f"{r['what']} − {r['ref']}", "—", "—", "—"])
            continue
        ci = "—" if d["ci"] is None else f"[{d['ci'][0]:+.{k}f}, {d['ci'][1]:+.{k}f}]"
        out.append([r["model"], f"{r['what']} − {r['ref']}", f"{d['mean']:+.{k}f}{r['unit']}", ci,
                    "yes" if d["resolved"] else "no"])
    return out


def comparison_sentence(rows: list[dict]) -> str:
    """Which differences the seeds resolve (interval excludes 0) and which they cannot."""
    def name(r: dict) -> str:
        return f"{r['model']} − {r['ref']} ({r['what']} {r['diff']['mean']:+.{r['digits']}f}{r['unit']})"

    known = [r for r in rows if r["diff"] is not None]
    resolved = [name(r) for r in known if r["diff"]["resolved"]]
    unresolved = [name(r) for r in known if not r["diff"]["resolved"]]
    why = "the interval includes 0" + (", or one seed only" if any(r["diff"]["ci"] is None for r in known) else "")
    return (f"Resolved by these seeds (95 % interval excludes 0): {'; '.join(resolved) or 'none'}. "
            f"Not resolved ({why}): {'; '.join(unresolved) or 'none'}.")


def target_checks(results: dict) -> list[tuple[str, float | None, bool | None]]:
    """The default model's targets, judged on its means over seeds: (what, value, passed)."""
    if DEFAULT_MODEL not in results:
        return []
    runs = results[DEFAULT_MODEL]
    checks = [("|z mean| ≤ 0.1", seed_mean(per_seed(runs, "zscore_mean")), lambda v: abs(v) <= 0.1),
              ("0.9 ≤ z SD ≤ 1.1", seed_mean(per_seed(runs, "zscore_sd")), lambda v: 0.9 <= v <= 1.1),
              ("0.93 ≤ coverage_95 ≤ 0.97", seed_mean(per_seed(runs, "coverage_95")), lambda v: 0.93 <= v <= 0.97)]
    if "m1_sct" in results and (ref := seed_mean(per_seed(results["m1_sct"], "mae_hu"))) is not None:
        checks.append((f"body MAE ≤ single-task sCT ({ref:.1f} HU)", seed_mean(per_seed(runs, "mae_hu")),
                       lambda v, ref=ref: v <= ref))
    if "m1_seg" in results and (ref := seed_mean(per_seed(results["m1_seg"], "dice_mean"))) is not None:
        checks.append((f"mean Dice ≥ single-task seg − 0.01 ({ref:.3f} − 0.01)",
                       seed_mean(per_seed(runs, "dice_mean")), lambda v, ref=ref: v >= ref - 0.01))
    return [(what, value, None if value is None else bool(ok(value))) for what, value, ok in checks]


# --- the report -------------------------------------------------------------------------------------


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def calibration_rows(results: dict, cfgs: dict, names: list[str]) -> list[list[str]]:
    rows = []
    for n in names:
        runs, hetero = results[n], cfgs[n].model.sct_log_var

        def before_after(key: str) -> str:  # σ models were also run without σ-scaling: before → after
            return f"{fmt(per_seed(runs, key, 'eval_raw'), 3)} → {fmt(per_seed(runs, key), 3)}" if hetero \
                else fmt(per_seed(runs, key), 3)

        def sigma_only(key: str) -> str:  # σ_aleatoric against the truth: only a model with a σ head has one
            return fmt(per_seed(runs, key), 3) if hetero else "—"

        rows.append([n, "σ(x) + MC" if hetero else "MC only", fmt(per_seed(runs, "zscore_mean"), 3),
                     before_after("zscore_sd"), before_after("coverage_95"),
                     sigma_only("spearman_sigma_true_noise"), sigma_only("spearman_sigma_true_noise_soft_tissue"),
                     sigma_only("ratio_sigma_true_noise"), fmt(per_seed(runs, "spearman_error_sigma"), 3)])
    return rows


def write_results(path: Path, results: dict, cfgs: dict, info: dict, figs: list[Path]) -> str:
    """``results[model][seed]``: one run each; ``cfgs[model]``: the model's config (any seed's)."""
    names = list(results)
    label = {name: paper for name, paper, _ in MODELS}
    sct = [n for n in names if "sct" in cfgs[n].loss.tasks]
    seg = [n for n in names if "seg" in cfgs[n].loss.tasks]
    seeds, first = info["seeds"], info["seeds"][0]
    over = f"mean ± SD over the {len(seeds)} training seeds of each seed's mean over the test cases"
    lines = [f"# Ablation: Bragman et al. 2018 Table 1 on phantoms ({info['mode']} mode)", "",
             f"Produced by `{info['command']}` — numbers below are exactly what that run computed.", "",
             f"- mode: **{info['mode']}**; machine: {info['machine']}; device: {info['device']}",
             f"- data: {info['data']}",
             f"- seeds: training/validation phantoms of TRAIN_SEED = {TRAIN_SEED}; recipe choices were made on "
             f"DESIGN_SEED = {DESIGN_SEED} cases; every number in this report is measured on TEST_SEED = {TEST_SEED} "
             f"cases, on which no choice was made. Every model is trained once per training seed "
             f"{', '.join(map(str, seeds))} (config `seed`: initialisation, patch sampling, dropout) on the same data.",
             f"- every model: {info['shared']}",
             f"- MLflow: experiment `{info['experiment']}` at `{info['uri']}`, parent run `{info['parent']}`",
             f"- total wall time: {info['total_s'] / 60:.1f} min", ""]
    lines += [f"## sCT: MAE in HU on the test phantoms ({over})", ""]
    lines += table(["model", "paper", "body", "bone", *ORGANS],
                   [[n, label[n], fmt(per_seed(results[n], "mae_hu")), fmt(per_seed(results[n], "mae_bone_hu")),
                     *(fmt(per_seed(results[n], f"mae_{o}_hu")) for o in ORGANS)] for n in sct])
    lines += ["", f"## Segmentation: Dice per organ, HD95 and missed organs ({over})", "",
              "A missed organ (in the reference, no predicted voxel) scores Dice 0 and HD95 the image diagonal, "
              "a finite penalty rather than NaN; 'missed' is the number of missed organs per test case.", ""]
    lines += table(["model", "paper", *ORGANS, "mean Dice", "mean HD95 (mm)", "missed"],
                   [[n, label[n], *(fmt(per_seed(results[n], f"dice_{o}"), 3) for o in ORGANS),
                     fmt(per_seed(results[n], "dice_mean"), 3), fmt(per_seed(results[n], HD95_MEAN)),
                     fmt(per_seed(results[n], "missed_organs"), 2)] for n in seg])
    lines += ["", f"## sCT uncertainty: calibration of σ_total (MC dropout T = {info['mc']}), before and after "
              f"σ recalibration, and σ_aleatoric vs the phantom's true noise SD ({over})", "",
              "'before' is the same checkpoint run with `radmtl infer --no-sigma-scaling`. Spearman (soft "
              "tissue) ranks σ_aleatoric against the true SD over soft-tissue voxels where the model is "
              "accurate (|3×3×3 mean error| < true SD; `radmtl.evaluation.calibration.uncertainty_metrics`).", ""]
    lines += table(["model", "σ", "z mean", "z SD (before → after)", "coverage_95 (before → after)",
                    "Spearman σ_al vs true SD (body)", "Spearman (soft tissue)", "median σ_al/true SD",
                    "Spearman |err| vs σ"], calibration_rows(results, cfgs, sct))
    pairs = comparisons(results, cfgs)
    if pairs:
        lines += ["", "## Paired differences between models", "",
                  f"Each difference is taken within a training seed (the same seed for both models), then "
                  f"averaged over the n = {len(seeds)} seeds; the interval is the 95 % t-interval of that mean, "
                  "mean ± t(0.975, n − 1)·SD/√n ('—' with one seed). Every model is compared with `mt_fixed` "
                  "and with the single-task model; `mt_fixed` with the single-task model once (multi-task − "
                  "single-task). "
                  "Body MAE: negative is better; mean Dice: positive is better. 'resolved?': the interval excludes 0.",
                  ""]
        lines += table(["model", "difference", "mean", "95 % interval", "resolved?"], comparison_rows(pairs))
        lines += ["", comparison_sentence(pairs)]
    first_runs = {n: results[n][first] for n in names}
    traj_rows = info.get("trajectories", [])
    if traj_rows:
        lines += ["", "## Learned task weights: s against its analytic optimum", "",
                  f"From seed {first}'s run of each model. For a stationary task loss L the optimum is s = log L "
                  "(regression, L = MSE in scaled units) and s = log 2L (classification, L = CE + Dice). 'final' is "
                  "the mean over the last tenth of the logged steps.", ""]
        lines += table(["model", "task", "s at first logged step", "s final", "optimum final", "steps"], traj_rows)
    grad_rows = gradient_balance(first_runs)
    if grad_rows:
        lines += ["", "## Gradient balance in the shared encoder: ‖∇ sCT term‖ / ‖∇ segmentation term‖", "",
                  f"From seed {first}'s run of each model. 'raw': the two tasks' gradients on the encoder before "
                  "clipping; 'applied': what the encoder is updated with. Under the default `global` clip the "
                  "weighted loss is back-propagated as it is and one clip scales both tasks alike, so the applied "
                  "ratio equals the raw ratio; only `hetero_homo_balanced` (train.grad_clip_mode=balanced, a "
                  "departure) equalises the two encoder norms, so its applied ratio is 1.", ""]
        lines += table(["model", "ratio", "first logged step", "median", "last step"], grad_rows)
    lines += ["", "## Runs and timings", ""]
    lines += table(["model", "seed", "MLflow run id", "best epoch", "train (s)", "infer+eval (s)", "total (s)"],
                   [[n, str(s), f"`{r['run_id']}`", str(r["best_epoch"]), f"{r['train_s']:.0f}",
                     f"{r['infer_s']:.0f}", f"{r['total_s']:.0f}"]
                    for n in names for s, r in results[n].items()])
    lines += ["", f"## Targets for the default {DEFAULT_MODEL} (its means over seeds)", ""]
    for what, value, passed in target_checks(results):
        verdict = "n/a" if passed is None else ("pass" if passed else "**FAIL**")
        lines.append(f"- {what}: {'—' if value is None else f'{value:.3f}'} → {verdict}")
    lines += ["", "## Figures", "", f"From seed {first}'s runs.", ""]
    lines += [f"![{p.stem}](figures/{p.name})" for p in figs]
    lines += ["", "## Reading", "", "(written by hand after the run, from the numbers above; the script writes only this placeholder)", ""]
    return write_markdown(path, lines)


def write_markdown(path: Path, lines: list[str]) -> str:
    text = "\n".join(lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


def work_folders(args: argparse.Namespace, kind: str) -> tuple[Path, Path]:
    """The work folder (``--out``, default runs/<kind>-<mode>) and the report's folder (``--docs``, default
    docs/; in tiny mode OUT/docs, so that the test's run writes nothing outside OUT)."""
    out = (args.out or ROOT / "runs" / f"{kind}-{args.mode}").resolve()
    return out, (args.docs or (out / "docs" if args.mode == "tiny" else ROOT / "docs")).resolve()


def run_name(model: str, seed: int) -> str:
    return f"{model}-seed{seed}"


def progress(name: str, seed: int, result: dict) -> None:
    s = result["eval"]["summary"]
    print(f"[ablation] {name} seed {seed}: run {result['run_id']} done in {result['total_s']:.0f} s; "
          + ", ".join(f"{k}={s[k]['mean']:.3f}" for k in ("mae_hu", "dice_mean", "zscore_mean", "zscore_sd",
                                                            "coverage_95", "spearman_sigma_true_noise")
                      if k in s and isinstance(s[k]["mean"], float)), flush=True)


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run with ``n`` torch threads (None: as set), then restore the number: main also runs inside pytest."""
    import torch

    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with torch_threads(MODES[args.mode].get("threads")):
        return run_ablation(args, argv)


def run_ablation(args: argparse.Namespace, argv: list[str] | None) -> int:
    mode = MODES[args.mode]
    out, docs = work_folders(args, "ablation")
    out.mkdir(parents=True, exist_ok=True)
    uri = args.tracking_uri or f"sqlite:///{out / 'mlflow.db'}"
    names = [m for m, _, _ in MODELS if args.models is None or m in args.models.split(",")]
    overrides = mode["overrides"] + args.overrides
    # one config per (model, seed): the same recipe, only the training seed changes between seeds
    seed_cfgs = {seed: load_configs(names, mode["base"], [*overrides, f"seed={seed}"]) for seed in args.seeds}
    cfgs = seed_cfgs[args.seeds[0]]
    t_start = time.perf_counter()
    data_dir, test_dir = make_data(args.data.resolve() if args.data else out / "data", mode)

    from radmtl.device import cpu_has_native_bf16
    from radmtl.tracking.tracker import start_tracking

    experiment = cfgs[names[0]].tracking.experiment + f"-{args.mode}"
    parent = start_tracking(uri, experiment, f"ablation-{args.mode}", out / "parent")
    parent.log_params({"mode": args.mode, "models": ",".join(names), "seeds": ",".join(map(str, args.seeds)),
                       "overrides": " ".join(overrides) or "-", "data": str(data_dir), "test": str(test_dir),
                       "mc_samples": mode["mc"], "train_seed": TRAIN_SEED, "test_seed": TEST_SEED})
    results: dict[str, dict[int, dict]] = {name: {} for name in names}
    status = "FAILED"
    try:
        for name in names:
            for seed in args.seeds:
                print(f"[ablation] {name} seed {seed}: training ...", flush=True)
                results[name][seed] = run_model(
                    run_name(name, seed), seed_cfgs[seed][name], data_dir, test_dir, out, uri, experiment,
                    parent.run_id, mode["mc"], tags={"radmtl.ablation_model": name, "radmtl.ablation_seed": str(seed)})
                progress(name, seed, results[name][seed])
        first_runs = {name: results[name][args.seeds[0]] for name in names}  # figures: the first seed's runs
        figs = figures(first_runs, test_dir, docs / "figures")
        trajectories, trajectory_figs = log_var_trajectories(first_runs, docs / "figures")
        figs += trajectory_figs
        import torch
        c0 = cfgs[names[0]]
        realism = Realism()  # make_data generates with the defaults
        info = {
            "mode": args.mode, "mc": mode["mc"], "uri": uri, "experiment": experiment, "parent": parent.run_id,
            "seeds": args.seeds, "train_seed": TRAIN_SEED, "design_seed": DESIGN_SEED, "test_seed": TEST_SEED,
            "command": " ".join(["python", "scripts/ablation.py", *map(shlex.quote, argv if argv is not None else sys.argv[1:])]),
            "machine": f"{platform.platform()}, {platform.processor() or platform.machine()}, "
                       f"{os.cpu_count()} CPUs (torch threads {torch.get_num_threads()})",
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "data": f"phantoms {mode['shape']} voxels at {mode['spacing']} mm, {mode['n_train']} train / {mode['n_val']} validation "
                    f"(seed {TRAIN_SEED}) / {mode['n_test']} test cases (seed {TEST_SEED}); phantom realism at its defaults "
                    f"({realism.bowel_gas_candidates} bowel gas candidates, texture SD fat/muscle/trabecular "
                    f"{'/'.join(f'{v:g}' for v in realism.texture_sd_hu)} HU, {realism.deformation_rms_mm:g} mm RMS "
                    f"MR→CT deformation; radmtl/data/phantom/realism.py)",
            "shared": f"channels {list(c0.model.channels)}, dropout {c0.model.dropout}, "
                      f"patch {list(c0.data.patch_size)} at {list(c0.data.spacing)} mm, "
                      f"{c0.data.patches_per_volume} patches/volume, batch {c0.train.batch_size}, "
                      f"{c0.train.epochs} epochs × {c0.train.steps_per_epoch} steps, lr {c0.train.lr} "
                      f"(log-variances {c0.train.log_var_lr}), grad clip {c0.train.grad_clip} "
                      f"({c0.train.grad_clip_mode}), Dice weight {c0.loss.seg_dice_weight}, "
                      f"β-NLL {c0.loss.beta_nll}, likelihood {c0.loss.likelihood}, train.amp {c0.train.amp} "
                      f"(CPU with native bf16: {cpu_has_native_bf16()}); recipe configs/{mode['base']}",
            "total_s": time.perf_counter() - t_start,
            "trajectories": trajectories,
        }
        text = write_results(docs / "results.md", results, cfgs, info, figs)
        (out / "results.json").write_text(json.dumps(
            {n: {str(s): {k: v for k, v in r.items() if k not in ("pred", "history")} for s, r in runs.items()}
             for n, runs in results.items()} | {"info": info},
            indent=2, default=str))
        for path in [docs / "results.md", *figs]:
            parent.log_artifact(path, artifact_path="ablation")
        print(text)
        status = "FINISHED"
    finally:
        parent.end(status)
    return 0


if __name__ == "__main__":
    sys.exit(main())
