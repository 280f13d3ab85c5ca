"""radmtl infer on faulty input (issue 13): an MR with a broken affine or no content, a checkpoint whose
config and weights disagree or that lacks a key, what a killed run left, an output no case reached, -q."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from radmtl.cli import main
from radmtl.data.io import read_volume
from radmtl.data.phantom import generate_case
from radmtl.inference.work_dirs import _host, work_folder, work_prefix
from radmtl.nn.checkpoint import save_checkpoint

SHAPE = (30, 27, 19)
SPACING = (5.0, 4.5, 6.5)
AFFINE = np.array([[SPACING[0], 0, 0, -71.3], [0, SPACING[1], 0, 12.9], [0, 0, SPACING[2], -40.2], [0, 0, 0, 1]])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_payload) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("model") / "model.pt", tiny_payload())


@pytest.fixture(scope="module")
def mr() -> np.ndarray:
    return generate_case(3, SHAPE, SPACING).mr


def _write(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    img = nib.Nifti1Image(np.asarray(array, np.float32), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def _write_sform_only(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    """A NIfTI whose geometry is only the sform: nibabel refuses a zero or NaN voxel size in a qform, but
    stores it in the sform and reads it back as the affine."""
    header = nib.Nifti1Header()
    header.set_data_shape(array.shape)
    header.set_data_dtype(np.float32)
    header.set_sform(affine, code=1)
    header["qform_code"] = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array, np.float32), None, header=header), str(path))
    return path


def _bad_mr(path: Path, kind: str, mr: np.ndarray) -> Path:
    affine = AFFINE.copy()
    if kind == "zero-voxel":
        affine[:3, 1] = 0.0
    elif kind == "nan-spacing":
        affine[0, 0] = np.nan
    elif kind == "nan-origin":
        affine[1, 3] = np.nan
    if kind == "all-zero":
        return _write(path, np.zeros_like(mr), affine)
    _write_sform_only(path, mr, affine)
    stored = read_volume(path).affine  # the fault must survive the file, or the test proves nothing
    assert np.isnan(stored).any() if kind.startswith("nan") else np.linalg.norm(stored[:3, 1]) == 0
    return path


def _infer(model: Path, inp: Path, out: Path, *extra: str) -> int:  # review/ is tested in test_review_out.py
    return main(["-q", "infer", "--no-review", "--model", str(model), "--input", str(inp), "--output", str(out),
                 "--no-progress", "--device", "cpu", *extra])


def _error_lines(err: str) -> list[str]:
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.strip()]


# --- an MR the network cannot be run on ------------------------------------------------------------


@pytest.mark.parametrize(("kind", "words"), [
    ("zero-voxel", ["voxel size [5, 0, 6.5] mm", "no size", "fix: re-export"]),
    ("nan-spacing", ["NaN or Inf entries", "voxel size [nan, 4.5, 6.5]", "fix: re-export"]),
    ("nan-origin", ["NaN or Inf entries", "fix: re-export"]),
    ("all-zero", ["empty image: every voxel is 0", "fix: re-export the mr"]),
    ("zero-pixdim-no-sform", ["voxel size pixdim[1:4] = [5.0, 0.0, 6.5] has a zero", "nibabel would assume 1 mm",
                              "re-export the image with its true voxel size"]),
])
def test_unusable_mr_is_refused_in_one_line_and_nothing_is_written(tmp_path, capsys, checkpoint, mr, kind,
                                                                   words, zero_voxel_nifti):
    path = tmp_path / "in" / "bad.nii.gz"
    path = zero_voxel_nifti(path, mr, AFFINE) if kind == "zero-pixdim-no-sform" else _bad_mr(path, kind, mr)
    out = tmp_path / "out"
    out.mkdir()  # an output folder that existed before the run stays
    assert _infer(checkpoint, path, out) == 1
    captured = capsys.readouterr()
    lines = _error_lines(captured.err)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"radmtl infer: error: case bad: {path}: ")
    assert all(word in lines[0] for word in words), lines[0]
    assert "preprocessing failed" not in lines[0]
    assert "0 of 1 case(s)" in captured.out
    assert list(out.iterdir()) == []  # nothing under the final name, no hidden folder


def test_all_cases_failing_leaves_no_output_folder(tmp_path, capsys, checkpoint, mr):
    _bad_mr(tmp_path / "in" / "a.nii.gz", "all-zero", mr)
    _bad_mr(tmp_path / "in" / "b.nii.gz", "nan-spacing", mr)
    out = tmp_path / "new" / "out"
    assert _infer(checkpoint, tmp_path / "in", out) == 1
    assert len([line for line in _error_lines(capsys.readouterr().err) if "error: case" in line]) == 2
    assert not (tmp_path / "new").exists()
    # The same when the model cannot be loaded, after the folder was proven writable.
    assert _infer(tmp_path / "missing.pt", tmp_path / "in", out) == 1
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(("shape", "short"), [
    ((96, 96, 2), ["2 mm along z (2 voxels of 1 mm), below 12 mm"]),
    ((3, 3, 3), ["3 mm along x (3 voxels of 1 mm), below 12 mm", "3 mm along y (3 voxels of 1 mm), below 12 mm",
                 "3 mm along z (3 voxels of 1 mm), below 12 mm"]),
], ids=["96x96x2", "3x3x3"])
def test_an_mr_smaller_than_the_network_can_see_is_refused_in_one_line(tmp_path, capsys, checkpoint, shape, short):
    """The tiny model's deepest level pools 2 voxels of 6 mm: an MR must span 12 mm along every axis."""
    rng = np.random.default_rng(0)
    path = _write(tmp_path / "in" / "thin.nii.gz", rng.uniform(50, 500, shape), np.diag([1.0, 1.0, 1.0, 1.0]))
    out = tmp_path / "out"
    assert _infer(checkpoint, path, out) == 1
    captured = capsys.readouterr()
    lines = _error_lines(captured.err)
    assert lines == [f"radmtl infer: error: case thin: {path}: the MR is too small for the network: "
                     f"{'; '.join(short)}; the model needs at least 12 × 12 × 12 mm (RAS x × y × z: one cell of "
                     "its deepest level, model.strides × data.spacing), or its sCT would be made up; fix: give an MR "
                     "that covers at least that much of the patient"]
    assert "0 of 1 case(s)" in captured.out and not out.exists()


