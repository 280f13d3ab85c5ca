"""radmtl infer on DICOM: phantom MR series → sCT CT series + RT Structure Set, and the refusals.

The round trip of issue 11: the sCT series read back with SimpleITK has the MR series' geometry, its HU
are those of the NIfTI sCT of the same run, the structure set rasterised onto the sCT grid matches
seg.nii.gz, the identifiers are the MR's, and every instance passes dciodvfy.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from radmtl.cli import main
from radmtl.data.dicom.common import RADMTL_UID_ROOT, SlicePlanes
from radmtl.data.dicom.rtstruct import rasterise_rtstruct
from radmtl.data.phantom import PHANTOM_LABELS, generate_case
from radmtl.data.phantom.dicom import phantom_mr_series
from radmtl.data.transforms import derive_body_mask
from radmtl.inference.model_uri import sha256_of
from radmtl.nn.checkpoint import save_checkpoint

SHAPE = (28, 24, 16)
SPACING = (5.0, 4.5, 6.5)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_payload) -> Path:
    # seed 4: an untrained network whose labels on this phantom include every organ
    return save_checkpoint(tmp_path_factory.mktemp("model") / "model.pt", tiny_payload(seed=4))


def _infer(model: Path, inp: Path, out: Path, *extra: str) -> int:  # review/ is tested in test_review_out.py
    return main(["infer", "--no-review", "--model", str(model), "--input", str(inp), "--output", str(out),
                 "--no-progress", "--device", "cpu", *extra])


def _planes_of(image: sitk.Image) -> SlicePlanes:
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    spacing = image.GetSpacing()
    return SlicePlanes(row_cosines=direction[:, 0], column_cosines=direction[:, 1],
                       pixel_spacing=(spacing[1], spacing[0]), slice_step=direction[:, 2] * spacing[2],
                       origin=np.asarray(image.GetOrigin()))


def _on_grid(image: sitk.Image, affine_ras: np.ndarray, shape: tuple[int, int, int],
             array: np.ndarray | None = None) -> np.ndarray:
    """``image`` (or ``array`` (X, Y, Z) on ``image``'s grid) by nearest neighbour on the RAS grid (``affine_ras``,
    ``shape``), with SimpleITK: where the two grids share their voxel centres, the values as they are."""
    if array is not None:
        values = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array)).astype(np.float32))
        values.CopyInformation(image)
        image = values
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_ras
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    reference = sitk.Image([int(n) for n in shape], sitk.sitkFloat32)
    reference.SetSpacing([float(s) for s in spacing])
    reference.SetDirection([float(v) for v in (lps[:3, :3] / spacing).ravel()])
    reference.SetOrigin([float(v) for v in lps[:3, 3]])
    resampled = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, np.nan, sitk.sitkFloat32)
    return np.transpose(sitk.GetArrayFromImage(resampled))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2.0 * np.logical_and(a, b).sum() / total


@pytest.mark.slow
@pytest.mark.parametrize("orientation", ["axial", "oblique"])
def test_dicom_round_trip(tmp_path, checkpoint, orientation, dciodvfy):
    mr_files = phantom_mr_series(tmp_path / "MR", 6, SHAPE, SPACING, orientation=orientation)
    assert _infer(checkpoint, tmp_path / "MR", tmp_path / "out") == 0
    case = tmp_path / "out" / "MR"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["MR"]  # no partial or scratch left
    dicom = case / "dicom"
    ct_files = sorted(dicom.glob("CT_*.dcm"))
    assert len(ct_files) == SHAPE[2]

    # Geometry: the sCT series has the MR series' grid.
    mr_image = sitk.ReadImage([str(p) for p in mr_files])
    ct_image = sitk.ReadImage([str(p) for p in ct_files])
    np.testing.assert_allclose(ct_image.GetOrigin(), mr_image.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(ct_image.GetSpacing(), mr_image.GetSpacing(), atol=1e-3)
    np.testing.assert_allclose(ct_image.GetDirection(), mr_image.GetDirection(), atol=1e-6)
    assert ct_image.GetSize() == mr_image.GetSize() == SHAPE

    # Organs: the structure set on the sCT grid (as read back) against seg.nii.gz, organ by organ.
    seg_nifti = nib.load(case / "seg.nii.gz")
    sct_nifti = nib.load(case / "sct.nii.gz")
    seg = np.asarray(seg_nifti.dataobj)
    rtstruct = dicom / "RS_radmtl.dcm"
    masks = rasterise_rtstruct(rtstruct, _planes_of(ct_image), SHAPE)
    assert list(masks) == ["BODY", *[n for n, v in PHANTOM_LABELS.items() if v]]
    present = 0
    for name, value in PHANTOM_LABELS.items():
        if value:
            present += bool((seg == value).any())
            assert _dice(masks[name], seg == value) >= 0.95, name
    assert present == 5  # no organ passes by being empty in both

    # HU: the NIfTI sCT of the same run inside the body (the BODY structure), air outside.
    provenance = json.loads((case / "provenance.json").read_text())
    ct_hu = np.transpose(sitk.GetArrayFromImage(ct_image)).astype(np.float32)
    body = masks["BODY"]
    # This 140 × 108 mm field of view lies inside the patient, so BODY is all of it (the outline used to
    # lose the first and last two slices and the edge columns); air outside a body: the test below.
    assert body.mean() >= 0.99
    # An untrained network predicts beyond the CT range in places: the series holds those clipped to the
    # trained range (data.ct_clip_hu) and provenance counts them.
    sct_hu = sct_nifti.get_fdata()[body]
    assert np.max(np.abs(ct_hu[body] - np.clip(sct_hu, -1024, 3071))) <= 1.0
    assert provenance["dicom"]["hu_clipped_to_range_voxels"] == int(((sct_hu < -1024) | (sct_hu > 3071)).sum())
    assert np.all(ct_hu[~body] == -1024)
    assert provenance["dicom"]["air_outside_body_voxels"] == int((~body).sum())
    assert provenance["dicom"]["hu_clipped_to_int16_voxels"] == 0
    assert provenance["dicom"]["identifiers"]["generated"] is False

    # Identifiers: the MR's patient, study and frame of reference; new series and instances.
    mr = pydicom.dcmread(mr_files[0])
    written = [pydicom.dcmread(p) for p in [*ct_files, rtstruct]]
    for ds in written:
        assert (ds.PatientID, ds.StudyInstanceUID, ds.FrameOfReferenceUID) == (
            mr.PatientID, mr.StudyInstanceUID, mr.FrameOfReferenceUID)
        assert ds.SeriesInstanceUID != mr.SeriesInstanceUID and ds.SOPInstanceUID.startswith(RADMTL_UID_ROOT)
    first = written[0]
    assert sha256_of(checkpoint)[:12] in first.SeriesDescription and "synthetic CT" in first.SeriesDescription
    assert mr.SeriesInstanceUID in first.DerivationDescription
    structure_set = written[-1]
    assert structure_set.Modality == "RTSTRUCT"
    series_ref = structure_set.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0] \
        .RTReferencedSeriesSequence[0]
    assert series_ref.SeriesInstanceUID == first.SeriesInstanceUID
    study_ref = structure_set.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    assert study_ref.ReferencedSOPInstanceUID == mr.StudyInstanceUID  # the study, not a series
    assert study_ref.ReferencedSOPClassUID == "1.2.840.10008.3.1.2.3.1"  # Detached Study Management
    # NIfTI outputs carry the same grid as the DICOM ones.
    np.testing.assert_allclose(seg_nifti.affine, sct_nifti.affine)

    # Image Type claims AXIAL only for transverse slices; no empty Laterality (a pelvis is not a paired
    # part: absent, with Image Laterality U); series numbers of this run, not a fixed 901/902.
    assert list(first.ImageType) == ["DERIVED", "SECONDARY", "AXIAL" if orientation == "axial" else "OTHER"]
    assert "Laterality" not in first and first.ImageLaterality == "U"
    assert (first.SeriesNumber, structure_set.SeriesNumber) == (provenance["dicom"]["series_numbers"]["ct"],
                                                                provenance["dicom"]["series_numbers"]["ct"] + 1)
    report = dciodvfy([*ct_files, rtstruct])
    assert report.count("CTImage") == SHAPE[2] and "RTStructureSet" in report
    assert "Laterality" not in report


def test_an_independent_reader_gets_the_organs_back_holes_included(tmp_path, checkpoint, plastimatch):
    """plastimatch rasterises the structure set of an oblique series onto the CT: seg.nii.gz, organ by organ."""
    from scipy import ndimage

    phantom_mr_series(tmp_path / "MR", 6, SHAPE, SPACING, orientation="oblique")
    assert _infer(checkpoint, tmp_path / "MR", tmp_path / "out") == 0
    case = tmp_path / "out" / "MR"
    seg_image = sitk.ReadImage(str(case / "seg.nii.gz"))
    seg = np.transpose(sitk.GetArrayFromImage(seg_image))

    def on_seg_grid(image: sitk.Image) -> np.ndarray:
        resampled = sitk.Resample(image, seg_image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        return np.transpose(sitk.GetArrayFromImage(resampled)) > 0

    dicom = case / "dicom"
    even_odd = plastimatch(dicom / "RS_radmtl.dcm", dicom, tmp_path / "xor")
    union = plastimatch(dicom / "RS_radmtl.dcm", dicom, tmp_path / "or", xor=False)
    assert sorted(even_odd) == sorted(["BODY", *(n for n, v in PHANTOM_LABELS.items() if v)])
    holes_filled_by_union = 0
    for name, value in PHANTOM_LABELS.items():
        if not value:
            continue
        organ = seg == value
        assert organ.sum() > 100, name
        assert _dice(on_seg_grid(even_odd[name]), organ) >= 0.98, name
        holes = sum(int((ndimage.binary_fill_holes(organ[:, :, k]) & ~organ[:, :, k]).sum())
                    for k in range(organ.shape[2]))
        holes_filled_by_union += int(holes > 0 and on_seg_grid(union[name]).sum() > organ.sum())
    # The untrained network's organs have holes, written as contours of their own: read as a union (the
    # reader's default) they are filled, so the even-odd agreement above is not for want of holes.
    assert holes_filled_by_union >= 3


@pytest.mark.slow
def test_dicom_out_from_nifti_has_generated_identifiers(tmp_path, checkpoint, dciodvfy, capsys):
    case = generate_case(6, SHAPE, SPACING)
    img = nib.Nifti1Image(case.mr, case.affine)
    nib.save(img, tmp_path / "pelvis.nii.gz")
    assert _infer(checkpoint, tmp_path / "pelvis.nii.gz", tmp_path / "a", "--dicom-out") == 0
    # A NIfTI MR does not say how the patient lay: HFS is assumed, and said so.
    assert "case pelvis: the MR does not say how the patient lay (PatientPosition, 0018,5100); the CT series " \
        "says HFS" in capsys.readouterr().err
    assert _infer(checkpoint, tmp_path / "pelvis.nii.gz", tmp_path / "b", "--dicom-out", "--patient-position",
                  "ffs") == 0

    runs = [sorted((tmp_path / run / "pelvis" / "dicom").glob("CT_*.dcm")) for run in ("a", "b")]
    image = sitk.ReadImage([str(p) for p in runs[0]])
    # The RAS-stored NIfTI is written in the scanners' order (rows to the patient's left, columns to the
    # posterior), not as NIfTI's −1\\0\\0\\0\\−1\\0, and every CT voxel is still where it is in sct.nii.gz.
    assert [float(v) for v in pydicom.dcmread(runs[0][0]).ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert image.GetSize() == SHAPE
    sct = nib.load(tmp_path / "a" / "pelvis" / "sct.nii.gz")
    body = derive_body_mask(case.mr) > 0
    expected = np.where(body, np.clip(sct.get_fdata(), -1024, 3071), -1024)
    np.testing.assert_allclose(_on_grid(image, sct.affine, SHAPE), expected, atol=0.5 + 1e-3)
    first, second = pydicom.dcmread(runs[0][0]), pydicom.dcmread(runs[1][0])
    assert first.PatientID.startswith("RADMTL-") and "generated" in first.PatientComments
    # The same MR file gives the same study and frame of reference; every run is a new series.
    assert (first.StudyInstanceUID, first.FrameOfReferenceUID) == (second.StudyInstanceUID, second.FrameOfReferenceUID)
    assert first.SeriesInstanceUID != second.SeriesInstanceUID
    assert "pelvis.nii.gz" in first.DerivationDescription
    provenance = json.loads((tmp_path / "a" / "pelvis" / "provenance.json").read_text())
    assert provenance["dicom"]["identifiers"]["generated"] is True
    assert provenance["dicom"]["patient_position"] == {"value": "HFS", "source": "assumed"}
    assert (first.PatientPosition, second.PatientPosition) == ("HFS", "FFS")
    provenance = json.loads((tmp_path / "b" / "pelvis" / "provenance.json").read_text())
    assert provenance["dicom"]["patient_position"] == {"value": "FFS", "source": "option"}
    dciodvfy([runs[0][0], tmp_path / "a" / "pelvis" / "dicom" / "RS_radmtl.dcm"])


def test_nifti_input_writes_no_dicom_by_default(tmp_path, checkpoint):
    case = generate_case(6, (16, 16, 12), (6.0, 6.0, 6.0))
    nib.save(nib.Nifti1Image(case.mr, case.affine), tmp_path / "pelvis.nii.gz")
    assert _infer(checkpoint, tmp_path / "pelvis.nii.gz", tmp_path / "out") == 0
    assert not (tmp_path / "out" / "pelvis" / "dicom").exists()


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("radmtl infer: error: ")
    return err[0]


def test_two_series_give_one_line_and_series_picks(tmp_path, checkpoint, capsys):
    phantom_mr_series(tmp_path / "in", 1, (16, 16, 12), series_description="T2 axial", series_instance_uid="1.2.3.1")
    phantom_mr_series(tmp_path / "in" / "b", 2, (16, 16, 10), orientation="oblique",
                      series_description="T2 oblique", series_instance_uid="1.2.3.2", series_number=2)
    assert _infer(checkpoint, tmp_path / "in", tmp_path / "out") == 1
    line = _one_error_line(capsys)
    assert '"T2 axial" (MR, 12 slices, UID 1.2.3.1)' in line and '"T2 oblique" (MR, 10 slices, UID 1.2.3.2)' in line
    assert not (tmp_path / "out").exists()

    assert _infer(checkpoint, tmp_path / "in", tmp_path / "out", "--series", "1.2.3.2") == 0
    assert len(list((tmp_path / "out" / "in" / "dicom").glob("CT_*.dcm"))) == 10


@pytest.mark.parametrize("problem, message", [
    ("not_dicom", "is a DICOM image"),
    ("single_slice", "has a single slice"),
    ("mixed_orientation", "mixes slice orientations"),
])
def test_bad_dicom_folders_give_one_line_and_no_output(tmp_path, checkpoint, capsys, problem, message):
    folder = tmp_path / "in"
    if problem == "not_dicom":
        folder.mkdir()
        (folder / "readme.txt").write_text("no images here")
    else:
        files = phantom_mr_series(folder, 1, (16, 16, 12))
        if problem == "single_slice":
            for path in files[1:]:
                path.unlink()
        else:
            ds = pydicom.dcmread(files[3])
            ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
            ds.save_as(files[3])
    assert _infer(checkpoint, folder, tmp_path / "out") == 1
    line = _one_error_line(capsys)
    assert message in line and str(folder) in line
    assert not (tmp_path / "out").exists()


def _write_outputs(tmp_path, sct_of=lambda case, body: case.ct_clean_hu, labels_of=lambda case: None,
                   spacing=SPACING, **options):
    """write_dicom_outputs on phantom case 6 (its MR as a NIfTI volume); (case, provenance entry, body)."""
    from radmtl.data.dicom.common import generated_identity
    from radmtl.data.io import Volume, write_volume
    from radmtl.inference.dicom_out import write_dicom_outputs

    case = generate_case(6, SHAPE, spacing)
    mr_path = tmp_path / "mr.nii.gz"
    write_volume(case.mr, case.affine, mr_path, np.float32)
    body = derive_body_mask(case.mr) > 0  # the body the writer derives from the MR
    entry = write_dicom_outputs(tmp_path / "dicom", sct_hu=sct_of(case, body), labels=labels_of(case),
                                label_names=PHANTOM_LABELS, volume=Volume(array=case.mr, affine=case.affine, path=mr_path),
                                identity=generated_identity("c1", mr_path), source=None, model_sha256="0" * 64,
                                hu_range=(-1024.0, 3071.0), case_id="c1", **options)
    return case, entry, body


def _series(folder: Path) -> sitk.Image:
    return sitk.ReadImage([str(p) for p in sorted(folder.glob("CT_*.dcm"))])


def test_sct_beyond_the_trained_ct_range_is_clipped_in_the_series_and_counted(tmp_path, caplog):
    spots = {}

    def sct_with_spikes(case, body):
        sct = case.ct_clean_hu.copy()
        inside = np.argwhere(body)
        spots["low"], spots["high"] = tuple(inside[len(inside) // 3]), tuple(inside[2 * len(inside) // 3])
        sct[spots["low"]], sct[spots["high"]] = -1931.0, 5000.0  # a weak model's void and spike in the patient
        return sct

    with caplog.at_level("WARNING", logger="radmtl.inference.dicom_out"):
        case, entry, _ = _write_outputs(tmp_path, sct_of=sct_with_spikes)
    assert entry["hu_clipped_to_range_voxels"] == 2 and entry["hu_range"] == [-1024.0, 3071.0]
    assert "case c1: 2 sCT voxel(s) inside the body lie outside the trained CT range [-1024, 3071] HU" in caplog.text
    ct_hu = _on_grid(_series(tmp_path / "dicom"), case.affine, SHAPE)
    assert ct_hu[spots["low"]] == -1024.0 and ct_hu[spots["high"]] == 3071.0
    assert ct_hu.min() >= -1024.0 and ct_hu.max() <= 3071.0


def test_air_outside_the_body_and_the_body_kept_to_the_end_slices(tmp_path):
    # A field of view wider than the patient (392 × 288 mm): air around the body, which fills every slice.
    case, entry, body = _write_outputs(tmp_path, spacing=(14.0, 12.0, 6.5))
    assert 0.3 < body.mean() < 0.9
    for k in (0, 1, -2, -1):  # the end slices, which closing used to erode away
        assert body[:, :, k].sum() >= 0.8 * body[:, :, 8].sum() > 0
    series = _series(tmp_path / "dicom")
    ct_hu = _on_grid(series, case.affine, SHAPE)
    assert np.all(ct_hu[~body] == -1024) and entry["air_outside_body_voxels"] == int((~body).sum())
    np.testing.assert_allclose(ct_hu[body], np.clip(np.rint(case.ct_clean_hu[body]), -1024, 3071), atol=0.5)
    # the phantom's own body (its generator's outline) is inside the written one
    assert np.all(body[case.mask > 0])
    masks = rasterise_rtstruct(tmp_path / "dicom" / "RS_radmtl.dcm", _planes_of(series), series.GetSize())
    np.testing.assert_array_equal(_on_grid(series, case.affine, SHAPE, masks["BODY"]) > 0, body)


def test_an_organ_not_found_is_left_out_of_the_structure_set_and_said(tmp_path, caplog, dciodvfy):
    def labels_without_prostate(case):
        return np.where(case.labels == PHANTOM_LABELS["prostate"], 0, case.labels).astype(np.uint8)

    with caplog.at_level("WARNING", logger="radmtl.inference.dicom_out"):
        case, entry, _ = _write_outputs(tmp_path, sct_of=lambda case, body: case.ct_clean_hu,
                                        labels_of=labels_without_prostate)
    # This small field of view (140 mm wide) cuts off the right femoral head as well.
    absent = [n for n, v in PHANTOM_LABELS.items() if v and (n == "prostate" or not (case.labels == v).any())]
    assert absent == ["prostate", "femoral_head_right"]
    assert entry["structures_not_found"] == absent
    assert "case c1: no voxel predicted for prostate, femoral_head_right; left out of the RT Structure Set" \
        in caplog.text
    ds = pydicom.dcmread(tmp_path / "dicom" / "RS_radmtl.dcm")
    names = [str(roi.ROIName) for roi in ds.StructureSetROISequence]
    assert names == ["BODY", "bladder", "rectum", "femoral_head_left"]
    # every structure written has contours (readers such as rt-utils fail on one without)
    assert all(len(roi.ContourSequence) > 0 for roi in ds.ROIContourSequence)
    dciodvfy([tmp_path / "dicom" / "RS_radmtl.dcm"])


@pytest.mark.parametrize("stored", ["FFS", None], ids=["mr-says-ffs", "mr-says-nothing"])
def test_patient_position_comes_from_the_mr_or_is_assumed_aloud(tmp_path, checkpoint, capsys, stored):
    mr_files = phantom_mr_series(tmp_path / "MR", 6, SHAPE, SPACING)
    for path in mr_files:
        ds = pydicom.dcmread(path)
        if stored is None:
            del ds.PatientPosition
        else:
            ds.PatientPosition = stored
        ds.save_as(path)
    assert _infer(checkpoint, tmp_path / "MR", tmp_path / "out") == 0
    err = capsys.readouterr().err
    ct = pydicom.dcmread(sorted((tmp_path / "out" / "MR" / "dicom").glob("CT_*.dcm"))[0])
    provenance = json.loads((tmp_path / "out" / "MR" / "provenance.json").read_text())["dicom"]
    if stored is None:
        assert ct.PatientPosition == "HFS" and provenance["patient_position"] == {"value": "HFS", "source": "assumed"}
        assert "the MR does not say how the patient lay" in err
    else:
        assert ct.PatientPosition == "FFS" and provenance["patient_position"] == {"value": "FFS", "source": "mr"}
        assert "PatientPosition" not in err
