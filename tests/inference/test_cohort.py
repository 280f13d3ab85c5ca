"""A cohort over several processes (radmtl/inference/cohort.py): dealing the cases, ``--workers 2`` and
``torchrun --nproc_per_node 2`` on Gloo/CPU, resuming a run, and a failing or killed rank.

The multi-process runs start ``python -m radmtl infer`` in subprocesses, on the tiny network of conftest.py;
each rank computes with ``cores // 2`` threads, so the one-process reference runs with as many: with the same
thread count the maps are bit-identical (with another, the sCT and σ differ in their last float32 bits).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from radmtl.cli import main
from radmtl.data.phantom import generate_case
from radmtl.inference.cohort import case_size, collect_results, deal_cases
from radmtl.inference.output_folders import prepare_output, remove_empty_folders
from radmtl.nn.checkpoint import save_checkpoint

REPO = Path(__file__).resolve().parents[2]
SHAPES = {"case_a": (26, 22, 16), "case_b": (20, 20, 14), "case_c": (18, 16, 14)}  # voxels: a > b > c
MAPS = ("sct", "sct_sigma_aleatoric", "seg")
RANK_THREADS = max(1, len(os.sched_getaffinity(0)) // 2)


# --- dealing --------------------------------------------------------------------------------------


def test_deal_is_largest_first_to_the_least_loaded_rank():
    sizes = [(f"s{n:02d}", n) for n in (10, 9, 8, 7, 6, 5, 4)]
    # 10, 9, 8 open the three ranks; 7 joins 8 (15), 6 joins 9 (15), 5 joins 10 (15); 4 goes to the
    # least loaded, a three-way tie at 15 that the lowest rank wins.
    assert deal_cases(sizes, 3) == [["s10", "s05", "s04"], ["s09", "s06"], ["s08", "s07"]]


def test_deal_is_deterministic_whatever_the_order_and_ties_go_by_case_id():
    sizes = [("b", 1), ("c", 1), ("a", 1), ("big", 3)]
    expected = [["big"], ["a", "b", "c"]]
    assert deal_cases(sizes, 2) == expected
    assert deal_cases(sizes[::-1], 2) == expected
    assert deal_cases([("d", 2), ("c", 2), ("b", 2), ("a", 2)], 2) == [["a", "c"], ["b", "d"]]


def test_deal_balances_the_totals():
    rng = np.random.default_rng(0)
    sizes = [(f"case_{i:03d}", int(n)) for i, n in enumerate(rng.integers(1, 1000, 60))]
    shares = deal_cases(sizes, 4)
    size_of = dict(sizes)
    totals = [sum(size_of[c] for c in share) for share in shares]
    assert sorted(c for share in shares for c in share) == sorted(size_of)  # every case exactly once
    assert max(totals) - min(totals) <= max(size_of.values())  # LPT: within one case of each other
    for share in shares:  # each rank runs its largest case first
        assert [size_of[c] for c in share] == sorted((size_of[c] for c in share), reverse=True)


def test_deal_more_ranks_than_cases_leaves_ranks_idle():
    assert deal_cases([("x", 5), ("y", 7)], 4) == [["y"], ["x"], [], []]
    assert deal_cases([], 2) == [[], []]
    with pytest.raises(ValueError, match="world_size must be >= 1, got 0"):
        deal_cases([("x", 1)], 0)


def test_case_size_is_the_voxel_count_from_the_header(tmp_path):
    import SimpleITK as sitk

    nifti = tmp_path / "a.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((5, 6, 7), np.float32), np.eye(4)), str(nifti))
    mha = tmp_path / "b.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 3, 2), np.float32)), str(mha))
    broken = tmp_path / "c.nii.gz"
    broken.write_bytes(b"not a volume" * 10)
    assert case_size(nifti) == 5 * 6 * 7
    assert case_size(mha) == 4 * 3 * 2
    assert case_size(broken) == 120  # its bytes: dealt anyway, it fails on its rank
    assert case_size(None) == 0


# --- the shared output and the parent's account of its children -----------------------------------


def test_the_output_and_case_parents_are_made_once_and_only_empty_ones_removed(tmp_path):
    cases = [("AB/c1", None), ("AB/c2", None), ("HN/c3", None), ("../out", None)]
    output, created = prepare_output(tmp_path / "new" / "out", cases)
    assert output == tmp_path / "new" / "out"
    assert {p.relative_to(tmp_path) for p in created} == {Path("new"), Path("new/out"), Path("new/out/AB"),
                                                          Path("new/out/HN")}
    (output / "AB" / "c1").mkdir()  # a rank published AB/c1; HN/c3 failed
    remove_empty_folders(created)
    assert sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "new").rglob("*")) == [
        "new/out", "new/out/AB", "new/out/AB/c1"]


def test_a_killed_child_s_unreported_cases_are_failed_and_named():
    shares = [["a", "c"], ["b", "d"], ["e"]]
    reports = {0: [{"case_id": "a", "seconds": 1.0, "outputs": ["sct.nii.gz"], "rank": 0},
                   {"case_id": "c", "seconds": 0.5, "error": "c.nii.gz: 1 NaN voxel(s)", "rank": 0}],
               1: [{"case_id": "b", "seconds": 2.0, "outputs": ["sct.nii.gz"], "rank": 1}]}
    codes = {0: 0, 1: -9}  # rank 2 not started: its case was published already
    results = collect_results(["a", "b", "c", "d", "e"], shares, reports, codes)
    assert [(r.case_id, r.rank, r.status) for r in results] == [
        ("a", 0, "written"), ("b", 1, "written"), ("c", 0, "failed"), ("d", 1, "failed"), ("e", 2, "skipped")]
    assert results[3].error == "not written: rank 1 was killed by SIGKILL before this case was done"
    stopped = collect_results(["b", "d"], [[], ["b", "d"]], {1: reports[1]}, {1: 1})
    assert stopped[1].error == "not written: rank 1 stopped with exit status 1 (its error is above) before this " \
                               "case was done"


def test_workers_under_torchrun_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["infer", "--model", "m.pt", "--input", str(tmp_path), "--output", str(tmp_path / "o"),
                 "--workers", "2"]) == 1
    assert "radmtl infer (rank 0): error: --workers 2: this process is already rank 0 of a torchrun run; use " \
           "either torchrun or --workers" in capsys.readouterr().err


# --- two processes on the CPU ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, tiny_payload) -> dict[str, Path]:
    """The tiny model, three MRs of different sizes (``good``), the same plus a corrupt one (``mixed``), and
    the one-process outputs of ``good`` at the ranks' thread count (``reference``)."""
    import torch

    root = tmp_path_factory.mktemp("cohort")
    model = save_checkpoint(root / "model.pt", tiny_payload())
    for seed, (case_id, shape) in enumerate(SHAPES.items()):
        mr = generate_case(seed, shape, (5.0, 4.5, 6.5)).mr.astype(np.float32)
        for folder in ("good", "mixed"):
            (root / folder).mkdir(exist_ok=True)
            nib.save(nib.Nifti1Image(mr, np.diag([5.0, 4.5, 6.5, 1.0])), str(root / folder / f"{case_id}.nii.gz"))
    # Dealt by its 6000 bytes, between case_a and case_b: first on rank 1, with case_b after it.
    (root / "mixed" / "case_bad.nii.gz").write_bytes(b"not a nifti " * 500)
    threads = torch.get_num_threads()
    torch.set_num_threads(RANK_THREADS)
    try:
        assert main(["-q", "infer", *_args(model, root / "good", root / "reference")]) == 0
    finally:
        torch.set_num_threads(threads)
    return {"root": root, "model": model, "good": root / "good", "mixed": root / "mixed",
            "reference": root / "reference"}


