"""``--dicom-grid``: the DICOM outputs of an oblique MR on an axial grid covering it, checked against
SimpleITK's own resampling of the NIfTI maps of the same run; the NIfTI MR's scanner row order."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from radmtl.cli import main
from radmtl.data.io import RAS_FROM_LPS
from radmtl.data.dicom.common import SlicePlanes
from radmtl.data.dicom.rtstruct import rasterise_rtstruct
from radmtl.data.phantom import PHANTOM_LABELS, generate_case
from radmtl.data.phantom.dicom import axial_affine, oblique_affine, phantom_mr_series
from radmtl.inference.dicom_grid import dicom_grid
from radmtl.nn.checkpoint import save_checkpoint

SHAPE = (28, 24, 16)
SPACING = (5.0, 4.5, 6.5)


@pytest.fixture(scope="module")
def oblique_run(tmp_path_factory, tiny_payload) -> Path:
    """``radmtl infer --dicom-grid axial`` on the oblique phantom MR series; the case folder."""
    root = tmp_path_factory.mktemp("dicom_grid")
    model = save_checkpoint(root / "model.pt", tiny_payload(seed=4))
    phantom_mr_series(root / "MR", 6, SHAPE, SPACING, orientation="oblique")
    assert main(["infer", "--no-review", "--model", str(model), "--input", str(root / "MR"), "--output", str(root / "out"),
                 "--no-progress", "--device", "cpu", "--dicom-grid", "axial"]) == 0
    return root / "out" / "MR"


def _ct(case: Path) -> tuple[sitk.Image, list[Path]]:
    files = sorted((case / "dicom").glob("CT_*.dcm"))
    return sitk.ReadImage([str(p) for p in files]), files


def _resampled(path: Path, reference: sitk.Image, interpolator, default: float = np.nan,
               square: bool = False) -> np.ndarray:
    """A NIfTI map resampled by SimpleITK onto ``reference`` (X, Y, Z); σ maps as variances with ``square``."""
    image = sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkFloat64)
    if square:
        image = image * image
    out = sitk.Resample(image, reference, sitk.Transform(), interpolator, default, sitk.sitkFloat64)
    return np.transpose(sitk.GetArrayFromImage(out))


def _inside_mr(case: Path, reference: sitk.Image) -> np.ndarray:
    """Voxel centres of ``reference`` inside the MR's voxels, by SimpleITK (NIfTI maps share the MR grid)."""
    ones = sitk.ReadImage(str(case / "seg.nii.gz")) * 0 + 1
    out = sitk.Resample(ones, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return np.transpose(sitk.GetArrayFromImage(out)) > 0


def test_oblique_mr_on_the_axial_grid_is_sct_resampled(oblique_run, dciodvfy):
    image, files = _ct(oblique_run)
    first = pydicom.dcmread(files[0])
    for path in files:
        ds = pydicom.dcmread(path)
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
        assert "SourceImageSequence" not in ds  # CT slice k is no MR slice
    assert "resampled onto an axial grid" in first.DerivationDescription

    # The grid covers every MR voxel (corners ± half a voxel), with less than one voxel to spare a side.
    mr_affine = oblique_affine(SHAPE, SPACING)
    corners = np.array(list(itertools.product(*[(-0.5, n - 0.5) for n in SHAPE])))
    mr_lps = (corners @ mr_affine[:3, :3].T + mr_affine[:3, 3]) * [-1, -1, 1]
    spacing, size = np.asarray(image.GetSpacing()), np.asarray(image.GetSize())
    low = np.asarray(image.GetOrigin()) - spacing / 2
    high = low + size * spacing
    assert np.all(mr_lps.min(0) >= low - 1e-6) and np.all(mr_lps.max(0) <= high + 1e-6)
    assert np.all(mr_lps.min(0) - low < spacing) and np.all(high - mr_lps.max(0) < spacing)
    assert tuple(image.GetSpacing()) == pytest.approx((5.0, 4.5, 6.5))  # the MR axes nearest to x, y, z
    assert image.GetSize() != SHAPE  # a larger box around the rotated one

    # The structure set on the axial grid: BODY, and the organs of seg.nii.gz by nearest neighbour.
    planes = SlicePlanes(row_cosines=np.array([1.0, 0, 0]), column_cosines=np.array([0, 1.0, 0]),
                         pixel_spacing=(spacing[1], spacing[0]), slice_step=np.array([0, 0, spacing[2]]),
                         origin=np.asarray(image.GetOrigin()))
    masks = rasterise_rtstruct(oblique_run / "dicom" / "RS_radmtl.dcm", planes, tuple(int(n) for n in size))
    seg = _resampled(oblique_run / "seg.nii.gz", image, sitk.sitkNearestNeighbor, 0)
    for name, value in PHANTOM_LABELS.items():
        if value and (seg == value).any():
            agree = np.mean(masks[name] == (seg == value))
            assert agree > 0.999, (name, agree)  # ties of nearest neighbour at most

    # HU: sct.nii.gz interpolated by SimpleITK at the axial voxel centres (within the rounding to whole
    # HU), clipped to the trained range, inside the body; air outside it and outside the MR's field of view.
    ct_hu = np.transpose(sitk.GetArrayFromImage(image)).astype(np.float64)
    inside = _inside_mr(oblique_run, image)
    assert 0.25 < inside.mean() < 0.6  # a rotated box in the box around it
    body = masks["BODY"]
    assert not np.any(body & ~inside) and body[inside].mean() > 0.95  # this field of view lies inside the patient
    assert np.all(ct_hu[~body] == -1024)
    expected = np.clip(_resampled(oblique_run / "sct.nii.gz", image, sitk.sitkLinear), -1024, 3071)
    # Integer storage rounds by up to 0.5 HU; radmtl interpolates in float32, SimpleITK here in float64,
    # which differ by up to a few thousandths of an HU at −800 HU (2.5e-3 seen).
    np.testing.assert_allclose(ct_hu[body], expected[body], atol=0.5 + 1e-2)
    provenance = json.loads((oblique_run / "provenance.json").read_text())["dicom"]
    assert provenance["grid"]["kind"] == "axial" and provenance["grid"]["shape"] == list(image.GetSize())
    assert provenance["air_outside_body_voxels"] == int((~body).sum())
    assert provenance["hu_clipped_to_range_voxels"] == int(np.sum(body & (np.abs(expected - _resampled(
        oblique_run / "sct.nii.gz", image, sitk.sitkLinear)) > 1e-3)))

    # σ beside the CT, on its grid: interpolated as variances, NaN outside the MR.
    sigma_path = oblique_run / "dicom_grid" / "sct_sigma_aleatoric.nii.gz"
    assert provenance["maps_on_grid"] == ["dicom_grid/sct_sigma_aleatoric.nii.gz"]
    sigma = nib.load(sigma_path)
    lps = np.eye(4)
    lps[:3, :3], lps[:3, 3] = np.diag(spacing), image.GetOrigin()
    np.testing.assert_allclose(sigma.affine, RAS_FROM_LPS @ lps, atol=1e-4)
    sigma_values = sigma.get_fdata()
    expected = np.sqrt(_resampled(oblique_run / "sct_sigma_aleatoric.nii.gz", image, sitk.sitkLinear, square=True))
    assert np.all(np.isnan(sigma_values[~inside]))
    np.testing.assert_allclose(sigma_values[inside], expected[inside], rtol=1e-4)

    dciodvfy([files[0], files[-1], oblique_run / "dicom" / "RS_radmtl.dcm"])


def test_an_axial_mr_keeps_its_grid_and_values():
    """An axial MR's own grid is the axial grid: no interpolation, every value where it was."""
    affine = axial_affine(SHAPE, SPACING)
    grid = dicom_grid("axial", affine, SHAPE, scanner_order=False)
    np.testing.assert_allclose(grid.affine, affine, atol=1e-9)
    assert grid.shape == SHAPE and grid.inside.all()
    values = generate_case(3, SHAPE, SPACING).ct_hu.astype(np.float32)
    np.testing.assert_allclose(grid.put(values), values, atol=1e-3)


@pytest.mark.parametrize("codes", [("R", "A", "S"), ("L", "P", "I"), ("A", "S", "R")])
def test_a_nifti_grid_is_put_in_the_scanners_order_voxels_unmoved(codes):
    from nibabel.orientations import axcodes2ornt, inv_ornt_aff, ornt_transform

    ras = generate_case(3, SHAPE, SPACING)
    transform = ornt_transform(axcodes2ornt(("R", "A", "S")), axcodes2ornt(codes))
    affine = ras.affine @ inv_ornt_aff(transform, SHAPE)
    array = nib.orientations.apply_orientation(ras.ct_hu, transform)
    grid = dicom_grid("input", affine, array.shape, scanner_order=True)
    lps = RAS_FROM_LPS @ grid.affine
    np.testing.assert_allclose(lps[:3, :3], np.diag([s for s in SPACING]), atol=1e-9)  # rows +x, columns +y
    put = grid.put(array)
    # every voxel keeps its world position: the value at a world point is the same before and after
    for ijk in ([0, 0, 0], [3, 5, 7], [27, 23, 15]):
        world = grid.affine @ [*ijk, 1]
        source = np.rint(np.linalg.solve(affine, world)[:3]).astype(int)
        assert put[tuple(ijk)] == array[tuple(source)]
    assert grid.describe()["reordered_from_input"] is True
    assert dicom_grid("input", affine, array.shape, scanner_order=False).put(array) is array  # DICOM MR: as is


def test_dicom_grid_without_dicom_output_is_refused(tmp_path, tiny_payload, capsys):
    model = save_checkpoint(tmp_path / "model.pt", tiny_payload(seed=4))
    case = generate_case(6, (16, 16, 12), (6.0, 6.0, 6.0))
    nib.save(nib.Nifti1Image(case.mr, case.affine), tmp_path / "pelvis.nii.gz")
    assert main(["infer", "--no-review", "--model", str(model), "--input", str(tmp_path / "pelvis.nii.gz"), "--output",
                 str(tmp_path / "out"), "--no-progress", "--device", "cpu", "--dicom-grid", "axial"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"radmtl infer: error: --dicom-grid axial: {tmp_path / 'pelvis.nii.gz'} is not DICOM, so nothing "
                   "is written as DICOM; add --dicom-out"]
    assert not (tmp_path / "out").exists()
