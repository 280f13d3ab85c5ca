"""Training transforms under mixed supervision: stand-ins for missing targets and crop centres."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import torch

from radmtl.config import load_config
from radmtl.data.discovery import discover
from radmtl.data.transforms import CropCentresd, TaskTargetsd, case_dicts, data_keys, training_transforms

SMALL = ["data.spacing=[4.0, 4.0, 4.0]", "data.patch_size=[16, 16, 8]", "data.patches_per_volume=4"]


def test_mixed_cases_load_with_flags_and_stack(synthrad_trees, caplog):
    cfg = load_config(None, SMALL)
    cases = list(discover(synthrad_trees["mixed"]).training)
    keys = data_keys(cfg, cases)
    assert keys == ("mr", "ct", "labels", "mask")
    tf = training_transforms(cfg.data, keys, {})
    tf.set_random_state(seed=0)
    caplog.set_level(logging.INFO)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        samples = {d["case_id"]: tf(d) for d in case_dicts(cases, keys)}
    # MONAI's "Num foregrounds ..., unable to generate class balanced samples" never appears
    assert not [w for w in caught if "foreground" in str(w.message)]
    assert not [r for r in caplog.records if "foreground" in r.getMessage()]
    flags = {cid: (float(s[0]["has_ct"]), float(s[0]["has_labels"])) for cid, s in samples.items()}
    assert flags == {"c1": (1, 1), "c2": (1, 1), "c3": (1, 0), "c4": (0, 1)}
    assert float(samples["c4"][0]["ct"].abs().max()) == 0.0  # the stand-in is zeros
    assert float(samples["c1"][0]["ct"].abs().max()) > 0.0
    batch = torch.utils.data.default_collate([s for patches in samples.values() for s in patches])
    assert batch["ct"].shape == (16, 1, 16, 16, 8) and batch["has_ct"].shape == (16,)


def test_crop_centres_without_labels_are_body_voxels():
    body = np.zeros((1, 6, 6, 4), np.float32)
    body[0, 1:5, 1:5, :] = 1
    organs = np.zeros_like(body)
    organs[0, 2:4, 2:4, 1:3] = 2
    mr = torch.ones(1, 6, 6, 4)
    unlabelled = CropCentresd()(TaskTargetsd(["labels"])({"mr": mr, "mask": torch.as_tensor(body)}))
    inside = np.flatnonzero(body[0].ravel())
    assert unlabelled["has_labels"] == 0
    np.testing.assert_array_equal(unlabelled["crop_fg_indices"], inside)
    np.testing.assert_array_equal(unlabelled["crop_bg_indices"], inside)
    labelled = CropCentresd()({"mr": mr, "mask": torch.as_tensor(body), "labels": torch.as_tensor(organs),
                               "has_labels": torch.tensor(1.0)})
    np.testing.assert_array_equal(labelled["crop_fg_indices"], np.flatnonzero(organs[0].ravel()))
    assert len(labelled["crop_bg_indices"]) == len(inside) - 8


def test_mr_normalisation_is_the_bodys_whatever_the_air_around_it():
    # The statistics come from the body: more air in the field of view must not move the body's values
    # (a normalisation over the whole volume shifts them by up to ~1 SD when the same body is padded).
    from radmtl.data.phantom import generate_case
    from radmtl.data.transforms import normalize_mr

    mr = generate_case(2, (40, 32, 16), (9.6, 9.0, 12.0)).mr
    padded = np.pad(mr, ((12, 12), (10, 10), (0, 0)), constant_values=0.0)  # in-plane air only
    noise = np.random.default_rng(0).normal(0.0, 2.0, padded.shape).astype(np.float32)
    padded = np.abs(padded + noise * (padded == 0))  # air is noisy magnitude, not exact zeros
    a = normalize_mr(torch.as_tensor(mr[None]), 0.5, 99.5)[0].numpy()
    b = normalize_mr(torch.as_tensor(padded[None]), 0.5, 99.5)[0].numpy()[12:-12, 10:-10, :]
    body = a > a.min() + 0.5
    assert body.mean() > 0.2
    np.testing.assert_allclose(b[body], a[body], atol=0.02)


def test_ct_targets_are_clipped_to_the_ct_range_before_scaling(tmp_path):
    # Scanner padding (−3024 HU) and a metal implant (8000 HU) must not become training targets.
    import nibabel as nib

    from radmtl.data.transforms import eval_transforms

    cfg = load_config(None, ["data.spacing=[4.0, 4.0, 4.0]"])
    ct = np.full((12, 12, 8), 40.0, np.float32)
    ct[0, 0, 0], ct[5, 5, 4], ct[6, 6, 4] = -3024.0, 8000.0, -500.0
    mr = np.ones((12, 12, 8), np.float32) * 100.0
    for name, array in (("mr", mr), ("ct", ct)):
        nib.save(nib.Nifti1Image(array, np.diag([4.0, 4.0, 4.0, 1.0])), str(tmp_path / f"{name}.nii.gz"))
    out = eval_transforms(cfg.data, ["mr", "ct"])({"mr": str(tmp_path / "mr.nii.gz"), "ct": str(tmp_path / "ct.nii.gz")})
    scaled = out["ct"][0].numpy() * cfg.data.ct_scale_hu
    lo, hi = cfg.data.ct_clip_hu
    assert scaled.min() == pytest.approx(lo, abs=1e-3) and scaled.max() == pytest.approx(hi, abs=1e-3)
    assert scaled[6, 6, 4] == pytest.approx(-500.0, abs=1e-3) and scaled[2, 2, 2] == pytest.approx(40.0, abs=1e-3)


def test_body_outline_keeps_the_slices_and_columns_at_the_edge_of_the_field_of_view():
    # A body that fills the end slices and touches one side of the field of view, as a pelvis does:
    # closing must not erode it from the array's border (the sCT was air there, BODY had no contour).
    from radmtl.data.transforms import derive_body_mask

    x, y, _ = np.meshgrid(np.arange(40), np.arange(30), np.arange(12), indexing="ij")
    body = ((x - 20) / 19.5) ** 2 + ((y - 18) / 12.0) ** 2 <= 1.0  # touches x = 0, x = 39 and every slice
    mr = np.where(body, 400.0, 0.0).astype(np.float32)
    mr[body & (np.abs(x - 12) <= 1) & (np.abs(y - 18) <= 1)] = 0.0  # a dark bone inside: must be filled
    derived = derive_body_mask(mr).astype(bool)
    assert np.all(derived[body])  # nothing of the body is lost, at the border or at the bone
    # Closing may round off the outline's pixel steps where it meets the border, nothing more.
    assert (derived & ~body).sum() <= 0.01 * body.sum()
    assert derived[:, :, 0].sum() == derived[:, :, -1].sum() == derived[:, :, 5].sum()


def _body_mask_by_scipy_fill_holes(mr: np.ndarray) -> np.ndarray:
    """derive_body_mask as it was written first, on the whole array with scipy's binary_fill_holes per
    slice and in 3-D: the reference the faster version must match voxel for voxel."""
    from scipy import ndimage

    from radmtl.data.transforms import CLOSING_ITERATIONS

    positive = mr[mr > 0]
    if positive.size == 0:
        return np.zeros(mr.shape, dtype=np.uint8)
    body, pad = mr > 0.1 * float(np.percentile(positive, 99.0)), CLOSING_ITERATIONS
    body = ndimage.binary_closing(np.pad(body, pad, mode="edge"), iterations=pad)[pad:-pad, pad:-pad, pad:-pad]
    labelled, n = ndimage.label(body)
    if n > 1:
        body = labelled == 1 + int(np.argmax(ndimage.sum_labels(body, labelled, index=np.arange(1, n + 1))))
    for z in range(body.shape[2]):
        body[:, :, z] = ndimage.binary_fill_holes(body[:, :, z])
    return ndimage.binary_fill_holes(body).astype(np.uint8)


def _outline_test_volumes() -> list[np.ndarray]:
    from scipy import ndimage

    rng = np.random.default_rng(7)
    x, y, z = np.meshgrid(np.arange(48), np.arange(40), np.arange(20), indexing="ij")
    r = np.sqrt((x - 24.0) ** 2 + (y - 20.0) ** 2 + (z - 10.0) ** 2)
    shell = np.where((r > 6) & (r < 9), 500.0, 2.0)  # a closed 3-D hole, rings in the middle slices
    rings = np.where(np.abs(np.hypot(x - 20.0, y - 18.0) - 12) < 2, 300.0, 0.0)  # a hole in every slice
    rings[30:, 30:, :] = 300.0  # a second object touching two faces
    two = np.where(r < 6, 400.0, 0.0) + np.where(np.hypot(x - 5.0, y - 5.0) < 4, 400.0, 0.0)
    volumes = [shell, rings, two, np.zeros((6, 5, 4)), np.full((6, 5, 4), 10.0)]
    for k in range(6):  # noisy blobs, some touching every face, with dark bone-like gaps inside
        v = ndimage.gaussian_filter(rng.random((36 + k, 30, 10 + k)), 1.2 + 0.3 * (k % 3)) * 1000 - 480 + 30 * k
        v[10:14, 8:12, 2:5] = -1.0
        volumes.append(v.astype(np.float32))
    return volumes


def test_body_outline_matches_scipy_fill_holes_voxel_for_voxel():
    # derive_body_mask crops to the body's box and fills holes by one labelling; it decides MR
    # normalisation in training and inference, so it must give the very voxels it gave before.
    from radmtl.data.transforms import derive_body_mask

    for mr in _outline_test_volumes():
        expected = _body_mask_by_scipy_fill_holes(mr)
        np.testing.assert_array_equal(derive_body_mask(mr), expected)
    filled = derive_body_mask(_outline_test_volumes()[1])
    assert filled[20, 18, 5] == 1 and filled.sum() > (_outline_test_volumes()[1] > 30).sum()  # holes filled


def test_rotation_augmentation_turns_images_mask_and_labels_together(tmp_path):
    # A bar along x: after a rotation about z by up to 30° (prob 0.5) some patches show it tilted, and the
    # label and mask follow the CT voxel for voxel, labels staying whole numbers.
    import nibabel as nib

    from radmtl.data.phantom import PHANTOM_LABELS

    shape = (32, 32, 8)
    bar = np.zeros(shape, np.float32)
    bar[4:28, 14:18, :] = 1.0
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    files = {"mr": bar * 500.0 + 10.0, "ct": bar * 1000.0, "labels": bar * 3.0, "mask": np.ones(shape, np.float32)}
    for name, array in files.items():
        nib.save(nib.Nifti1Image(array, affine), str(tmp_path / f"{name}.nii.gz"))
    cfg = load_config(None, ["data.spacing=[4.0,4.0,4.0]", "data.patch_size=[32,32,8]", "data.patches_per_volume=1",
                             "data.augment_rotate_deg=[0.0,0.0,30.0]", "data.augment_flip=false",
                             "data.augment_intensity=false"])
    tf = training_transforms(cfg.data, ["mr", "ct", "labels", "mask"], PHANTOM_LABELS)
    tilted = 0
    for seed in range(12):
        tf.set_random_state(seed)
        out = tf({k: str(tmp_path / f"{k}.nii.gz") for k in files})[0]
        labels, ct, mask = (np.asarray(out[k][0]) for k in ("labels", "ct", "mask"))
        assert set(np.unique(labels)) <= {0.0, 3.0}
        inside = mask > 0.5
        # Where the label says bar, the CT is the bar's 1000 HU (1.0 scaled; bilinear at the edges, hence
        # the margin), and only there.
        assert np.mean(ct[(labels == 3) & inside] > 0.5) > 0.9
        assert np.mean(ct[(labels == 0) & inside] < 0.5) > 0.9
        rows = np.nonzero(labels[:, :, 4].any(axis=0))[0]
        tilted += rows.size > 6  # the untilted bar covers 4 rows
    assert 2 <= tilted <= 11


def test_rotation_augmentation_angles_are_checked():
    from radmtl.config import ConfigError

    with pytest.raises(ConfigError, match="augment_rotate_deg"):
        load_config(None, ["data.augment_rotate_deg=[0.0,0.0,90.0]"])