def _args(model: Path, inp: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", str(model), "--input", str(inp), "--output", str(out), "--no-progress", "--no-review",
            "--device", "cpu", *extra]


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env.pop("OMP_NUM_THREADS", None)
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _assert_like_reference(out: Path, reference: Path, case_ids) -> None:
    for case_id in case_ids:
        for name in MAPS:
            ours = np.asarray(nib.load(str(out / case_id / f"{name}.nii.gz")).dataobj)
            theirs = np.asarray(nib.load(str(reference / case_id / f"{name}.nii.gz")).dataobj)
            assert ours.dtype == theirs.dtype, (case_id, name)
            np.testing.assert_array_equal(ours, theirs, err_msg=f"{case_id}/{name}")


def _ranks_of(out: Path) -> dict[str, tuple[int, int]]:
    ranks = {}
    for provenance in sorted(out.glob("*/provenance.json")):
        record = json.loads(provenance.read_text())
        ranks[provenance.parent.name] = (record["rank"], record["world_size"])
    return ranks


@pytest.fixture(scope="module")
def torchrun_run(cohort) -> tuple[subprocess.CompletedProcess, Path]:
    out = cohort["root"] / "torchrun"
    done = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node",
                 "2", "--max_restarts", "0", "-m", "radmtl", "infer", *_args(cohort["model"], cohort["good"], out)],
                cohort["root"])
    return done, out