def test_the_minimum_extent_follows_the_model():
    from radmtl.config import load_config
    from radmtl.data.volume_rules import network_min_extent_mm

    quick = load_config(Path(__file__).resolve().parents[2] / "configs" / "quick.yaml")  # 3 strides of 2, 7×7×6 mm
    assert network_min_extent_mm(quick.model.strides, quick.data.spacing) == (56.0, 56.0, 48.0)


# --- a checkpoint that cannot rebuild its network --------------------------------------------------


def test_checkpoint_whose_weights_do_not_fit_its_config_is_one_line(tmp_path, capsys, mr, tiny_payload):
    payload = tiny_payload()
    payload["config"]["model"]["channels"] = [8, 16]  # edited after training: the weights are [4, 8]
    model = save_checkpoint(tmp_path / "bad.pt", payload)
    assert _infer(model, _write(tmp_path / "x.nii.gz", mr), tmp_path / "out") == 1
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith(f"radmtl infer: error: {model}: its weights do not fit the config it carries")
    assert "first " in line and "in the file" in line and "for the config" in line and "retrain" in line
    assert "size mismatch" not in line and "does not match this radmtl version" not in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("missing", [("label_names",), ("label_names", "config")])
def test_checkpoint_without_a_required_key_is_one_line(tmp_path, capsys, mr, missing, tiny_payload):
    payload = tiny_payload()
    for key in missing:
        payload.pop(key)
    model = save_checkpoint(tmp_path / "bad.pt", payload)
    assert _infer(model, _write(tmp_path / "x.nii.gz", mr), tmp_path / "out") == 1
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"radmtl infer: error: {model}: checkpoint lacks ")
    assert all(f"'{key}'" in lines[0] for key in missing)


