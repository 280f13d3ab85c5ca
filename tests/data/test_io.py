from __future__ import annotations

import gzip
import os

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from radmtl.data import io
from radmtl.data.io import VolumeError, read_volume, write_like, write_volume
from radmtl.data.atomic import atomic_path
from radmtl.data.grid import Grid, grid_mismatch


def _affine(kind: str) -> np.ndarray:
    if kind == "ras":
        a = np.diag([1.0, 1.0, 1.0, 1.0])
    elif kind == "lps":
        a = np.diag([-1.0, -1.0, 1.0, 1.0])
    elif kind == "anisotropic":
        a = np.diag([0.7, 1.3, 3.0, 1.0])
    elif kind == "oblique":
        t = np.deg2rad(17.0)
        rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
        a = np.eye(4)
        a[:3, :3] = rot @ np.diag([0.9, 1.1, 2.5])
    else:
        raise AssertionError(kind)
    a[:3, 3] = [-12.5, 30.25, 7.0]
    return a


def _write_int16_ct(path, affine, qform_code=1, sform_code=2):
    # An int16 CT with scaling in its header: the trap write_like must not fall into.
    data = np.arange(7 * 6 * 5, dtype=np.int16).reshape(7, 6, 5) - 100
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=qform_code)
    img.set_sform(affine, code=sform_code)
    img.header.set_data_dtype(np.int16)
    img.header.set_slope_inter(2.0, -1024.0)
    nib.save(img, str(path))
    return data.astype(np.float32) * 2.0 - 1024.0


@pytest.mark.parametrize("kind", ["ras", "lps", "anisotropic", "oblique"])
def test_write_like_preserves_grid_codes_and_dtype(tmp_path, kind):
    affine = _affine(kind)
    expected_hu = _write_int16_ct(tmp_path / "ct.nii.gz", affine)
    ref = read_volume(tmp_path / "ct.nii.gz")
    np.testing.assert_allclose(ref.array, expected_hu)  # scaling applied on read

    sigma = np.full(ref.shape, 12.345, dtype=np.float64)
    write_like(sigma, ref, tmp_path / "sigma.nii.gz", np.float32)
    labels = (np.arange(np.prod(ref.shape)) % 6).reshape(ref.shape)
    write_like(labels, ref, tmp_path / "seg.nii.gz", np.uint8)

    for name, dtype, values in (("sigma", np.float32, sigma), ("seg", np.uint8, labels)):
        out = nib.load(str(tmp_path / f"{name}.nii.gz"))
        assert out.shape == ref.shape
        np.testing.assert_allclose(out.affine, affine, atol=1e-4)
        assert int(out.header["qform_code"]) == 1
        assert int(out.header["sform_code"]) == 2
        assert out.get_data_dtype() == np.dtype(dtype)
        assert out.dataobj.slope in (1.0, None) and out.dataobj.inter in (0.0, None)
        np.testing.assert_allclose(np.asanyarray(out.dataobj), values.astype(dtype), rtol=1e-6)


def test_write_like_rejects_wrong_shape_and_out_of_range(tmp_path):
    ref = io.Volume(array=np.zeros((4, 4, 4), np.float32), affine=np.eye(4))
    with pytest.raises(VolumeError, match="does not match the reference grid"):
        write_like(np.zeros((4, 4, 3)), ref, tmp_path / "x.nii.gz", np.float32)
    with pytest.raises(VolumeError, match="outside the range of uint8"):
        write_like(np.full((4, 4, 4), 300), ref, tmp_path / "x.nii.gz", np.uint8)
    assert not (tmp_path / "x.nii.gz").exists()


def test_write_4d_probabilities_on_grid(tmp_path):
    affine = _affine("oblique")
    probs = np.random.default_rng(0).random((5, 4, 3, 6)).astype(np.float32)
    write_volume(probs, affine, tmp_path / "p.nii.gz", np.float32)
    out = nib.load(str(tmp_path / "p.nii.gz"))
    assert out.shape == (5, 4, 3, 6)
    np.testing.assert_allclose(out.affine, affine, atol=1e-4)


