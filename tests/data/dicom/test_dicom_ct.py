"""The sCT as a DICOM CT series: geometry, HU, identifiers, UIDs, clipping, image type, laterality, series
numbers, validity (dciodvfy)."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from radmtl.data.io import RAS_FROM_LPS
from radmtl.data.dicom.common import (RADMTL_UID_ROOT, DicomError, DicomIdentity, SourceSeries,
                                      series_number_at)
from radmtl.data.dicom.ct import hu_to_stored, write_ct_series
from radmtl.data.phantom import generate_case
from radmtl.data.phantom.dicom import axial_affine, oblique_affine

SHAPE = (20, 18, 12)
SPACING = (5.0, 4.5, 6.5)
IDENTITY = DicomIdentity(patient_id="P-7", patient_name="Doe^Jane", study_instance_uid="1.2.826.0.1.7",
                         frame_of_reference_uid="1.2.826.0.1.8", study_id="S1", patient_position="FFS")


def _write(tmp_path, sct_hu, affine=None, identity=IDENTITY, **kwargs):
    affine = oblique_affine(SHAPE, SPACING) if affine is None else affine
    return write_ct_series(sct_hu, affine, tmp_path / "ct", identity,
                           series_description="radmtl sCT", derivation_description="from MR 1.2.3", **kwargs)


def test_series_reads_back_with_the_grid_and_hu(tmp_path, dciodvfy):
    sct_hu = generate_case(4, SHAPE, SPACING).ct_hu.astype(np.float32)
    ct = _write(tmp_path, sct_hu)

    image = sitk.ReadImage([str(p) for p in ct.files])
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    np.testing.assert_allclose(RAS_FROM_LPS @ lps, oblique_affine(SHAPE, SPACING), atol=1e-5)
    back = np.transpose(sitk.GetArrayFromImage(image))
    assert np.max(np.abs(back - sct_hu)) <= 0.5  # integer HU, rounded
    assert ct.clipped_voxels == 0
    dciodvfy(ct.files[:2])


def test_identifiers_uids_and_description(tmp_path):
    source = SourceSeries(series_instance_uid="1.2.3", series_description="T2", series_number="3",
                          sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
                          sop_instance_uids=tuple(f"1.2.3.{k}" for k in range(SHAPE[2])))
    ct = _write(tmp_path, np.zeros(SHAPE, np.float32), source=source)
    slices = [pydicom.dcmread(p) for p in ct.files]
    assert {(d.PatientID, str(d.PatientName), d.StudyInstanceUID, d.FrameOfReferenceUID) for d in slices} == {
        ("P-7", "Doe^Jane", "1.2.826.0.1.7", "1.2.826.0.1.8")}
    assert {d.SeriesInstanceUID for d in slices} == {ct.series_instance_uid}
    assert len({d.SOPInstanceUID for d in slices}) == SHAPE[2]
    assert all(d.SOPInstanceUID.startswith(RADMTL_UID_ROOT) for d in slices)
    assert ct.series_instance_uid.startswith(RADMTL_UID_ROOT)
    first = slices[0]
    assert (first.Modality, list(first.ImageType)[:2], first.PatientPosition) == ("CT", ["DERIVED", "SECONDARY"], "FFS")
    assert (first.RescaleSlope, first.RescaleIntercept, first.PixelRepresentation) == (1, -1024, 1)
    assert first.DerivationDescription == "from MR 1.2.3"
    assert [d.SourceImageSequence[0].ReferencedSOPInstanceUID for d in slices[:2]] == ["1.2.3.0", "1.2.3.1"]
    assert first.pixel_array.dtype == np.int16 and np.all(first.pixel_array == 1024)  # 0 HU


def test_values_outside_int16_are_clipped_and_counted():
    stored, clipped = hu_to_stored(np.array([-1024.0, 0.4, 3071.0, 40000.0, -40000.0]))
    np.testing.assert_array_equal(stored, [0, 1024, 4095, 32767, -32768])
    assert clipped == 2


def test_non_finite_sct_is_refused(tmp_path):
    sct = np.zeros(SHAPE, np.float32)
    sct[1, 2, 3] = np.nan
    with pytest.raises(DicomError, match="NaN or Inf"):
        _write(tmp_path, sct)
    assert not (tmp_path / "ct").exists()


@pytest.mark.parametrize("grid, value3", [
    ("axial", "AXIAL"),
    ("oblique", "OTHER"),  # rows and columns out of the transverse plane: not AXIAL
    ("coronal", "OTHER"),
    ("tilted-in-plane", "AXIAL"),  # rotated about the feet-head axis only: still transverse slices
])
def test_image_type_says_axial_only_for_transverse_slices(tmp_path, grid, value3):
    from scipy.spatial.transform import Rotation

    affine = axial_affine(SHAPE, SPACING) if grid == "axial" else oblique_affine(SHAPE, SPACING)
    if grid in ("coronal", "tilted-in-plane"):
        affine = axial_affine(SHAPE, SPACING)
        turn = Rotation.from_euler("x" if grid == "coronal" else "z", 90 if grid == "coronal" else 30,
                                   degrees=True).as_matrix()
        affine[:3, :3] = turn @ affine[:3, :3]
    ct = _write(tmp_path, np.zeros(SHAPE, np.float32), affine=affine)
    ds = pydicom.dcmread(ct.files[0])
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY", value3]


def _unpaired_and_left(tmp_path):
    unpaired = _write(tmp_path / "a", np.zeros(SHAPE, np.float32))
    left = dataclasses.replace(IDENTITY, image_laterality="L", body_part_examined="BREAST")
    return unpaired.files[0], _write(tmp_path / "b", np.zeros(SHAPE, np.float32), identity=left).files[0]


def test_laterality_is_absent_for_an_unpaired_part_and_carried_for_a_side(tmp_path):
    unpaired, paired = (pydicom.dcmread(p) for p in _unpaired_and_left(tmp_path))
    # An empty Laterality means "unknown"; for an unpaired body part it must be absent (dciodvfy warns).
    assert "Laterality" not in unpaired and unpaired.ImageLaterality == "U" and "BodyPartExamined" not in unpaired
    # the side goes to Image Laterality; with it present, Laterality must be absent (type 2C)
    assert ("Laterality" in paired, paired.ImageLaterality, paired.BodyPartExamined) == (False, "L", "BREAST")


def test_laterality_and_other_pass_dciodvfy(tmp_path, dciodvfy):
    report = dciodvfy(_unpaired_and_left(tmp_path))  # oblique grids: ImageType ...\OTHER
    assert "Laterality" not in report
    # OTHER is not among the CT Image module's defined terms: a warning, not an error
    assert "Warning - Unrecognized defined term <OTHER> for value 3 of attribute <Image Type>" in report


def test_series_numbers_differ_between_runs_and_grow_with_time(tmp_path):
    epoch = datetime(2024, 1, 1, tzinfo=timezone.utc)
    assert series_number_at(epoch + timedelta(seconds=10)) == 10
    assert series_number_at(epoch + timedelta(days=1, seconds=1)) == 86401
    assert series_number_at(datetime(2092, 1, 1, tzinfo=timezone.utc)) < 2**31  # DICOM IS, a signed 32-bit int
    before = series_number_at(datetime.now())
    ct = _write(tmp_path, np.zeros(SHAPE, np.float32))
    after = series_number_at(datetime.now())
    numbers = {int(pydicom.dcmread(p).SeriesNumber) for p in ct.files}
    assert len(numbers) == 1 and before <= numbers.pop() <= after
    assert int(pydicom.dcmread(_write(tmp_path / "b", np.zeros(SHAPE, np.float32), series_number=7).files[0])
               .SeriesNumber) == 7
