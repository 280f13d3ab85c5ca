"""scripts/ablation.py: the models, the statistics over seeds, and the script end to end in tiny mode
(phantoms, 8 models × 2 training seeds, MC inference, evaluation, report)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

MODEL_ORDER = ["m1_sct", "m1_seg", "mt_fixed", "mt_fixed_seg008", "m3_homoscedastic", "hetero_homo", "m4_hetero",
               "hetero_homo_balanced"]


def test_ablation_models_differ_only_in_the_loss(load_script):
    from radmtl.config import flatten

    ablation = load_script("ablation")
    names = [name for name, _, _ in ablation.MODELS]
    assert names == MODEL_ORDER
    cfgs = ablation.load_configs(names, ablation.MODES["quick"]["base"], [])
    may_differ = {"loss.tasks", "loss.weighting", "loss.fixed_weight_seg", "model.tasks", "model.sct_log_var",
                  "model.seg_log_var", "train.best_metric", "train.best_mode", "train.grad_clip_mode"}
    reference = flatten(cfgs["hetero_homo"])
    for name in names:
        differ = {k for k, v in flatten(cfgs[name]).items() if v != reference[k]}
        assert differ <= may_differ, (name, differ)
    assert cfgs["m1_seg"].train.best_metric == "val_dice_mean"
    assert cfgs["m1_seg"].train.best_mode == "max"
    assert {cfgs[n].loss.weighting for n in names} == {"fixed", "homoscedastic", "hetero_homo", "hetero"}
    assert cfgs["mt_fixed_seg008"].loss.weighting == "fixed"
    assert cfgs["mt_fixed_seg008"].loss.fixed_weight_seg == 0.08
    assert cfgs["mt_fixed"].loss.fixed_weight_seg == 1.0
    # every model but the named departure runs the default optimisation
    assert cfgs["hetero_homo"].train.grad_clip_mode == "global"
    assert cfgs["hetero_homo_balanced"].train.grad_clip_mode == "balanced"
    assert {cfgs[n].train.grad_clip_mode for n in names if n != "hetero_homo_balanced"} == {"global"}


def test_ablation_defaults_and_data_seeds(load_script):
    from radmtl.data import phantom

    ablation = load_script("ablation")
    args = ablation.parse_args([])
    assert args.mode == "quick" and args.seeds == [0, 1, 2]
    assert ablation.parse_args(["--mode", "tiny"]).seeds == [0, 1]
    assert ablation.parse_args(["--seeds", "3", "4"]).seeds == [3, 4]
    quick = ablation.MODES["quick"]
    assert (quick["base"], quick["shape"], quick["spacing"]) == ("quick.yaml", (56, 40, 32), (7.0, 7.0, 6.0))
    assert ablation.TEST_SEED == phantom.TEST_SEED != phantom.DESIGN_SEED


def test_paired_difference_is_a_t_interval_over_seeds(load_script):
    ablation = load_script("ablation")
    # differences 1, 2, 3: mean 2, SD 1, t(0.975, 2) = 4.303 → half-width 4.303/√3 = 2.484
    d = ablation.paired_difference([11.0, 12.0, 13.0], [10.0, 10.0, 10.0])
    assert d["mean"] == pytest.approx(2.0)
    assert d["ci"] == pytest.approx((2.0 - 2.4842, 2.0 + 2.4842), abs=1e-4)
    assert d["resolved"] is False
    d = ablation.paired_difference([11.0, 11.1, 10.9, 11.0], [10.0, 10.0, 10.0, 10.0])
    assert d["resolved"] is True and d["ci"][0] > 0
    one = ablation.paired_difference([11.0], [10.0])
    assert one["mean"] == 1.0 and one["ci"] is None and one["resolved"] is False
    assert ablation.paired_difference([1.0, None], [0.0, 0.0]) is None
    assert ablation.fmt([1.0, 3.0]) == f"2.0 ± {math.sqrt(2):.1f}" and ablation.fmt([1.0]) == "1.0"


def _section(text: str, heading: str) -> list[str]:
    """The lines of the report's section whose heading starts with ``heading``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"## {heading}"))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[start + 1:end]


def _row(lines: list[str], *first: str) -> list[str]:
    """The cells of the table row whose first cells are ``first``."""
    prefix = "| " + " | ".join(first) + " |"
    return [c.strip() for c in next(line for line in lines if line.startswith(prefix)).split("|")[1:-1]]


def _over_seeds(values: list[float], digits: int) -> str:
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


