"""Tests of the synthetic pelvis phantom: determinism, tissue values, noise model, labels, files."""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from radmtl.data.phantom import anatomy as anat
from radmtl.data.phantom import cases as phantom
from radmtl.data.phantom import dataset as phantom_dataset
from radmtl.data.phantom import (
    CASE_FILES,
    PHANTOM_LABELS,
    PhantomError,
    case_seed,
    case_tissue_hu,
    default_spacing,
    generate_case,
    generate_dataset,
)
from radmtl.data.phantom.realism import Realism

SHAPE = (48, 48, 32)
SPACING = (8.0, 6.0, 6.0)
SOFT_TISSUES = (anat.FAT, anat.MUSCLE, anat.PELVIC_FAT, anat.URINE, anat.BLADDER_WALL,
                anat.PROSTATE, anat.RECTAL_WALL, anat.RECTAL_CONTENT)


@pytest.fixture(scope="module")
def case():
    return generate_case(3, SHAPE, SPACING)


@pytest.fixture(scope="module")
def plain():
    """The same case without bowel gas, texture or MR→CT deformation: one HU per tissue."""
    return generate_case(3, SHAPE, SPACING, Realism.none())


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom")
    ids = generate_dataset(out, cases=3, seed=5, shape=SHAPE, spacing=SPACING)
    return out, ids


def _arrays(c):
    return {name: getattr(c, name) for name in ("mr", "ct_hu", "mask", "labels", "ct_noise_sd_hu",
                                                 "ct_clean_hu", "tissue", "affine")}


def test_same_seed_is_bitwise_identical_and_other_seed_differs(case):
    again = generate_case(3, SHAPE, SPACING)
    for name, array in _arrays(case).items():
        np.testing.assert_array_equal(array, _arrays(again)[name], err_msg=name)
    other = generate_case(4, SHAPE, SPACING)
    assert not np.array_equal(case.labels, other.labels)
    assert not np.array_equal(case.mr, other.mr)


def test_shape_dtypes_and_ras_affine(case):
    assert case.mr.shape == case.ct_hu.shape == case.labels.shape == SHAPE
    assert case.mr.dtype == case.ct_hu.dtype == case.ct_noise_sd_hu.dtype == np.float32
    assert case.mask.dtype == case.labels.dtype == np.uint8
    np.testing.assert_allclose(np.diag(case.affine), [*SPACING, 1.0])
    # Origin centres the grid on world (0, 0, 0).
    centre = case.affine @ np.array([(n - 1) / 2 for n in SHAPE] + [1.0])
    np.testing.assert_allclose(centre[:3], 0.0, atol=1e-9)


def test_default_spacing_covers_a_pelvis():
    assert default_spacing((96, 96, 64)) == (4.0, 3.0, 3.0)
    fov = np.array(default_spacing((64, 64, 40))) * (64, 64, 40)
    np.testing.assert_allclose(fov, (384.0, 288.0, 192.0))


def test_anatomy_is_the_same_on_a_finer_grid():
    coarse = generate_case(7, (24, 24, 16), (16.0, 12.0, 12.0))
    fine = generate_case(7, (48, 48, 32), (8.0, 6.0, 6.0))
    volume = {n: [(c.labels == n).sum() * np.prod(np.diag(c.affine)[:3]) for c in (coarse, fine)]
              for n in (1, 4)}
    for label, (v_coarse, v_fine) in volume.items():
        assert v_coarse == pytest.approx(v_fine, rel=0.35), label


def _pure(region: np.ndarray) -> np.ndarray:
    """Voxels whose six face neighbours are in ``region`` too: (almost) no partial volume inside them."""
    return ndimage.binary_erosion(region)


