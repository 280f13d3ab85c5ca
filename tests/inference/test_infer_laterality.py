"""``radmtl infer`` end to end on laterality: the RT Structure Set puts ``femoral_head_left`` at DICOM LPS
x > 0 whatever the input's storage, and the guard flags a model whose left/right labels are swapped.

The network here is untrained, so its segmentation is replaced by the truth (an oracle) on the input
grid, computed in the test from the phantom's NIfTI labels through raw world coordinates. Everything
after the network — resampling bookkeeping, the guard, provenance.json, the DICOM writers — is radmtl's
real code.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

import radmtl.inference.infer as infer_module
from radmtl.cli import main
from radmtl.nn.checkpoint import save_checkpoint

LEFT, RIGHT = 4, 5


@pytest.fixture(scope="module")
def phantom(laterality_phantom) -> Path:
    return laterality_phantom


def _checkpoint(tiny_payload, folder: Path, swapped: bool = False) -> Path:
    payload = tiny_payload()
    if swapped:  # a model trained on data whose left/right labels were swapped
        payload["label_names"]["femoral_head_left"], payload["label_names"]["femoral_head_right"] = RIGHT, LEFT
    return save_checkpoint(folder / "model.pt", payload)


def _truth_on(ras_affine: np.ndarray, shape: tuple[int, ...], labels: nib.Nifti1Image) -> np.ndarray:
    """The phantom's labels at the world points of a grid (nearest neighbour), via world RAS coordinates."""
    to_source = np.linalg.inv(labels.affine) @ ras_affine
    return ndimage.affine_transform(np.asarray(labels.dataobj), to_source[:3, :3], to_source[:3, 3],
                                    output_shape=shape, order=0)


def _oracle(monkeypatch, truth: np.ndarray) -> None:
    real = infer_module.input_grid_outputs

    def outputs(*args, **kwargs):
        for stem, array, dtype, units in real(*args, **kwargs):
            if stem == "seg":
                assert array.shape == truth.shape
                array = truth.copy()
            yield stem, array, dtype, units

    monkeypatch.setattr(infer_module, "input_grid_outputs", outputs)


def _roi_mean_lps(rtstruct: Path) -> dict[str, np.ndarray]:
    ds = pydicom.dcmread(rtstruct)
    names = {int(roi.ROINumber): str(roi.ROIName) for roi in ds.StructureSetROISequence}
    means = {}
    for roi in ds.ROIContourSequence:
        points = np.concatenate([np.asarray(c.ContourData, dtype=float).reshape(-1, 3)
                                 for c in roi.ContourSequence])
        means[names[int(roi.ReferencedROINumber)]] = points.mean(0)
    return means


def _infer(model: Path, inp: Path, out: Path) -> int:
    return main(["infer", "--model", str(model), "--input", str(inp), "--output", str(out), "--no-progress",
                 "--device", "cpu", "--dicom-out"])


def test_dicom_series_from_radmtl_phantom_gives_left_head_at_positive_lps_x(phantom, tiny_payload, tmp_path,
                                                                            monkeypatch, dicom_lps_grid):
    labels = nib.load(phantom / "data" / "case_001" / "labels.nii.gz")
    _, lps_affine = dicom_lps_grid(phantom / "dicom" / "case_001")
    _oracle(monkeypatch, _truth_on(np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps_affine, labels.shape, labels))
    assert _infer(_checkpoint(tiny_payload, tmp_path), phantom / "dicom" / "case_001", tmp_path / "out") == 0
    case = tmp_path / "out" / "case_001"
    means = _roi_mean_lps(case / "dicom" / "RS_radmtl.dcm")
    assert means["femoral_head_left"][0] > 40.0 and means["femoral_head_right"][0] < -40.0
    laterality = json.loads((case / "provenance.json").read_text())["laterality"]
    assert laterality["status"] == "ok"
    assert laterality["pairs"][0]["left_x_mm"] < -40.0 < 40.0 < laterality["pairs"][0]["right_x_mm"]


