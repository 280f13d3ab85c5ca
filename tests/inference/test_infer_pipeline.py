"""radmtl infer's pipeline (issue 12): writes on writer threads, the next case read ahead, stage times.

The concurrent path must write the same bytes as the sequential one, a write that fails on a writer
thread must still be the case's one-line error with nothing published, and reading ahead must run
every case, the next one's preparation overlapping the current one's network, one case ahead only.
"""

from __future__ import annotations

import errno
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from radmtl.cli import main
from radmtl.data.io import write_volume
from radmtl.data.phantom import generate_case
from radmtl.inference import infer as infer_module
from radmtl.inference.inputs import read_ahead
from radmtl.inference.work_dirs import CaseWriter
from radmtl.nn.checkpoint import save_checkpoint

SHAPE = (30, 27, 19)
AFFINE = np.array([[5.0, 0, 0, -71.3], [0, 4.5, 0, 12.9], [0, 0, 6.5, -40.2], [0, 0, 0, 1]])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_payload) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("model") / "model.pt", tiny_payload())


@pytest.fixture(scope="module")
def mr() -> np.ndarray:
    return generate_case(3, SHAPE, (5.0, 4.5, 6.5)).mr


def _write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_volume(array, AFFINE, path, np.float32)


def _infer(model: Path, inp: Path, out: Path, *extra: str) -> int:
    return main(["-q", "infer", "--model", str(model), "--input", str(inp), "--output", str(out),
                 "--no-progress", "--device", "cpu", *extra])


def _laterality(line: str) -> bool:
    """A laterality guard warning: an untrained network's labels are scattered and the guard rightly says
    so (tests/inference/test_infer_laterality.py); these tests are about other lines of stderr."""
    return "laterality check failed" in line


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "provenance.json"}


# --- concurrent writes ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["nii.gz", "mha"])
def test_concurrent_writes_give_the_bytes_of_sequential_writes(tmp_path, monkeypatch, checkpoint, mr, fmt):
    for i in range(3):
        _write(tmp_path / "in" / f"case{i}.nii.gz", mr * (1 + 0.1 * i))
    extra = ("--mc-samples", "2", "--save-probabilities", "--output-format", fmt)
    threads: set[str] = set()
    original = infer_module.write_like

    def recording_write_like(*args, **kwargs):
        threads.add(threading.current_thread().name)
        return original(*args, **kwargs)

    monkeypatch.setattr(infer_module, "write_like", recording_write_like)
    assert _infer(checkpoint, tmp_path / "in", tmp_path / "concurrent", *extra) == 0
    assert threads and all(name.startswith("radmtl-write") for name in threads)
    threads.clear()
    monkeypatch.setattr(infer_module, "WRITERS", 0)
    assert _infer(checkpoint, tmp_path / "in", tmp_path / "sequential", *extra) == 0
    assert threads == {threading.main_thread().name}

    concurrent, sequential = _files(tmp_path / "concurrent"), _files(tmp_path / "sequential")
    stems = {Path(name).name.split(".")[0] for name in concurrent}
    assert stems == {"sct", "sct_sigma_aleatoric", "sct_sigma_epistemic", "sct_sigma_total", "seg", "seg_entropy",
                     "seg_mutual_info", "seg_probabilities", "review"}
    assert len(concurrent) == 3 * (8 + 3) and concurrent.keys() == sequential.keys()  # + review/ json, png, html
    assert all(concurrent[name] == sequential[name] for name in concurrent), "a file differs"
    for i in range(3):
        prov = [json.loads((tmp_path / run / f"case{i}" / "provenance.json").read_text())
                for run in ("concurrent", "sequential")]
        assert prov[0]["outputs"] == prov[1]["outputs"]


def test_a_write_failing_on_a_writer_thread_is_the_case_error_and_publishes_nothing(
        tmp_path, capsys, monkeypatch, checkpoint, mr):
    for name in ("a", "b", "c"):
        _write(tmp_path / "in" / f"{name}.nii.gz", mr)
    failed_on: list[str] = []
    original = nib.Nifti1Image.to_file_map

    def disk_full_for_b(self, file_map=None, *args, **kwargs):
        holder = (file_map or self.file_map)["image"]
        if ".b.partial-" in str(holder.filename) and "sigma" in str(holder.filename):
            failed_on.append(threading.current_thread().name)
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, file_map, *args, **kwargs)

    monkeypatch.setattr(nib.Nifti1Image, "to_file_map", disk_full_for_b)
    assert _infer(checkpoint, tmp_path / "in", tmp_path / "out") == 1
    assert failed_on and failed_on[0].startswith("radmtl-write")  # it did fail on a writer thread
    err_lines = [line for line in capsys.readouterr().err.splitlines() if line.strip() and not _laterality(line)]
    assert len(err_lines) == 1, err_lines
    assert err_lines[0].startswith("radmtl infer: error: case b: ")
    assert "sct_sigma_aleatoric.nii.gz: cannot write (No space left on device); check space and permissions" \
        in err_lines[0]
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["a", "c"]  # no b, no hidden partial folder
    for name in ("a", "c"):
        assert sorted(p.name for p in (out / name).iterdir()) == [
            "provenance.json", "review", "sct.nii.gz", "sct_sigma_aleatoric.nii.gz", "seg.nii.gz"]