def test_ct_values_per_tissue(plain):
    case = plain
    ct, tissue = case.ct_clean_hu, case.tissue
    assert np.all(ct[ndimage.binary_erosion(case.mask == 0, np.ones((3, 3, 3), bool))] == -1000.0)
    assert 0.0 <= ct[_pure(tissue == anat.URINE)].mean() <= 20.0
    assert -120.0 <= ct[_pure(tissue == anat.FAT)].mean() <= -80.0
    assert 30.0 <= ct[_pure(tissue == anat.MUSCLE)].mean() <= 55.0
    assert 35.0 <= ct[_pure(tissue == anat.PROSTATE)].mean() <= 45.0
    cortical, trabecular = ct[tissue == anat.CORTICAL], ct[_pure(tissue == anat.TRABECULAR)]
    assert cortical.size > 100 and trabecular.size > 10
    # The cortical shell is thinner than these 6-8 mm voxels: its voxels are partial-volume mixtures,
    # never above cortical bone's 1350 HU, mostly denser than the marrow they enclose.
    assert cortical.max() <= 1350.0 and np.median(cortical) > trabecular.max()
    assert trabecular.min() >= 150.0 and trabecular.max() <= 400.0


def test_case_tissue_hu_is_the_value_the_case_was_drawn_with(plain):
    case = plain
    table = case_tissue_hu(3)
    pure = _pure(case.tissue == anat.MUSCLE)
    assert pure.sum() > 100
    # the interior of a tissue is exactly its drawn value (but for a few voxels next to a thin
    # structure, which erosion keeps); another seed draws another muscle HU
    for name, tissue in (("muscle", anat.MUSCLE), ("urine", anat.URINE)):
        values = case.ct_clean_hu[_pure(case.tissue == tissue)]
        assert np.mean(np.abs(values - table[name]) < 1e-3) > 0.99, name
    assert 35.0 <= table["muscle"] <= 50.0 and table["air"] == -1000.0
    assert case_tissue_hu(4)["muscle"] != table["muscle"]


def test_voxel_values_are_partial_volume_means_not_centre_samples():
    # On a 12 mm grid a voxel straddling the body outline mixes air (−1000) and tissue.
    c = generate_case(3, (32, 24, 16), (12.0, 12.0, 12.0))
    edge = (c.mask == 1) & ~_pure(c.mask == 1)
    mixed = edge & (c.ct_clean_hu > -990.0) & (c.ct_clean_hu < -200.0)
    assert mixed.sum() > 0.2 * edge.sum()


def test_rectal_gas_is_air_and_labelled_rectum():
    for seed in range(6):
        c = generate_case(seed, SHAPE, SPACING)
        gas = c.tissue == anat.RECTAL_GAS
        if gas.any():
            assert np.all(c.ct_clean_hu[gas] < -300.0)  # gas-centred voxels are mostly gas
            assert np.all(c.labels[gas] == PHANTOM_LABELS["rectum"])
            assert np.all(c.mask[gas] == 1)
            return
    pytest.fail("no case among seeds 0-5 has rectal gas")


def test_mr_bone_and_air_dark_urine_and_fat_bright(case):
    mean = {k: case.mr[case.mr_tissue == k].mean() for k in anat.TISSUE_NAMES if (case.mr_tissue == k).any()}
    urine = mean[anat.URINE]
    assert mean[anat.CORTICAL] < 0.15 * urine
    assert case.mr[case.mask == 0].mean() < 0.15 * urine
    assert mean[anat.FAT] > 0.5 * urine
    assert mean[anat.MUSCLE] < mean[anat.PROSTATE] < urine
    assert np.all(case.mr >= 0) and np.all(np.isfinite(case.mr))


def test_ct_noise_matches_the_sd_map(case):
    residual = case.ct_hu - case.ct_clean_hu
    sd = case.ct_noise_sd_hu
    assert np.all(np.isfinite(sd)) and sd.min() > 0
    bone = (case.tissue == anat.CORTICAL) | (case.tissue == anat.TRABECULAR)
    soft = (case.mask == 1) & ~bone
    for region in (bone, soft, case.mask == 0):
        empirical = np.sqrt(np.mean(residual[region] ** 2))
        expected = np.sqrt(np.mean(sd[region] ** 2))
        assert empirical == pytest.approx(expected, rel=0.1)
    z = residual[case.mask == 1] / sd[case.mask == 1]
    assert abs(z.mean()) < 0.02 and z.std() == pytest.approx(1.0, abs=0.02)
    # Noisier in bone and towards the lateral body edge, as designed.
    assert sd[bone].mean() > 2.0 * sd[soft].mean()