def test_nii_gz_is_a_standard_gzip_of_the_nii_bytes_written_by_isal(tmp_path):
    """The fast compressor (ISA-L) writes an ordinary gzip stream: stdlib gzip unpacks it to exactly the
    bytes of the same map written as .nii, and the stream carries no time stamp (same maps, same file)."""
    assert io.GZIP_COMPRESSOR == "isal"  # a dependency: without it every .nii.gz costs ~10× the CPU
    affine = _affine("oblique")
    sct = np.random.default_rng(1).normal(0, 300, (9, 7, 5)).astype(np.float32)
    write_volume(sct, affine, tmp_path / "sct.nii", np.float32)
    write_volume(sct, affine, tmp_path / "sct.nii.gz", np.float32)
    packed = (tmp_path / "sct.nii.gz").read_bytes()
    assert packed[:2] == b"\x1f\x8b" and packed[4:8] == b"\x00\x00\x00\x00"  # gzip magic, MTIME 0
    assert gzip.decompress(packed) == (tmp_path / "sct.nii").read_bytes()
    back = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "sct.nii.gz")))
    np.testing.assert_array_equal(back.transpose(2, 1, 0), sct)
    write_volume(sct, affine, tmp_path / "again.nii.gz", np.float32)
    assert (tmp_path / "again.nii.gz").read_bytes() == packed


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "sct.nii.gz"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed mid-write")
    assert os.listdir(tmp_path) == []


def test_atomic_write_does_not_touch_existing_file_until_done(tmp_path):
    target = tmp_path / "sct.nii.gz"
    target.write_bytes(b"old")
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
        assert target.read_bytes() == b"old"
        assert tmp.name.endswith(".nii.gz") and tmp.name.startswith(".")
    assert target.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["sct.nii.gz"]


def test_read_errors_are_one_line_and_name_the_file(tmp_path):
    with pytest.raises(VolumeError, match="missing.nii.gz: file not found"):
        read_volume(tmp_path / "missing.nii.gz")
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(gzip.compress(b"\x00" * 100))
    with pytest.raises(VolumeError, match="corrupt.nii.gz: cannot read as NIfTI"):
        read_volume(corrupt)
    four_d = tmp_path / "four.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3, 2), np.float32), np.eye(4)), str(four_d))
    with pytest.raises(VolumeError, match=r"expected a 3D image, got 4D"):
        read_volume(four_d)
    with pytest.raises(VolumeError, match="unsupported file type"):
        read_volume(_touch(tmp_path / "x.png"))


@pytest.mark.parametrize("qform_code", [1, 0], ids=["qform-only", "no-qform-no-sform"])
def test_a_zero_voxel_size_without_sform_is_refused_not_read_as_1_mm(tmp_path, qform_code, zero_voxel_nifti):
    path = zero_voxel_nifti(tmp_path / "mr.nii.gz", np.ones((8, 8, 4)), np.diag([2.0, 2.5, 3.0, 1.0]), qform_code)
    assert nib.load(str(path)).header.get_zooms() == (2.0, 1.0, 3.0)  # what nibabel hands a reader
    with pytest.raises(VolumeError, match=r"mr.nii.gz: voxel size pixdim\[1:4\] = \[2.0, 0.0, 3.0\] has a zero"):
        read_volume(path)
    # With an sform the affine does not come from pixdim: the image is read, at the sform's voxel size.
    image = nib.Nifti1Image(np.ones((8, 8, 4), np.float32), np.diag([2.0, 2.5, 3.0, 1.0]))
    image.header["pixdim"][2] = 0.0
    nib.save(image, str(tmp_path / "sform.nii.gz"))
    np.testing.assert_allclose(read_volume(tmp_path / "sform.nii.gz").affine.diagonal(), [2.0, 2.5, 3.0, 1.0])