# --- how many MC-dropout samples (issue 26) --------------------------------------------------------


@pytest.mark.parametrize("value", ["100000", "0"])
def test_mc_samples_beyond_the_documented_bound_is_one_line_with_the_number(tmp_path, capsys, checkpoint, mr,
                                                                            value):
    assert _infer(checkpoint, _write(tmp_path / "x.nii.gz", mr), tmp_path / "out", "--mc-samples", value) == 1
    assert _error_lines(capsys.readouterr().err) == [
        f"radmtl infer: error: --mc-samples: must be from 1 to 1000, got {value} (time grows with every sample "
        "while the estimate hardly changes beyond a few hundred; the paper uses 20)"]
    assert not (tmp_path / "out").exists()


def test_the_mc_samples_of_a_config_are_bounded_too():
    from radmtl.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"infer.mc_samples: must be from 1 to 1000, got 1001"):
        load_config(None, ["infer.mc_samples=1001"])


# --- a run folder as --model (issue 26) ------------------------------------------------------------


def test_a_run_folder_as_model_uses_its_best_checkpoint(tmp_path, checkpoint, mr):
    import shutil

    run = tmp_path / "runs" / "exp1"
    run.mkdir(parents=True)
    shutil.copy(checkpoint, run / "checkpoint_best.pt")
    (run / "metrics.jsonl").write_text("")
    out = tmp_path / "out"
    assert _infer(run, _write(tmp_path / "x.nii.gz", mr), out) == 0
    provenance = json.loads((out / "x" / "provenance.json").read_text())["model"]
    assert provenance["checkpoint"] == str((run / "checkpoint_best.pt").resolve())


