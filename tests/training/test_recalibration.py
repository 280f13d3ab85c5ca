"""σ recalibration: the σ-scaling factor is fitted on infer's own outputs, stored, and applied."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from radmtl.nn.checkpoint import load_checkpoint, make_payload, save_checkpoint
from radmtl.config import load_config
from radmtl.data.discovery import discover
from radmtl.inference.infer import InferOptions, run_inference
from radmtl.nn.model import build_model
from radmtl.data.phantom import PHANTOM_LABELS, generate_dataset
from radmtl.training.recalibration import fit_sigma_scale, recalibrate

TINY = ["model.channels=[4,8]", "model.strides=[2]", "data.patch_size=[16,16,16]",
        "data.spacing=[12.0,12.0,12.0]", "infer.mc_samples=1"]
S0 = -3.0  # σ head bias: σ = exp(S0/2)·1000 HU = 223 HU everywhere
SCT_SCALED = 0.05  # sCT head bias: 50 HU everywhere


def test_closed_form_without_epistemic():
    rng = np.random.default_rng(0)
    sigma = rng.uniform(10.0, 50.0, 1000)
    z = rng.standard_normal(1000)
    residual = 2.5 * sigma * z
    assert fit_sigma_scale(residual, sigma) == pytest.approx(2.5 * math.sqrt(np.mean(z**2)), rel=1e-12)
    assert fit_sigma_scale(residual, sigma, np.zeros(1000)) == pytest.approx(2.5 * math.sqrt(np.mean(z**2)))


def test_with_epistemic_solves_unit_z_rms():
    # 13² = (s·3)² + 12²  →  s = 5/3
    n = 10
    assert fit_sigma_scale(np.full(n, 13.0), np.full(n, 3.0), np.full(n, 12.0)) == pytest.approx(5 / 3, rel=1e-6)
    # mixed voxels: check the defining equation rather than a closed form
    rng = np.random.default_rng(1)
    r, a, e = rng.normal(0, 40, 500), rng.uniform(5, 30, 500), rng.uniform(0, 10, 500)
    s = fit_sigma_scale(r, a, e)
    assert np.mean(r**2 / ((s * a) ** 2 + e**2)) == pytest.approx(1.0, abs=1e-6)


def test_epistemic_alone_over_covering_is_an_error():
    with pytest.raises(ValueError, match="epistemic"):
        fit_sigma_scale(np.full(5, 1.0), np.full(5, 1.0), np.full(5, 10.0))


@pytest.fixture(scope="module")
def val_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("val")
    generate_dataset(root, cases=2, seed=5, shape=(24, 20, 16))
    return root


def _constant_checkpoint(path: Path) -> Path:
    cfg = load_config(None, TINY)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    with torch.no_grad():
        for key, bias in (("sct_log_var", S0), ("sct", SCT_SCALED)):
            model.heads[key].conv.weight.zero_()
            model.heads[key].conv.bias.fill_(bias)
    return save_checkpoint(path, make_payload(cfg=cfg, label_names=dict(PHANTOM_LABELS), model=model,
                                              with_rng=False))


def test_recalibrate_fits_on_the_input_grid_stores_and_infer_applies(val_data, tmp_path):
    ckpt = _constant_checkpoint(tmp_path / "model.pt")
    cases = discover(val_data).cases
    record = recalibrate(ckpt, cases)

    # By hand: sCT = 50 HU and σ = exp(S0/2)·1000 HU at every voxel of each case's own grid.
    sigma_hu = math.exp(S0 / 2) * 1000.0
    residuals = []
    for case in cases:
        ct = np.asarray(nib.load(case.paths["ct"]).dataobj, np.float64)
        body = np.asarray(nib.load(case.paths["mask"]).dataobj) != 0
        residuals.append(ct[body] - 50.0)
    r = np.concatenate(residuals)
    expected = math.sqrt(np.mean(r**2)) / sigma_hu
    assert record["factor"] == pytest.approx(expected, rel=1e-4)
    assert record["voxels"] == r.size and record["cases"] == [c.case_id for c in cases]
    after = record["after"]
    assert math.hypot(after["zscore_mean"], after["zscore_sd"]) == pytest.approx(1.0, abs=1e-4)
    assert record["before"]["zscore_sd"] == pytest.approx(after["zscore_sd"] * expected, rel=1e-3)

    stored = load_checkpoint(ckpt)["sigma_scaling"]
    assert stored["factor"] == pytest.approx(expected, rel=1e-4)

    mr = cases[0].paths["mr"]
    run_inference(str(ckpt), mr, tmp_path / "scaled")
    run_inference(str(ckpt), mr, tmp_path / "raw", InferOptions(sigma_scaling=False))
    case_id = cases[0].case_id
    scaled = np.asarray(nib.load(tmp_path / "scaled" / case_id / "sct_sigma_aleatoric.nii.gz").dataobj)
    raw = np.asarray(nib.load(tmp_path / "raw" / case_id / "sct_sigma_aleatoric.nii.gz").dataobj)
    np.testing.assert_allclose(raw, sigma_hu, rtol=1e-5)
    np.testing.assert_allclose(scaled, sigma_hu * stored["factor"], rtol=1e-5)


def test_no_sigma_head_means_nothing_to_fit(val_data, tmp_path):
    cfg = load_config(None, TINY + ["loss.weighting=fixed"])
    ckpt = save_checkpoint(tmp_path / "fixed.pt", make_payload(
        cfg=cfg, label_names=dict(PHANTOM_LABELS), model=build_model(cfg.model), with_rng=False))
    assert recalibrate(ckpt, discover(val_data).cases) is None
    assert "sigma_scaling" not in load_checkpoint(ckpt)


def test_the_factor_is_fitted_at_infers_mc_samples_on_infers_own_maps(val_data, tmp_path):
    # With MC dropout, infer's σ_total holds the spread of T samples; a factor fitted at T = 1 (no
    # epistemic part, another sCT mean) would make σ_total at infer's T too wide.
    cfg = load_config(None, TINY[:-1] + ["infer.mc_samples=4", "model.dropout=0.5"])
    torch.manual_seed(3)
    ckpt = save_checkpoint(tmp_path / "mc.pt", make_payload(cfg=cfg, label_names=dict(PHANTOM_LABELS),
                                                            model=build_model(cfg.model), with_rng=False))
    cases = discover(val_data).cases
    record = recalibrate(ckpt, cases)
    assert record["mc_samples"] == 4
    residual, aleatoric, epistemic = [], [], []
    for case in cases:
        out = tmp_path / "raw" / case.case_id
        run_inference(str(ckpt), case.paths["mr"], out, InferOptions(sigma_scaling=False))
        maps = {name: np.asarray(nib.load(next(out.glob(f"*/{name}.nii.gz"))).dataobj, np.float64)
                for name in ("sct", "sct_sigma_aleatoric", "sct_sigma_epistemic")}
        ct = np.asarray(nib.load(case.paths["ct"]).dataobj, np.float64)
        body = np.asarray(nib.load(case.paths["mask"]).dataobj) != 0
        residual.append((ct - maps["sct"])[body])
        aleatoric.append(maps["sct_sigma_aleatoric"][body])
        epistemic.append(maps["sct_sigma_epistemic"][body])
    assert np.concatenate(epistemic).mean() > 1.0  # MC dropout does spread the samples here
    expected = fit_sigma_scale(*(np.concatenate(v) for v in (residual, aleatoric, epistemic)))
    assert record["factor"] == pytest.approx(expected, rel=2e-3)
