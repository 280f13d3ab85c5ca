from __future__ import annotations

import gzip
import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from radmtl.data.check import Problem, check_dataset, task_coverage
from radmtl.data.io import read_volume

SHAPE = (12, 12, 10)
AFFINE = np.array([[1.5, 0, 0, -9.0], [0, 1.5, 0, 4.0], [0, 0, 2.0, -10.0], [0, 0, 0, 1]])
LABELS = {"background": 0, "bladder": 1, "rectum": 2, "prostate": 3,
          "femoral_head_left": 4, "femoral_head_right": 5}
CASES = ("case_001", "case_002", "case_003")


def _save(path, array, affine=AFFINE, dtype=None):
    array = np.asarray(array)
    img = nib.Nifti1Image(array.astype(dtype or array.dtype), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))


def _phantom(seed):
    rng = np.random.default_rng(seed)
    x, y, _ = np.meshgrid(*(np.arange(s) for s in SHAPE), indexing="ij")
    body = ((x - 5.5) ** 2 + (y - 5.5) ** 2) < 25
    ct = np.where(body, 40, -1000).astype(np.int16)
    ct[4:6, 4:6, :] = 700  # bone
    mr = (body * 300.0 + rng.normal(0, 5, SHAPE)).astype(np.float32)
    labels = np.zeros(SHAPE, np.uint8)
    for k in range(1, 4):
        labels[2 + k, 3:8, 2 * (k - 1):2 * k] = k
    # Femoral heads on their own sides (RAS+: low x is the patient's left), or check reports them swapped.
    labels[2, 4:7, 6:8], labels[9, 4:7, 8:10] = 4, 5
    sd = np.full(SHAPE, 10.0, np.float32)
    return {"mr": mr, "ct": ct, "mask": body.astype(np.uint8), "labels": labels, "ct_noise_sd": sd}


def make_dataset(root, with_json=True):
    """Three clean cases: int16 CT (air −1000, tissue 40, bone 700), mask, labels 0..5, σ map."""
    entries = []
    for i, case in enumerate(CASES):
        (root / case).mkdir(parents=True)
        entry = {"case": case}
        for key, array in _phantom(i).items():
            # a .nii/.nii.gz mix: the check finds files by stem, whatever the suffix
            name = f"{key}.nii" if (key == "mask" and i == 0) else f"{key}.nii.gz"
            _save(root / case / name, array)
            entry[key] = f"{case}/{name}"
        entries.append(entry)
    if with_json:
        spec = {"name": "tiny", "labels": LABELS, "training": entries[:2], "validation": entries[2:]}
        (root / "dataset.json").write_text(json.dumps(spec))
    return root


def test_clean_dataset_has_no_problems(tmp_path):
    make_dataset(tmp_path)
    calls = []
    index, problems = check_dataset(tmp_path, progress=lambda done, total: calls.append((done, total)))
    assert problems == []
    assert [c.case_id for c in index.cases] == list(CASES)
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_clean_dataset_without_json_and_with_mha(tmp_path):
    make_dataset(tmp_path, with_json=False)
    # the same mr as .mha (LPS on disk) must land on the same grid as the NIfTI files
    mr_path = tmp_path / "case_002" / "mr.nii.gz"
    mr = nib.load(str(mr_path)).get_fdata(dtype=np.float32)
    img = sitk.GetImageFromArray(np.transpose(mr))
    img.SetSpacing((1.5, 1.5, 2.0))
    img.SetOrigin((9.0, -4.0, -10.0))
    img.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    mr_path.unlink()
    sitk.WriteImage(img, str(tmp_path / "case_002" / "mr.mha"))
    index, problems = check_dataset(tmp_path)
    assert problems == []
    assert index.labels is None
    assert index.training[1].paths["mr"].name == "mr.mha"


# --- one broken variant per problem ------------------------------------------------------------


def _case(root):
    return root / "case_002"


def _load(path):
    img = nib.load(str(path))
    return np.asarray(img.dataobj), img.affine


def _edit(key, fn, affine=None, dtype=None):
    """A variant that rewrites case_002's ``key`` as fn(array) (and optionally a new affine)."""
    def apply(root):
        path = _case(root) / f"{key}.nii.gz"
        array, old_affine = _load(path)
        _save(path, fn(array.copy()), old_affine if affine is None else affine, dtype)
    return apply


def _set(index, value):
    def fn(a):
        a = a.astype(np.float32)
        a[index] = value
        return a
    return fn


def _drop_from_json(root, key):
    spec = json.loads((root / "dataset.json").read_text())
    for entry in spec["training"]:
        if entry["case"] == "case_002":
            entry.pop(key)
    (root / "dataset.json").write_text(json.dumps(spec))


