"""radmtl infer on a faulty DICOM MR series (issue 26, "nothing silent"): a slice without pixel data or cut
short, and a series too thin for the network."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from radmtl.cli import main
from radmtl.data.phantom.dicom import phantom_mr_series

SHAPE = (20, 18, 12)
SPACING = (5.0, 4.5, 6.5)
# The inference tests' untrained tiny network (tests/inference/conftest.py): 6 mm grid, one stride of 2.
TINY_MODEL = ["model.channels=[4,8]", "model.strides=[2]", "data.patch_size=[16,16,16]",
              "data.spacing=[6.0,6.0,6.0]", "infer.mc_samples=1"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    import torch

    from radmtl.config import load_config
    from radmtl.data.phantom import PHANTOM_LABELS
    from radmtl.nn.checkpoint import make_payload, save_checkpoint
    from radmtl.nn.model import build_model

    cfg = load_config(None, TINY_MODEL)
    torch.manual_seed(0)
    payload = make_payload(cfg=cfg, label_names=dict(PHANTOM_LABELS), model=build_model(cfg.model), with_rng=False)
    return save_checkpoint(tmp_path_factory.mktemp("model") / "model.pt", payload)


def _infer(checkpoint: Path, folder: Path, out: Path, capfd) -> list[str]:
    assert main(["-q", "infer", "--model", str(checkpoint), "--input", str(folder), "--output", str(out),
                 "--no-progress", "--device", "cpu"]) == 1
    err = capfd.readouterr().err  # file descriptors: GDCM may print on its own
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.strip()]


@pytest.mark.parametrize("fault", ["no PixelData", "truncated"])
def test_a_slice_without_or_with_cut_pixel_data_is_named_with_its_problem(tmp_path, checkpoint, capfd, fault):
    files = phantom_mr_series(tmp_path / "mr", 3, SHAPE, SPACING)
    broken = sorted(files)[4]
    if fault == "no PixelData":
        ds = pydicom.dcmread(broken)
        del ds.PixelData
        ds.save_as(broken)
        words = "has no pixel data (no PixelData element): the slice holds a header only"
    else:
        broken.write_bytes(broken.read_bytes()[:-200])
        words = (f"holds 520 bytes of pixel data where {SHAPE[1]}×{SHAPE[0]} pixels of 16 bits need 720: the file "
                 "is truncated")
    lines = _infer(checkpoint, tmp_path / "mr", tmp_path / "out", capfd)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"radmtl infer: error: case mr: {broken}: {words} (slice ")
    assert lines[0].endswith("; re-export the series")
    assert not (tmp_path / "out").exists()


def test_a_two_slice_series_is_too_thin_for_the_network(tmp_path, checkpoint, capfd):
    """Two 3 mm slices span 6 mm; the tiny model's deepest level pools 2 voxels of 6 mm: 12 mm at least."""
    files = sorted(phantom_mr_series(tmp_path / "mr", 3, SHAPE, (5.0, 4.5, 3.0)))
    for path in files[:5] + files[7:]:  # two neighbouring slices of the middle are left
        path.unlink()
    lines = _infer(checkpoint, tmp_path / "mr", tmp_path / "out", capfd)
    assert lines == [f"radmtl infer: error: case mr: {tmp_path / 'mr'}: the MR is too small for the network: 6 mm "
                     "along z (2 voxels of 3 mm), below 12 mm; the model needs at least 12 × 12 × 12 mm (RAS x × y "
                     "× z: one cell of its deepest level, model.strides × data.spacing), or its sCT would be made "
                     "up; fix: give an MR that covers at least that much of the patient"]
    assert not (tmp_path / "out").exists()