def _storages(mr: nib.Nifti1Image, labels: nib.Nifti1Image, storage: str) -> tuple[nib.Nifti1Image, np.ndarray]:
    """The phantom's MR stored LAS, LPS (flipped axes, same world points) or on an oblique grid (resampled),
    and the truth labels in that storage."""
    array, affine = np.asarray(mr.dataobj), mr.affine.copy()
    if storage == "oblique":
        rotation = Rotation.from_euler("xyz", (10.0, -6.0, 20.0), degrees=True).as_matrix()
        centre = (np.asarray(array.shape) - 1) / 2
        oblique = affine.copy()
        oblique[:3, :3] = rotation @ affine[:3, :3]
        oblique[:3, 3] = affine[:3, :3] @ centre + affine[:3, 3] - oblique[:3, :3] @ centre
        to_source = np.linalg.inv(affine) @ oblique
        stored = ndimage.affine_transform(array, to_source[:3, :3], to_source[:3, 3], order=1)
        return nib.Nifti1Image(stored.astype(np.float32), oblique), _truth_on(oblique, array.shape, labels)
    flips = {"LAS": (0,), "LPS": (0, 1)}[storage]
    for axis in flips:
        affine[:3, 3] = affine[:3, 3] + affine[:3, axis] * (array.shape[axis] - 1)
        affine[:3, axis] = -affine[:3, axis]
    stored = np.flip(array, flips).copy()
    assert nib.aff2axcodes(affine) == tuple(storage)
    return nib.Nifti1Image(stored, affine), _truth_on(affine, array.shape, labels)


@pytest.mark.parametrize("storage", ["LAS", "LPS", "oblique"])
def test_every_storage_of_the_same_patient_gives_the_same_side(phantom, tiny_payload, tmp_path, monkeypatch,
                                                               storage):
    mr = nib.load(phantom / "data" / "case_001" / "mr.nii.gz")
    labels = nib.load(phantom / "data" / "case_001" / "labels.nii.gz")
    image, truth = _storages(mr, labels, storage)
    (tmp_path / "in").mkdir()
    nib.save(image, tmp_path / "in" / "case_x.nii.gz")
    _oracle(monkeypatch, truth)
    assert _infer(_checkpoint(tiny_payload, tmp_path), tmp_path / "in", tmp_path / "out") == 0
    case = tmp_path / "out" / "case_x"
    means = _roi_mean_lps(case / "dicom" / "RS_radmtl.dcm")
    assert means["femoral_head_left"][0] > 40.0 and means["femoral_head_right"][0] < -40.0
    laterality = json.loads((case / "provenance.json").read_text())["laterality"]
    assert laterality["status"] == "ok"
    # The same world positions as the RAS-stored phantom's heads (oblique: within a voxel of resampling).
    left_ras = nib.affines.apply_affine(labels.affine, np.argwhere(np.asarray(labels.dataobj) == LEFT).mean(0))
    assert laterality["pairs"][0]["left_x_mm"] == pytest.approx(left_ras[0], abs=5.0)


def test_guard_flags_a_model_whose_left_and_right_labels_were_swapped(phantom, tiny_payload, tmp_path, monkeypatch,
                                                                      capsys):
    labels = nib.load(phantom / "data" / "case_001" / "labels.nii.gz")
    _oracle(monkeypatch, np.asarray(labels.dataobj).copy())
    data = phantom / "data" / "case_001"
    for swapped in (False, True):
        out = tmp_path / f"out_{swapped}"
        folder = tmp_path / f"model_{swapped}"
        folder.mkdir()
        model = _checkpoint(tiny_payload, folder, swapped)
        assert main(["infer", "--model", str(model), "--input", str(data / "mr.nii.gz"), "--output",
                     str(out), "--no-progress", "--device", "cpu"]) == 0
        printed = capsys.readouterr()  # the CLI's log handler writes warnings to stderr
        provenance = json.loads(next(out.glob("*/provenance.json")).read_text())
        warnings = [line for line in printed.err.splitlines() if "laterality check" in line]
        if not swapped:
            assert provenance["laterality"]["status"] == "ok"
            assert warnings == [] and "REVIEW laterality" not in printed.out
            continue
        assert provenance["laterality"]["status"] == "swapped"
        assert provenance["laterality"]["pairs"][0]["verdict"] == "swapped"
        (warning,) = warnings
        assert "laterality check failed: femoral_head_left (RAS x +" in warning
        assert "is not on the patient's left of femoral_head_right" in warning
        assert "lies on the patient's right of the body midline" in warning
        assert "REVIEW laterality" in printed.out