def test_a_complex_image_is_refused_not_silently_made_real(tmp_path):
    data = (np.ones((4, 4, 3)) + 2j * np.ones((4, 4, 3))).astype(np.complex64)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / "mr.nii.gz"))
    with pytest.raises(VolumeError, match=r"mr.nii.gz: complex-valued voxels \(complex64\)"):
        read_volume(tmp_path / "mr.nii.gz")


def _touch(path):
    path.write_bytes(b"x")
    return path


def test_single_volume_4d_is_accepted(tmp_path):
    path = tmp_path / "one.nii"
    nib.save(nib.Nifti1Image(np.ones((3, 4, 5, 1), np.float32), np.eye(4)), str(path))
    assert read_volume(path).shape == (3, 4, 5)



@pytest.mark.parametrize("suffix", [".nii.gz", ".mha"])
def test_channels_read_gives_back_a_written_4d_volume_and_a_3d_file_as_one_channel(tmp_path, suffix):
    affine = np.diag([2.0, 3.0, 4.0, 1.0])
    affine[:3, 3] = [5.0, -6.0, 7.0]
    # Distinct sizes on every axis: a transposed or shuffled axis cannot pass.
    array = np.random.default_rng(2).random((5, 6, 7, 3)).astype(np.float32)
    path = write_volume(array, affine, tmp_path / f"samples{suffix}", np.float32)
    volume = read_volume(path, channels=True)
    np.testing.assert_array_equal(volume.array, array)
    np.testing.assert_allclose(volume.affine, affine, atol=1e-5)
    assert volume.shape == (5, 6, 7)
    with pytest.raises(VolumeError, match="expected a 3D image|components per voxel"):
        read_volume(path)  # a plain read still wants one volume
    single = write_volume(array[..., 0], affine, tmp_path / f"one{suffix}", np.float32)
    assert read_volume(single, channels=True).array.shape == (5, 6, 7, 1)

def test_mha_read_matches_nifti_world_geometry(tmp_path):
    array_xyz = np.random.default_rng(1).random((6, 5, 4)).astype(np.float32)
    img = sitk.GetImageFromArray(np.transpose(array_xyz))  # sitk wants (z, y, x)
    img.SetSpacing((0.8, 1.2, 2.0))
    img.SetOrigin((10.0, -20.0, 5.0))  # LPS
    sitk.WriteImage(img, str(tmp_path / "mr.mha"))
    vol = read_volume(tmp_path / "mr.mha")
    np.testing.assert_allclose(vol.array, array_xyz)
    # LPS origin (10, -20, 5) is RAS (-10, 20, 5); LPS identity direction flips x and y in RAS.
    np.testing.assert_allclose(vol.affine[:3, 3], [-10.0, 20.0, 5.0])
    np.testing.assert_allclose(np.diag(vol.affine)[:3], [-0.8, -1.2, 2.0])


def test_grid_mismatch_names_the_difference():
    base = Grid.from_affine((4, 4, 4), np.eye(4))
    assert grid_mismatch(base, base) is None
    assert "shape" in grid_mismatch(Grid.from_affine((4, 4, 5), np.eye(4)), base)
    assert "spacing" in grid_mismatch(Grid.from_affine((4, 4, 4), np.diag([1, 1, 2, 1.0])), base)
    shifted = np.eye(4)
    shifted[:3, 3] = [0, 0, 1]
    assert "origin" in grid_mismatch(Grid.from_affine((4, 4, 4), shifted), base)
    flipped = np.diag([-1.0, 1, 1, 1])
    assert "direction" in grid_mismatch(Grid.from_affine((4, 4, 4), flipped), base)


