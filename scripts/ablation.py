#!/usr/bin/env python
"""Bragman et al. 2018, Table 1 ablation and calibration study on radmtl phantoms.

Generates (or takes) a phantom dataset with a fixed train/validation/test split, trains every model of
``MODELS`` — one recipe (``configs/budget.yaml`` on a CPU budget) with only the loss changed, so every
model gets the same optimiser steps — in one MLflow experiment (each model a child run of one parent
run), runs ``radmtl infer`` with MC dropout on the test cases (for σ models also without the σ-scaling
factor: calibration before and after recalibration) and ``radmtl evaluate`` on the outputs, and writes
``results.md`` with the tables (including the learned s against its optimum and the gradient balance in
the shared encoder), run ids, timings, machine and command, plus figures.

    python scripts/ablation.py --mode budget          # 2 CPU cores, writes docs/results.md, docs/figures/
    python scripts/ablation.py --mode full            # a GPU: more/larger phantoms, more epochs
    python scripts/ablation.py --mode tiny --out DIR  # seconds; for the test; writes under DIR only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"  # resolved at import: the recipes always come from the repository
# (name, paper model, loss overrides) in table order. Every model is the mode's recipe (configs/budget.yaml
# on a CPU budget) with only these keys changed, so equal optimiser steps and equal everything else.
MODELS = [
    ("m1_sct", "M1 sCT only", ["loss.tasks=[sct]", "loss.weighting=fixed"]),
    ("m1_seg", "M1 seg only", ["loss.tasks=[seg]", "loss.weighting=fixed", "train.best_metric=val_dice_mean",
                               "train.best_mode=max"]),
    ("m2b_sct_hetero", "M2b sCT + σ(x)", ["loss.tasks=[sct]", "loss.weighting=hetero_homo"]),
    ("mt_fixed", "MT fixed 1:1", ["loss.weighting=fixed"]),
    ("m3_homoscedastic", "M3 homoscedastic", ["loss.weighting=homoscedastic"]),
    ("hetero_homo", "σ(x) sCT + scalar seg (default)", []),
    ("hetero_homo_per_task", "default, per-task clip, unbalanced", ["train.grad_clip_mode=per_task"]),
    ("hetero_homo_global_clip", "default, one global clip", ["train.grad_clip_mode=global"]),
    ("m4_hetero", "M4 hetero (both)", ["loss.weighting=hetero"]),
]
ORGANS = ["bladder", "rectum", "prostate", "femoral_head_left", "femoral_head_right"]
# Per mode: the recipe, phantom grid (generated at the recipe's spacing, so σ and the true noise SD
# share one grid), case counts, MC samples, and overrides applied identically to every model.
MODES = {
    "tiny": dict(base="quick.yaml", shape=(32, 24, 20), spacing=(12.0, 12.0, 9.6), n_train=2, n_val=1,
                 n_test=1, mc=2, overrides=[
                     "train.epochs=1", "train.steps_per_epoch=2", "train.log_every=1", "train.val_every=1", "model.channels=[4,8]",
                     "model.strides=[2]", "data.spacing=[12.0,12.0,9.6]", "data.patch_size=[16,16,16]",
                     "train.warmup_epochs=0", "data.cache=false"]),
    "budget": dict(base="budget.yaml", shape=(64, 48, 40), spacing=(6.0, 6.0, 4.8), n_train=19, n_val=5,
                   n_test=6, mc=8, overrides=[]),
    "full": dict(base="default.yaml", shape=(96, 96, 64), spacing=(4.0, 3.0, 3.0), n_train=24, n_val=4,
                 n_test=8, mc=20, overrides=["data.spacing=[4.0,3.0,3.0]"]),
}
DATA_SEED, TEST_SEED = 0, 1000


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=list(MODES), default="budget")
    p.add_argument("--out", type=Path, default=None, help="work folder (default runs/ablation-<mode>)")
    p.add_argument("--tracking-uri", default=None, help="MLflow URI (default sqlite OUT/mlflow.db)")
    p.add_argument("--data", type=Path, default=None,
                   help="existing phantom dataset (dataset.json with training/validation) + DATA/test/")
    p.add_argument("--docs", type=Path, default=None,
                   help="where results.md and figures/ go (default docs/; OUT/docs in tiny mode)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config override applied to every model (repeatable)")
    p.add_argument("--models", default=None, help="comma-separated subset of models (default all)")
    return p.parse_args(argv)


def make_data(data_dir: Path, mode: dict) -> tuple[Path, Path]:
    """Phantom train/val dataset (fixed split in dataset.json) and a disjoint test dataset."""
    from radmtl.data.phantom import generate_dataset

    test_dir = data_dir / "test"
    if (data_dir / "dataset.json").is_file() and test_dir.is_dir():
        return data_dir, test_dir
    n_tv = mode["n_train"] + mode["n_val"]
    generate_dataset(data_dir, n_tv, seed=DATA_SEED, shape=mode["shape"], spacing=mode["spacing"])
    doc = json.loads((data_dir / "dataset.json").read_text())
    entries = doc["training"]
    doc["training"], doc["validation"] = entries[: mode["n_train"]], entries[mode["n_train"]:]
    (data_dir / "dataset.json").write_text(json.dumps(doc, indent=2) + "\n")
    generate_dataset(test_dir, mode["n_test"], seed=TEST_SEED, shape=mode["shape"], spacing=mode["spacing"])
    return data_dir, test_dir


def load_configs(names: list[str], base: str, overrides: list[str]) -> dict:
    """Each model's config: the recipe ``base`` with the model's loss overrides, then ``overrides``."""
    from radmtl.config import load_config

    loss = {name: extra for name, _, extra in MODELS}
    return {name: load_config(CONFIG_DIR / base, loss[name] + overrides) for name in names}


def run_model(name: str, cfg, data_dir: Path, test_dir: Path, out: Path, uri: str, experiment: str,
              parent_id: str | None, mc: int) -> dict:
    """Train, infer (MC dropout) and evaluate one model; returns ids, timings and the evaluation."""
    from radmtl.cli import main as radmtl
    from radmtl.tracking.tracker import start_tracking
    from radmtl.training.train import train

    run_dir = out / "runs" / name
    if run_dir.exists():
        shutil.rmtree(run_dir)
    tracker = start_tracking(uri, experiment, name, run_dir)
    if parent_id is not None:
        tracker.set_tags({"mlflow.parentRunId": parent_id, "radmtl.ablation_model": name})
    t0 = time.perf_counter()
    state = train(cfg, data_dir, run_dir, tracker=tracker, progress=False)
    t_train = time.perf_counter() - t0
    t1 = time.perf_counter()
    evaluation = infer_and_evaluate(name, run_dir, test_dir, out / "pred" / name, out / "eval" / f"{name}.json",
                                    mc, uri, state.run_id)
    t_infer = time.perf_counter() - t1
    result = {"run_id": state.run_id, "best_epoch": state.best_epoch, "train_s": t_train, "infer_s": t_infer,
              "total_s": time.perf_counter() - t0, "eval": evaluation, "pred": out / "pred" / name,
              "history": read_history(run_dir / "metrics.jsonl")}
    if cfg.model.sct_log_var:  # the same model without its σ-scaling factor: calibration before recalibration
        result["eval_raw"] = infer_and_evaluate(name, run_dir, test_dir, out / "pred_raw" / name,
                                                out / "eval" / f"{name}_raw.json", mc, uri, None,
                                                ["--no-sigma-scaling"])
    return result


def infer_and_evaluate(name: str, run_dir: Path, test_dir: Path, pred: Path, report: Path, mc: int, uri: str,
                       run_id: str | None, infer_flags: list[str] = ()) -> dict:
    from radmtl.cli import main as radmtl

    if pred.exists():
        shutil.rmtree(pred)
    rc = radmtl(["-q", "infer", "--model", str(run_dir / "checkpoint_best.pt"), "--input", str(test_dir),
                 "--output", str(pred), "--mc-samples", str(mc), "--no-progress", *infer_flags])
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


def fmt(summary: dict, key: str, digits: int = 1) -> str:
    entry = summary.get(key)
    if entry is None or entry["mean"] is None:
        return "—"
    mean, sd = entry["mean"], entry["sd"]
    return f"{mean:.{digits}f}" + (f" ± {sd:.{digits}f}" if isinstance(sd, (int, float)) else "")


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _mean(summary: dict, key: str) -> float | None:
    return (summary.get(key) or {}).get("mean")


def write_results(path: Path, results: dict, cfgs: dict, info: dict, figs: list[Path]) -> str:
    names = list(results)
    label = {name: paper for name, paper, _ in MODELS}
    summ = {n: results[n]["eval"]["summary"] for n in names}
    sct = [n for n in names if "sct" in cfgs[n].loss.tasks]
    seg = [n for n in names if "seg" in cfgs[n].loss.tasks]
    lines = [f"# Ablation: Bragman et al. 2018 Table 1 on phantoms ({info['mode']} mode)", "",
             f"Produced by `{info['command']}` — numbers below are exactly what that run computed.", "",
             f"- mode: **{info['mode']}**; machine: {info['machine']}; device: {info['device']}",
             f"- data: {info['data']}",
             f"- every model: {info['shared']}",
             f"- MLflow: experiment `{info['experiment']}` at `{info['uri']}`, parent run `{info['parent']}`",
             f"- total wall time: {info['total_s'] / 60:.1f} min", ""]
    lines += ["## sCT: MAE in HU on the test phantoms (mean ± SD over cases)", ""]
    lines += table(["model", "paper", "body", "bone", *ORGANS],
                   [[n, label[n], fmt(summ[n], "mae_hu"), fmt(summ[n], "mae_bone_hu"),
                     *(fmt(summ[n], f"mae_{o}_hu") for o in ORGANS)] for n in sct])
    lines += ["", "## Segmentation: Dice per organ (mean ± SD over cases)", ""]
    lines += table(["model", "paper", *ORGANS, "mean"],
                   [[n, label[n], *(fmt(summ[n], f"dice_{o}", 3) for o in ORGANS), fmt(summ[n], "dice_mean", 3)]
                    for n in seg])
    lines += ["", f"## sCT uncertainty: calibration of σ_total (MC dropout T = {info['mc']}), before and after "
              "σ recalibration, and σ_aleatoric vs the phantom's true noise SD", "",
              "'before' is the same checkpoint run with `radmtl infer --no-sigma-scaling`. Spearman (soft "
              "tissue) ranks σ_aleatoric against the true SD over soft-tissue voxels where the model is "
              "accurate (|3×3×3 mean error| < true SD; `radmtl.evaluation.calibration.uncertainty_metrics`).", ""]
    rows = []
    for n in sct:
        hetero = cfgs[n].model.sct_log_var
        raw = results[n].get("eval_raw", {}).get("summary", {})
        rows.append([n, "σ(x) + MC" if hetero else "MC only", fmt(summ[n], "zscore_mean", 3),
                     f"{fmt(raw, 'zscore_sd', 3)} → {fmt(summ[n], 'zscore_sd', 3)}" if hetero else fmt(summ[n], "zscore_sd", 3),
                     f"{fmt(raw, 'coverage_95', 3)} → {fmt(summ[n], 'coverage_95', 3)}" if hetero
                     else fmt(summ[n], "coverage_95", 3),
                     fmt(summ[n], "spearman_sigma_true_noise", 3) if hetero else "—",
                     fmt(summ[n], "spearman_sigma_true_noise_soft_tissue", 3) if hetero else "—",
                     fmt(summ[n], "ratio_sigma_true_noise", 3) if hetero else "—",
                     fmt(summ[n], "spearman_error_sigma", 3)])
    lines += table(["model", "σ", "z mean", "z SD (before → after)", "coverage_95 (before → after)",
                    "Spearman σ_al vs true SD (body)", "Spearman (soft tissue)", "median σ_al/true SD",
                    "Spearman |err| vs σ"], rows)
    traj_rows = info.get("trajectories", [])
    if traj_rows:
        lines += ["", "## Learned task weights: s against its analytic optimum", "",
                  "For a stationary task loss L the optimum is s = log L (regression, L = MSE in scaled units) "
                  "and s = log 2L (classification, L = CE + Dice). 'final' is the mean over the last tenth of "
                  "the logged steps.", ""]
        lines += table(["model", "task", "s at first logged step", "s final", "optimum final", "steps"], traj_rows)
    grad_rows = gradient_balance(results)
    if grad_rows:
        lines += ["", "## Gradient balance in the shared encoder: ‖∇ sCT term‖ / ‖∇ segmentation term‖", "",
                  "'raw': the two tasks' gradients on the encoder before clipping; 'applied': what the "
                  "encoder is updated with (per-task clipping to train.grad_clip; a global clip scales both "
                  "alike; balanced, the default, then equalises the two encoder norms, so its applied ratio "
                  "is 1).", ""]
        lines += table(["model", "ratio", "first logged step", "median", "last step"], grad_rows)
    lines += ["", "## Runs and timings", ""]
    lines += table(["model", "MLflow run id", "best epoch", "train (s)", "infer+eval (s)", "total (s)"],
                   [[n, f"`{results[n]['run_id']}`", str(results[n]["best_epoch"]), f"{results[n]['train_s']:.0f}",
                     f"{results[n]['total_s'] - results[n]['train_s']:.0f}", f"{results[n]['total_s']:.0f}"]
                    for n in names])
    lines += ["", "## Targets (issue 9) for the default hetero_homo", ""]
    if "hetero_homo" in summ:
        d = summ["hetero_homo"]
        checks = [("|z mean| ≤ 0.1", _mean(d, "zscore_mean"), lambda v: abs(v) <= 0.1),
                  ("0.9 ≤ z SD ≤ 1.1", _mean(d, "zscore_sd"), lambda v: 0.9 <= v <= 1.1),
                  ("0.93 ≤ coverage_95 ≤ 0.97", _mean(d, "coverage_95"), lambda v: 0.93 <= v <= 0.97),
                  ("Spearman (soft tissue) ≥ 0.6", _mean(d, "spearman_sigma_true_noise_soft_tissue"), lambda v: v >= 0.6)]
        if "m1_sct" in summ:
            ref = _mean(summ["m1_sct"], "mae_hu")
            checks.append((f"body MAE ≤ single-task sCT ({ref:.1f} HU)", _mean(d, "mae_hu"),
                           lambda v, ref=ref: v <= ref))
        if "m1_seg" in summ:
            ref = _mean(summ["m1_seg"], "dice_mean")
            checks.append((f"mean Dice ≥ single-task seg − 0.02 ({ref:.3f} − 0.02)", _mean(d, "dice_mean"),
                           lambda v, ref=ref: v >= ref - 0.02))
        for what, value, ok in checks:
            verdict = "n/a" if value is None else ("pass" if ok(value) else "**FAIL**")
            lines.append(f"- {what}: {'—' if value is None else f'{value:.3f}'} → {verdict}")
    lines += ["", "## Figures", ""]
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mode = MODES[args.mode]
    out, docs = work_folders(args, "ablation")
    out.mkdir(parents=True, exist_ok=True)
    uri = args.tracking_uri or f"sqlite:///{out / 'mlflow.db'}"
    names = [m for m, _, _ in MODELS if args.models is None or m in args.models.split(",")]
    overrides = mode["overrides"] + args.overrides
    cfgs = load_configs(names, mode["base"], overrides)
    t_start = time.perf_counter()
    data_dir, test_dir = make_data(args.data.resolve() if args.data else out / "data", mode)

    from radmtl.device import cpu_has_native_bf16
    from radmtl.tracking.tracker import start_tracking

    experiment = cfgs[names[0]].tracking.experiment + f"-{args.mode}"
    parent = start_tracking(uri, experiment, f"ablation-{args.mode}", out / "parent")
    parent.log_params({"mode": args.mode, "models": ",".join(names), "overrides": " ".join(overrides) or "-",
                       "data": str(data_dir), "test": str(test_dir), "mc_samples": mode["mc"]})
    results, status = {}, "FAILED"
    try:
        for name in names:
            print(f"[ablation] {name}: training ...", flush=True)
            results[name] = run_model(name, cfgs[name], data_dir, test_dir, out, uri, experiment,
                                      parent.run_id, mode["mc"])
            s = results[name]["eval"]["summary"]
            print(f"[ablation] {name}: run {results[name]['run_id']} done in {results[name]['total_s']:.0f} s; "
                  + ", ".join(f"{k}={s[k]['mean']:.3f}" for k in ("mae_hu", "dice_mean", "zscore_mean", "zscore_sd",
                                                                    "coverage_95", "spearman_sigma_true_noise")
                              if k in s and s[k]["mean"] is not None), flush=True)
        figs = figures(results, test_dir, docs / "figures")
        trajectories, trajectory_figs = log_var_trajectories(results, docs / "figures")
        figs += trajectory_figs
        import torch
        c0 = cfgs[names[0]]
        info = {
            "mode": args.mode, "mc": mode["mc"], "uri": uri, "experiment": experiment, "parent": parent.run_id,
            "command": " ".join(["python", "scripts/ablation.py", *map(shlex.quote, argv if argv is not None else sys.argv[1:])]),
            "machine": f"{platform.platform()}, {platform.processor() or platform.machine()}, "
                       f"{os.cpu_count()} CPUs (torch threads {torch.get_num_threads()})",
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "data": f"phantoms {mode['shape']} voxels at {mode['spacing']} mm, {mode['n_train']} train / {mode['n_val']} validation "
                    f"(seed {DATA_SEED}) / {mode['n_test']} test cases (seed {TEST_SEED})",
            "shared": f"seed {c0.seed}, channels {list(c0.model.channels)}, dropout {c0.model.dropout}, "
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
            {n: {k: v for k, v in r.items() if k not in ("pred", "history")} for n, r in results.items()}
            | {"info": info},
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
