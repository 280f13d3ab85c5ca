from __future__ import annotations

import json

import pytest

from radmtl.data.discovery import Case, DatasetError, DatasetIndex, discover, folders_without_mr, label_names
from radmtl.data.splits import split_cases

LABELS = {"background": 0, "bladder": 1, "rectum": 2, "prostate": 3}


def _touch(path):
    # discovery never reads images, so empty files are enough here
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def _folder_dataset(root, names=("mr.nii.gz", "ct.nii.gz", "mask.nii.gz", "labels.nii.gz")):
    for case in ("case_002", "case_001", "case_010"):
        for name in names:
            _touch(root / case / name)
    return root


def _write_json(root, spec):
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps(spec))


def test_discover_without_dataset_json_sorts_folders_and_finds_all_keys(tmp_path):
    _folder_dataset(tmp_path)
    _touch(tmp_path / "notes" / "readme.txt")  # a folder without an mr is not a case
    _touch(tmp_path / ".hidden" / "mr.nii.gz")
    index = discover(tmp_path)
    assert [c.case_id for c in index.training] == ["case_001", "case_002", "case_010"]
    assert index.validation == () and index.test == ()
    assert index.labels is None
    assert index.name == tmp_path.name
    case = index.training[0]
    assert set(case.paths) == {"mr", "ct", "mask", "labels"}
    assert case.paths["ct"] == tmp_path.resolve() / "case_001" / "ct.nii.gz"
    assert all(p.is_absolute() for p in case.paths.values())
    assert index.cases == index.training


def test_discover_mixed_suffixes_and_prefers_nii_gz(tmp_path):
    _touch(tmp_path / "a" / "mr.nii")
    _touch(tmp_path / "a" / "CT.mha")
    _touch(tmp_path / "a" / "labels.nrrd")
    _touch(tmp_path / "a" / "mask.nii.gz")
    _touch(tmp_path / "b" / "mr.nii.gz")
    _touch(tmp_path / "b" / "mr.nii")  # duplicate: .nii.gz wins, deterministically
    _touch(tmp_path / "b" / "ct_noise_sd.nii.gz")
    index = discover(str(tmp_path))
    a, b = index.training
    assert {k: p.name for k, p in a.paths.items()} == {
        "mr": "mr.nii", "ct": "CT.mha", "labels": "labels.nrrd", "mask": "mask.nii.gz"}
    assert b.paths["mr"].name == "mr.nii.gz"
    assert b.paths["ct_noise_sd"].name == "ct_noise_sd.nii.gz"
    assert "ct" not in b.paths


def test_discover_with_dataset_json_relative_paths_and_splits(tmp_path):
    _folder_dataset(tmp_path)
    _touch(tmp_path / "elsewhere" / "mr_case_010.nii")
    _write_json(tmp_path, {
        "name": "Pelvis",
        "labels": LABELS,
        "training": [{"case": "case_002", "mr": "case_002/mr.nii.gz", "ct": "case_002/ct.nii.gz"},
                     {"case": "case_001", "mr": "case_001/mr.nii.gz"}],
        "validation": [{"case": "case_010", "mr": "elsewhere/mr_case_010.nii",
                        "ct_noise_sd": "case_010/missing.nii.gz"}],
        "test": [{"case": "new", "mr": str(tmp_path / "elsewhere" / "mr_case_010.nii")}],
    })
    index = discover(tmp_path)
    root = tmp_path.resolve()
    assert index.name == "Pelvis"
    assert index.labels == LABELS
    assert [c.case_id for c in index.cases] == ["case_002", "case_001", "case_010", "new"]
    assert [c.case_id for c in index.validation] == ["case_010"]
    assert [c.case_id for c in index.test] == ["new"]
    # keys the entry leaves out are still picked up from the case folder
    assert set(index.training[1].paths) == {"mr", "ct", "mask", "labels"}
    val = index.validation[0]
    assert val.paths["mr"] == root / "elsewhere" / "mr_case_010.nii"
    # declared but missing: kept, so check can report it
    assert val.paths["ct_noise_sd"] == root / "case_010" / "missing.nii.gz"
    assert index.test[0].paths["mr"] == tmp_path / "elsewhere" / "mr_case_010.nii"


