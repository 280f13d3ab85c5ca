"""End-to-end: scripts/ablation.py in tiny mode (phantoms, 7 models, MC inference, evaluation, report)."""

from __future__ import annotations

import pytest


def test_ablation_models_differ_only_in_the_loss(load_script):
    from radmtl.config import flatten

    ablation = load_script("ablation")
    names = [name for name, _, _ in ablation.MODELS]
    cfgs = ablation.load_configs(names, ablation.MODES["budget"]["base"], [])
    may_differ = {"loss.tasks", "loss.weighting", "model.tasks", "model.sct_log_var", "model.seg_log_var",
                  "train.best_metric", "train.best_mode", "train.grad_clip_mode"}
    reference = flatten(cfgs["hetero_homo"])
    for name in names:
        differ = {k for k, v in flatten(cfgs[name]).items() if v != reference[k]}
        assert differ <= may_differ, (name, differ)
    assert cfgs["m1_seg"].train.best_metric == "val_dice_mean"
    assert cfgs["m1_seg"].train.best_mode == "max"
    assert {cfgs[n].loss.weighting for n in names} == {"fixed", "homoscedastic", "hetero_homo", "hetero"}
    assert cfgs["m2b_sct_hetero"].loss.tasks == ("sct",) and cfgs["m2b_sct_hetero"].model.sct_log_var
    assert cfgs["hetero_homo_global_clip"].train.grad_clip_mode == "global"
    assert cfgs["hetero_homo_per_task"].train.grad_clip_mode == "per_task"
    assert cfgs["hetero_homo"].train.grad_clip_mode == "balanced"


@pytest.mark.slow
def test_ablation_tiny_end_to_end(tmp_path, monkeypatch, load_script):
    import mlflow

    ablation = load_script("ablation")
    # The repository root only sets defaults (docs/, runs/); point it elsewhere to prove tiny mode
    # writes nothing outside --out (configs were resolved at import and still come from the repo).
    fake_root = tmp_path / "fake_root"
    monkeypatch.setattr(ablation, "ROOT", fake_root)
    out = tmp_path / "out"
    assert ablation.main(["--mode", "tiny", "--out", str(out)]) == 0
    assert not fake_root.exists()

    results = out / "docs" / "results.md"
    text = results.read_text()
    assert "tiny mode" in text and "python scripts/ablation.py --mode tiny" in text
    for name, _, _ in ablation.MODELS:
        assert f"| {name} |" in text
    # the report's numbers are the evaluations' numbers
    import json

    results_json = json.loads((out / "results.json").read_text())
    for name in ("m1_sct", "hetero_homo", "m4_hetero"):
        mae = results_json[name]["eval"]["summary"]["mae_hu"]["mean"]
        row = next(line for line in text.splitlines() if line.startswith(f"| {name} | ") and " HU" not in line)
        assert f"{mae:.1f}" in row
    # calibration before → after: the σ models were also run without their σ-scaling factor
    raw = results_json["hetero_homo"]["eval_raw"]["summary"]["zscore_sd"]["mean"]
    scaled = results_json["hetero_homo"]["eval"]["summary"]["zscore_sd"]["mean"]
    assert f"{raw:.3f} → {scaled:.3f}" in text
    assert "eval_raw" not in results_json["m1_sct"]  # no σ head, nothing to rescale
    # M3's learned s starts at init_log_var = 0 and is reported next to its analytic optimum
    assert "| m3_homoscedastic | sct | 0.00 |" in text and "| m3_homoscedastic | seg | 0.00 |" in text
    assert "| hetero_homo | applied |" in text and "| hetero_homo_global_clip | raw |" in text
    # every target verdict agrees with the numbers next to it
    summary = {n: results_json[n]["eval"]["summary"] for n in ("m1_sct", "m1_seg", "hetero_homo")}
    mae_ref, dice_ref = summary["m1_sct"]["mae_hu"]["mean"], summary["m1_seg"]["dice_mean"]["mean"]
    mae, dice = summary["hetero_homo"]["mae_hu"]["mean"], summary["hetero_homo"]["dice_mean"]["mean"]
    assert f"single-task sCT ({mae_ref:.1f} HU): {mae:.3f} → {'pass' if mae <= mae_ref else '**FAIL**'}" in text
    assert f"({dice_ref:.3f} − 0.02): {dice:.3f} → {'pass' if dice >= dice_ref - 0.02 else '**FAIL**'}" in text
    figures = {p.name for p in (out / "docs" / "figures").glob("*.png")}
    assert "log_var_trajectory_m3_homoscedastic.png" in figures
    assert "calibration.png" in figures
    assert any(f.startswith("error_vs_sigma_") for f in figures)
    assert any(f.startswith("qa_") for f in figures)

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    experiments = [e for e in client.search_experiments() if e.name != "Default"]
    assert len(experiments) == 1
    runs = client.search_runs([experiments[0].experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == len(ablation.MODELS)
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert all(r.info.status == "FINISHED" for r in runs)
    for run in children:
        assert run.info.run_id in text
        assert any(k.startswith("eval_") for k in run.data.metrics)