def test_ct_noise_is_higher_towards_the_lateral_body_edge_low_in_the_pelvis(plain):
    # Without texture and deformation the noise map shows the ray model alone.
    sd = plain.ct_noise_sd_hu
    centre, lateral = sd[SHAPE[0] // 2, SHAPE[1] // 2, 4], sd[6:10, SHAPE[1] // 2, 4]
    assert lateral.max() > centre


def _soft_noise_percentiles(c, q=(5, 50, 95)):
    soft = np.isin(c.tissue, SOFT_TISSUES) & (c.mask == 1)
    return np.percentile(c.ct_noise_sd_hu[soft], q)


def test_soft_tissue_noise_varies_strongly_and_differs_per_case(case):
    p5, p50, p95 = _soft_noise_percentiles(case)
    # Enough spread for "does σ rank voxels by their true noise" to mean something.
    assert p95 / p5 >= 3.0
    assert 5.0 < p5 < p50 < p95 < 150.0
    other = _soft_noise_percentiles(generate_case(4, SHAPE, SPACING))
    assert not np.allclose(other, (p5, p50, p95), rtol=0.02)


def test_noise_is_higher_at_the_body_centre_than_near_the_surface(case):
    sd, body = case.ct_noise_sd_hu, case.mask == 1
    z = SHAPE[2] // 2  # mid-height, about the level of the femoral heads
    xs, ys = np.nonzero(body[:, :, z])
    cx, cy = int(round(xs.mean())), int(round(ys.mean()))
    row, column = np.nonzero(body[:, cy, z])[0], np.nonzero(body[cx, :, z])[0]
    centre = sd[cx, cy, z]
    # One voxel inside the skin: left, right and anterior surface.
    assert centre > sd[row.max() - 1, cy, z]
    assert centre > sd[row.min() + 1, cy, z]
    assert centre > 2.0 * sd[cx, column.max() - 1, z]


def _world(c):
    index = np.indices(c.labels.shape).reshape(3, -1).T
    return (index @ c.affine[:3, :3].T + c.affine[:3, 3]).reshape(*c.labels.shape, 3)


def test_femoral_necks_point_laterally_and_inferiorly(case):
    bone = (case.tissue == anat.CORTICAL) | (case.tissue == anat.TRABECULAR)
    world = _world(case)
    # side: the sign of RAS x towards each femur's lateral (RAS+: +x is the patient's right).
    for label, side in ((PHANTOM_LABELS["femoral_head_left"], -1.0),
                        (PHANTOM_LABELS["femoral_head_right"], 1.0)):
        head = case.labels == label
        centre = world[head].mean(0)
        radius = (head.sum() * np.prod(SPACING) * 3.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
        d = world - centre
        lateral_inferior = ((side * d[..., 0] > radius) & (side * d[..., 0] < radius + 50.0)
                            & (d[..., 2] < -5.0) & (d[..., 2] > -60.0) & (np.abs(d[..., 1]) < 40.0))
        # Neck, trochanter and shaft: bone, lateral and below the head centre, not head label.
        neck = bone & lateral_inferior
        assert neck.sum() >= 30, label
        assert np.all(case.labels[neck] == 0)
        # RAS: the left femur's neck is on the patient's left (−x), the right one's on +x.
        assert side * world[neck][:, 0].mean() > side * centre[0] > 40.0


def test_femoral_head_labels_are_the_heads_only(case):
    bone = (case.tissue == anat.CORTICAL) | (case.tissue == anat.TRABECULAR)
    world = _world(case)
    half_diagonal = 0.5 * float(np.linalg.norm(SPACING))
    for label in (PHANTOM_LABELS["femoral_head_left"], PHANTOM_LABELS["femoral_head_right"]):
        head = case.labels == label
        assert np.all(bone[head])
        # A sphere of the head radius (22-26 mm): the neck stays out of the label.
        distance = np.linalg.norm(world[head] - world[head].mean(0), axis=1)
        assert distance.max() <= 26.0 + half_diagonal
        volume = head.sum() * np.prod(SPACING)
        assert 0.7 * 4 / 3 * np.pi * 22.0**3 < volume < 1.3 * 4 / 3 * np.pi * 26.0**3
        # Unlabelled bone (the neck) touches the head.
        assert np.any(ndimage.binary_dilation(head) & bone & (case.labels == 0))


def test_bones_lie_inside_the_body_wrapped_in_soft_tissue():
    for seed in range(4):
        c = generate_case(seed, SHAPE, SPACING)
        bone = (c.tissue == anat.CORTICAL) | (c.tissue == anat.TRABECULAR)
        assert np.all(c.mask[ndimage.binary_dilation(bone)] == 1), seed


def test_labels_present_inside_body_and_in_anatomical_order():
    for seed in (0, 1, 2):
        c = generate_case(seed, SHAPE, SPACING)
        assert set(np.unique(c.labels)) == set(PHANTOM_LABELS.values())
        assert np.all(c.mask[c.labels > 0] == 1)
        world = {}
        for name, value in PHANTOM_LABELS.items():
            voxels = np.argwhere(c.labels == value)
            world[name] = c.affine[:3, :3] @ voxels.mean(0) + c.affine[:3, 3]
        # RAS: +x is the patient's right, +y anterior, +z superior.
        assert world["femoral_head_left"][0] < -40.0 < 40.0 < world["femoral_head_right"][0]
        assert world["prostate"][2] < world["bladder"][2]
        assert world["prostate"][1] > world["rectum"][1]


def test_cases_differ_in_anatomy():
    volumes = [(generate_case(s, SHAPE, SPACING).labels == PHANTOM_LABELS["bladder"]).sum()
               for s in range(4)]
    assert len(set(volumes)) == 4


def test_case_seed_does_not_depend_on_case_count(dataset, tmp_path):
    out, _ = dataset  # 3 cases, seed 5
    generate_dataset(tmp_path, cases=2, seed=5, shape=SHAPE, spacing=SPACING)
    three, two = (json.loads((d / "dataset.json").read_text()) for d in (out, tmp_path))
    assert two["case_seeds"] == three["case_seeds"][:2]
    assert len(set(three["case_seeds"])) == 3
    for name in CASE_FILES:  # every file of the shared case_002, bit for bit
        a, b = (np.asanyarray(nib.load(d / "case_002" / f"{name}.nii.gz").dataobj)
                for d in (out, tmp_path))
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert case_seed(5, 0) != case_seed(6, 0)


def test_written_dataset(dataset):
    out, ids = dataset
    assert ids == ["case_001", "case_002", "case_003"]
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["name"] == "radmtl-phantom"
    assert meta["labels"] == {"background": 0, "bladder": 1, "rectum": 2, "prostate": 3,
                              "femoral_head_left": 4, "femoral_head_right": 5}
    assert meta["spacing_mm"] == list(SPACING) and meta["seed"] == 5 and meta["validation"] == []
    assert meta["training"][1] == {
        "case": "case_002", "mr": "case_002/mr.nii.gz", "ct": "case_002/ct.nii.gz",
        "mask": "case_002/mask.nii.gz", "labels": "case_002/labels.nii.gz",
        "ct_noise_sd": "case_002/ct_noise_sd.nii.gz",
    }
    expected_dtype = {"mr": np.float32, "ct": np.float32, "mask": np.uint8, "labels": np.uint8,
                      "ct_noise_sd": np.float32}
    reference = generate_case(case_seed(5, 1), SHAPE, SPACING)
    for name, dtype in expected_dtype.items():
        img = nib.load(out / meta["training"][1][name])
        assert img.get_data_dtype() == dtype, name
        assert img.shape == SHAPE
        assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
        np.testing.assert_allclose(img.affine, reference.affine, atol=1e-5)
    np.testing.assert_array_equal(np.asanyarray(nib.load(out / "case_002/labels.nii.gz").dataobj),
                                  reference.labels)
    np.testing.assert_array_equal(nib.load(out / "case_002/ct.nii.gz").get_fdata(dtype=np.float32),
                                  reference.ct_hu)


def test_case_k_is_the_same_whatever_the_case_count(dataset, tmp_path):
    out, _ = dataset
    generate_dataset(tmp_path, cases=1, seed=5, shape=SHAPE, spacing=SPACING)
    one = nib.load(tmp_path / "case_001/mr.nii.gz").get_fdata(dtype=np.float32)
    three = nib.load(out / "case_001/mr.nii.gz").get_fdata(dtype=np.float32)
    np.testing.assert_array_equal(one, three)


def test_cases_made_in_worker_processes_are_the_same_files(dataset, tmp_path):
    out, ids = dataset  # 3 cases, seed 5, made in this process
    assert generate_dataset(tmp_path, cases=3, seed=5, shape=SHAPE, spacing=SPACING, workers=2) == ids
    assert (tmp_path / "dataset.json").read_text() == (out / "dataset.json").read_text()
    for case in ids:
        for name in CASE_FILES:
            a, b = (np.asanyarray(nib.load(d / case / f"{name}.nii.gz").dataobj) for d in (out, tmp_path))
            np.testing.assert_array_equal(a, b, err_msg=f"{case}/{name}")


def test_default_workers_start_at_four_cases_and_never_exceed_the_cases():
    cpus = len(os.sched_getaffinity(0))
    assert phantom_dataset._workers(None, 3) == 1
    assert phantom_dataset._workers(None, 4) == min(cpus, 4)
    assert phantom_dataset._workers(8, 2) == 2 and phantom_dataset._workers(1, 30) == 1


@pytest.mark.parametrize(
    "kwargs, word",
    [({"cases": 0}, "cases"), ({"seed": -1}, "seed"), ({"shape": (48, 48)}, "shape"),
     ({"spacing": (1.0, 0.0, 1.0)}, "spacing"), ({"workers": 0}, "workers")],
)
def test_bad_arguments_name_the_argument(tmp_path, kwargs, word):
    args = {"cases": 1, "seed": 0, "shape": SHAPE, "spacing": None, **kwargs}
    with pytest.raises(PhantomError, match=word):
        generate_dataset(tmp_path, **args)


def test_first_case_continues_the_seed_and_split_names_the_list(dataset, tmp_path):
    out, _ = dataset  # cases 1-3 of seed 5, training
    ids = generate_dataset(tmp_path, cases=2, seed=5, shape=SHAPE, spacing=SPACING, first_case=2,
                           split="validation")
    assert ids == ["case_002", "case_003"]
    three, two = (json.loads((d / "dataset.json").read_text()) for d in (out, tmp_path))
    assert two["case_seeds"] == three["case_seeds"][1:]
    assert two["training"] == [] and two["test"] == []
    assert [e["case"] for e in two["validation"]] == ids
    for name in CASE_FILES:  # case_003 of either folder is the same file content
        a, b = (np.asanyarray(nib.load(d / "case_003" / f"{name}.nii.gz").dataobj) for d in (out, tmp_path))
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_a_training_and_a_validation_folder_make_one_split(dataset, tmp_path):
    from radmtl.data.discovery import discover_all

    out, _ = dataset
    generate_dataset(tmp_path, cases=2, seed=5, shape=SHAPE, spacing=SPACING, first_case=4,
                     split="validation", orientations=("lps", "oblique"))
    index = discover_all([out, tmp_path])
    assert [c.case_id for c in index.training] == ["case_001", "case_002", "case_003"]
    assert [c.case_id for c in index.validation] == ["lps/case_004", "oblique/case_005"]


@pytest.mark.parametrize("kwargs, word", [({"first_case": 0}, "first_case"), ({"split": "val"}, "split")])
def test_bad_first_case_or_split_names_it(tmp_path, kwargs, word):
    with pytest.raises(PhantomError, match=word):
        generate_dataset(tmp_path, cases=1, shape=SHAPE, spacing=SPACING, **kwargs)
    assert not (tmp_path / "dataset.json").exists()


def test_cli_first_case_and_split_reach_dataset_json(tmp_path, capsys):
    from radmtl.cli import main

    out = tmp_path / "val"
    assert main(["-q", "phantom", str(out), "--cases", "1", "--seed", "5", "--first-case", "3", "--split",
                 "validation", "--shape", *map(str, SHAPE), "--spacing", *map(str, SPACING)]) == 0
    meta = json.loads((out / "dataset.json").read_text())
    assert [e["case"] for e in meta["validation"]] == ["case_003"] and meta["training"] == []
    assert meta["case_seeds"] == [case_seed(5, 2)]
    assert main(["-q", "phantom", str(tmp_path / "bad"), "--cases", "1", "--first-case", "0"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        "radmtl phantom: error: first_case must be a positive integer, got 0"
    assert not (tmp_path / "bad").exists()