def _entry(case="case_001"):
    return {"case": case, "mr": f"{case}/mr.nii.gz"}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected an object"),
        (json.dumps({"name": "x"}), '"training"'),
        (json.dumps({"training": {"case": "a"}}), "expected a list"),
        (json.dumps({"training": []}), "no cases"),
        (json.dumps({"training": ["case_001"]}), "expected an object"),
        (json.dumps({"training": [{"mr": "case_001/mr.nii.gz"}]}), '"case"'),
        (json.dumps({"training": [{"case": "case_001"}]}), '"mr"'),
        (json.dumps({"training": [{"case": "case_001", "mr": 3}]}), "path string"),
        (json.dumps({"training": [_entry(), _entry()]}), "more than once"),
        (json.dumps({"labels": {"bladder": 1}, "training": [_entry()]}), "background"),
        (json.dumps({"labels": {"background": 1, "bladder": 0}, "training": [_entry()]}), "background"),
        (json.dumps({"labels": {"background": 0, "bladder": "1"}, "training": [_entry()]}), "integer"),
        (json.dumps({"labels": {"background": 0, "bladder": 1.5}, "training": [_entry()]}), "integer"),
        (json.dumps({"labels": {"background": 0, "bladder": True}, "training": [_entry()]}), "integer"),
        (json.dumps({"labels": {"background": 0, "a": 1, "b": 1}, "training": [_entry()]}), "more than one"),
        (json.dumps({"labels": {"0": "background", "1": "bladder"}, "training": [_entry()]}), "swap"),
        (json.dumps({"labels": [0, 1], "training": [_entry()]}), "labels"),
    ],
)
def test_bad_dataset_json_raises_one_line_naming_the_file(tmp_path, content, expected):
    _folder_dataset(tmp_path)
    (tmp_path / "dataset.json").write_text(content)
    with pytest.raises(DatasetError) as info:
        discover(tmp_path)
    message = str(info.value)
    assert "dataset.json" in message
    assert expected in message
    assert "fix:" in message
    assert "\n" not in message
    assert info.value.file.name == "dataset.json"
    assert isinstance(info.value, ValueError)


