#!/usr/bin/env python
"""Bragman et al. 2018, Table 1 ablation and calibration study on radmtl phantoms.

Generates (or takes) a phantom dataset with a fixed train/validation/test split, trains every config of
``configs/ablation/`` (one MLflow experiment, each model a child run of one parent run), runs
``radmtl infer`` with MC dropout on the test cases and ``radmtl evaluate`` on the outputs, and writes
``results.md`` with the tables, run ids, timings, machine and command, plus figures.

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
CONFIG_DIR = ROOT / "configs" / "ablation"
# (name, paper model) in table order; the YAML file is configs/ablation/<name>.yaml.
MODELS = [
    ("m1_sct", "M1 sCT only"),
    ("m1_seg", "M1 seg only"),
    ("m2b_sct_hetero", "M2b sCT + σ(x)"),
    ("mt_fixed", "MT fixed 1:1"),
    ("m3_homoscedastic", "M3 homoscedastic"),
    ("hetero_homo", "σ(x) sCT + scalar seg (default)"),
    ("m4_hetero", "M4 hetero (both)"),
]
ORGANS = ["bladder", "rectum", "prostate", "femoral_head_left", "femoral_head_right"]
# Keys allowed to differ between the ablation configs (heads follow from loss.tasks/weighting).
MAY_DIFFER = {"loss.tasks", "loss.weighting", "model.tasks", "model.sct_log_var", "model.seg_log_var",
              "train.best_metric", "train.best_mode"}
# Per mode: phantom grid, case counts, and overrides applied identically to every model.
MODES = {
    "tiny": dict(shape=(32, 32, 24), n_train=2, n_val=1, n_test=1, mc=2, overrides=[
        "train.epochs=1", "train.steps_per_epoch=2", "train.val_every=1", "model.channels=[4,8]", "model.strides=[2]",
        "data.spacing=[12.0,9.0,8.0]", "data.patch_size=[16,16,16]", "data.patches_per_volume=1",
        "train.warmup_epochs=0", "data.cache=false"]),
    "budget": dict(shape=(64, 64, 40), n_train=8, n_val=2, n_test=3, mc=10, overrides=[]),
    "full": dict(shape=(96, 96, 64), n_train=24, n_val=4, n_test=8, mc=20, overrides=[
        "data.spacing=[4.0,3.0,3.0]", "data.patch_size=[64,64,32]", "model.channels=[16,32,64,128]",
        "model.strides=[2,2,2]", "model.dropout=0.5", "train.epochs=100", "train.lr=0.0003",
        "train.warmup_epochs=2", "train.val_every=5", "infer.overlap=0.5", "infer.mc_samples=20"]),
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
    from radmtl.phantom import generate_dataset

    test_dir = data_dir / "test"
    if (data_dir / "dataset.json").is_file() and test_dir.is_dir():
        return data_dir, test_dir
    n_tv = mode["n_train"] + mode["n_val"]
    generate_dataset(data_dir, n_tv, seed=DATA_SEED, shape=mode["shape"])
    doc = json.loads((data_dir / "dataset.json").read_text())
    entries = doc["training"]
    doc["training"], doc["validation"] = entries[: mode["n_train"]], entries[mode["n_train"]:]
    (data_dir / "dataset.json").write_text(json.dumps(doc, indent=2) + "\n")
    generate_dataset(test_dir, mode["n_test"], seed=TEST_SEED, shape=mode["shape"])
    return data_dir, test_dir


def load_configs(names: list[str], overrides: list[str]) -> dict:
    from radmtl.config import flatten, load_config

    cfgs = {name: load_config(CONFIG_DIR / f"{name}.yaml", overrides) for name in names}
    flat = {name: flatten(cfg) for name, cfg in cfgs.items()}
    ref_name = names[0]
    for name in names[1:]:
        diff = sorted(k for k in flat[name] if k not in MAY_DIFFER and flat[name][k] != flat[ref_name].get(k))
        if diff:
            raise SystemExit(f"configs/ablation/{name}.yaml differs from {ref_name}.yaml in {diff}; "
                             "the ablation needs identical settings apart from the loss")
    return cfgs


def run_model(name: str, cfg, data_dir: Path, test_dir: Path, out: Path, uri: str, experiment: str,
              parent_id: str | None, mc: int) -> dict:
    """Train, infer (MC dropout) and evaluate one model; returns ids, timings and the evaluation."""
    from radmtl.cli import main as radmtl
    from radmtl.tracking import start_tracking
    from radmtl.train import train

    run_dir = out / "runs" / name
    if run_dir.exists():
        shutil.rmtree(run_dir)
    tracker = start_tracking(uri, experiment, name, run_dir)
    if parent_id is not None:
        tracker.set_tags({"mlflow.parentRunId": parent_id, "radmtl.ablation_model": name})
    t0 = time.perf_counter()
    state = train(cfg, data_dir, run_dir, tracker=tracker, progress=False)
    t_train = time.perf_counter() - t0
    pred, report = out / "pred" / name, out / "eval" / f"{name}.json"
    if pred.exists():
        shutil.rmtree(pred)
    t1 = time.perf_counter()
    rc = radmtl(["-q", "infer", "--model", str(run_dir / "checkpoint_best.pt"), "--input", str(test_dir),
                 "--output", str(pred), "--mc-samples", str(mc), "--no-progress"])
    t_infer = time.perf_counter() - t1
    if rc != 0:
        raise SystemExit(f"{name}: radmtl infer failed (exit {rc})")
    rc = radmtl(["-q", "evaluate", "--pred", str(pred), "--ref", str(test_dir), "--json", str(report),
                 "--out", str(report.with_suffix(".csv")), "--run-id", state.run_id, "--tracking-uri", uri])
    if rc != 0:
        raise SystemExit(f"{name}: radmtl evaluate failed (exit {rc})")
    return {"run_id": state.run_id, "best_epoch": state.best_epoch, "train_s": t_train, "infer_s": t_infer,
            "total_s": time.perf_counter() - t0, "eval": json.loads(report.read_text()), "pred": pred}


def voxels(pred: Path, test_dir: Path) -> dict[str, np.ndarray] | None:
    """Body voxels of all test cases: ct, sct, σ_total (or None without an sCT)."""
    from radmtl.io import read_volume

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
    from radmtl import calibration as C
    from radmtl.io import read_volume
    from radmtl.plots import calibration_plot, error_vs_sigma_plot
    from radmtl.qa import qa_images

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


def write_results(path: Path, results: dict, cfgs: dict, info: dict, figs: list[Path]) -> str:
    names = list(results)
    label = dict(MODELS)
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
    lines += ["", "## sCT uncertainty: calibration of σ_total (MC dropout T = "
              f"{info['mc']}) and σ_aleatoric vs the phantom's true noise SD", ""]
    rows = []
    for n in sct:
        hetero = cfgs[n].model.sct_log_var
        rho = fmt(summ[n], "spearman_sigma_true_noise", 3)
        rows.append([n, "σ(x) + MC" if hetero else "MC only", fmt(summ[n], "zscore_mean", 3),
                     fmt(summ[n], "zscore_sd", 3), fmt(summ[n], "coverage_95", 3),
                     rho if hetero else f"({rho})", fmt(summ[n], "ratio_sigma_true_noise", 3),
                     fmt(summ[n], "spearman_error_sigma", 3)])
    lines += table(["model", "σ", "z mean", "z SD", "coverage_95", "Spearman σ_al vs true SD",
                    "median σ_al/true SD", "Spearman |err| vs σ"], rows)
    lines += ["", "Models without an aleatoric head have σ_total = MC-dropout σ only; their Spearman "
              "(in brackets) compares that epistemic σ with the true noise SD.", "",
              "## Runs and timings", ""]
    lines += table(["model", "MLflow run id", "best epoch", "train (s)", "infer+eval (s)", "total (s)"],
                   [[n, f"`{results[n]['run_id']}`", str(results[n]["best_epoch"]), f"{results[n]['train_s']:.0f}",
                     f"{results[n]['total_s'] - results[n]['train_s']:.0f}", f"{results[n]['total_s']:.0f}"]
                    for n in names])
    lines += ["", "## Acceptance (issue 6): heteroscedastic models, |z mean| ≤ 0.2, 0.8 ≤ z SD ≤ 1.25, "
              "Spearman ≥ 0.6", ""]
    for n in sct:
        if not cfgs[n].model.sct_log_var:
            continue
        zm, zs = summ[n]["zscore_mean"]["mean"], summ[n]["zscore_sd"]["mean"]
        rho = (summ[n].get("spearman_sigma_true_noise") or {}).get("mean")
        ok = [zm is not None and abs(zm) <= 0.2, zs is not None and 0.8 <= zs <= 1.25,
              rho is not None and rho >= 0.6]
        lines.append(f"- {n}: z mean {'pass' if ok[0] else 'FAIL'}, z SD {'pass' if ok[1] else 'FAIL'}, "
                     f"Spearman {'pass' if ok[2] else 'FAIL'}")
    lines += ["", "## Figures", ""]
    lines += [f"![{p.stem}](figures/{p.name})" for p in figs]
    lines += ["", "## Reading", "", "(written by hand after the run, from the numbers above; the script writes only this placeholder)", ""]
    text = "\n".join(lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mode = MODES[args.mode]
    out = (args.out or ROOT / "runs" / f"ablation-{args.mode}").resolve()
    docs = (args.docs or (out / "docs" if args.mode == "tiny" else ROOT / "docs")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    uri = args.tracking_uri or f"sqlite:///{out / 'mlflow.db'}"
    names = [m for m, _ in MODELS if args.models is None or m in args.models.split(",")]
    overrides = mode["overrides"] + args.overrides
    cfgs = load_configs(names, overrides)
    t_start = time.perf_counter()
    data_dir, test_dir = make_data(args.data.resolve() if args.data else out / "data", mode)

    from radmtl.tracking import start_tracking

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
        import torch
        c0 = cfgs[names[0]]
        info = {
            "mode": args.mode, "mc": mode["mc"], "uri": uri, "experiment": experiment, "parent": parent.run_id,
            "command": " ".join(["python", "scripts/ablation.py", *map(shlex.quote, argv if argv is not None else sys.argv[1:])]),
            "machine": f"{platform.platform()}, {platform.processor() or platform.machine()}, "
                       f"{os.cpu_count()} CPUs (torch threads {torch.get_num_threads()})",
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "data": f"phantoms {mode['shape']} voxels, {mode['n_train']} train / {mode['n_val']} validation "
                    f"(seed {DATA_SEED}) / {mode['n_test']} test cases (seed {TEST_SEED})",
            "shared": f"seed {c0.seed}, channels {list(c0.model.channels)}, dropout {c0.model.dropout}, "
                      f"patch {list(c0.data.patch_size)} at {list(c0.data.spacing)} mm, "
                      f"{c0.data.patches_per_volume} patches/volume, batch {c0.train.batch_size}, "
                      f"{c0.train.epochs} epochs, lr {c0.train.lr}, likelihood {c0.loss.likelihood}",
            "total_s": time.perf_counter() - t_start,
        }
        text = write_results(docs / "results.md", results, cfgs, info, figs)
        (out / "results.json").write_text(json.dumps(
            {n: {k: v for k, v in r.items() if k != "pred"} for n, r in results.items()} | {"info": info},
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