def _missing_undeclared(*keys):
    def apply(root):
        for key in keys:
            _drop_from_json(root, key)
            (_case(root) / f"{key}.nii.gz").unlink()
    return apply


def _truncate(root):
    path = _case(root) / "ct.nii.gz"
    path.write_bytes(path.read_bytes()[:200])


def _random_bytes(root):
    _case(root).joinpath("labels.nii.gz").unlink()
    _case(root).joinpath("labels.nii").write_bytes(np.random.default_rng(0).bytes(3000))
    _drop_from_json(root, "labels")


def _four_d(root):
    _save(_case(root) / "mr.nii.gz", np.zeros(SHAPE + (2,), np.float32))


def _direction(root):
    flipped = AFFINE.copy()
    flipped[:3, :3] = AFFINE[:3, :3] @ np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]])
    _edit("ct", lambda a: a, affine=flipped)(root)


def _shifted(dx):
    a = AFFINE.copy()
    a[0, 3] += dx
    return a


def _duplicate(root):
    array, affine = _load(_case(root) / "ct.nii.gz")
    _drop_from_json(root, "ct")
    _save(_case(root) / "ct.nii", array, affine)


def _gzip_garbage(root):
    with gzip.open(_case(root) / "mask.nii.gz", "wb") as f:
        f.write(b"not a nifti header at all" * 20)


BROKEN = {
    # name: (break case_002, expected file, key words of the message)
    "no-target": (_missing_undeclared("ct", "labels"), "ct.*/labels.*",
                  ["neither ct nor labels", "no task can train on it", "add ct.nii.gz"]),
    "declared-missing": (lambda r: (_case(r) / "mask.nii.gz").unlink(), "mask.nii.gz", ["not found"]),
    "ct-truncated": (_truncate, "ct.nii.gz", ["corrupt"]),
    "labels-random-bytes": (_random_bytes, "labels.nii", ["corrupt"]),
    "mask-gzip-garbage": (_gzip_garbage, "mask.nii.gz", ["corrupt"]),
    "mr-4d": (_four_d, "mr.nii.gz", ["3D"]),
    "mr-nan": (_edit("mr", _set((1, 1, 1), np.nan)), "mr.nii.gz", ["1 NaN"]),
    "ct-inf": (_edit("ct", _set((0, 0, 0), np.inf), dtype=np.float32), "ct.nii.gz", ["1 Inf"]),
    "ct-shape": (_edit("ct", lambda a: a[:, :, :8]), "ct.nii.gz",
                 ["shape [12, 12, 8] differs from mr [12, 12, 10]", "resample ct onto the mr grid"]),
    "labels-spacing": (_edit("labels", lambda a: a, affine=AFFINE @ np.diag([1, 1, 1.5, 1])),
                       "labels.nii.gz", ["spacing", "nearest-neighbour"]),
    "mask-origin": (_edit("mask", lambda a: a, affine=_shifted(3.0)), "mask.nii.gz", ["origin"]),
    "ct-direction": (_direction, "ct.nii.gz", ["direction"]),
    "sd-origin": (_edit("ct_noise_sd", lambda a: a, affine=_shifted(-1.0)), "ct_noise_sd.nii.gz",
                  ["origin"]),
    "labels-unknown": (_edit("labels", _set((0, 0, 0), 7)), "labels.nii.gz",
                       ["[7] not in dataset.json"]),
    "labels-non-integer": (_edit("labels", _set((0, 0, 0), 0.5), dtype=np.float32), "labels.nii.gz",
                           ["non-integer"]),
    "ct-constant": (_edit("ct", lambda a: np.full_like(a, -1000)), "ct.nii.gz", ["empty", "-1000"]),
    "mr-constant": (_edit("mr", lambda a: np.zeros_like(a)), "mr.nii.gz", ["empty"]),
    "mask-empty": (_edit("mask", np.zeros_like), "mask.nii.gz", ["empty mask", "no foreground"]),
    "mask-255": (_edit("mask", lambda a: a * 255), "mask.nii.gz", ["other than 0/1", "[255]"]),
    "ct-shifted-1024": (_edit("ct", lambda a: a + 1024), "ct.nii.gz", ["not HU", "no air", "1024"]),
    "ct-normalised": (_edit("ct", lambda a: (a + 1000) / 1700.0, dtype=np.float32), "ct.nii.gz",
                      ["not HU", "normalised"]),
    "ct-max-below-100": (_edit("ct", lambda a: np.minimum(a, 50)), "ct.nii.gz", ["not HU", "max < 100"]),
    "ct-range": (_edit("ct", _set((5, 5, 5), 6000)), "ct.nii.gz", ["not HU", "over 5000"]),
    "sd-negative": (_edit("ct_noise_sd", _set((2, 2, 2), -1.0)), "ct_noise_sd.nii.gz", ["negative"]),
    "ct-ambiguous": (_duplicate, "ct.nii.gz", ["ambiguous", "ct.nii"]),
}