def test_workers_2_write_each_case_once_as_one_process_would_and_a_bad_case_fails_alone(cohort):
    out = cohort["root"] / "workers"
    done = _run([sys.executable, "-m", "radmtl", "infer", *_args(cohort["model"], cohort["mixed"], out),
                 "--workers", "2"], cohort["root"])
    assert done.returncode == 1, done.stderr  # one case failed; the other rank's and its own others went on
    assert sorted(p.name for p in out.iterdir()) == sorted(SHAPES)  # no hidden folder, nothing of case_bad
    _assert_like_reference(out, cohort["reference"], SHAPES)
    # LPT on voxels (9152, 5600, 4032) and the corrupt file's 6000 bytes: case_a then case_c on rank 0,
    # case_bad then case_b on rank 1, which goes on after its failed case.
    assert _ranks_of(out) == {"case_a": (0, 2), "case_b": (1, 2), "case_c": (0, 2)}
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("radmtl infer: error: case case_bad: ")
    assert "cannot read as NIfTI" in errors[0] and "Traceback" not in done.stderr
    lines = done.stdout.splitlines()
    assert sum(line.startswith("case ") for line in lines) == 1  # one summary table, from the parent
    assert "3 of 4 case(s) written to" in done.stdout
    assert lines[-1] == "rank 0: 2 written, 0 failed, 0 skipped; rank 1: 1 written, 1 failed, 0 skipped"
    assert [line.split()[:2] for line in lines if line.startswith("case_bad")] == [["case_bad", "1"]]


def test_torchrun_2_gloo_ranks_write_each_case_once_as_one_process_would(cohort, torchrun_run):
    done, out = torchrun_run
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(SHAPES)
    _assert_like_reference(out, cohort["reference"], SHAPES)
    assert _ranks_of(out) == {"case_a": (0, 2), "case_b": (1, 2), "case_c": (1, 2)}
    lines = done.stdout.splitlines()
    assert sum(line.startswith("case ") for line in lines) == 1  # rank 0 alone prints, for all
    assert "3 of 3 case(s) written to" in done.stdout
    assert "rank 0: 1 written, 0 failed, 0 skipped; rank 1: 2 written, 0 failed, 0 skipped" in lines
    assert "Traceback" not in done.stderr


def _mtimes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in sorted(out.rglob("*"))}


def test_a_rerun_skips_what_is_published_and_overwrite_runs_it_again(cohort, torchrun_run, capsys):
    out = cohort["root"] / "resumed"
    shutil.copytree(torchrun_run[1], out)  # copy2: the mtimes come along
    before = _mtimes(out)
    # --workers 2: every case is published, so no child is even started.
    done = _run([sys.executable, "-m", "radmtl", "infer", *_args(cohort["model"], cohort["good"], out),
                 "--workers", "2"], cohort["root"])
    assert done.returncode == 0, done.stderr
    assert [line.split()[-1] for line in done.stdout.splitlines() if line.startswith("case_")] == ["skipped"] * 3
    assert "0 of 3 case(s) written to" in done.stdout and "3 skipped" in done.stdout
    assert done.stdout.splitlines()[-1] == ("rank 0: 0 written, 0 failed, 1 skipped; "
                                            "rank 1: 0 written, 0 failed, 2 skipped")
    assert _mtimes(out) == before
    # One process skips the same way, without loading the model.
    assert main(["infer", *_args(cohort["model"], cohort["good"], out)]) == 0
    assert "0 of 3 case(s) written to" in capsys.readouterr().out and _mtimes(out) == before
    # --overwrite: every case again, by one process now.
    assert main(["infer", *_args(cohort["model"], cohort["good"], out), "--overwrite"]) == 0
    assert "3 of 3 case(s) written to" in capsys.readouterr().out
    after = _mtimes(out)
    assert all(after[f"{case_id}/provenance.json"] > before[f"{case_id}/provenance.json"] for case_id in SHAPES)
    assert _ranks_of(out) == {case_id: (0, 1) for case_id in SHAPES}
    assert sorted(p.name for p in out.iterdir()) == sorted(SHAPES)
