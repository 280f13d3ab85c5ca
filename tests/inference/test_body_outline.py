"""The body outline on a finer input grid: sCT and σ carried outward from the body interior, air outside."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from radmtl.data.io import Volume
from radmtl.inference.case_maps import AIR_HU, add_grid_sigma, body_outline, grid_sigma, map_to_input_grid

SCALE_HU = 1000.0  # network units → HU
FINE, COARSE = 2.0, 8.0  # mm
FINE_SHAPE, K = (64, 64, 16), 4  # 4 fine voxels per coarse voxel and axis in-plane, 1 along z
TISSUE_HU, SIGMA_INSIDE_HU, SIGMA_SKIN_HU = 40.0, 20.0, 300.0


def _affine(spacing_xy, spacing_z, shape):
    affine = np.diag([spacing_xy, spacing_xy, spacing_z, 1.0])
    affine[:3, 3] = [-(n - 1) / 2.0 * s for n, s in zip(shape, (spacing_xy, spacing_xy, spacing_z))]
    return affine


@pytest.fixture(scope="module")
def phantom():
    """A cylinder of tissue in air with a gas pocket at its centre, on a 2 mm grid, and its 8 mm block means."""
    x, y = np.meshgrid(*(np.arange(n) - (n - 1) / 2.0 for n in FINE_SHAPE[:2]), indexing="ij")
    body = np.repeat(((x * FINE) ** 2 + (y * FINE) ** 2 <= 50.0**2)[:, :, None], FINE_SHAPE[2], axis=2)
    gas = np.repeat(((x * FINE) ** 2 + (y * FINE) ** 2 <= 9.0**2)[:, :, None], FINE_SHAPE[2], axis=2)
    # Tissue more than two network voxels from the gas: what the skin rule alone decides.
    away = np.repeat(((x * FINE) ** 2 + (y * FINE) ** 2 > 27.0**2)[:, :, None], FINE_SHAPE[2], axis=2)
    truth = np.where(body, TISSUE_HU, AIR_HU).astype(np.float32)
    truth[gas] = AIR_HU
    # The MR: tissue bright, air and gas dark (derive_body_mask fills the gas hole).
    mr = np.where(body & ~gas, 500.0, 0.0).astype(np.float32)
    fine_affine = _affine(FINE, 4.0, FINE_SHAPE)
    coarse_shape = (FINE_SHAPE[0] // K, FINE_SHAPE[1] // K, FINE_SHAPE[2])
    coarse_affine = _affine(COARSE, 4.0, coarse_shape)
    block_mean = truth.reshape(coarse_shape[0], K, coarse_shape[1], K, coarse_shape[2]).mean(axis=(1, 3))
    # σ as a network would learn it on the coarse grid: large on the skin's mixed voxels.
    cx, cy = np.meshgrid(*((np.arange(n) - (n - 1) / 2.0) * COARSE for n in coarse_shape[:2]), indexing="ij")
    outer = np.repeat((cx**2 + cy**2 > 30.0**2)[:, :, None], coarse_shape[2], axis=2)
    skin = (block_mean > AIR_HU + 1) & (block_mean < TISSUE_HU - 1) & outer
    sigma = np.where(skin, SIGMA_SKIN_HU, SIGMA_INSIDE_HU).astype(np.float32)
    return {"truth": truth, "body": body, "gas": gas, "away": away & body, "volume": Volume(mr, fine_affine),
            "net_affine": coarse_affine, "sct": block_mean / SCALE_HU, "sigma": sigma / SCALE_HU}


def _net(array, as_torch=False):
    array = np.ascontiguousarray(array[None, None], np.float32)
    return torch.from_numpy(array) if as_torch else array


@pytest.mark.parametrize("as_torch", [False, True])
def test_skin_follows_the_input_mr_not_the_network_voxels(phantom, as_torch):
    sct_net = _net(phantom["sct"], as_torch)
    outline = body_outline(sct_net, phantom["net_affine"], phantom["volume"], SCALE_HU)
    assert outline is not None
    plain = map_to_input_grid("sct", sct_net, phantom["net_affine"], phantom["volume"], SCALE_HU)
    shaped = map_to_input_grid("sct", sct_net, phantom["net_affine"], phantom["volume"], SCALE_HU, outline)
    tissue = phantom["away"]
    truth = phantom["truth"]
    # Plain interpolation smears air over the outermost network voxels: tissue there reads hundreds of HU low.
    assert np.abs(plain - truth)[tissue].mean() > 60.0
    assert np.abs(shaped - truth)[tissue].mean() < 0.2 * np.abs(plain - truth)[tissue].mean()
    # Outside the MR's body: air, exactly.
    assert np.all(shaped[~outline.input_body] == AIR_HU)
    np.testing.assert_array_equal(outline.input_body, phantom["body"])
    # The gas pocket deep inside the body stays gas on the input grid.
    centre = tuple(n // 2 for n in FINE_SHAPE)
    assert shaped[centre] < -500.0


def test_sigma_maps_keep_the_networks_own_values_at_the_skin(phantom):
    sct_net, sigma_net = _net(phantom["sct"]), _net(phantom["sigma"])
    outline = body_outline(sct_net, phantom["net_affine"], phantom["volume"], SCALE_HU)
    plain = map_to_input_grid("sigma_total", sigma_net, phantom["net_affine"], phantom["volume"], SCALE_HU)
    with_outline = map_to_input_grid("sigma_total", sigma_net, phantom["net_affine"], phantom["volume"], SCALE_HU,
                                     outline)
    np.testing.assert_array_equal(with_outline, plain)
    assert (plain[phantom["body"]] > 2 * SIGMA_INSIDE_HU).sum() > 100  # the skin's σ reaches the input grid


def test_grid_sigma_is_a_step_edges_spread_within_a_network_voxel_and_zero_where_flat():
    # A step of 600 HU between two network voxels along x, flat elsewhere.
    sct = np.zeros((8, 6, 5), np.float32)
    sct[4:] = 0.6  # network units (× 1000 → HU)
    sigma = grid_sigma(_net(sct))[0, 0] * SCALE_HU
    # Central differences give half the step (300 HU) on each side of it: σ = 300/√6.
    np.testing.assert_allclose(sigma[3], 300.0 / np.sqrt(6.0), rtol=1e-5)
    np.testing.assert_allclose(sigma[4], 300.0 / np.sqrt(6.0), rtol=1e-5)
    assert np.all(sigma[:3] == 0.0) and np.all(sigma[5:] == 0.0)
    maps = {"sct": _net(sct), "sigma_total": _net(np.full(sct.shape, 0.03, np.float32))}
    add_grid_sigma(maps)
    np.testing.assert_allclose(maps["sigma_total"][0, 0, 3] * SCALE_HU, np.hypot(30.0, 300.0 / np.sqrt(6.0)), rtol=1e-5)
    np.testing.assert_allclose(maps["sigma_total"][0, 0, 0] * SCALE_HU, 30.0, rtol=1e-6)
    tensors = {"sct": _net(sct, True), "sigma_total": _net(np.full(sct.shape, 0.03, np.float32), True)}
    add_grid_sigma(tensors)
    np.testing.assert_allclose(tensors["sigma_total"].numpy(), maps["sigma_total"], rtol=1e-6)


def test_no_outline_when_the_input_grid_is_not_finer(phantom):
    coarse_volume = Volume(np.ones(phantom["sct"].shape, np.float32), phantom["net_affine"])
    assert body_outline(_net(phantom["sct"]), phantom["net_affine"], coarse_volume, SCALE_HU) is None


def test_infer_on_a_finer_grid_writes_the_grid_sigma_and_air_outside_the_mr_body(tmp_path, tiny_payload):
    """radmtl infer end to end: an MR on a 3 mm grid, a network on 6 mm (8× the voxel volume)."""
    import json

    import nibabel as nib

    from radmtl.cli import main
    from radmtl.data.io import write_volume
    from radmtl.data.phantom import generate_case
    from radmtl.data.transforms import derive_body_mask
    from radmtl.nn.checkpoint import save_checkpoint

    model = save_checkpoint(tmp_path / "model.pt", tiny_payload(["infer.mc_samples=3", "model.dropout=0.2"]))
    # The network grid is 6 mm (TINY_MODEL): "same" lies on it, "coarser" is 12 mm, "finer" 3 mm.
    same = generate_case(3, (64, 48, 32), (6.0, 6.0, 6.0))  # 384 × 288 × 192 mm
    coarser = generate_case(3, (32, 24, 16), (12.0, 12.0, 12.0))
    for name, case in (("same", same), ("coarser", coarser)):
        write_volume(case.mr, case.affine, tmp_path / "in" / name / "mr.nii.gz", np.float32)
    finer = generate_case(3, (128, 96, 64), (3.0, 3.0, 3.0))
    write_volume(finer.mr, finer.affine, tmp_path / "in" / "finer" / "mr.nii.gz", np.float32)
    assert main(["-q", "infer", "--no-review", "--model", str(model), "--input", str(tmp_path / "in"), "--output",
                 str(tmp_path / "out"), "--no-progress", "--device", "cpu"]) == 0
    out = tmp_path / "out" / "finer"
    read = {stem: nib.load(out / f"{stem}.nii.gz").get_fdata() for stem in
            ("sct", "sct_sigma_aleatoric", "sct_sigma_epistemic", "sct_sigma_grid", "sct_sigma_total")}
    total = np.sqrt(read["sct_sigma_aleatoric"] ** 2 + read["sct_sigma_epistemic"] ** 2 + read["sct_sigma_grid"] ** 2)
    np.testing.assert_allclose(read["sct_sigma_total"], total, rtol=1e-4, atol=1e-3)
    assert read["sct_sigma_grid"].max() > 10.0
    body = derive_body_mask(finer.mr) != 0
    assert np.all(read["sct"][~body] == AIR_HU)
    written = json.loads((out / "provenance.json").read_text())["outputs"]
    assert written["sct_sigma_grid"]["units"] == "HU"
    # On the network's own grid (and a coarser one) nothing of this applies.
    for name in ("same", "coarser"):
        assert not (tmp_path / "out" / name / "sct_sigma_grid.nii.gz").exists(), name
