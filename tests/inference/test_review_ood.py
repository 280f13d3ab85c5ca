"""The review on the demo's own model: held-out phantoms of its training distribution get ``ok``; inputs
unlike its training data get ``review`` (issue 27, point 4).

``tests/fixtures/demo_model.pt`` is the model ``bash scripts/demo.sh`` trained before its validation cases
moved to native resolution (configs/quick.yaml on 24 phantoms of seed 0 on the network grid), its σ-scaling
factor and review thresholds fitted on its 5 validation cases on that grid, kept
by ``scripts/model_fixture.py`` (weights, config, labels, the fitted records; no optimiser state). The
held-out cases come from the test seed range, on which no choice was made, on the network's grid.

What "unlike" means here, each a real way an MR goes wrong: a 60 mm region three times brighter than
anything in the body (an implant's or a contrast agent's bright signal), and an MR with noise a third of
its bright tissue's level. A receive-coil bias field (signal 0.5 → 2 across the patient) was tried too and
is not caught by this model's σ on one of the two cases (case 1: `ok`), so it is not claimed here.
Review levels hold for inputs of their validation cases' resolution: the current demo's model, fitted on
native 2 × 2 × 3 mm validation cases, gives these network-grid held-out cases `ok` and flags the bright
region, but leaves the noisy MR of case 1 `ok` here, while on native test cases it flags both noisy MRs and passes both
clean ones (as does this model).
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from radmtl.data.phantom import TEST_SEED, generate_dataset
from radmtl.data.transforms import derive_body_mask
from radmtl.inference.infer import InferOptions, run_inference
from radmtl.nn.checkpoint import load_checkpoint

MODEL = Path(__file__).resolve().parents[1] / "fixtures" / "demo_model.pt"
HELD_OUT = 3


def _bright_region(mr: np.ndarray, affine: np.ndarray, labels: np.ndarray, body: np.ndarray) -> np.ndarray:
    """The body within 60 mm of a point 40 mm above the bladder's centre."""
    xyz = nib.affines.apply_affine(affine, np.indices(mr.shape).reshape(3, -1).T).reshape(*mr.shape, 3)
    centre = xyz[labels == 1].mean(axis=0) + np.array([0.0, 0.0, 40.0])
    return (np.linalg.norm(xyz - centre, axis=-1) < 60.0) & body


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("ood")
    thresholds = load_checkpoint(MODEL)["review_thresholds"]
    cfg_spacing = tuple(load_checkpoint(MODEL)["config"]["data"]["spacing"])
    data = root / "heldout"
    generate_dataset(data, HELD_OUT, seed=TEST_SEED, shape=(56, 40, 32), spacing=cfg_spacing)
    unlike = root / "unlike"
    unlike.mkdir()
    regions = {}
    for i in range(1, 3):
        case = data / f"case_{i:03d}"
        img = nib.load(case / "mr.nii.gz")
        mr = np.asarray(img.dataobj, np.float32)
        body = derive_body_mask(mr) != 0
        labels = np.asarray(nib.load(case / "labels.nii.gz").dataobj)
        bright = mr.copy()
        region = _bright_region(mr, img.affine, labels, body)
        bright[region] = 3.0 * np.percentile(mr[body], 99)
        regions[f"case_{i:03d}"] = region
        noisy = mr + np.random.default_rng(i).normal(0.0, 0.3 * np.percentile(mr[body], 99), mr.shape)
        for name, array in (("bright", bright), ("noisy", noisy)):
            nib.save(nib.Nifti1Image(array.astype(np.float32), img.affine), str(unlike / f"case_{i:03d}_{name}.nii.gz"))
    options = InferOptions(device="cpu")
    results = {}
    for name, inputs in (("heldout", data), ("unlike", unlike)):
        for result in run_inference(str(MODEL), inputs, root / name, options):
            assert result.error is None, result.error
            folder = root / name / result.case_id
            results[result.case_id if name == "unlike" else f"heldout_{result.case_id}"] = {
                "review": json.loads((folder / "review" / "review.json").read_text()),
                "sigma": np.asarray(nib.load(folder / "sct_sigma_total.nii.gz").dataobj)}
    return {"results": results, "regions": regions, "thresholds": thresholds}


def test_held_out_phantoms_of_the_training_distribution_are_ok(reviewed):
    for i in range(1, HELD_OUT + 1):
        review = reviewed["results"][f"heldout_case_{i:03d}"]["review"]
        assert review["verdict"] == "ok", (i, review["reasons"])
        assert review["rare_sigma_fraction_body"] < reviewed["thresholds"]["case_rare_fraction"]


@pytest.mark.parametrize("kind", ["bright", "noisy"])
def test_inputs_unlike_the_training_data_ask_for_review(reviewed, kind):
    for i in (1, 2):
        review = reviewed["results"][f"case_{i:03d}_{kind}"]["review"]
        assert review["verdict"] == "review", (kind, i)
        # the reason is the σ map's, not a missing organ alone
        assert {"rare_sigma", "body_flagged"} & set(review["codes"]), (kind, i, review["codes"])


def test_the_bright_region_is_flagged_where_it_was_not(reviewed):
    level = reviewed["thresholds"]["sigma_total_hu"]
    for i in (1, 2):
        case = f"case_{i:03d}"
        region = reviewed["regions"][case]
        before = np.mean(reviewed["results"][f"heldout_{case}"]["sigma"][region] >= level)
        after = np.mean(reviewed["results"][f"{case}_bright"]["sigma"][region] >= level)
        # measured with the demo's model: 0.11 → 0.18 (case 1) and 0.16 → 0.20 (case 2) of the region: more
        # of it flagged than of the same tissue without the anomaly, but not much more; what decides the
        # verdict is rare σ elsewhere (the bright region shifts the MR's intensity normalisation)
        assert after > before, (case, before, after)