@pytest.mark.slow
def test_ablation_tiny_end_to_end(tmp_path, monkeypatch, load_script):
    import mlflow
    import torch
    from scipy import stats

    from radmtl.data.phantom import TEST_SEED, TRAIN_SEED, case_seed

    ablation = load_script("ablation")
    # The repository root only sets defaults (docs/, runs/); point it elsewhere to prove tiny mode
    # writes nothing outside --out (configs were resolved at import and still come from the repo).
    fake_root = tmp_path / "fake_root"
    monkeypatch.setattr(ablation, "ROOT", fake_root)
    out = tmp_path / "out"
    threads = torch.get_num_threads()
    assert ablation.main(["--mode", "tiny", "--out", str(out)]) == 0
    assert not fake_root.exists()
    assert torch.get_num_threads() == threads  # tiny mode's one thread does not leak into later tests
    seeds = [0, 1]  # tiny mode's default
    label = {name: paper for name, paper, _ in ablation.MODELS}

    text = (out / "docs" / "results.md").read_text()
    results = json.loads((out / "results.json").read_text())
    assert "tiny mode" in text and "python scripts/ablation.py --mode tiny" in text
    assert f"TRAIN_SEED = {TRAIN_SEED}" in text and f"TEST_SEED = {TEST_SEED}" in text and "seed 0, 1" in text
    # the data are the named seeds' phantoms
    for folder, seed in ((out / "data", TRAIN_SEED), (out / "data" / "test", TEST_SEED)):
        doc = json.loads((folder / "dataset.json").read_text())
        assert doc["case_seeds"] == [case_seed(seed, i) for i in range(len(doc["case_seeds"]))]

    def per_seed(name: str, key: str, which: str = "eval") -> list[float]:
        return [results[name][str(s)][which]["summary"][key]["mean"] for s in seeds]

    assert set(results) - {"info"} == set(MODEL_ORDER)
    assert all(set(results[name]) == {"0", "1"} for name in MODEL_ORDER)
    # the seed reached training: the two seeds of one model trained different networks
    assert per_seed("hetero_homo", "mae_hu")[0] != per_seed("hetero_homo", "mae_hu")[1]

    # table cells are mean ± SD over seeds of each seed's mean over the test cases
    sct_table = _section(text, "sCT: MAE")
    for name in ("m1_sct", "hetero_homo", "m4_hetero"):
        assert _row(sct_table, name, label[name])[2] == _over_seeds(per_seed(name, "mae_hu"), 1)
    seg_table = _section(text, "Segmentation")
    cells = _row(seg_table, "m1_seg", label["m1_seg"])
    assert cells[7] == _over_seeds(per_seed("m1_seg", "dice_mean"), 3)
    hd95 = [np.mean([results["m1_seg"][str(s)]["eval"]["summary"][f"hd95_{o}_mm"]["mean"] for o in ablation.ORGANS])
            for s in seeds]
    assert all(np.isfinite(hd95)) and cells[8] == _over_seeds(hd95, 1)  # a missed organ is a finite penalty
    assert cells[9] == _over_seeds(per_seed("m1_seg", "missed_organs"), 2)
    assert not any(line.startswith("| m1_sct |") for line in seg_table)
    # calibration before → after: the σ models were also run without their σ-scaling factor
    calibration = _section(text, "sCT uncertainty")
    assert _row(calibration, "hetero_homo", "σ(x) + MC")[3] == (
        f"{_over_seeds(per_seed('hetero_homo', 'zscore_sd', 'eval_raw'), 3)} → "
        f"{_over_seeds(per_seed('hetero_homo', 'zscore_sd'), 3)}")
    assert _row(calibration, "mt_fixed", "MC only")[5] == "—"
    assert all("eval_raw" not in results["m1_sct"][str(s)] for s in seeds)  # no σ head, nothing to rescale

    # paired differences: every row recomputed from the per-seed numbers
    paired_section = _section(text, "Paired differences")
    paired = [line for line in paired_section if line.startswith("| ") and "difference" not in line]
    t = stats.t.ppf(0.975, len(seeds) - 1)
    expected = {"body MAE": ("mae_hu", 2, " HU", {"mt_fixed", "m1_sct"}),
                "mean Dice": ("dice_mean", 3, "", {"mt_fixed", "m1_seg"})}
    sentence = next(line for line in paired_section if line.startswith("Resolved by"))
    resolved_part, unresolved_part = sentence.split("Not resolved")
    seen = set()
    for line in paired:
        name, what, mean_cell, ci_cell, verdict = [c.strip() for c in line.split("|")[1:-1]]
        metric, ref = what.split(" − ")
        key, digits, unit, refs = expected[metric]
        assert ref in refs and ref != name
        diffs = np.subtract(per_seed(name, key), per_seed(ref, key))
        avg, half = diffs.mean(), t * diffs.std(ddof=1) / np.sqrt(len(seeds))
        assert mean_cell == f"{avg:+.{digits}f}{unit}"
        assert ci_cell == f"[{avg - half:+.{digits}f}, {avg + half:+.{digits}f}]"
        resolved = avg - half > 0 or avg + half < 0
        assert verdict == ("yes" if resolved else "no")
        listed = f"{name} − {ref} ({metric} {avg:+.{digits}f}{unit})"
        assert listed in (resolved_part if resolved else unresolved_part)
        seen.add((name, metric, ref))
    sct_models = [n for n in MODEL_ORDER if n != "m1_seg"]
    seg_models = [n for n in MODEL_ORDER if n != "m1_sct"]
    # each model against both references; the references against each other once: multi-task − single-task
    assert seen == ({(n, "body MAE", r) for n in sct_models for r in ("mt_fixed", "m1_sct")
                     if n not in (r, "m1_sct")}
                    | {(n, "mean Dice", r) for n in seg_models for r in ("mt_fixed", "m1_seg")
                       if n not in (r, "m1_seg")})
    assert ("mt_fixed", "body MAE", "m1_sct") in seen and ("mt_fixed", "mean Dice", "m1_seg") in seen

    # seed 0's runs: M3's learned s starts at init_log_var = 0 next to its optimum; under the default
    # global clip the applied encoder ratio is the raw one, the balanced departure makes it 1
    assert "| m3_homoscedastic | sct | 0.00 |" in text and "| m3_homoscedastic | seg | 0.00 |" in text
    balance = _section(text, "Gradient balance")
    assert _row(balance, "hetero_homo", "raw")[2:] == _row(balance, "hetero_homo", "applied")[2:]
    assert _row(balance, "hetero_homo_balanced", "applied")[2:] == ["1", "1", "1"]

    # every target verdict agrees with the seed means next to it
    targets = _section(text, "Targets")
    mean = {(n, k): float(np.mean(per_seed(n, k))) for n in ("hetero_homo", "m1_sct", "m1_seg")
            for k in ("mae_hu", "dice_mean", "zscore_mean", "zscore_sd", "coverage_95")
            if k in results[n]["0"]["eval"]["summary"]}

    def verdict(ok: bool) -> str:
        return "pass" if ok else "**FAIL**"

    z, zsd, cov = (mean["hetero_homo", k] for k in ("zscore_mean", "zscore_sd", "coverage_95"))
    mae, mae_ref = mean["hetero_homo", "mae_hu"], mean["m1_sct", "mae_hu"]
    dice, dice_ref = mean["hetero_homo", "dice_mean"], mean["m1_seg", "dice_mean"]
    assert f"- |z mean| ≤ 0.1: {z:.3f} → {verdict(abs(z) <= 0.1)}" in targets
    assert f"- 0.9 ≤ z SD ≤ 1.1: {zsd:.3f} → {verdict(0.9 <= zsd <= 1.1)}" in targets
    assert f"- 0.93 ≤ coverage_95 ≤ 0.97: {cov:.3f} → {verdict(0.93 <= cov <= 0.97)}" in targets
    assert f"- body MAE ≤ single-task sCT ({mae_ref:.1f} HU): {mae:.3f} → {verdict(mae <= mae_ref)}" in targets
    assert (f"- mean Dice ≥ single-task seg − 0.01 ({dice_ref:.3f} − 0.01): {dice:.3f} → "
            f"{verdict(dice >= dice_ref - 0.01)}") in targets
    assert not any("Spearman" in line for line in targets)

    figures = {p.name for p in (out / "docs" / "figures").glob("*.png")}
    assert "log_var_trajectory_m3_homoscedastic.png" in figures
    assert "calibration.png" in figures
    assert any(f.startswith("error_vs_sigma_") for f in figures)
    assert any(f.startswith("qa_") for f in figures)

    # one parent run; every (model, seed) its own FINISHED child, named and tagged, in the report
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    experiments = [e for e in client.search_experiments() if e.name != "Default"]
    assert len(experiments) == 1
    runs = client.search_runs([experiments[0].experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    pairs = {(r.data.tags["radmtl.ablation_model"], int(r.data.tags["radmtl.ablation_seed"])): r for r in children}
    assert len(children) == len(pairs) == len(MODEL_ORDER) * len(seeds)
    assert set(pairs) == {(n, s) for n in MODEL_ORDER for s in seeds}
    timings = _section(text, "Runs and timings")
    for (name, seed), run in pairs.items():
        assert run.info.status == "FINISHED"
        assert run.info.run_name == f"{name}-seed{seed}" and run.data.params["seed"] == str(seed)
        assert run.info.run_id == results[name][str(seed)]["run_id"]
        assert _row(timings, name, str(seed))[2] == f"`{run.info.run_id}`"
        assert any(k.startswith("eval_") for k in run.data.metrics)
