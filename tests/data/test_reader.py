"""radmtl's reader under MONAI: .mha, .nrrd and NIfTI of one case give one network input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from radmtl.config import load_config
from radmtl.data.io import VolumeError
from radmtl.data.reader import VolumeReader, volume_error_in
from radmtl.data.transforms import eval_transforms

SMALL = ["data.spacing=[3.0, 3.0, 3.0]"]


def test_mha_and_nifti_of_one_case_give_the_same_network_input(synthrad_trees):
    cfg = load_config(None, SMALL)
    keys = ["mr", "ct", "mask"]
    nifti = eval_transforms(cfg.data, keys)({k: str(synthrad_trees["2023"] / "pelvis/1PA001" / f"{k}.nii.gz")
                                             for k in keys})
    mha = eval_transforms(cfg.data, keys)({k: str(synthrad_trees["2025"] / "AB/1ABA001" / f"{k}.mha")
                                           for k in keys})
    for key in keys:
        assert mha[key].shape == nifti[key].shape
        np.testing.assert_allclose(np.asarray(mha[key].affine), np.asarray(nifti[key].affine), atol=1e-4)
        np.testing.assert_allclose(mha[key].as_tensor(), nifti[key].as_tensor(), atol=1e-5)
    # the CT really went through the HU scaling and clip (air near -1000 HU, never below -1024 HU)
    assert -1024.0 / cfg.data.ct_scale_hu <= float(nifti["ct"].min()) < -950.0 / cfg.data.ct_scale_hu


def test_reader_meta_is_ras_and_refuses_what_read_volume_refuses(tmp_path, synthrad_trees):
    reader = VolumeReader()
    path = synthrad_trees["2025"] / "TH/1THA003/mr.mha"
    assert reader.verify_suffix(path) and reader.verify_suffix("x.nrrd") and not reader.verify_suffix("x.png")
    array, meta = reader.get_data(reader.read(path))
    assert array.shape == tuple(meta["spatial_shape"]) and array.dtype == np.float32
    assert meta["space"] == "RAS"
    bad = tmp_path / "mr.mha"
    bad.write_bytes(b"ObjectType = Image\nNDims = 3\n")
    with pytest.raises(Exception) as caught:
        eval_transforms(load_config(None, SMALL).data, ["mr"])({"mr": str(bad)})
    cause = volume_error_in(caught.value)
    assert isinstance(cause, VolumeError)
    assert str(cause).startswith(f"{bad}: the MetaImage header has no ElementDataFile line")
    assert volume_error_in(RuntimeError("unrelated")) is None
    assert isinstance(torch.as_tensor(array), torch.Tensor)
