"""Laterality, pinned independently of the phantom's own code.

RAS+ (NIfTI) +x is the patient's right; DICOM LPS +x is the patient's left. The phantom's side is read
here from the files it writes, with nibabel (NIfTI) and raw DICOM attributes (pydicom), never through
radmtl's own readers; the guard is tried on the same physical labels stored RAS, LAS, LPS and oblique.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

from radmtl.data.check import check_dataset
from radmtl.data.laterality import check_laterality, left_right_pairs, midline_x, world_centroid
from radmtl.data.transforms import left_right_label_swaps

SHAPE = (40, 32, 24)
LEFT, RIGHT = 4, 5
NAMES = {"background": 0, "bladder": 1, "femoral_head_left": LEFT, "femoral_head_right": RIGHT}


@pytest.fixture(scope="module")
def phantom(laterality_phantom) -> Path:
    return laterality_phantom


def _nifti_centroid(image: nib.Nifti1Image, value: int) -> np.ndarray:
    voxels = np.argwhere(np.asarray(image.dataobj) == value)
    return nib.affines.apply_affine(image.affine, voxels.mean(0))


@pytest.mark.parametrize("case", ["case_001", "case_002"])
def test_phantom_left_femoral_head_is_at_negative_ras_x(phantom, case):
    labels = nib.load(phantom / "data" / case / "labels.nii.gz")
    assert nib.aff2axcodes(labels.affine) == ("R", "A", "S")
    left, right = _nifti_centroid(labels, LEFT), _nifti_centroid(labels, RIGHT)
    assert left[0] < -40.0 and right[0] > 40.0, (left, right)


def test_phantom_dicom_series_has_the_left_head_at_positive_lps_x(phantom, dicom_lps_grid):
    labels = nib.load(phantom / "data" / "case_001" / "labels.nii.gz")
    mr = np.asarray(nib.load(phantom / "data" / "case_001" / "mr.nii.gz").dataobj)
    pixels, lps_affine = dicom_lps_grid(phantom / "dicom" / "case_001")
    inverse = np.linalg.inv(lps_affine)
    for value, sign in ((LEFT, 1.0), (RIGHT, -1.0)):
        # Each head voxel's RAS world point, turned into LPS by hand and looked up in the DICOM grid.
        voxels = np.argwhere(np.asarray(labels.dataobj) == value)
        ras = nib.affines.apply_affine(labels.affine, voxels)
        lps = ras * np.array([-1.0, -1.0, 1.0])
        assert sign * lps[:, 0].min() > 40.0  # left head: LPS x > 0 everywhere
        ijk = np.rint(nib.affines.apply_affine(inverse, lps)).astype(int)
        # The DICOM pixels there are the MR's head voxels (uint16-rounded), not their mirror image.
        np.testing.assert_allclose(pixels[tuple(ijk.T)], np.clip(np.rint(mr[tuple(voxels.T)]), 0, 65535))


# --- the guard on hand-made volumes ---------------------------------------------------------------

def _two_heads(left_at_negative_x: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(X, Y, Z) labels with two heads and a body, stored RAS at 2 mm, centred on the origin."""
    labels = np.zeros(SHAPE, np.uint8)
    body = np.zeros(SHAPE, bool)
    body[4:36, 4:28, 2:22] = True
    low, high = (LEFT, RIGHT) if left_at_negative_x else (RIGHT, LEFT)
    labels[8:13, 14:19, 10:15] = low  # low index = negative RAS x = the patient's left
    labels[27:32, 14:19, 10:15] = high
    labels[18:22, 20:24, 12:16] = 1
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -(np.asarray(SHAPE) - 1) / 2 * 2.0
    return labels, body, affine


def _stored(array: np.ndarray, affine: np.ndarray, storage: str) -> tuple[np.ndarray, np.ndarray]:
    """The same physical volume stored LAS, LPS or RAS: flip axes and move the affine with them."""
    flips = {"RAS": (), "LAS": (0,), "LPS": (0, 1)}[storage]
    out, affine = array, affine.copy()
    for axis in flips:
        out = np.flip(out, axis)
        # Index n−1−i must land where i did: the axis' column negates and the origin moves to the far end.
        affine[:3, 3] = affine[:3, 3] + affine[:3, axis] * (array.shape[axis] - 1)
        affine[:3, axis] = -affine[:3, axis]
    return np.ascontiguousarray(out), affine


