"""``radmtl infer`` writes review/ per case, decided by the thresholds fitted into the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from radmtl.cli import main
from radmtl.data.discovery import discover
from radmtl.data.phantom import generate_dataset
from radmtl.data.transforms import derive_body_mask
from radmtl.inference.review_out import as_ras
from radmtl.nn.checkpoint import load_checkpoint, save_checkpoint
from radmtl.training.recalibration import recalibrate

MC = ["infer.mc_samples=3", "model.dropout=0.3"]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, tiny_payload) -> tuple[Path, Path]:
    """An untrained tiny model with σ-scaling and review thresholds fitted on two phantom cases."""
    root = tmp_path_factory.mktemp("review")
    data = root / "data"
    generate_dataset(data, cases=2, seed=11, shape=(24, 20, 16))
    ckpt = save_checkpoint(root / "model.pt", tiny_payload(MC, seed=2))
    record = recalibrate(ckpt, discover(data).cases)
    assert record is not None and "review_thresholds" in load_checkpoint(ckpt)
    return ckpt, data


def _infer(model: Path, inp: Path, out: Path, *extra: str) -> int:
    return main(["infer", "--model", str(model), "--input", str(inp), "--output", str(out), "--no-progress",
                 "--device", "cpu", *extra])


def test_review_follows_the_fitted_thresholds_on_the_written_maps(tmp_path, fitted):
    ckpt, data = fitted
    case = discover(data).cases[0]
    assert _infer(ckpt, case.paths["mr"], tmp_path / "out") == 0
    folder = tmp_path / "out" / case.case_id
    review = json.loads((folder / "review" / "review.json").read_text())
    stored = load_checkpoint(ckpt)["review_thresholds"]
    assert review["thresholds"] == stored and review["case"] == case.case_id

    # recomputed from the files infer wrote: σ_total on the input grid, the input MR's body
    sigma = np.asarray(nib.load(folder / "sct_sigma_total.nii.gz").dataobj)
    labels = np.asarray(nib.load(folder / "seg.nii.gz").dataobj)
    body = derive_body_mask(np.asarray(nib.load(case.paths["mr"]).dataobj, np.float32)) != 0
    flagged = body & (sigma >= stored["sigma_total_hu"])
    assert review["flagged_voxels"] == int(flagged.sum()) and review["body_voxels"] == int(body.sum())
    assert not body.all()  # so that counting over the body, not the volume, is tested
    rare = np.count_nonzero(sigma[body] >= stored["rare_sigma_total_hu"]) / body.sum()
    assert review["rare_sigma_fraction_body"] == pytest.approx(rare)
    voxel_ml = float(np.prod(nib.load(case.paths["mr"]).header.get_zooms()[:3])) / 1000.0
    for name, label in (("bladder", 1), ("femoral_head_left", 4)):
        organ = review["organs"][name]
        assert organ["volume_ml"] == pytest.approx(int((labels == label).sum()) * voxel_ml)
    over = review["flagged_fraction_body"] > stored["case_flagged_fraction"]
    assert ("body_flagged" in review["codes"]) == over
    assert review["verdict"] == ("review" if review["codes"] else "ok")

    assert sorted(p.name for p in (folder / "review").iterdir()) == ["review.html", "review.json", "review.png"]
    provenance = json.loads((folder / "provenance.json").read_text())
    assert provenance["review"] == {k: review[k] for k in ("verdict", "reasons", "codes")}
    assert provenance["outputs"]["review"] == {"file": "review/", "format": "json, png, html",
                                               "files": ["review.json", "review.png", "review.html"]}


def test_no_review_writes_none(tmp_path, fitted):
    ckpt, data = fitted
    case = discover(data).cases[0]
    assert _infer(ckpt, case.paths["mr"], tmp_path / "out", "--no-review") == 0
    folder = tmp_path / "out" / case.case_id
    assert not (folder / "review").exists()
    assert "review" not in json.loads((folder / "provenance.json").read_text())


def test_a_checkpoint_without_thresholds_asks_for_review(tmp_path, tiny_payload, fitted):
    _, data = fitted
    ckpt = save_checkpoint(tmp_path / "raw.pt", tiny_payload(MC, seed=2))
    case = discover(data).cases[0]
    assert _infer(ckpt, case.paths["mr"], tmp_path / "out") == 0
    review = json.loads((tmp_path / "out" / case.case_id / "review" / "review.json").read_text())
    assert review["verdict"] == "review" and "no_thresholds" in review["codes"]  # (untrained: organs missing too)


def test_as_ras_flips_and_permutes_to_ras_with_its_spacing():
    array = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    # array axes: 0 → world −y (2 mm), 1 → world −x (3 mm), 2 → +z (4 mm)
    affine = np.array([[0, -3.0, 0, 0], [-2.0, 0, 0, 0], [0, 0, 4.0, 0], [0, 0, 0, 1]])
    ras, spacing = as_ras(array, affine)
    assert ras.shape == (3, 2, 4) and spacing == (3.0, 2.0, 4.0)
    # RAS voxel (i, j, k): i grows to +x, i.e. down the array's axis 1
    np.testing.assert_array_equal(ras, array.transpose(1, 0, 2)[::-1, ::-1, :])


def test_on_a_finer_grid_the_review_flags_on_sigma_total_without_sigma_grid():
    from radmtl.data.io import Volume
    from radmtl.inference.review_out import CaseReview

    volume = Volume(array=np.zeros((2, 2, 2), np.float32), affine=np.eye(4))
    review = CaseReview("c", volume, {"background": 0}, None, 1.0)
    review.keep("sct_sigma_aleatoric", np.full((2, 2, 2), 2.0, np.float32))
    sigma, name = review.flag_sigma()
    assert name == "sct_sigma_aleatoric" and np.all(sigma == 2.0)  # T = 1: σ_aleatoric stands in
    review.keep("sct_sigma_grid", np.full((2, 2, 2), 3.0, np.float32))
    review.keep("sct_sigma_total", np.full((2, 2, 2), 5.0, np.float32))
    sigma, name = review.flag_sigma()
    assert name == "sct_sigma_total without sct_sigma_grid" and np.allclose(sigma, 4.0)
    assert "sct_sigma_aleatoric" not in review.maps  # dropped once σ_total arrives