@pytest.mark.parametrize("variant", list(BROKEN))
def test_each_broken_variant_gives_exactly_its_problem(tmp_path, variant):
    make_dataset(tmp_path)
    breaker, file, words = BROKEN[variant]
    breaker(tmp_path)
    index, problems = check_dataset(tmp_path)
    assert index is not None
    assert len(problems) == 1, [p.line() for p in problems]
    problem = problems[0]
    assert problem.case_id == "case_002"
    assert problem.file == file
    line = problem.line()
    for word in words:
        assert word in line
    assert line.startswith(f"case_002 {file}: ")
    assert " — fix: " in line and "\n" not in line


def test_two_broken_cases_and_unreadable_file_does_not_stop_the_case(tmp_path):
    make_dataset(tmp_path)
    _save(tmp_path / "case_001" / "ct.nii.gz", np.full(SHAPE, np.nan, np.float32))
    (tmp_path / "case_003" / "mr.nii.gz").write_bytes(b"garbage")
    mask, _ = _load(tmp_path / "case_003" / "mask.nii.gz")
    _save(tmp_path / "case_003" / "mask.nii.gz", mask * 2)
    _, problems = check_dataset(tmp_path)
    found = {(p.case_id, p.file) for p in problems}
    assert found == {("case_001", "ct.nii.gz"), ("case_003", "mr.nii.gz"), ("case_003", "mask.nii.gz")}
    by_file = {p.file: p.line() for p in problems}
    assert "NaN" in by_file["ct.nii.gz"]
    assert "corrupt" in by_file["mr.nii.gz"]
    assert "0/1" in by_file["mask.nii.gz"]


def test_mixed_supervision_needs_one_target_per_case_and_infer_only_mr(tmp_path):
    make_dataset(tmp_path)
    (tmp_path / "case_002" / "ct.nii.gz").unlink()  # labels only: segmentation trains on it
    (tmp_path / "case_003" / "labels.nii.gz").unlink()  # ct only: the sCT trains on it
    spec = json.loads((tmp_path / "dataset.json").read_text())
    spec["training"][1].pop("ct")
    spec["validation"][0].pop("labels")
    (tmp_path / "dataset.json").write_text(json.dumps(spec))
    index, problems = check_dataset(tmp_path)
    assert problems == []
    assert task_coverage(index) == {"sct": ["case_001", "case_003"], "seg": ["case_001", "case_002"]}

    (tmp_path / "case_003" / "ct.nii.gz").unlink()  # now case_003 has neither
    spec["validation"][0].pop("ct")
    (tmp_path / "dataset.json").write_text(json.dumps(spec))
    assert [(p.case_id, p.file) for p in check_dataset(tmp_path)[1]] == [("case_003", "ct.*/labels.*")]
    assert check_dataset(tmp_path, purpose="infer")[1] == []
    spec["test"] = spec.pop("validation")  # a test case needs only its mr
    (tmp_path / "dataset.json").write_text(json.dumps(spec))
    assert check_dataset(tmp_path)[1] == []
    with pytest.raises(ValueError, match="purpose"):
        check_dataset(tmp_path, purpose="evaluate")


def test_folder_without_mr_is_reported(tmp_path):
    make_dataset(tmp_path, with_json=False)
    (tmp_path / "case_002" / "mr.nii.gz").rename(tmp_path / "case_002" / "T2.nii.gz")
    index, problems = check_dataset(tmp_path)
    assert [c.case_id for c in index.cases] == ["case_001", "case_003"]
    assert len(problems) == 1
    assert problems[0].case_id == "case_002" and "no mr file" in problems[0].line()


@pytest.mark.parametrize(("setup", "file", "word"), [
    (lambda root: None, "missing", "not found"),
    (lambda root: (root / "dataset.json").write_text("{oops"), "dataset.json", "not valid JSON"),
    (lambda root: (root / "dataset.json").write_text('{"training": [{"case": "x"}]}'), "dataset.json",
     '"mr"'),
])
def test_dataset_level_problem(tmp_path, setup, file, word):
    root = tmp_path / "missing" if file == "missing" else tmp_path
    setup(root)
    index, problems = check_dataset(root)
    assert index is None
    assert len(problems) == 1
    assert problems[0].case_id == "dataset"
    assert problems[0].file == (str(root) if file == "missing" else file)
    assert word in problems[0].line()


