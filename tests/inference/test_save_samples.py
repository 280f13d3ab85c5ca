"""radmtl infer --save-samples K: the first K MC-dropout samples of the sCT, for a dose per sample.

The samples must be the very realisations σ_epistemic and the sCT are made of: their mean over K = T is
the written sCT, their population SD is σ_epistemic where one window covers a voxel, and a smaller K is
the start of the same sequence.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from radmtl.cli import main
from radmtl.data.phantom import generate_case
from radmtl.inference.predict import finalize, predict_volume, window_statistics
from radmtl.nn.checkpoint import save_checkpoint

TINY = ["model.channels=[4,8]", "model.strides=[2]", "data.patch_size=[16,16,16]",
        "data.spacing=[6.0,6.0,6.0]", "infer.mc_samples=1"]  # conftest's TINY_MODEL: dropout p = 0.5 at the encoder


class ChunkedSamples(torch.nn.Module):
    """T known sCT samples of a 2-voxel volume, sample t = (t, 10·t), handed out ``chunk`` at a time."""

    def __init__(self, chunk: int) -> None:
        super().__init__()
        self.chunk = chunk
        self.chunks_drawn = 0

    def mc_chunks(self, mr: torch.Tensor, samples: int):
        for first in range(0, samples, self.chunk):
            self.chunks_drawn += 1
            t = torch.arange(first, min(first + self.chunk, samples), dtype=torch.float32)
            sct = torch.stack([t, 10.0 * t], dim=-1)  # (t, 2)
            yield {"sct": sct.reshape(-1, 1, 1, 2, 1, 1)}


def test_window_statistics_keeps_the_first_k_samples_in_order_across_chunks():
    model = ChunkedSamples(chunk=3)
    stats = window_statistics(model, torch.zeros(1, 1, 2, 1, 1), 7, "gaussian", save_samples=5)
    assert model.chunks_drawn == 3  # 3 + 3 + 1: all T samples still feed the statistics
    samples = stats["sct_samples"]
    assert samples.shape == (1, 5, 2, 1, 1)
    torch.testing.assert_close(samples[0, :, :, 0, 0], torch.tensor([[t, 10.0 * t] for t in range(5)]))
    # The statistics are still those of all 7 samples, not of the 5 kept: mean 3, variance 4 at voxel 0.
    torch.testing.assert_close(stats["sct"].flatten(), torch.tensor([3.0, 30.0]))
    torch.testing.assert_close(stats["var_epistemic"].flatten(), torch.tensor([4.0, 400.0]))
    assert finalize(stats, 7)["sct_samples"] is samples


def test_window_statistics_without_save_samples_keeps_none_and_refuses_more_than_t():
    mr = torch.zeros(1, 1, 2, 1, 1)
    assert "sct_samples" not in window_statistics(ChunkedSamples(3), mr, 7, "gaussian")
    with pytest.raises(ValueError, match="save_samples"):
        window_statistics(ChunkedSamples(3), mr, 7, "gaussian", save_samples=8)


class OffsetSamples(torch.nn.Module):
    """Per window: sCT sample t = window mean MR + offsets[t]; the samples of one window differ by a constant."""

    def __init__(self, offsets: tuple[float, ...]) -> None:
        super().__init__()
        self.offsets = torch.tensor(offsets)

    def mc_forward(self, mr: torch.Tensor, samples: int) -> dict[str, torch.Tensor]:
        means = mr.mean(dim=(1, 2, 3, 4), keepdim=True).expand_as(mr)
        return {"sct": means[None] + self.offsets[:samples].reshape(-1, 1, 1, 1, 1, 1),
                "sct_log_var": torch.zeros_like(mr)[None].expand(samples, *mr.shape).clone()}


def test_predict_volume_blends_the_samples_like_the_mean():
    """Overlapping windows disagree; each sample is blended with the same Gaussian weights as the sCT, so
    sample k − the sCT is offset k − mean offset everywhere, and K = 0 leaves every map unchanged."""
    mr = (torch.arange(16, dtype=torch.float32).reshape(-1, 1, 1).expand(16, 8, 8) ** 2 / 10.0)[None, None]
    mr = mr.contiguous()
    offsets = (0.0, 1.0, 5.0)
    run = dict(roi_size=(8, 8, 8), overlap=0.5, mc_samples=3, sw_batch_size=1)
    plain = predict_volume(OffsetSamples(offsets), mr, **run)
    maps = predict_volume(OffsetSamples(offsets), mr, **run, save_samples=3)
    assert "sct_samples" not in plain and maps["sct_samples"].shape == (1, 3, 16, 8, 8)
    for key, value in plain.items():
        assert torch.equal(maps[key], value), key
    sct = maps["sct"][0, 0]
    assert sct[0, 0, 0] < sct[6, 0, 0] < sct[15, 0, 0]  # the windows do disagree
    for k, offset in enumerate(offsets):
        torch.testing.assert_close(maps["sct_samples"][0, k], sct + offset - 2.0)
    torch.testing.assert_close(maps["sct_samples"].std(dim=1, unbiased=False, keepdim=True),
                               maps["sigma_epistemic"])
    assert math.isclose(maps["sigma_epistemic"].mean().item(), math.sqrt(14.0 / 3.0), rel_tol=1e-5)


def test_in_overlaps_the_blended_samples_spread_less_than_sigma_epistemic():
    """A real (untrained) network, T = K = 6, three windows along x (0–15, 8–23, 16–31). Where one window
    covers a voxel (x < 8, x ≥ 24) the samples' population SD is σ_epistemic; where windows overlap each
    blended sample averages independent dropout passes, so its spread is at most σ_epistemic (a convex
    combination never spreads more than its parts) and below it somewhere."""
    from radmtl.config import load_config
    from radmtl.nn.model import build_model

    torch.manual_seed(0)
    model = build_model(load_config(None, TINY).model)
    mr = torch.randn(1, 1, 32, 16, 16)
    maps = predict_volume(model, mr, (16, 16, 16), overlap=0.5, mc_samples=6, save_samples=6)
    spread = maps["sct_samples"].std(dim=1, unbiased=False)[0].double()
    sigma = maps["sigma_epistemic"][0, 0].double()
    single = torch.cat([torch.arange(0, 8), torch.arange(24, 32)])
    torch.testing.assert_close(spread[single], sigma[single], rtol=1e-4, atol=1e-6)
    overlap = spread[8:24] / sigma[8:24]
    assert float(overlap.max()) <= 1.0 + 1e-4
    assert float(overlap.min()) < 0.9


# --- radmtl infer --save-samples ------------------------------------------------------------------

# One window: the network grid is the input grid (6 mm RAS, as the model's data.spacing) and the volume is no
# larger than one 16³ patch, so nothing is blended and nothing interpolated.
ONE_WINDOW_SHAPE = (16, 16, 12)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_payload) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("model") / "model.pt", tiny_payload())


def _write_mr(path: Path, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> Path:
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [-40.0, 10.0, -30.0]
    img = nib.Nifti1Image(generate_case(3, shape, spacing).mr.astype(np.float32), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


@pytest.fixture(scope="module")
def one_window_mr(tmp_path_factory) -> Path:
    return _write_mr(tmp_path_factory.mktemp("in") / "pt.nii.gz", ONE_WINDOW_SHAPE, (6.0, 6.0, 6.0))


def _infer(model: Path, inp: Path, out: Path, *extra: str) -> int:
    return main(["infer", "--model", str(model), "--input", str(inp), "--output", str(out), "--no-progress",
                 "--device", "cpu", "--no-review", *extra])


def _load(case: Path, stem: str) -> np.ndarray:
    return nib.load(str(case / f"{stem}.nii.gz")).get_fdata(dtype=np.float64)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, checkpoint, one_window_mr) -> dict[str, Path]:
    """The one-window case run at T = 4 with K = 4, K = 2 and without --save-samples."""
    out = tmp_path_factory.mktemp("out")
    cases = {}
    for name, extra in (("k4", ["--save-samples", "4"]), ("k2", ["--save-samples", "2"]), ("off", [])):
        assert _infer(checkpoint, one_window_mr, out / name, "--mc-samples", "4", *extra) == 0
        cases[name] = out / name / "pt"
    return cases


def test_samples_are_the_realisations_of_the_sct_and_its_epistemic_sigma(runs):
    case = runs["k4"]
    img = nib.load(str(case / "sct_samples.nii.gz"))
    assert img.shape == (*ONE_WINDOW_SHAPE, 4) and img.get_data_dtype() == np.float32
    samples = img.get_fdata(dtype=np.float64)
    sct, sigma = _load(case, "sct"), _load(case, "sct_sigma_epistemic")
    # K = T: the mean of the samples is the sCT (float32 rounding of values up to ~1000 HU).
    np.testing.assert_allclose(samples.mean(-1), sct, rtol=0, atol=1e-3)
    # One window and no interpolation: the samples' population SD is σ_epistemic, up to float32 rounding
    # (σ is the root of a variance merged chunk by chunk; 1e-3 HU is ~1e-6 of the ~1000 HU values).
    spread = samples.std(-1)
    np.testing.assert_allclose(spread, sigma, rtol=1e-4, atol=1e-3)
    body = sct > -500.0
    assert body.any() and spread[body].max() > 1.0  # dropout p = 0.5: the samples differ (HU)
    prov = json.loads((case / "provenance.json").read_text())
    assert prov["outputs"]["sct_samples"] == {"file": "sct_samples.nii.gz", "format": "nii.gz", "dtype": "float32",
                                              "units": "HU", "axis_3": "MC dropout sample index", "samples": 4}


def test_fewer_samples_are_the_first_ones_and_no_samples_change_nothing(runs):
    k4 = nib.load(str(runs["k4"] / "sct_samples.nii.gz")).get_fdata(dtype=np.float32)
    k2 = nib.load(str(runs["k2"] / "sct_samples.nii.gz")).get_fdata(dtype=np.float32)
    assert k2.shape == (*ONE_WINDOW_SHAPE, 2)
    # Same seed, same masks drawn in the same order: K only decides how many of them are kept.
    np.testing.assert_array_equal(k2, k4[..., :2])
    assert not (runs["off"] / "sct_samples.nii.gz").exists()
    off_files = {p.name for p in runs["off"].iterdir()}
    assert {p.name for p in runs["k4"].iterdir()} == off_files | {"sct_samples.nii.gz"}
    for name in sorted(off_files - {"provenance.json"}):  # keeping samples changes no other map, bit for bit
        a = np.asanyarray(nib.load(str(runs["off"] / name)).dataobj)
        np.testing.assert_array_equal(np.asanyarray(nib.load(str(runs["k4"] / name)).dataobj), a, err_msg=name)


def test_mha_samples_on_a_finer_grid_keep_their_components_and_mean(tmp_path, checkpoint):
    """3 mm input, 6 mm network: several windows, the body outline and interpolation; each sample follows
    the sCT's path, so the mean of K = T samples is still the sCT, air outside the body included."""
    import SimpleITK as sitk

    mr = _write_mr(tmp_path / "in" / "fine.nii.gz", (40, 36, 24), (3.0, 3.0, 3.0))
    assert _infer(checkpoint, mr, tmp_path / "out", "--mc-samples", "3", "--save-samples", "3",
                  "--output-format", "mha") == 0
    case = tmp_path / "out" / "fine"
    image = sitk.ReadImage(str(case / "sct_samples.mha"))
    assert image.GetNumberOfComponentsPerPixel() == 3 and image.GetSize() == (40, 36, 24)
    samples = sitk.GetArrayFromImage(image).astype(np.float64)  # (Z, Y, X, K)
    sct = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "sct.mha"))).astype(np.float64)
    np.testing.assert_allclose(samples.mean(-1), sct, rtol=0, atol=1e-3)
    assert (sct == -1000.0).any()  # the outline drew air, in every sample alike
    prov = json.loads((case / "provenance.json").read_text())
    assert prov["outputs"]["sct_samples"] == {"file": "sct_samples.mha", "format": "mha", "dtype": "float32",
                                              "units": "HU", "samples": 3,
                                              "axis_3": "vector component = MC dropout sample index"}


