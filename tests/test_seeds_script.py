"""scripts/seeds.py: the seed study's table arithmetic, and the script end to end in tiny mode."""

from __future__ import annotations

import json

import numpy as np
import pytest


def _row(z_mean, z_sd, soft):
    return {"zscore_mean": z_mean, "zscore_sd": z_sd, "coverage_95": 0.95,
            "spearman_sigma_true_noise_soft_tissue": soft, "spearman_sigma_true_noise": 0.5, "mae_hu": 35.0,
            "dice_mean": 0.9}


def test_table_judges_the_mean_over_seeds_against_each_target(load_script):
    seeds = load_script("seeds")
    # z mean: 0.05 and 0.17 → mean 0.11, outside ±0.1 though one seed is inside; Spearman 0.55 and 0.67
    # → 0.61 passes though one seed fails; z SD 1.0 and 1.2 → 1.1 passes at the edge.
    rows = {0: {"test": _row(0.05, 1.0, 0.55)}, 1: {"test": _row(0.17, 1.2, 0.67)}}
    lines = seeds.table(rows, "test")
    assert lines[0].startswith("| seed | z mean | z SD | coverage_95 | Spearman soft |")
    assert lines[2].startswith("| 0 | 0.050 | 1.000 |") and lines[3].startswith("| 1 | 0.170 | 1.200 |")
    cells = [c.strip() for c in lines[4].split("|")[1:-1]]
    assert cells[0] == "mean ± SD"
    assert cells[1] == f"0.110 ± {np.std([0.05, 0.17], ddof=1):.3f}" == "0.110 ± 0.085"
    assert cells[2] == "1.100 ± 0.141"
    verdicts = [c.strip() for c in lines[5].split("|")[1:-1]]
    assert verdicts[1:5] == ["within ±0.1: FAIL", "0.9–1.1: pass", "0.93–0.97: pass", "≥ 0.6: pass"]
    assert verdicts[5:] == ["–", "–", "–"]


def test_table_leaves_out_a_metric_that_a_seed_lacks(load_script):
    seeds = load_script("seeds")
    rows = {0: {"test": _row(0.0, 1.0, None)}, 1: {"test": _row(0.0, 1.0, 0.7)}}
    assert "Spearman soft" not in seeds.table(rows, "test")[0]


@pytest.mark.slow
def test_seeds_tiny_end_to_end(tmp_path, load_script):
    from radmtl.data.phantom import case_tissue_hu

    seeds = load_script("seeds")
    out = tmp_path / "out"
    assert seeds.main(["--mode", "tiny", "--out", str(out), "--seeds", "0", "1"]) == 0
    report = (out / "docs" / "seeds.md").read_text()
    result = json.loads((out / "seeds.json").read_text())
    # each row is that seed's evaluation on that test set, read back from radmtl evaluate's JSON
    for seed in (0, 1):
        for test, suffix in (("test", ""), ("test2", "_test2")):
            summary = json.loads((out / "eval" / f"hetero_homo_seed{seed}{suffix}.json").read_text())["summary"]
            assert result["rows"][str(seed)][test]["mae_hu"] == pytest.approx(summary["mae_hu"]["mean"])
        mae = result["rows"][str(seed)]["test"]["mae_hu"]
        assert f"| {seed} |" in report and f"{mae:.3f}" in report
    # the two seeds trained different networks
    assert result["rows"]["0"]["test"]["mae_hu"] != result["rows"]["1"]["test"]["mae_hu"]
    # muscle HU: the training cases' mean, from the dataset's own case seeds
    doc = json.loads((out / "data" / "dataset.json").read_text())
    train_seeds = doc["case_seeds"][: len(doc["training"])]
    expected = np.mean([case_tissue_hu(s)["muscle"] for s in train_seeds])
    assert result["info"]["muscle_train"] == pytest.approx(expected)
    assert f"training cases {expected:.1f}" in report
    assert (out / "data" / f"test_seed{seeds.SECOND_TEST_SEED}" / "dataset.json").is_file()