def test_case_writer_publishes_only_after_every_write(tmp_path):
    final = tmp_path / "case"
    release = threading.Event()

    def slow_write(path: Path) -> None:
        release.wait(30)
        path.write_text("done")

    with ThreadPoolExecutor(2) as pool:
        writer = CaseWriter(final, pool)
        writer.submit(lambda p: p.write_text("quick"), writer.tmp_dir / "a.txt")
        writer.submit(slow_write, writer.tmp_dir / "b.txt")
        publishing = pool.submit(writer.publish)
        assert not final.exists()  # b is still being written: nothing under the final name
        release.set()
        publishing.result(30)
    assert sorted(p.name for p in final.iterdir()) == ["a.txt", "b.txt"] and (final / "b.txt").read_text() == "done"
    assert not writer.tmp_dir.exists()


def test_case_writer_raises_the_first_failed_write_and_discard_removes_the_folder(tmp_path):
    from radmtl.data.io import VolumeError

    def fail(message: str) -> None:
        raise VolumeError(message)

    with ThreadPoolExecutor(2) as pool:
        writer = CaseWriter(tmp_path / "case", pool, max_pending=1)
        writer.submit(lambda p: p.write_text("ok"), writer.tmp_dir / "a.txt")
        writer.submit(fail, "first failure")
        writer.submit(fail, "second failure")
        with pytest.raises(VolumeError, match="^first failure$"):
            writer.publish()
        writer.discard()
    assert not (tmp_path / "case").exists() and list(tmp_path.iterdir()) == []


# --- read-ahead ----------------------------------------------------------------------------------


def test_read_ahead_runs_every_case_one_ahead_and_a_bad_case_fails_alone(tmp_path, capsys, monkeypatch,
                                                                          checkpoint, mr):
    for name in ("a", "b", "c", "d"):
        _write(tmp_path / "in" / f"{name}.nii.gz", np.zeros_like(mr) if name == "b" else mr)
    started: list[str] = []
    next_started = {name: threading.Event() for name in "abcd"}
    case_of: dict[int, str] = {}  # id of a prepared network input -> its case
    seen_while_predicting: dict[str, list[str]] = {}
    original_prepare, original_predict = infer_module.prepare_case, infer_module.predict_on_network_grid

    def prepare(loaded, case_id, *args, **kwargs):
        assert threading.current_thread().name.startswith("radmtl-read")
        started.append(case_id)
        next_started[case_id].set()
        prepared = original_prepare(loaded, case_id, *args, **kwargs)
        case_of[id(prepared.network_mr)] = case_id
        return prepared

    def predict(loaded, network_mr, **kwargs):
        case_id = case_of[id(network_mr)]
        following = {"a": "b", "c": "d", "d": None}[case_id]
        if following is not None:  # the next case is prepared while this one is predicted (else: timeout)
            assert next_started[following].wait(30), f"{following} not read ahead while {case_id} ran"
        seen_while_predicting[case_id] = list(started)
        return original_predict(loaded, network_mr, **kwargs)

    monkeypatch.setattr(infer_module, "prepare_case", prepare)
    monkeypatch.setattr(infer_module, "predict_on_network_grid", predict)
    assert _infer(checkpoint, tmp_path / "in", tmp_path / "out") == 1
    assert started == ["a", "b", "c", "d"]
    # one case ahead, never two: while a ran, b was prepared but c not yet
    assert seen_while_predicting == {"a": ["a", "b"], "c": ["a", "b", "c", "d"], "d": ["a", "b", "c", "d"]}
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.strip() and not _laterality(line)]
    assert len(errors) == 1 and errors[0].startswith("radmtl infer: error: case b: ") and "b.nii.gz: empty image" in errors[0]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a", "c", "d"]
    summary = [line.split()[0] for line in captured.out.splitlines()[2:] if line.strip()]
    assert summary[:4] == ["a", "b", "c", "d"]  # results in case order


def test_read_ahead_keeps_order_and_errors_per_item():
    def prepare(item: int) -> int:
        if item == 2:
            raise ValueError("bad item")
        return item * 10

    got = []
    for item, future in read_ahead([1, 2, 3, 4], prepare):
        got.append((item, future.exception() and str(future.exception()), None if future.exception() else future.result()))
    assert got == [(1, None, 10), (2, "bad item", None), (3, None, 30), (4, None, 40)]
    assert list(read_ahead([], prepare)) == []


# --- stage times ---------------------------------------------------------------------------------


def test_provenance_times_every_stage(tmp_path, checkpoint, mr):
    _write(tmp_path / "x.nii.gz", mr)
    assert _infer(checkpoint, tmp_path / "x.nii.gz", tmp_path / "out") == 0
    prov = json.loads((tmp_path / "out" / "x" / "provenance.json").read_text())
    timings = prov["timings_s"]
    assert set(timings) == {"read_s", "preprocess_s", "body_mask_s", "input_wait_s", "predict_s", "resample_s",
                            "write_s", "write_wait_s", "total_s"}
    assert all(value >= 0 for value in timings.values())
    # the stages the main thread runs one after another lie inside the total (3 ms of rounding each)
    assert timings["total_s"] + 0.015 >= (timings["input_wait_s"] + timings["predict_s"] + timings["resample_s"]
                                          + timings["write_wait_s"])
    assert "write_wait_s" in prov["timings_note"] and "read-ahead" in prov["timings_note"]
