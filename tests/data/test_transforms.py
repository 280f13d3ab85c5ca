"""Training transforms under mixed supervision: stand-ins for missing targets and crop centres."""

from __future__ import annotations

import logging
import warnings

import numpy as np
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
