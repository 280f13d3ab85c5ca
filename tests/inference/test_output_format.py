"""radmtl infer on the public datasets' layouts: output formats (.mha in, .mha out), flat folders of
mixed files, nested SynthRAD2025 case ids (OUT/AB/1ABA005)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from radmtl.cli import build_parser, main
from radmtl.data.io import OUTPUT_FORMATS, VolumeError, read_volume, write_volume
from radmtl.data.phantom import PHANTOM_LABELS, generate_case
from radmtl.inference.inputs import find_cases
from radmtl.nn.checkpoint import save_checkpoint

SHAPE = (30, 27, 19)
SPACING = (5.0, 4.5, 6.5)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_payload) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("model") / "model.pt", tiny_payload())


@pytest.fixture(scope="module")
def mr_array() -> np.ndarray:
    return generate_case(3, SHAPE, SPACING).mr


def _oblique_affine() -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_euler("xyz", [14, -9, 23], degrees=True).as_matrix() @ np.diag(SPACING)
    affine[:3, 3] = [-71.3, 12.9, -40.2]
    return affine


def _write_mr(path: Path, mr_array: np.ndarray) -> Path:
    return write_volume(mr_array, _oblique_affine(), path, np.float32)


def _infer(model: Path, inp: Path, out: Path, *extra: str) -> int:
    return main(["infer", "--model", str(model), "--input", str(inp), "--output", str(out),
                 "--no-progress", "--device", "cpu", "--mc-samples", "1", *extra])


def _hidden(out: Path) -> list[Path]:
    return [p for p in out.rglob(".*")]


def test_cli_choices_are_the_output_formats():
    infer = build_parser()._subparsers._group_actions[0].choices["infer"]
    action = next(a for a in infer._actions if a.dest == "output_format")
    assert tuple(action.choices) == OUTPUT_FORMATS and action.default == "auto"


def test_bad_output_format_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["infer", "--model", "m.pt", "--input", "x", "--output", "o", "--output-format", "png"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'png'" in capsys.readouterr().err


# --- output formats ---------------------------------------------------------------------------------


def test_output_format_mha_on_nifti_input_keeps_the_grid(tmp_path, checkpoint, mr_array):
    mr_path = _write_mr(tmp_path / "pt1.nii.gz", mr_array)
    assert _infer(checkpoint, mr_path, tmp_path / "out", "--output-format", "mha", "--save-probabilities") == 0
    case = tmp_path / "out" / "pt1"
    assert {p.name for p in case.iterdir()} == {"sct.mha", "sct_sigma_aleatoric.mha", "seg.mha",
                                                "seg_probabilities.mha", "provenance.json", "review"}
    mr = read_volume(mr_path)
    for name, pixel in (("sct", "32-bit float"), ("seg", "8-bit unsigned integer")):
        out = read_volume(case / f"{name}.mha")
        assert out.shape == SHAPE
        np.testing.assert_allclose(out.affine, mr.affine, atol=1e-5)
        assert sitk.ReadImage(str(case / f"{name}.mha")).GetPixelIDTypeAsString() == pixel
    probs = sitk.ReadImage(str(case / "seg_probabilities.mha"))
    assert probs.GetNumberOfComponentsPerPixel() == len(PHANTOM_LABELS)
    np.testing.assert_allclose(sitk.GetArrayFromImage(probs).sum(-1), 1.0, atol=1e-4)
    prov = json.loads((case / "provenance.json").read_text())
    assert prov["inference"]["output_format"] == "mha"
    assert {k: (v["file"], v["format"]) for k, v in prov["outputs"].items() if k != "review"} == {
        "sct": ("sct.mha", "mha"), "sct_sigma_aleatoric": ("sct_sigma_aleatoric.mha", "mha"),
        "seg": ("seg.mha", "mha"), "seg_probabilities": ("seg_probabilities.mha", "mha")}


def test_auto_format_follows_an_uncompressed_nifti_input(tmp_path, checkpoint, mr_array):
    mr_path = _write_mr(tmp_path / "pt2.nii", mr_array)
    assert _infer(checkpoint, mr_path, tmp_path / "out") == 0
    files = {p.name for p in (tmp_path / "out" / "pt2").iterdir()}
    assert files == {"sct.nii", "sct_sigma_aleatoric.nii", "seg.nii", "provenance.json", "review"}
    prov = json.loads((tmp_path / "out" / "pt2" / "provenance.json").read_text())
    assert {v["format"] for k, v in prov["outputs"].items() if k != "review"} == {"nii"}


def test_mha_input_with_mha_output_keeps_itk_geometry(tmp_path, checkpoint, mr_array):
    img = sitk.GetImageFromArray(np.transpose(mr_array).astype(np.float32))
    img.SetSpacing(SPACING)
    img.SetOrigin((-201.5, -168.25, 92.0))
    img.SetDirection(Rotation.from_euler("zyx", [8, -5, 3], degrees=True).as_matrix().ravel().tolist())
    mr_path = tmp_path / "1ABA005.mha"
    sitk.WriteImage(img, str(mr_path))
    assert _infer(checkpoint, mr_path, tmp_path / "out", "--output-format", "mha") == 0
    sct = sitk.ReadImage(str(tmp_path / "out" / "1ABA005" / "sct.mha"))
    assert sct.GetSize() == img.GetSize()
    np.testing.assert_allclose(sct.GetOrigin(), img.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(sct.GetSpacing(), img.GetSpacing(), atol=1e-9)
    np.testing.assert_allclose(sct.GetDirection(), img.GetDirection(), atol=1e-12)


# --- flat folders ----------------------------------------------------------------------------------


FLAT = ("1PA001_0000.nii.gz", "1PA001_0001.nii.gz", "1PA002_mr.nii.gz", "1PA002_ct.nii.gz", "x_mask.nii.gz")


def test_flat_folder_cases_by_name(tmp_path, caplog):
    for name in FLAT + ("p_sct_sigma_total.nii.gz", "q-Labels.mha"):
        (tmp_path / name).write_bytes(b"")
    with caplog.at_level(logging.INFO, logger="radmtl.inference.inputs"):
        cases = find_cases(tmp_path)
    assert [(cid, p.name) for cid, p in cases] == [("1PA001", "1PA001_0000.nii.gz"),
                                                   ("1PA002", "1PA002_mr.nii.gz")]
    [line] = [r.getMessage() for r in caplog.records]
    assert "skipped 5 of 7 volume file(s)" in line
    assert "1PA001_0001.nii.gz (channel 0001, not the first)" in line
    assert "1PA002_ct.nii.gz (not an MR)" in line and "and 0 more" not in line


def test_numbered_cases_without_a_first_channel_are_cases(tmp_path):
    for name in ("case_0001.nii.gz", "case_0002.nii.gz"):
        (tmp_path / name).write_bytes(b"")
    assert [cid for cid, _ in find_cases(tmp_path)] == ["case_0001", "case_0002"]


def test_flat_folder_without_an_mr_is_one_clear_error(tmp_path):
    for name in ("a_ct.nii.gz", "a_mask.nii.gz"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(VolumeError, match=r"none of its 2 volume file\(s\) is an MR by name .*a_ct\.nii\.gz "
                                          r"\(not an MR\).*; name the MR files"):
        find_cases(tmp_path)


def test_a_single_file_is_inferred_whatever_its_name(tmp_path):
    (tmp_path / "pelvis_ct.nii.gz").write_bytes(b"")
    assert [cid for cid, _ in find_cases(tmp_path / "pelvis_ct.nii.gz")] == ["pelvis_ct"]


def test_infer_on_a_flat_folder_runs_only_the_mr_cases(tmp_path, capsys, checkpoint, mr_array):
    for name in FLAT:
        _write_mr(tmp_path / "in" / name, mr_array)
    assert _infer(checkpoint, tmp_path / "in", tmp_path / "out") == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["1PA001", "1PA002"]
    captured = capsys.readouterr()
    assert "skipped 3 of 5 volume file(s)" in captured.err
    assert "2 of 2 case(s) written" in captured.out


# --- nested case ids ---------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".nii.gz", ".mha"])
def test_nested_dataset_tree_writes_nested_case_folders(tmp_path, capsys, checkpoint, mr_array, suffix):
    task = tmp_path / "Task1"
    for case in ("AB/c1", "HN/c2"):
        _write_mr(task / case / f"mr{suffix}", mr_array)
    (task / "overview").mkdir()  # SynthRAD's overview folder is no case
    out = tmp_path / "out"
    assert _infer(checkpoint, task, out) == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.glob("*/*")) == ["AB/c1", "HN/c2"]
    assert (out / "AB" / "c1" / f"sct{suffix}").is_file()
    assert json.loads((out / "HN" / "c2" / "provenance.json").read_text())["case"] == "HN/c2"
    assert not _hidden(out), "hidden partial or scratch folders left behind"
    summary = capsys.readouterr().out
    assert "AB/c1 " in summary and "HN/c2 " in summary


def test_failed_nested_case_leaves_no_folders(tmp_path, capsys, monkeypatch, checkpoint, mr_array):
    def fail(*args, **kwargs):  # after OUT/AB was made for the case's hidden folders
        assert (tmp_path / "out" / "AB").is_dir()
        raise VolumeError("preprocessing failed (test)")

    monkeypatch.setattr("radmtl.inference.infer.predict_on_network_grid", fail)
    _write_mr(tmp_path / "Task1" / "AB" / "c1" / "mr.nii.gz", mr_array)
    assert _infer(checkpoint, tmp_path / "Task1", tmp_path / "out") == 1
    assert "case AB/c1: preprocessing failed (test)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # made by this run, and no case reached it: removed


@pytest.mark.parametrize("case_id", ["../escape", "/abs"])
def test_case_ids_cannot_leave_the_output_folder(tmp_path, case_id):
    from radmtl.inference.output_folders import case_folder

    with pytest.raises(VolumeError, match="not a folder path inside the output folder"):
        case_folder(tmp_path, case_id)