def _oblique(array: np.ndarray, affine: np.ndarray, order: int) -> tuple[np.ndarray, np.ndarray]:
    """The same physical volume resampled (nearest neighbour for labels) onto a rotated grid."""
    rotation = Rotation.from_euler("xyz", (12.0, -8.0, 25.0), degrees=True).as_matrix()
    oblique = affine.copy()
    oblique[:3, :3] = rotation @ affine[:3, :3]
    centre = (np.asarray(array.shape) - 1) / 2
    oblique[:3, 3] = affine[:3, :3] @ centre + affine[:3, 3] - oblique[:3, :3] @ centre
    to_source = np.linalg.inv(affine) @ oblique
    out = ndimage.affine_transform(array, to_source[:3, :3], to_source[:3, 3], order=order)
    return out, oblique


@pytest.mark.parametrize("storage", ["RAS", "LAS", "LPS", "oblique"])
def test_guard_gives_the_same_answer_for_every_storage_of_one_volume(storage):
    labels, body, affine = _two_heads()
    if storage == "oblique":
        stored, stored_affine = _oblique(labels, affine, order=0)
        stored_body, _ = _oblique(body.astype(np.uint8), affine, order=0)
    else:
        stored, stored_affine = _stored(labels, affine, storage)
        stored_body, _ = _stored(body, affine, storage)
    reference = check_laterality(labels, affine, NAMES, midline_x(body, affine))
    result = check_laterality(stored, stored_affine, NAMES, midline_x(stored_body, stored_affine))
    assert reference["status"] == result["status"] == "ok"
    (pair,) = result["pairs"]
    assert pair["left"] == "femoral_head_left" and pair["verdict"] == "ok"
    # Both heads sit 9.5 voxels (19 mm) from the centre: left at RAS x = −19 mm, right at +19 mm.
    assert pair["left_x_mm"] == pytest.approx(-19.0, abs=1.5)
    assert pair["right_x_mm"] == pytest.approx(19.0, abs=1.5)
    assert pair["midline_x_mm"] == pytest.approx(0.0, abs=1.5)

    swapped, _, _ = _two_heads(left_at_negative_x=False)
    swapped = _oblique(swapped, affine, order=0)[0] if storage == "oblique" else _stored(swapped, affine, storage)[0]
    result = check_laterality(swapped, stored_affine, NAMES, midline_x(stored_body, stored_affine))
    assert result["status"] == "swapped"
    assert "femoral_head_left (RAS x +1" in result["pairs"][0]["reason"]


def test_guard_uses_the_midline_when_both_structures_sit_on_one_side():
    labels, body, affine = _two_heads()
    shifted = np.zeros_like(labels)  # both heads at x > 0, the left one still left of its twin
    shifted[21:26, 14:19, 10:15] = LEFT  # centroid index 23: RAS x +7 mm
    shifted[31:36, 14:19, 10:15] = RIGHT
    assert check_laterality(shifted, affine, NAMES)["status"] == "ok"  # without a midline: nothing to see
    result = check_laterality(shifted, affine, NAMES, midline_x(body, affine))
    assert result["status"] == "swapped"
    assert result["pairs"][0]["reason"] == ("femoral_head_left (RAS x +7.0 mm) lies on the patient's right of "
                                            "the body midline (RAS x +0.0 mm)")


def test_missing_structure_is_not_checked_and_pairs_are_found_by_name():
    labels, _, affine = _two_heads()
    labels[labels == RIGHT] = 0
    result = check_laterality(labels, affine, NAMES)
    assert result["status"] == "not_checked"
    assert result["pairs"][0]["reason"] == "femoral_head_right not present"
    assert left_right_pairs({"kidney_L": 1, "kidney_R": 2, "lung_left": 3, "lung_right": 4, "lens_l": 5}) == [
        ("kidney_L", "kidney_R"), ("lung_left", "lung_right")]
    # The flip augmentation swaps the same pairs the guard checks.
    assert left_right_label_swaps({"kidney_l": 7, "kidney_r": 9, "bladder": 1}) == [(7, 9)]
    assert world_centroid(np.zeros(SHAPE, bool), affine) is None


def test_check_reports_a_dataset_whose_left_and_right_labels_are_swapped(phantom, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(phantom / "data", data)
    _, problems = check_dataset(data)
    assert problems == []
    path = data / "case_002" / "labels.nii.gz"
    image = nib.load(path)
    values = np.asarray(image.dataobj).copy()
    values[np.asarray(image.dataobj) == LEFT], values[np.asarray(image.dataobj) == RIGHT] = RIGHT, LEFT
    nib.save(nib.Nifti1Image(values, image.affine, image.header), path)
    _, problems = check_dataset(data)
    assert [(p.case_id, p.file) for p in problems] == [("case_002", "labels.nii.gz")]
    assert "left/right labels swapped: femoral_head_left (RAS x +" in problems[0].what
    assert "swap the *_left and *_right label values" in problems[0].fix
