"""Reading an MR series from a DICOM folder: geometry (axial, oblique), series choice, refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from radmtl.data.io import RAS_FROM_LPS
from radmtl.data.dicom.common import DicomError, grid_to_planes, planes_to_affine
from radmtl.data.dicom.series import read_series, select_series
from radmtl.data.phantom import generate_case
from radmtl.data.phantom.dicom import axial_affine, oblique_affine, phantom_mr_series, write_mr_series

SHAPE = (20, 18, 12)
SPACING = (5.0, 4.5, 6.5)


def _sitk_affine_ras(image: sitk.Image) -> np.ndarray:
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    return RAS_FROM_LPS @ lps


@pytest.mark.parametrize("orientation", ["axial", "oblique"])
def test_phantom_series_reads_back_on_its_grid(tmp_path, orientation):
    files = phantom_mr_series(tmp_path / "mr", 3, SHAPE, SPACING, orientation=orientation)
    expected = axial_affine(SHAPE, SPACING) if orientation == "axial" else oblique_affine(SHAPE, SPACING)

    mr = read_series(select_series(tmp_path / "mr"))

    assert mr.volume.shape == SHAPE
    # Positions are written as 6-decimal strings: 1e-3 mm is the tolerance, 1e-5 what is lost.
    np.testing.assert_allclose(mr.volume.affine, expected, atol=1e-5)
    phantom = generate_case(3, SHAPE, SPACING).mr[::-1, ::-1, :]
    np.testing.assert_array_equal(mr.volume.array, np.rint(phantom))
    # SimpleITK's own reading of the same files agrees on the grid (it is what the tests read CT with).
    image = sitk.ReadImage([str(p) for p in files])
    np.testing.assert_allclose(_sitk_affine_ras(image), expected, atol=1e-5)
    assert mr.identity.patient_id == "PHANTOM001"
    assert mr.identity.frame_of_reference_uid == str(pydicom.dcmread(files[0]).FrameOfReferenceUID)
    assert mr.source.sop_instance_uids == tuple(str(pydicom.dcmread(f).SOPInstanceUID) for f in files)


def test_laterality_and_body_part_of_the_mr_are_kept(tmp_path):
    files = phantom_mr_series(tmp_path / "mr", 3, SHAPE, SPACING)
    assert read_series(select_series(tmp_path / "mr")).identity.image_laterality == ""  # the phantom says none
    for path in files:
        ds = pydicom.dcmread(path)
        ds.Laterality, ds.BodyPartExamined = "R", "BREAST"
        ds.save_as(path)
    identity = read_series(select_series(tmp_path / "mr")).identity
    assert (identity.image_laterality, identity.body_part_examined) == ("R", "BREAST")


def test_world_position_of_a_voxel_is_lps_of_the_ras_affine():
    """Voxel (2, 3, 4) of the axial grid: RAS affine · ijk, then x and y negated, is the DICOM position."""
    affine = axial_affine(SHAPE, SPACING)
    planes = grid_to_planes(affine)
    ras = affine @ [2, 3, 4, 1]
    np.testing.assert_allclose(planes.to_lps(np.array([[2, 3, 4]]))[0], [-ras[0], -ras[1], ras[2]])
    # Axial: columns run to the patient's left (+x LPS), rows to the posterior (+y LPS).
    np.testing.assert_allclose(planes.orientation(), [1, 0, 0, 0, 1, 0])
    assert planes.pixel_spacing == (4.5, 5.0)  # (between rows, between columns)
    np.testing.assert_allclose(planes_to_affine(planes), affine)


def test_slices_are_sorted_along_the_normal_whatever_the_file_names(tmp_path):
    files = phantom_mr_series(tmp_path / "mr", 3, SHAPE, SPACING)
    for k, path in enumerate(files):  # reverse the name order
        path.rename(path.with_name(f"z_{len(files) - k:03d}.dcm"))
    series = select_series(tmp_path / "mr")
    z = [float(pydicom.dcmread(p).ImagePositionPatient[2]) for p in series.files]
    assert z == sorted(z)
    np.testing.assert_allclose(read_series(series).volume.affine, axial_affine(SHAPE, SPACING), atol=1e-5)


def _two_series(folder: Path) -> tuple[str, str]:
    phantom_mr_series(folder, 1, SHAPE, SPACING, series_description="T2 axial", series_instance_uid="1.2.3.1")
    case = generate_case(2, (16, 16, 9), SPACING)
    write_mr_series(case.mr, axial_affine((16, 16, 9), SPACING), folder / "second",
                    series_description="T1 oblique", series_instance_uid="1.2.3.2", series_number=2)
    return "1.2.3.1", "1.2.3.2"


def test_two_series_are_listed_in_one_line_and_series_picks_one(tmp_path):
    first, second = _two_series(tmp_path)
    with pytest.raises(DicomError) as err:
        select_series(tmp_path)
    message = str(err.value)
    assert "\n" not in message
    assert "2 MR series found, pick one with --series UID" in message
    assert f'"T2 axial" (MR, 12 slices, UID {first})' in message
    assert f'"T1 oblique" (MR, 9 slices, UID {second})' in message

    assert len(select_series(tmp_path, second).files) == 9
    with pytest.raises(DicomError, match=r"no series with UID 9\.9; found: .*T2 axial.*T1 oblique"):
        select_series(tmp_path, "9.9")


def test_a_folder_without_dicom_files_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "scan.raw").write_bytes(b"\0" * 400)
    with pytest.raises(DicomError, match=r"none of its 2 file\(s\) is a DICOM image .*pass a folder of DICOM"):
        select_series(tmp_path)


def test_a_single_slice_series_is_refused(tmp_path):
    phantom_mr_series(tmp_path, 1, SHAPE, SPACING)
    for path in sorted(tmp_path.iterdir())[1:]:
        path.unlink()
    with pytest.raises(DicomError, match="has a single slice; radmtl needs a 3D series"):
        select_series(tmp_path)


def test_mixed_orientations_are_refused(tmp_path):
    files = phantom_mr_series(tmp_path, 1, SHAPE, SPACING)
    ds = pydicom.dcmread(files[5])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # a coronal slice in the axial series
    ds.save_as(files[5])
    with pytest.raises(DicomError, match=rf"mixes slice orientations \({files[5].name}"):
        select_series(tmp_path)


def test_a_missing_slice_is_refused_not_resampled(tmp_path):
    files = phantom_mr_series(tmp_path, 1, SHAPE, SPACING)
    files[6].unlink()
    with pytest.raises(DicomError, match=r"slice gaps are not uniform \(6\.500 to 13\.000 mm.*refuses rather than"):
        select_series(tmp_path)


def test_two_slices_at_one_position_are_refused(tmp_path):
    files = phantom_mr_series(tmp_path, 1, SHAPE, SPACING)
    ds = pydicom.dcmread(files[4])
    ds.ImagePositionPatient = pydicom.dcmread(files[3]).ImagePositionPatient
    ds.save_as(files[4])
    with pytest.raises(DicomError, match="lie at the same position"):
        select_series(tmp_path)


def test_a_non_mr_series_is_not_run(tmp_path):
    files = phantom_mr_series(tmp_path, 1, SHAPE, SPACING, series_instance_uid="1.2.3.7")
    for path in files:
        ds = pydicom.dcmread(path)
        ds.Modality = "CT"
        ds.save_as(path)
    with pytest.raises(DicomError, match=r"no MR series found \(found: .*CT, 12 slices, UID 1\.2\.3\.7"):
        select_series(tmp_path)
    with pytest.raises(DicomError, match="is CT, not MR"):
        select_series(tmp_path, "1.2.3.7")
