"""radmtl infer: outputs on the input grid for any orientation, uncertainty maps, bad inputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Compose
from scipy.spatial.transform import Rotation

from radmtl.nn.checkpoint import make_payload, save_checkpoint
from radmtl.cli import main
from radmtl.config import load_config
from radmtl.inference.model_uri import sha256_of
from radmtl.nn.model import build_model
from radmtl.data.phantom import PHANTOM_LABELS, generate_case
from radmtl.inference.resample import resample_to_grid
from radmtl.data.transforms import preprocess

TINY = ["model.channels=[4,8]", "model.strides=[2]", "data.patch_size=[16,16,16]",
        "data.spacing=[6.0,6.0,6.0]", "infer.mc_samples=1"]
SHAPE = (30, 27, 19)  # deliberately not a multiple of anything
SPACING = (5.0, 4.5, 6.5)  # anisotropic, not the model's 6 mm


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_payload) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("model") / "model.pt", tiny_payload())


S0 = -3.1  # bias of a zero-weight sct_log_var head: s = log σ² (Gaussian) or log b (Laplace)
CT_SCALE_HU = 1000.0  # cfg.data.ct_scale_hu of TINY


def _constant_sigma_checkpoint(path: Path, overrides: list[str] = (), sigma_factor: float | None = None,
                               sct_scaled: float | None = None) -> Path:
    """A checkpoint whose σ head outputs S0 at every voxel (and the sCT head ``sct_scaled``, if given)."""
    cfg = load_config(None, TINY + list(overrides))
    assert cfg.data.ct_scale_hu == CT_SCALE_HU
    torch.manual_seed(0)
    model = build_model(cfg.model)
    heads = {"sct_log_var": S0} if sct_scaled is None else {"sct_log_var": S0, "sct": sct_scaled}
    with torch.no_grad():
        for key, bias in heads.items():
            model.heads[key].conv.weight.zero_()
            model.heads[key].conv.bias.fill_(bias)
    payload = make_payload(cfg=cfg, label_names=dict(PHANTOM_LABELS), model=model, with_rng=False)
    if sigma_factor is not None:
        payload["sigma_scaling"] = {"factor": sigma_factor}
    return save_checkpoint(path, payload)


def _sigma0_hu(likelihood: str) -> float:
    """σ in HU of a head that outputs S0: exp(S0/2) (σ² = e^s) or √2·exp(S0) (σ = √2·b), × ct_scale_hu."""
    sigma = math.exp(S0 / 2) if likelihood == "gaussian" else math.sqrt(2.0) * math.exp(S0)
    return sigma * CT_SCALE_HU


@pytest.fixture(scope="module")
def constant_sigma_checkpoint(tmp_path_factory) -> Path:
    return _constant_sigma_checkpoint(tmp_path_factory.mktemp("model") / "constant_sigma.pt")


@pytest.fixture(scope="module")
def mr_ras() -> np.ndarray:
    return generate_case(3, SHAPE, SPACING).mr


def _affine(kind: str) -> np.ndarray:
    affine = np.eye(4)
    if kind == "ras":
        affine[:3, :3] = np.diag(SPACING)
    elif kind == "lps":
        affine[:3, :3] = np.diag([-SPACING[0], -SPACING[1], SPACING[2]])
    elif kind == "oblique":
        rotation = Rotation.from_euler("xyz", [14, -9, 23], degrees=True).as_matrix()
        affine[:3, :3] = rotation @ np.diag(SPACING)
    elif kind == "permuted":  # axes stored as (S, L, A): axis codes like a sagittal acquisition
        affine[:3, :3] = np.array([[0, -SPACING[1], 0], [0, 0, SPACING[2]], [SPACING[0], 0, 0]])
    affine[:3, 3] = [-71.3, 12.9, -40.2]
    return affine


def _write_mr(path: Path, array: np.ndarray, affine: np.ndarray, qform_code: int = 1,
              sform_code: int = 1) -> Path:
    img = nib.Nifti1Image(np.asarray(array, np.float32), affine)
    img.set_qform(affine, code=qform_code)
    img.set_sform(affine, code=sform_code)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def _infer(model: Path, inp: Path, out: Path, *extra: str) -> int:
    return main(["infer", "--model", str(model), "--input", str(inp), "--output", str(out),
                 "--no-progress", "--device", "cpu", *extra])


# --- geometry -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ras", "lps", "oblique", "permuted"])
def test_network_grid_round_trip_is_exact_for_a_world_linear_image(tmp_path, kind):
    """A field linear in world mm survives RAS+respacing and the inversion (interpolation is exact)."""
    affine = _affine(kind)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), -1)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    field = xyz @ np.array([1.0, 2.0, -0.5]) + 100.0
    path = _write_mr(tmp_path / "mr.nii.gz", field, affine)
    cfg = load_config(None, TINY)
    # Load → RAS → model spacing: the geometric part of the training preprocessing.
    network = Compose(preprocess(cfg.data, ["mr"])[:3])({"mr": str(path)})["mr"]
    back = resample_to_grid(network, network.affine, affine, SHAPE)[0]
    assert back.shape == SHAPE
    # Voxels within one network voxel of the border are extrapolated (border padding).
    inner = (slice(2, -2),) * 3
    np.testing.assert_allclose(back[inner], field[inner], atol=1e-3)


@pytest.mark.parametrize("kind", ["ras", "lps", "oblique", "permuted"])
def test_outputs_land_on_the_input_grid(tmp_path, constant_sigma_checkpoint, mr_ras, kind):
    affine = _affine(kind)
    # Codes that differ from the default, to see they are copied rather than reset.
    mr_path = _write_mr(tmp_path / "in" / "pt 7.nii.gz", mr_ras, affine, qform_code=2, sform_code=4)
    assert _infer(constant_sigma_checkpoint, mr_path, tmp_path / "out", "--mc-samples", "1") == 0
    case = tmp_path / "out" / "pt 7"
    expected = {"sct.nii.gz": np.float32, "sct_sigma_aleatoric.nii.gz": np.float32, "seg.nii.gz": np.uint8}
    assert {p.name for p in case.iterdir()} == set(expected) | {"provenance.json", "review"}
    for name, dtype in expected.items():
        img = nib.load(str(case / name))
        assert img.shape == SHAPE, name
        np.testing.assert_allclose(img.affine, affine, atol=1e-4, err_msg=name)
        assert int(img.header["qform_code"]) == 2 and int(img.header["sform_code"]) == 4, name
        assert img.get_data_dtype() == np.dtype(dtype), name
        assert np.all(np.isfinite(img.get_fdata())), name
    labels = np.asanyarray(nib.load(str(case / "seg.nii.gz")).dataobj)
    assert labels.max() < len(PHANTOM_LABELS)
    sigma = nib.load(str(case / "sct_sigma_aleatoric.nii.gz")).get_fdata()
    # the σ head outputs s = S0 everywhere: σ = exp(S0/2)·ct_scale_hu HU at every input voxel
    np.testing.assert_allclose(sigma, _sigma0_hu("gaussian"), rtol=1e-5)
    assert not list(tmp_path.glob("out/.*")), "hidden temporary folders left behind"


def test_same_physical_image_in_two_orientations_gives_the_same_outputs(tmp_path, checkpoint, mr_ras):
    ras = _affine("ras")
    # LPS storage of the same image: flip the array along x and y and move the origin to the far corner.
    lps = _affine("lps")
    lps[:3, 3] = ras[:3, :3] @ [SHAPE[0] - 1, SHAPE[1] - 1, 0] + ras[:3, 3]
    _write_mr(tmp_path / "in" / "a_ras.nii.gz", mr_ras, ras)
    _write_mr(tmp_path / "in" / "b_lps.nii.gz", mr_ras[::-1, ::-1, :], lps)
    assert _infer(checkpoint, tmp_path / "in", tmp_path / "out", "--mc-samples", "1",
                  "--save-probabilities") == 0
    for name in ("sct", "sct_sigma_aleatoric", "seg", "seg_probabilities"):
        a = nib.load(str(tmp_path / "out" / "a_ras" / f"{name}.nii.gz")).get_fdata()
        b = nib.load(str(tmp_path / "out" / "b_lps" / f"{name}.nii.gz")).get_fdata()[::-1, ::-1]
        if name == "seg":
            assert np.mean(a == b) > 0.999, name  # ties between near-equal probabilities may flip
        else:
            scale = max(1.0, float(np.abs(a).max()))
            np.testing.assert_allclose(b, a, atol=1e-4 * scale, err_msg=name)


# --- uncertainty outputs and provenance ----------------------------------------------------------


def test_mc_outputs_are_present_and_consistent(tmp_path, checkpoint, mr_ras):
    affine = _affine("oblique")
    mr_path = _write_mr(tmp_path / "mr_case.nii", mr_ras, affine)
    assert _infer(checkpoint, mr_path, tmp_path / "out", "--mc-samples", "4", "--save-probabilities",
                  "--overlap", "0.25") == 0
    case = tmp_path / "out" / "mr_case"

    def load(name: str) -> np.ndarray:  # an uncompressed .nii input gives .nii outputs (--output-format auto)
        return nib.load(str(case / f"{name}.nii")).get_fdata(dtype=np.float32)

    aleatoric, epistemic, total = load("sct_sigma_aleatoric"), load("sct_sigma_epistemic"), load("sct_sigma_total")
    assert epistemic.max() > 0  # dropout p = 0.5 makes the samples differ
    assert np.all(total >= aleatoric - 1e-3) and np.all(total >= epistemic - 1e-3)
    # Exact up to float32 rounding: σ maps are resampled as variances, so the identity survives.
    np.testing.assert_allclose(total, np.sqrt(aleatoric**2 + epistemic**2), rtol=1e-4, atol=1e-3)
    entropy, mutual_info = load("seg_entropy"), load("seg_mutual_info")
    assert np.all(mutual_info >= 0) and np.all(entropy >= mutual_info - 1e-5)
    assert entropy.max() <= np.log(len(PHANTOM_LABELS)) + 1e-5
    probs = nib.load(str(case / "seg_probabilities.nii"))
    assert probs.shape == (*SHAPE, len(PHANTOM_LABELS)) and probs.get_data_dtype() == np.float32
    probs = probs.get_fdata(dtype=np.float32)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-4)
    np.testing.assert_array_equal(load("seg"), probs.argmax(-1))

    prov = json.loads((case / "provenance.json").read_text())
    assert prov["model"]["sha256"] == sha256_of(checkpoint)
    assert prov["model"]["source"] == str(checkpoint)
    assert prov["model"]["label_names"] == dict(PHANTOM_LABELS)
    assert prov["inference"]["mc_samples"] == 4 and prov["inference"]["overlap"] == 0.25
    assert prov["inference"]["device"] == "cpu"
    assert prov["input"]["path"] == str(mr_path.resolve())
    assert prov["input"]["grid"]["shape"] == list(SHAPE)
    np.testing.assert_allclose(prov["input"]["affine"], affine, atol=1e-5)
    assert prov["network_grid"]["spacing_mm"] == [6.0, 6.0, 6.0]
    assert prov["config"]["model"]["channels"] == [4, 8]
    assert prov["radmtl_version"]
    assert set(prov["outputs"]) == {"sct", "sct_sigma_aleatoric", "sct_sigma_epistemic", "sct_sigma_total",
                                    "seg_entropy", "seg_mutual_info", "seg", "seg_probabilities", "review"}
    assert prov["timings_s"]["total_s"] > 0


@pytest.mark.parametrize("likelihood", ["gaussian", "laplace"])
def test_sigma_maps_are_in_hu_and_follow_the_checkpoint_scaling(tmp_path, mr_ras, likelihood):
    """End to end: a head that outputs s = S0 everywhere gives σ = σ0 HU at every input voxel; a
    checkpoint σ-scaling factor multiplies σ_aleatoric (and enters σ_total) unless switched off."""
    from radmtl.inference.infer import InferOptions, run_inference

    overrides = [f"loss.likelihood={likelihood}"]
    sigma0 = _sigma0_hu(likelihood)
    mr_path = _write_mr(tmp_path / "in" / "x.nii.gz", mr_ras, _affine("oblique"))
    plain = _constant_sigma_checkpoint(tmp_path / "plain.pt", overrides, sct_scaled=0.05)
    scaled = _constant_sigma_checkpoint(tmp_path / "scaled.pt", overrides, sigma_factor=1.7, sct_scaled=0.05)

    def run(model: Path, name: str, **options) -> tuple[dict[str, np.ndarray], dict]:
        results = run_inference(str(model), mr_path, tmp_path / name, InferOptions(device="cpu", **options))
        assert [r.error for r in results] == [None]
        case = tmp_path / name / "x"
        maps = {p.name.removesuffix(".nii.gz"): nib.load(str(p)).get_fdata(dtype=np.float32)
                for p in case.glob("*.nii.gz")}
        return maps, json.loads((case / "provenance.json").read_text())["inference"]["sigma_scaling"]

    maps, prov = run(plain, "plain", mc_samples=1)
    np.testing.assert_allclose(maps["sct_sigma_aleatoric"], sigma0, rtol=1e-5)
    np.testing.assert_allclose(maps["sct"], 50.0, rtol=1e-5)  # sCT head 0.05 scaled units = 50 HU
    assert prov == {"applied": False, "factor": 1.0, "fitted": None}

    maps, prov = run(scaled, "scaled", mc_samples=1)
    np.testing.assert_allclose(maps["sct_sigma_aleatoric"], 1.7 * sigma0, rtol=1e-5)
    assert prov == {"applied": True, "factor": 1.7, "fitted": {"factor": 1.7}}

    maps, prov = run(scaled, "off", mc_samples=1, sigma_scaling=False)
    np.testing.assert_allclose(maps["sct_sigma_aleatoric"], sigma0, rtol=1e-5)
    assert prov["applied"] is False and prov["factor"] == 1.0

    # T > 1: the head has no weights, so dropout leaves σ_aleatoric constant; the scaled aleatoric
    # variance and the epistemic variance add up to the total.
    maps, prov = run(scaled, "mc", mc_samples=3)
    np.testing.assert_allclose(maps["sct_sigma_aleatoric"], 1.7 * sigma0, rtol=1e-5)
    np.testing.assert_allclose(maps["sct_sigma_epistemic"], 0.0, atol=1e-2)  # constant sCT head too
    np.testing.assert_allclose(maps["sct_sigma_total"] ** 2 - maps["sct_sigma_epistemic"] ** 2,
                               (1.7 * sigma0) ** 2, rtol=1e-4)
    assert prov["factor"] == 1.7


def test_no_sigma_scaling_flag(tmp_path, mr_ras):
    model = _constant_sigma_checkpoint(tmp_path / "scaled.pt", sigma_factor=1.7)
    mr_path = _write_mr(tmp_path / "x.nii.gz", mr_ras, _affine("lps"))
    for name, flags in (("on", []), ("off", ["--no-sigma-scaling"])):
        assert _infer(model, mr_path, tmp_path / name, "--mc-samples", "1", *flags) == 0
    on = nib.load(str(tmp_path / "on" / "x" / "sct_sigma_aleatoric.nii.gz")).get_fdata()
    off = nib.load(str(tmp_path / "off" / "x" / "sct_sigma_aleatoric.nii.gz")).get_fdata()
    np.testing.assert_allclose(on, 1.7 * _sigma0_hu("gaussian"), rtol=1e-5)
    np.testing.assert_allclose(off, _sigma0_hu("gaussian"), rtol=1e-5)
    prov = json.loads((tmp_path / "off" / "x" / "provenance.json").read_text())
    assert prov["inference"]["sigma_scaling"] == {"applied": False, "factor": 1.0, "fitted": {"factor": 1.7}}


@pytest.mark.parametrize("tasks, expected", [
    ("[sct]", {"sct.nii.gz", "sct_sigma_aleatoric.nii.gz", "sct_sigma_epistemic.nii.gz",
               "sct_sigma_total.nii.gz"}),
    ("[seg]", {"seg.nii.gz", "seg_entropy.nii.gz", "seg_mutual_info.nii.gz"}),
])
def test_single_task_models_write_only_their_maps(tmp_path, mr_ras, tasks, expected, tiny_payload):
    model = save_checkpoint(tmp_path / "m.pt", tiny_payload([f"loss.tasks={tasks}"]))
    mr_path = _write_mr(tmp_path / "x.nii.gz", mr_ras, _affine("ras"))
    assert _infer(model, mr_path, tmp_path / "out", "--mc-samples", "2") == 0
    assert {p.name for p in (tmp_path / "out" / "x").iterdir()} == expected | {"provenance.json", "review"}


def test_dataset_folder_and_mlflow_uri(tmp_path, checkpoint, mr_ras, monkeypatch):
    data = tmp_path / "data"
    for case in ("case_b", "case_a"):
        _write_mr(data / case / "mr.nii.gz", mr_ras, _affine("ras"))
    calls = []

    def fake_resolve(uri, tracking_uri=None, dst_dir=None):
        calls.append((uri, tracking_uri))
        return checkpoint

    monkeypatch.setattr("radmtl.inference.model_uri.resolve_model_uri", fake_resolve)
    rc = main(["infer", "--model", "runs:/abc123/model", "--input", str(data), "--output", str(tmp_path / "o"),
               "--no-progress", "--tracking-uri", "sqlite:///x.db", "--mc-samples", "1"])
    assert rc == 0
    assert calls == [("runs:/abc123/model", "sqlite:///x.db")]
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["case_a", "case_b"]
    prov = json.loads((tmp_path / "o" / "case_a" / "provenance.json").read_text())
    assert prov["model"]["source"] == "runs:/abc123/model"
    # A second run skips the published cases; with --overwrite it replaces them atomically and leaves no
    # hidden folders.
    again = ["infer", "--model", str(checkpoint), "--input", str(data), "--output", str(tmp_path / "o"),
             "--no-progress", "--mc-samples", "1"]
    assert main(again) == 0
    assert json.loads((tmp_path / "o" / "case_a" / "provenance.json").read_text())["model"]["source"] == \
        "runs:/abc123/model"
    assert main([*again, "--overwrite"]) == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["case_a", "case_b"]
    assert json.loads((tmp_path / "o" / "case_a" / "provenance.json").read_text())["model"]["source"] == \
        str(checkpoint)


# --- bad inputs ---------------------------------------------------------------------------------


def _bad_input(tmp_path: Path, kind: str, mr_ras: np.ndarray) -> Path:
    path = tmp_path / "in" / "bad.nii.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "non3d":
        nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 2), np.float32), np.eye(4)), str(path))
    elif kind == "unreadable":
        path.write_bytes(b"this is not a nifti file at all" * 10)
    elif kind == "nan":
        array = mr_ras.copy()
        array[3, 4, 5] = np.nan
        _write_mr(path, array, _affine("ras"))
    elif kind == "missing":
        pass
    return path


@pytest.mark.parametrize("kind, message", [
    ("non3d", "expected a 3D image"),
    ("unreadable", "cannot read as NIfTI"),
    ("nan", "1 NaN voxel(s)"),
    ("missing", "not found"),
])
def test_bad_mr_is_one_line_and_leaves_nothing(tmp_path, capsys, checkpoint, mr_ras, kind, message):
    path = _bad_input(tmp_path, kind, mr_ras)
    assert _infer(checkpoint, path, tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out" / "bad").exists()


def test_bad_case_in_a_folder_does_not_stop_the_others(tmp_path, capsys, checkpoint, mr_ras):
    _bad_input(tmp_path, "nan", mr_ras)
    _write_mr(tmp_path / "in" / "good.nii.gz", mr_ras, _affine("ras"))
    assert _infer(checkpoint, tmp_path / "in", tmp_path / "out", "--mc-samples", "1") == 1
    captured = capsys.readouterr()
    assert "case bad:" in captured.err and "1 NaN voxel(s)" in captured.err and "Traceback" not in captured.err
    assert "1 of 2 case(s)" in captured.out and "FAILED" in captured.out
    assert (tmp_path / "out" / "good" / "sct.nii.gz").is_file()
    assert not (tmp_path / "out" / "bad").exists()
    assert not list((tmp_path / "out").glob(".*"))


def test_unwritable_output_is_one_line(tmp_path, capsys, checkpoint, mr_ras):
    mr_path = _write_mr(tmp_path / "x.nii.gz", mr_ras, _affine("ras"))
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    assert _infer(checkpoint, mr_path, blocker / "out") == 1
    err = capsys.readouterr().err
    assert "not writable" in err and "Traceback" not in err


@pytest.mark.parametrize("content", [b"not a checkpoint", "torch"])
def test_foreign_checkpoint_is_one_line(tmp_path, capsys, mr_ras, content):
    model = tmp_path / "foreign.pt"
    if content == "torch":
        torch.save({"state_dict": {"w": torch.zeros(2)}}, model)
    else:
        model.write_bytes(content)
    mr_path = _write_mr(tmp_path / "x.nii.gz", mr_ras, _affine("ras"))
    assert _infer(model, mr_path, tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "not a radmtl checkpoint" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "x").exists()


def test_case_id_of_a_dataset_layout_mr_file_is_its_folder(tmp_path):
    from radmtl.inference.infer import find_cases

    case = tmp_path / "case_007"
    case.mkdir()
    (case / "mr.nii.gz").write_bytes(b"")
    (tmp_path / "patient_a.nii.gz").write_bytes(b"")
    assert [cid for cid, _ in find_cases(case / "mr.nii.gz")] == ["case_007"]
    assert [cid for cid, _ in find_cases(tmp_path / "patient_a.nii.gz")] == ["patient_a"]