def test_discover_missing_folder_file_and_empty_folder(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        discover(tmp_path / "nope")
    _touch(tmp_path / "file.nii.gz")
    with pytest.raises(DatasetError, match="expected a dataset folder"):
        discover(tmp_path / "file.nii.gz")
    _touch(tmp_path / "case_001" / "ct.nii.gz")  # a case folder without an mr
    with pytest.raises(DatasetError, match="no cases found") as info:
        discover(tmp_path)
    assert str(tmp_path) in str(info.value)
    assert folders_without_mr(tmp_path) == [tmp_path / "case_001"]


def _cases(n):
    return [Case(f"case_{i:03d}", {}) for i in range(n)]


def test_split_cases_seeded_deterministic_and_sized():
    cases = _cases(10)
    train, val = split_cases(cases, 0.2, seed=7)
    assert len(train) == 8 and len(val) == 2
    assert {c.case_id for c in train} | {c.case_id for c in val} == {c.case_id for c in cases}
    assert not {c.case_id for c in train} & {c.case_id for c in val}
    assert split_cases(cases, 0.2, seed=7) == (train, val)
    # input order does not change which cases are drawn; outputs keep the input order
    train_r, val_r = split_cases(list(reversed(cases)), 0.2, seed=7)
    assert {c.case_id for c in val_r} == {c.case_id for c in val}
    assert [c.case_id for c in train] == sorted(c.case_id for c in train)
    seeds_val = {tuple(c.case_id for c in split_cases(cases, 0.2, seed=s)[1]) for s in range(20)}
    assert len(seeds_val) > 1


@pytest.mark.parametrize(("n", "fraction", "n_val"), [
    (2, 0.1, 1), (3, 0.01, 1), (5, 0.5, 2), (4, 0.9, 3), (1, 0.5, 0), (0, 0.5, 0), (10, 0.0, 0)])
def test_split_cases_sizes(n, fraction, n_val):
    train, val = split_cases(_cases(n), fraction, seed=0)
    assert len(val) == n_val
    assert len(train) == n - n_val


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_split_cases_rejects_bad_fraction(fraction):
    with pytest.raises(ValueError, match="val_fraction"):
        split_cases(_cases(4), fraction, seed=0)


def test_label_names(tmp_path):
    index = DatasetIndex(root=tmp_path, name="x", labels=None, training=(), validation=())
    assert label_names(index, 3) == {"background": 0, "label_1": 1, "label_2": 2, "label_3": 3}
    assert label_names(index) == {"background": 0}
    with pytest.raises(ValueError, match="max_label"):
        label_names(index, -1)
    declared = DatasetIndex(root=tmp_path, name="x", labels=dict(LABELS), training=(), validation=())
    names = label_names(declared, 9)
    assert names == LABELS
    names["x"] = 5  # a copy: callers cannot change the index
    assert declared.labels == LABELS


# --- the published SynthRAD trees ----------------------------------------------------------------


def test_discovery_walks_synthrad_trees_from_the_task_root(synthrad_trees):
    from radmtl.data.discovery import discover

    index = discover(synthrad_trees["2023"])
    assert [c.case_id for c in index.training] == ["pelvis/1PA001", "pelvis/1PA002", "pelvis/1PA003",
                                                  "pelvis/1PA004"]
    assert {c.group for c in index.training} == {"pelvis"}
    assert all(c.tasks == ("sct",) and set(c.paths) == {"mr", "ct", "mask"} for c in index.training)
    index = discover(synthrad_trees["2025"])
    assert [(c.case_id, c.group) for c in index.training] == [
        ("AB/1ABA001", "AB"), ("AB/1ABA002", "AB"), ("TH/1THA003", "TH"), ("TH/1THA004", "TH")]
    assert index.training[0].paths["mr"].name == "mr.mha"
    # one level down, the same folder is a flat dataset with plain ids
    assert [c.case_id for c in discover(synthrad_trees["2025"] / "AB").training] == ["1ABA001", "1ABA002"]
    assert [c.group for c in discover(synthrad_trees["2025"] / "AB").training] == ["", ""]


def test_case_folders_are_not_searched_and_overview_is_no_case(tmp_path):
    from radmtl.data.discovery import discover, folders_without_mr

    for folder in ("A/c1", "A/c1/extra", "B/deep/c2", "overview"):
        (tmp_path / folder).mkdir(parents=True)
    for path in ("A/c1/mr.nii.gz", "A/c1/extra/mr.nii.gz", "B/deep/c2/mr.mha"):
        (tmp_path / path).write_bytes(b"")
    (tmp_path / "overview" / "summary.xlsx").write_bytes(b"")
    (tmp_path / "B" / "t2.nii.gz").write_bytes(b"")  # a volume in a non-case folder: reported
    assert [(c.case_id, c.group) for c in discover(tmp_path).training] == [("A/c1", "A"), ("B/deep/c2", "B/deep")]
    assert folders_without_mr(tmp_path) == [tmp_path / "B"]


def test_discover_all_combines_folders_and_refuses_clashing_ids(tmp_path):
    from radmtl.data.discovery import DatasetError, discover_all

    for path in ("one/Task1/AB/1ABA001", "one/Task1/HN/1HNA001", "two/Task1/AB/1ABA002", "three/AB/1ABA001"):
        (tmp_path / path).mkdir(parents=True)
        (tmp_path / path / "mr.nii.gz").write_bytes(b"")
    index = discover_all([tmp_path / "one" / "Task1", tmp_path / "two" / "Task1"])
    assert [c.case_id for c in index.training] == ["AB/1ABA001", "HN/1HNA001", "AB/1ABA002"]
    assert index.name == "Task1+Task1"
    with pytest.raises(DatasetError, match='case id "AB/1ABA001" is also a case of'):
        discover_all([tmp_path / "one" / "Task1", tmp_path / "three"])