@pytest.mark.parametrize("extra, message", [
    (["--save-samples", "2"], "--save-samples 2: needs --mc-samples of at least 2 (the model's default is 1)"),
    (["--mc-samples", "3", "--save-samples", "4"], "--save-samples 4: needs --mc-samples of at least 4 "
                                                   "(got --mc-samples 3)"),
    (["--mc-samples", "3", "--save-samples", "4", "--workers", "2"], "--save-samples 4: needs --mc-samples"),
    (["--save-samples", "-1"], "--save-samples: must be >= 0"),
    (["--mc-samples", "1", "--save-samples", "1"], "--save-samples 1: needs --mc-samples of at least 2 "
                                                   "(got --mc-samples 1; at 1 dropout is off)"),
    (["--save-samples", "1"], "--save-samples 1: needs --mc-samples of at least 2 (the model's default is 1)"),
])
def test_more_samples_than_t_is_refused_in_one_line_before_any_case(tmp_path, capsys, checkpoint, one_window_mr,
                                                                      extra, message):
    assert _infer(checkpoint, one_window_mr, tmp_path / "out", *extra) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]  # the rest is the log (model built)
    assert len(errors) == 1 and errors[0].startswith("radmtl infer: error: ") and message in errors[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_samples_of_a_model_without_an_sct_are_refused(tmp_path, capsys, tiny_payload, one_window_mr):
    model = save_checkpoint(tmp_path / "seg.pt", tiny_payload(["loss.tasks=[seg]"]))
    assert _infer(model, one_window_mr, tmp_path / "out", "--mc-samples", "2", "--save-samples", "2") == 1
    assert "--save-samples 2: the model has no sCT task" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_save_samples_travels_with_the_options():
    """--workers children and torchrun ranks rebuild their options from the same command line."""
    from radmtl.cli import build_parser
    from radmtl.inference.infer_cli import _options_of

    args = build_parser().parse_args(["infer", "--model", "m.pt", "--input", "x", "--output", "o",
                                      "--mc-samples", "5", "--save-samples", "3"])
    assert _options_of(args).save_samples == 3
    assert _options_of(build_parser().parse_args(["infer", "--model", "m", "--input", "x", "--output", "o"])
                       ).save_samples == 0