def test_a_run_folder_without_a_best_checkpoint_says_what_to_pass(tmp_path, capsys, checkpoint, mr):
    import shutil

    run = tmp_path / "exp1"
    run.mkdir()
    shutil.copy(checkpoint, run / "checkpoint_latest.pt")
    assert _infer(run, _write(tmp_path / "x.nii.gz", mr), tmp_path / "out") == 1
    lines = _error_lines(capsys.readouterr().err)
    assert lines == [f"radmtl infer: error: {run}: a radmtl train run folder without checkpoint_best.pt (no "
                     f"validation epoch has finished yet); pass --model {run / 'checkpoint_latest.pt'} for the "
                     "last epoch's weights, or wait for the run to validate"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _infer(empty, _write(tmp_path / "x.nii.gz", mr), tmp_path / "out") == 1
    line, = _error_lines(capsys.readouterr().err)
    assert line.startswith(f"radmtl infer: error: {empty}: neither a radmtl train run folder (no "
                           "checkpoint_best.pt) nor an MLflow model folder (no MLmodel); pass")
    assert not (tmp_path / "out").exists()


# --- what a killed run left ------------------------------------------------------------------------


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_killed_runs_hidden_folders_are_removed_and_a_live_ones_kept(tmp_path, checkpoint, mr):
    data = tmp_path / "data"
    _write(data / "AB" / "c1" / "mr.nii.gz", mr)  # nested case id AB/c1 -> OUT/AB/c1
    out = tmp_path / "out"
    dead, host = _dead_pid(), _host()
    stale = [out / "AB" / f".c1.partial-{host}-{dead}-0123abcd",  # nested: beside the final folder
             out / "AB" / f".c1.mr-{host}-{dead}-x_9kq2ab",  # DICOM scratch (tempfile's random ending)
             out / f".gone.partial-{host}-{dead}-deadbeef"]  # another case's, in OUT itself
    kept = [work_folder(out / "AB" / "c1", "partial"),  # a live run (this process)
            out / "AB" / f".c1.partial-otherhost-{dead}-0123abcd",  # another host: cannot tell
            out / "AB" / ".c1.partial-0123abcd"]  # an older radmtl's name: cannot tell
    assert kept[0].name.startswith(work_prefix("c1", "partial")) and f"-{os.getpid()}-" in kept[0].name
    for folder in stale + kept:
        folder.mkdir(parents=True)
        (folder / "sct.nii.gz").write_bytes(b"half")
    assert main(["infer", "--model", str(checkpoint), "--input", str(data), "--output", str(out),
                 "--no-progress", "--device", "cpu"]) == 0
    assert (out / "AB" / "c1" / "sct.nii.gz").is_file()
    assert [p for p in stale if p.exists()] == []
    assert [p for p in kept if not p.exists()] == []


def test_a_result_moved_aside_by_a_killed_publish_is_restored(tmp_path):
    from radmtl.inference.work_dirs import remove_stale_work_folders

    aside = tmp_path / f".c1.old-{_host()}-{_dead_pid()}-0123abcd"
    aside.mkdir()
    (aside / "sct.nii.gz").write_bytes(b"previous result")
    remove_stale_work_folders([tmp_path])
    assert (tmp_path / "c1" / "sct.nii.gz").read_bytes() == b"previous result"
    assert not aside.exists()


@pytest.mark.parametrize("earlier", [False, True], ids=["first-result", "replacing-an-earlier-one"])
def test_two_runs_publishing_one_case_at_once_says_so_and_keeps_the_other_result(tmp_path, capsys, monkeypatch,
                                                                               checkpoint, mr, earlier):
    from radmtl.inference import work_dirs

    real_replace = os.replace
    out = tmp_path / "out"
    if earlier:  # moved aside by this run before the other's rename lands
        (out / "x").mkdir(parents=True)
        (out / "x" / "sct.nii.gz").write_bytes(b"an earlier result")

    def replace(src, dst):  # the other process's rename lands between our check and our rename
        if ".x.partial-" in str(src) and Path(dst) == out / "x":
            (out / "x").mkdir()
            (out / "x" / "sct.nii.gz").write_bytes(b"the other run's result")
        return real_replace(src, dst)

    monkeypatch.setattr(work_dirs.os, "replace", replace)
    assert _infer(checkpoint, _write(tmp_path / "x.nii.gz", mr), out) == 1
    lines = _error_lines(capsys.readouterr().err)
    assert lines == [f"radmtl infer: error: case x: {out / 'x'}: another process published this case's output at "
                     f"the same moment (Directory not empty); its result is in {out / 'x'}, this run's was dropped: "
                     "run one radmtl infer per --output (or give each its own), then rerun this case if you need "
                     "this run's result"]
    assert (out / "x" / "sct.nii.gz").read_bytes() == b"the other run's result"
    assert sorted(p.name for p in out.iterdir()) == ["x"]  # no hidden partial or old folder left


# --- progress bars ---------------------------------------------------------------------------------


@pytest.mark.parametrize("flags", [["-q"], ["--no-progress"]])
def test_no_progress_bar_when_quiet_or_no_progress(tmp_path, capsys, monkeypatch, checkpoint, mr, flags):
    mr_path = _write(tmp_path / "x.nii.gz", mr)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # a terminal: bars would be drawn

    def run(*flags: str) -> str:
        before = [f for f in flags if f == "-q"]  # a global option: before the command
        # Each run its own output: a rerun into the same one would skip the published case, drawing no bar.
        assert main([*before, "infer", "--model", str(checkpoint), "--input", str(mr_path), "--output",
                     str(tmp_path / f"o{len(flags)}"), "--device", "cpu", *(f for f in flags if f != "-q")]) == 0
        return capsys.readouterr().err

    assert "%|" in run()  # the check can see a bar
    err = run(*flags)
    assert "%|" not in err and "\r" not in err