def test_problem_line_is_one_line():
    p = Problem("case_003", "ct.nii.gz", "shape [16, 16, 12] differs from mr [16, 16, 16]",
                "resample ct onto the mr grid")
    assert p.line() == ("case_003 ct.nii.gz: shape [16, 16, 12] differs from mr [16, 16, 16] "
                        "— fix: resample ct onto the mr grid")
    messy = Problem("case_001", "mr.nii", "cannot read\n  header\tdump", "re-export\n")
    assert messy.line() == "case_001 mr.nii: cannot read header dump — fix: re-export"
    assert Problem("dataset", "", "no cases", "add cases").line() == "dataset: no cases — fix: add cases"


# --- the MR's own geometry (issue 13): the same rule as radmtl infer's -------------------------------


def _save_sform_only(path, array, affine):
    """A NIfTI whose only geometry is the sform ``affine`` (qform code 0), stored as given: nibabel cannot
    put a zero or NaN voxel size into a qform, but it writes it into the sform, and reads it back."""
    header = nib.Nifti1Header()
    header.set_data_shape(array.shape)
    header.set_data_dtype(np.asarray(array).dtype)
    header.set_sform(affine, code=1)
    header["qform_code"] = 0
    nib.save(nib.Nifti1Image(np.asarray(array), None, header=header), str(path))


def _bad_affine(kind):
    affine = AFFINE.copy()
    if kind == "zero":
        affine[:3, 1] = 0.0  # the second voxel axis has no size
    elif kind == "nan":
        affine[0, 0] = np.nan
    elif kind == "nan-origin":
        affine[1, 3] = np.nan  # only the origin: the voxel sizes and directions are fine
    elif kind == "singular":
        affine[:3, 2] = affine[:3, 0]  # two voxel axes point the same way
    return affine


def _break_mr(root, kind, key="mr", case="case_002"):
    path = root / case / f"{key}.nii.gz"
    array, _ = _load(path)
    _save_sform_only(path, array, _bad_affine(kind))
    from radmtl.data.io import read_volume  # the fault must survive the round trip, or the test is void

    stored = read_volume(path).affine
    assert np.isnan(stored).any() if kind.startswith("nan") else abs(np.linalg.det(stored[:3, :3])) < 1e-9


@pytest.mark.parametrize("purpose", ["train", "infer"])
@pytest.mark.parametrize(("kind", "words"), [
    ("zero", ["voxel size", "[1.5, 0, 2]"]), ("nan", ["NaN", "affine"]), ("nan-origin", ["NaN", "affine"]),
    ("singular", ["singular"]),
])
def test_mr_with_a_broken_affine_is_one_problem_and_no_grid_comparison(tmp_path, kind, words, purpose):
    make_dataset(tmp_path)  # ct, mask, labels and σ map beside the mr: none of them is compared with it
    _break_mr(tmp_path, kind)
    _, problems = check_dataset(tmp_path, purpose=purpose)
    assert [(p.case_id, p.file) for p in problems] == [("case_002", "mr.nii.gz")], [p.line() for p in problems]
    line = problems[0].line()
    assert all(word in line for word in words), line
    assert "differs from mr" not in line and "re-export" in line


def test_other_file_with_a_nan_affine_is_reported_as_such(tmp_path):
    make_dataset(tmp_path)
    _break_mr(tmp_path, "nan", key="ct")
    _, problems = check_dataset(tmp_path)
    assert [(p.case_id, p.file) for p in problems] == [("case_002", "ct.nii.gz")]
    assert "NaN" in problems[0].what and "affine" in problems[0].what and "differs" not in problems[0].what


def test_training_refuses_an_mr_with_a_zero_voxel_size(tmp_path):
    from radmtl.errors import RadmtlError
    from radmtl.training.data_setup import check_before_training

    make_dataset(tmp_path)
    check_before_training([tmp_path])  # clean: no error
    # Every file of the case on the same broken grid, as a converter writes them: no grid differs.
    for key in ("mr", "ct", "mask", "labels", "ct_noise_sd"):
        _break_mr(tmp_path, "zero", key=key)
    with pytest.raises(RadmtlError, match=r"case_002 mr\.nii\.gz: .*voxel size"):
        check_before_training([tmp_path])


def test_a_zero_voxel_size_without_sform_is_one_problem_not_a_1_mm_grid(tmp_path, zero_voxel_nifti):
    root = make_dataset(tmp_path / "data")
    mr = read_volume(root / "case_002" / "mr.nii.gz")
    zero_voxel_nifti(root / "case_002" / "mr.nii.gz", mr.array, AFFINE)
    _, problems = check_dataset(root)
    assert [(p.case_id, p.file) for p in problems] == [("case_002", "mr.nii.gz")]
    assert problems[0].line() == (
        "case_002 mr.nii.gz: voxel size pixdim[1:4] = [1.5, 0.0, 2.0] has a zero or non-finite value and the "
        "header has no sform, so the voxel size is unknown (nibabel would assume 1 mm) — fix: re-export the "
        "image with its true voxel size")