# --- writing .mha/.nrrd ---------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
@pytest.mark.parametrize("kind", ["ras", "lps", "anisotropic", "oblique"])
def test_itk_write_read_round_trip_keeps_affine_values_and_dtype(tmp_path, suffix, kind):
    affine = _affine(kind)
    values = np.random.default_rng(2).normal(0.0, 300.0, (7, 6, 5))
    labels = (np.arange(7 * 6 * 5) % 6).reshape(7, 6, 5)
    write_volume(values, affine, tmp_path / f"sct{suffix}", np.float32)
    write_volume(labels, affine, tmp_path / f"seg{suffix}", np.uint8)
    for name, values_on_disk, pixel in (("sct", values.astype(np.float32), "32-bit float"),
                                        ("seg", labels, "8-bit unsigned integer")):
        back = read_volume(tmp_path / f"{name}{suffix}")
        np.testing.assert_allclose(back.affine, affine, atol=1e-6)
        np.testing.assert_array_equal(back.array, values_on_disk)
        assert sitk.ReadImage(str(tmp_path / f"{name}{suffix}")).GetPixelIDTypeAsString() == pixel
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"sct{suffix}", f"seg{suffix}"]  # no temporaries


def test_mha_input_written_back_as_mha_keeps_itk_origin_spacing_direction(tmp_path):
    """A SynthRAD2025-like .mha (LPS, oblique) → read → write_like(.mha): ITK sees the same geometry."""
    t = np.deg2rad(11.0)
    direction = np.array([[np.cos(t), 0, np.sin(t)], [0, 1, 0], [-np.sin(t), 0, np.cos(t)]])  # about y
    img = sitk.GetImageFromArray(np.random.default_rng(3).random((5, 4, 6)).astype(np.float32))
    img.SetSpacing((0.977, 1.25, 3.0))
    img.SetOrigin((-201.5, -168.25, 92.0))
    img.SetDirection(direction.ravel().tolist())
    sitk.WriteImage(img, str(tmp_path / "mr.mha"))
    mr = read_volume(tmp_path / "mr.mha")
    write_like(np.full(mr.shape, -1000.0), mr, tmp_path / "out" / "sct.mha", np.float32)
    out = sitk.ReadImage(str(tmp_path / "out" / "sct.mha"))
    np.testing.assert_allclose(out.GetOrigin(), img.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(out.GetSpacing(), img.GetSpacing(), atol=1e-9)
    np.testing.assert_allclose(out.GetDirection(), img.GetDirection(), atol=1e-12)
    assert out.GetSize() == img.GetSize()
    assert b"CompressedData = True" in (tmp_path / "out" / "sct.mha").read_bytes()[:400]


def test_mha_vector_image_holds_one_component_per_class(tmp_path):
    probs = np.random.default_rng(4).random((4, 3, 2, 3)).astype(np.float32)
    write_volume(probs, _affine("oblique"), tmp_path / "p.mha", np.float32)
    img = sitk.ReadImage(str(tmp_path / "p.mha"))
    assert img.GetSize() == (4, 3, 2) and img.GetNumberOfComponentsPerPixel() == 3
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img)[1, 2, 3], probs[3, 2, 1])  # (z, y, x, c)


def test_write_like_refuses_two_file_formats(tmp_path):
    with pytest.raises(VolumeError, match=r"x\.mhd: cannot write this file type; name it"):
        write_volume(np.zeros((2, 2, 2)), np.eye(4), tmp_path / "x.mhd", np.float32)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("fmt, input_name, expected", [
    ("auto", "mr.mha", ".mha"),
    ("auto", "MR.MHD", ".mha"),
    ("auto", "mr.nrrd", ".nrrd"),
    ("auto", "mr.nhdr", ".nrrd"),
    ("auto", "mr.nii", ".nii"),
    ("auto", "mr.nii.gz", ".nii.gz"),
    ("auto", "dicom_folder", ".nii.gz"),
    ("auto", None, ".nii.gz"),
    ("nii.gz", "mr.mha", ".nii.gz"),
    ("nii", "mr.nii.gz", ".nii"),
    ("mha", "mr.nii.gz", ".mha"),
    ("mha", None, ".mha"),
])
def test_output_suffix(fmt, input_name, expected):
    assert io.output_suffix(fmt, input_name) == expected


def test_output_suffix_rejects_unknown_format():
    with pytest.raises(ValueError, match="must be one of auto, nii.gz, nii, mha, got 'png'"):
        io.output_suffix("png", "mr.nii.gz")
