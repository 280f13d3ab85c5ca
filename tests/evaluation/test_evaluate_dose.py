"""``radmtl evaluate --dose`` on a tiny synthetic pelvis: 24 × 24 × 16 voxels of 5 mm, RAS.

A water-like elliptic body with two lateral bone blocks (700 HU, 25 mm thick, crossed by both proton fields
before the target), a 20 mm cubic ``prostate`` at the centre and a ``rectum`` behind it; labels are the
phantom's numbers (no dataset.json). case_001 has the target, case_002 has only the rectum. Photons plan
5 beams, protons 2 lateral fields (:class:`~radmtl.evaluation.dose.engine.PlanSettings`' defaults).
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from radmtl.cli import main
from radmtl.data.io import read_volume, write_volume
from radmtl.data.phantom.cases import PHANTOM_LABELS

SHAPE = (24, 24, 16)
SPACING = 5.0
BONE_HU = 700.0


def _affine() -> np.ndarray:
    affine = np.diag([SPACING, SPACING, SPACING, 1.0])
    affine[:3, 3] = -np.array(SHAPE) * SPACING / 2
    return affine


def _case(with_target: bool) -> dict[str, np.ndarray]:
    x, y, z = np.meshgrid(*(np.arange(n, dtype=float) for n in SHAPE), indexing="ij")
    body = ((x - 11.5) / 11) ** 2 + ((y - 11.5) / 10) ** 2 < 1
    ct = np.where(body, 0.0, -1000.0)
    ct[body & (np.abs(x - 11.5) > 6) & (np.abs(y - 11.5) < 5)] = BONE_HU
    labels = np.zeros(SHAPE, np.uint8)
    if with_target:
        labels[(np.abs(x - 11.5) < 2) & (np.abs(y - 11.5) < 2) & (np.abs(z - 7.5) < 2)] = PHANTOM_LABELS["prostate"]
    labels[(np.abs(x - 11.5) < 2) & (y >= 5) & (y < 8) & (np.abs(z - 7.5) < 2)] = PHANTOM_LABELS["rectum"]
    return {"ct": ct, "mask": body.astype(np.uint8), "labels": labels, "mr": np.where(body, 300.0, 0.0)}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("ref")
    for case_id, with_target in (("case_001", True), ("case_002", False)):
        for name, array in _case(with_target).items():
            dtype = np.uint8 if name in ("mask", "labels") else np.float32
            write_volume(array, _affine(), root / case_id / f"{name}.nii.gz", dtype)
    return root


def _predict(reference, pred, bone_scale: float = 1.0, sigma_hu: float | None = None) -> None:
    for case_id in ("case_001", "case_002"):
        ct = read_volume(reference / case_id / "ct.nii.gz").array
        sct = np.where(ct > 500, ct * bone_scale, ct)
        write_volume(sct, _affine(), pred / case_id / "sct.nii.gz", np.float32)
        if sigma_hu is not None:
            write_volume(np.full(SHAPE, sigma_hu), _affine(), pred / case_id / "sct_sigma_total.nii.gz", np.float32)


def test_sct_equal_to_ct_gives_identical_dose_and_skips_the_case_without_target(
        tmp_path, reference, pyradplan, pymedphys, capsys):
    pred = tmp_path / "pred"
    _predict(reference, pred, sigma_hu=20.0)
    assert main(["evaluate", "--pred", str(pred), "--ref", str(reference), "--dose"]) == 0
    captured = capsys.readouterr()
    assert "dose, photons" in captured.out and "dose, protons" in captured.out and "gamma_2mm2pct" in captured.out
    assert "case case_002 skipped" in captured.err  # the log line naming the case
    assert "case_001: protons plan" in captured.err  # progress with timings
    assert "Complete!" not in captured.err and "Logging error" not in captured.err  # pymedphys kept quiet
    dose = json.loads((pred / "metrics.json").read_text())["dose"]
    assert dose["target"] == "prostate" and dose["hlut"] == "matrad_default" and dose["dose_grid_mm"] == "ct"
    assert list(dose["skipped"]) == ["case_002"] and not dose["failed"]
    for modality in ("photons", "protons"):
        section = dose["modalities"][modality]
        assert list(section["cases"]) == ["case_001"]
        row = section["cases"]["case_001"]
        assert row["gamma_2mm2pct"] == 100.0 and row["gamma_3mm3pct"] == 100.0
        assert row["mae_gt10pct_gy"] <= 1e-3 and row["mae_gt90pct_gy"] <= 1e-3
        deltas = {k: v for k, v in row.items() if k.startswith("delta_")}
        assert set(deltas) >= {"delta_prostate_d98_gy", "delta_prostate_d95_gy", "delta_prostate_d50_gy",
                               "delta_prostate_d2_gy", "delta_rectum_dmean_gy", "delta_rectum_d2_gy"}
        assert all(abs(v) <= 1e-3 for v in deltas.values()), deltas
        assert section["summary"]["gamma_2mm2pct"]["mean"] == 100.0
        assert (pred / "dose" / f"case_001_{modality}.png").stat().st_size > 10_000
    assert not (pred / "dose" / "case_002_protons.png").exists()
    # The range check: both lateral rays, sCT = CT, so no WEPL error, covered under both σ bounds.
    assert "dose, proton range" in captured.out
    assert dose["range"]["sigma_map"] == {"case_001": "sct_sigma_total.nii.gz"}
    for beam in ("gantry_90", "gantry_270"):
        row = dose["range"]["beams"][beam]["cases"]["case_001"]
        assert row["wepl_ct_mm"] > 0 and row["wepl_error_mm"] == 0.0
        assert row["sigma_wepl_correlated_mm"] > row["sigma_wepl_independent_mm"] > 0
        assert row["covered_correlated"] == row["covered_independent"] == 1.0


def test_denser_bone_in_the_sct_shortens_the_proton_range_and_underdoses_the_target(
        tmp_path, reference, pyradplan, pymedphys, mlflow_run):
    pred = tmp_path / "pred"
    _predict(reference, pred, bone_scale=1.5)  # +50 % HU in the bone the lateral fields cross
    assert main(["evaluate", "--pred", str(pred), "--ref", str(reference), "--dose",
                 "--dose-modalities", "protons", *mlflow_run.args]) == 0
    dose = json.loads((pred / "metrics.json").read_text())["dose"]
    assert list(dose["modalities"]) == ["protons"]
    row = dose["modalities"]["protons"]["cases"]["case_001"]
    assert row["mae_gt10pct_gy"] > 0.5 and row["mae_gt90pct_percent"] > 1.0
    assert row["gamma_2mm2pct"] < 100.0
    # Higher SPR before the target: every Bragg peak stops short, the target's coldest voxels get less.
    assert row["delta_prostate_d98_gy"] < -1.0, row
    logged = mlflow_run.client.get_run(mlflow_run.run_id).data.metrics
    assert logged["dose_protons_gamma_2mm2pct_mean"] == pytest.approx(row["gamma_2mm2pct"])
    assert logged["dose_protons_delta_prostate_d98_gy_mean"] == pytest.approx(row["delta_prostate_d98_gy"])
    assert not any(name.startswith("dose_photons_") for name in logged)
    # Both lateral rays cross a bone block: the sCT's WEPL is longer on each; no σ map, no σ part.
    for beam in ("gantry_90", "gantry_270"):
        assert logged[f"dose_range_{beam}_wepl_error_mm_mean"] > 0
        assert dose["range"]["beams"][beam]["cases"]["case_001"]["covered_correlated"] is None
    artifacts = [f.path for f in mlflow_run.client.list_artifacts(mlflow_run.run_id, "evaluation")]
    assert "evaluation/case_001_protons.png" in artifacts, artifacts


def test_sct_samples_give_a_dose_band_that_a_too_narrow_spread_does_not_cover(
        tmp_path, reference, pyradplan, pymedphys, capsys):
    pred = tmp_path / "pred"
    _predict(reference, pred, bone_scale=1.5)
    # Three MC-dropout-like samples around the sCT whose bone differs by ±5 % HU: a spread far smaller than the
    # sCT's +50 % error, so the CT's target coverage (D98) falls outside the band.
    ct = read_volume(reference / "case_001" / "ct.nii.gz").array
    samples = np.stack([np.where(ct > 500, ct * scale, ct) for scale in (1.45, 1.5, 1.55)], axis=-1)
    write_volume(samples, _affine(), pred / "case_001" / "sct_samples.nii.gz", np.float32)
    assert main(["evaluate", "--pred", str(pred), "--ref", str(reference), "--dose",
                 "--dose-modalities", "protons"]) == 0
    out = capsys.readouterr().out
    assert "plan recomputed on the MC-dropout sCT samples" in out and "dvh_covered_fraction" in out
    dose = json.loads((pred / "metrics.json").read_text())["dose"]
    assert dose["samples"]["cases"] == {"case_001": {"file": "sct_samples.nii.gz", "present": 3, "used": 3}}
    row = dose["modalities"]["protons"]["cases"]["case_001"]
    assert row["samples_n"] == 3
    assert row["samples_dose_sd_median_gt10pct_gy"] > 0 and row["dvh_sd_prostate_d98_gy"] > 0
    assert row["delta_prostate_d98_gy"] < -1.0 and row["dvh_covered_prostate_d98_gy"] == 0.0
    assert 0.0 <= row["dvh_covered_fraction"] < 1.0 and 0.0 <= row["samples_dose_covered_gt90pct"] < 1.0
    for beam in ("gantry_90", "gantry_270"):  # the WEPL spread of the samples on each lateral ray
        beam_row = dose["range"]["beams"][beam]["cases"]["case_001"]
        assert beam_row["sigma_wepl_samples_mm"] > 0 and beam_row["covered_samples"] == 0.0
    from PIL import Image

    with Image.open(pred / "dose" / "case_001_protons.png") as figure:
        assert figure.width / figure.height == pytest.approx(5 * 4.0 / 4.2, rel=0.02)  # five panels of 4 in, not four
    # Only the first two samples: the JSON says so.
    assert main(["evaluate", "--pred", str(pred), "--ref", str(reference), "--dose",
                 "--dose-modalities", "protons", "--dose-samples", "2"]) == 0
    dose = json.loads((pred / "metrics.json").read_text())["dose"]
    assert dose["samples"]["cases"]["case_001"]["used"] == 2
    assert dose["modalities"]["protons"]["cases"]["case_001"]["samples_n"] == 2


def test_one_dose_sample_is_refused_in_one_line(tmp_path, reference, capsys):
    pred = tmp_path / "pred"
    _predict(reference, pred)
    assert main(["evaluate", "--pred", str(pred), "--ref", str(reference), "--dose", "--dose-samples", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--dose-samples must be 0 (none) or at least 2" in err[0], err
    assert not (pred / "metrics.json").exists()


def test_an_oblique_case_is_planned_on_the_axial_grid_covering_it(tmp_path, pyradplan, pymedphys):
    c, s = np.cos(np.deg2rad(12.0)), np.sin(np.deg2rad(12.0))
    affine = _affine()
    affine[:3, :3] = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ affine[:3, :3]  # 12° about z
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    for name, array in _case(True).items():
        write_volume(array, affine, ref / "case_001" / f"{name}.nii.gz",
                     np.uint8 if name in ("mask", "labels") else np.float32)
    write_volume(_case(True)["ct"], affine, pred / "case_001" / "sct.nii.gz", np.float32)
    assert main(["evaluate", "--pred", str(pred), "--ref", str(ref), "--dose", "--dose-modalities", "protons"]) == 0
    dose = json.loads((pred / "metrics.json").read_text())["dose"]
    assert not dose["failed"]
    axial = dose["planned_on_axial_grid"]["case_001"]
    assert axial["spacing_mm"] == pytest.approx([SPACING] * 3)
    # The box covering a 24 × 24 grid turned by 12°: 24·(cos + sin) ≈ 28.5 → 29 voxels in x and y.
    assert axial["shape"] == [29, 29, 16]
    row = dose["modalities"]["protons"]["cases"]["case_001"]
    assert row["gamma_2mm2pct"] == 100.0 and row["mae_gt10pct_gy"] <= 1e-3  # sCT = CT, moved alike
    assert dose["range"]["beams"]["gantry_270"]["cases"]["case_001"]["wepl_ct_mm"] > 0


def test_missing_dose_extra_says_how_to_install_and_writes_nothing(tmp_path, reference, monkeypatch, capsys):
    pred = tmp_path / "pred"
    _predict(reference, pred)
    monkeypatch.setitem(sys.modules, "pyRadPlan", None)  # import fails as if not installed
    assert main(["evaluate", "--pred", str(pred), "--ref", str(reference), "--dose"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'pip install "radmtl[dose]"' in err[0], err
    assert not (pred / "metrics.json").exists() and not (pred / "metrics.csv").exists()
    assert not (pred / "dose").exists()


def test_unknown_modality_is_one_clear_error(tmp_path, reference, capsys):
    pred = tmp_path / "pred"
    _predict(reference, pred)
    assert main(["evaluate", "--pred", str(pred), "--ref", str(reference), "--dose",
                 "--dose-modalities", "electrons"]) == 1
    assert "--dose-modalities must name some of photons, protons" in capsys.readouterr().err
    assert not (pred / "metrics.json").exists()
