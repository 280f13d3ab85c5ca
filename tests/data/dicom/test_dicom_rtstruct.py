"""Organs as an RT Structure Set: contours by hand, holes and islands, rasterised back, validity."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from radmtl.data.dicom.common import DicomIdentity
from radmtl.data.dicom.ct import write_ct_series
from radmtl.data.dicom.rtstruct import Roi, rasterise_rtstruct, slice_contours, write_rtstruct
from radmtl.data.phantom import PHANTOM_LABELS, generate_case
from radmtl.data.phantom.dicom import oblique_affine

SHAPE = (24, 22, 10)
SPACING = (4.0, 3.5, 5.0)
IDENTITY = DicomIdentity(patient_id="P-7", patient_name="Doe^Jane", study_instance_uid="1.2.826.0.1.7",
                         frame_of_reference_uid="1.2.826.0.1.8")


def test_a_two_by_two_square_is_an_octagon_through_the_pixel_edge_midpoints():
    mask = np.zeros((5, 5), bool)
    mask[1:3, 1:3] = True
    (contour,) = slice_contours(mask)
    expected = {(0.5, 1), (0.5, 2), (1, 2.5), (2, 2.5), (2.5, 2), (2.5, 1), (2, 0.5), (1, 0.5)}
    assert {tuple(p) for p in contour.tolist()} == expected


def test_a_ring_has_an_outline_and_a_hole_and_a_separate_island():
    mask = np.zeros((12, 12), bool)
    mask[1:8, 1:8] = True
    mask[3:6, 3:6] = False
    mask[10, 10] = True
    contours = slice_contours(mask)
    assert sorted(len(c) for c in contours) == [4, 8, 8]  # island diamond, outline and hole octagons
    assert slice_contours(np.zeros((4, 4), bool)) == []


def test_polygon_area_is_half_a_pixel_short_per_outline_and_over_per_hole():
    """The documented convention (docs/dicom.md): midpoint polygons cut each outline's pixel corners."""
    def area(points):  # shoelace, unsigned
        x, y = points[:, 0], points[:, 1]
        return abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2

    mask = np.zeros((16, 16), bool)
    mask[1:13, 1:13] = True  # 144 pixels
    mask[4:9, 4:9] = False  # a 25-pixel hole
    mask[6, 6] = True  # an island in the hole
    mask[14, 14] = True  # a single pixel: a diamond of half a pixel
    areas = sorted(area(c) for c in slice_contours(mask))
    assert areas == [0.5, 0.5, 24.5, 143.5]
    # even-odd: outline − hole + islands = pixels − ½ (3 outlines − 1 hole)
    assert 143.5 - 24.5 + 0.5 + 0.5 == mask.sum() - 0.5 * (3 - 1)


@pytest.fixture()
def written(tmp_path):
    case = generate_case(5, SHAPE, SPACING)
    ct = write_ct_series(case.ct_hu, oblique_affine(SHAPE, SPACING), tmp_path / "dicom", IDENTITY,
                         series_description="sCT", derivation_description="test")
    ring = np.zeros(SHAPE, bool)
    ring[3:15, 3:15, 2:5] = True
    ring[6:11, 6:11, 2:5] = False  # hole
    ring[8, 8, 2:5] = True  # island in the hole
    ring[18:20, 18:20, 3] = True  # separate island
    ring[21, 21, 3] = ring[22, 20, 3] = True  # touching only at a corner
    rois = [Roi("ring", ring), Roi("empty", np.zeros(SHAPE, bool))]
    rois += [Roi(name, case.labels == value) for name, value in PHANTOM_LABELS.items() if value]
    counts = write_rtstruct(rois, ct, IDENTITY, tmp_path / "dicom" / "RS.dcm", description="test model")
    return ct, rois, counts, tmp_path / "dicom" / "RS.dcm"


def test_structures_rasterise_back_to_the_masks(written):
    ct, rois, counts, path = written
    back = rasterise_rtstruct(path, ct.planes, SHAPE)
    assert list(back) == [roi.name for roi in rois]
    for roi in rois:
        np.testing.assert_array_equal(back[roi.name], roi.mask, err_msg=roi.name)
    assert counts["empty"] == 0
    # Outline, hole and inner island on 3 slices; on slice 3 also the island and the two corner-touching pixels.
    assert counts["ring"] == 3 * 3 + 1 + 2
    assert counts["bladder"] > 0


def test_structure_set_references_the_ct_series(written, dciodvfy):
    ct, rois, _, path = written
    ds = pydicom.dcmread(path)
    assert (ds.Modality, ds.PatientID, ds.StudyInstanceUID, ds.FrameOfReferenceUID) == (
        "RTSTRUCT", "P-7", "1.2.826.0.1.7", "1.2.826.0.1.8")
    study = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    series = study.RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == ct.series_instance_uid
    assert [i.ReferencedSOPInstanceUID for i in series.ContourImageSequence] == list(ct.sop_instance_uids)
    assert [r.ROIName for r in ds.StructureSetROISequence] == [roi.name for roi in rois]
    ring = ds.ROIContourSequence[0]
    assert {c.ContourImageSequence[0].ReferencedSOPInstanceUID for c in ring.ContourSequence} == {
        ct.sop_instance_uids[k] for k in (2, 3, 4)}
    assert "ContourSequence" not in ds.ROIContourSequence[1]  # the empty structure is listed, uncontoured
    assert [o.RTROIInterpretedType for o in ds.RTROIObservationsSequence][:2] == ["ORGAN", "ORGAN"]
    assert list(ds.ROIContourSequence[2].ROIDisplayColor) == [255, 215, 0]  # bladder
    dciodvfy([path])
