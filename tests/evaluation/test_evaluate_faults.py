"""radmtl evaluate on faulty files (issue 26, "nothing silent"): a MetaImage whose header does not fit its data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from radmtl.cli import main
from radmtl.data.io import VolumeError, read_volume, write_like
from radmtl.data.phantom import generate_dataset


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ref")
    generate_dataset(root, cases=2, seed=5, shape=(24, 20, 12))
    return root


def _predict_mha(reference: Path, pred: Path) -> None:
    """Predictions as .mha (the reference CT as the sCT, its labels as the segmentation)."""
    for case in ("case_001", "case_002"):
        ct = read_volume(reference / case / "ct.nii.gz")
        write_like(ct.array, ct, pred / case / "sct.mha", np.float32)
        write_like(read_volume(reference / case / "labels.nii.gz").array, ct, pred / case / "seg.mha", np.uint8)


def _edit_header(path: Path, old: bytes, new: bytes) -> None:
    data = path.read_bytes()
    end = data.index(b"ElementDataFile")
    assert old in data[:end]
    path.write_bytes(data[:end].replace(old, new) + data[end:])


@pytest.mark.parametrize(("edit", "words"), [
    ((b"DimSize = 24 20 12", b"DimSize = 48 20 12"),
     "the header does not fit the voxel data: DimSize 48 20 12 of MET_FLOAT (4 bytes) needs 46080 bytes, the "
     "data decompress to 23040"),
    ((b"ElementType = MET_FLOAT", b"ElementType = MET_DOUBLE"),
     "DimSize 24 20 12 of MET_DOUBLE (8 bytes) needs 46080 bytes, the data decompress to 23040"),
    ((b"ElementType = MET_FLOAT", b"ElementType = MET_FLOT"),
     "the MetaImage header's ElementType 'MET_FLOT' is not a voxel type radmtl reads"),
], ids=["DimSize", "ElementType", "unknown-type"])
def test_a_mha_whose_header_does_not_fit_its_data_is_one_line_naming_the_file(tmp_path, reference, capfd, edit,
                                                                            words):
    pred = tmp_path / "pred"
    _predict_mha(reference, pred)
    broken = pred / "case_001" / "sct.mha"
    _edit_header(broken, *edit)
    assert main(["evaluate", "--pred", str(pred), "--ref", str(reference)]) == 1
    captured = capfd.readouterr()  # file descriptors: MetaIO prints its own lines straight to stderr
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"radmtl evaluate: error: case case_001: {broken}: ")
    assert words in lines[0] and "No such file or directory" not in lines[0]
    assert "Traceback" not in captured.err and "MetaImage:" not in captured.err


def test_an_uncompressed_or_truncated_mha_names_the_byte_counts(tmp_path, reference, capfd):
    import SimpleITK as sitk

    path = tmp_path / "mr.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((12, 20, 24), np.float32)), str(path))  # uncompressed
    assert read_volume(path).shape == (24, 20, 12)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(VolumeError) as raised:
        read_volume(path)
    assert str(raised.value) == (
        f"{path}: the header does not fit the voxel data: DimSize 24 20 12 of MET_FLOAT (4 bytes) needs 23040 "
        "bytes, the data hold 22940 (a wrong DimSize or ElementType, or a truncated file); re-export the image, "
        "or correct DimSize/ElementType in its header to what the data holds")
    assert "MetaImage:" not in capfd.readouterr().err
