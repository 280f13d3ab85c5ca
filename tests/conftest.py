"""Fixtures shared across the test packages."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import shutil
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture(autouse=True)
def _root_log_handlers_restored():
    """Each test leaves the root logger's handlers as it found them. ``radmtl.cli.main`` installs a handler on
    the ``sys.stderr`` of its moment, which under capsys is that test's capture stream, closed when the test
    ends: a later test in the same worker whose code logs then printed "--- Logging error ---" and a traceback
    into its own stderr (seen with test_infer_faults after test_cohort on one xdist worker)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def load_script() -> Callable[[str], ModuleType]:
    """Import ``scripts/<name>.py`` as a fresh module (scripts/ is not a package)."""
    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(f"{name}_script", SCRIPTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


def _debian_tool(command: str, package: str) -> str:
    """The path of a Debian tool the tests read with; skip where it is missing, except as root in CI,
    where ``scripts/test.sh`` installs it: there a missing tool is a broken set-up and fails."""
    executable = shutil.which(command)
    if executable is None:
        if os.geteuid() == 0 and os.environ.get("CI"):
            pytest.fail(f"{command} not found, although running as root in CI where scripts/test.sh installs "
                        f"Debian's {package}; run scripts/test.sh or apt-get install {package}")
        pytest.skip(f"{command} (Debian package {package}) is not installed; scripts/test.sh installs it as root")
    return executable


def _python_extra(module: str, what: str) -> ModuleType:
    """Import an optional package of the ``dose`` extra; skip where it is missing, except as root in CI, where
    ``scripts/setup.sh`` installs it: there a missing package is a broken set-up and fails."""
    try:
        return importlib.import_module(module)
    except Exception as err:  # ImportError, or a dependency that breaks its import
        hint = 'pip install "radmtl[dose]" && pip install --no-deps "pyradplan==0.5.0" (scripts/setup.sh)'
        if os.geteuid() == 0 and os.environ.get("CI"):
            pytest.fail(f"{module} cannot be imported ({err}), although running as root in CI where "
                        f"scripts/setup.sh installs it; {hint}")
        pytest.skip(f"{module} ({what}) is not installed: {hint}")


@pytest.fixture(scope="session")
def pyradplan() -> ModuleType:
    """pyRadPlan, the dose engine of the ``dose`` extra (skip/fail rule of :func:`_python_extra`)."""
    return _python_extra("pyRadPlan", "the photon/proton dose engine")


@pytest.fixture(scope="session")
def pymedphys() -> ModuleType:
    """pymedphys, whose γ index the dose evaluation uses (skip/fail rule of :func:`_python_extra`)."""
    return _python_extra("pymedphys", "the gamma index")


@pytest.fixture(scope="session")
def dciodvfy() -> Callable[[Iterable[Path]], str]:
    """Run David Clunie's DICOM validator (Debian ``dicom3tools``) on files; fail on any "Error" line.

    Returns the validator's combined output (warnings are allowed). Where ``dciodvfy`` is missing the
    tests skip, except as root in CI, where ``scripts/test.sh`` installs it: there a missing validator
    is a broken set-up and fails.
    """
    executable = _debian_tool("dciodvfy", "dicom3tools")

    def check(paths: Iterable[Path]) -> str:
        outputs = []
        for path in paths:
            run = subprocess.run([executable, str(path)], capture_output=True, text=True, timeout=60)
            output = (run.stdout + run.stderr).strip()
            errors = [line for line in output.splitlines() if line.startswith("Error")]
            if errors:
                pytest.fail(f"dciodvfy reports {len(errors)} error(s) in {path}:\n{output}", pytrace=False)
            outputs.append(f"{Path(path).name}: {output}")
        return "\n".join(outputs)

    return check


@pytest.fixture(scope="session")
def plastimatch() -> Callable[..., dict]:
    """``read(rtstruct, ct_folder, out, xor=True)``: an RT Structure Set rasterised by plastimatch (Debian
    ``plastimatch``), an RT reader independent of radmtl, onto the CT series it references; ROI name →
    SimpleITK image (1 inside). ``xor``: contours of a slice combined with the even-odd rule (a contour
    inside another is a hole), as radmtl writes them; plastimatch's default is their union.

    Skips where plastimatch is missing, except as root in CI, where ``scripts/test.sh`` installs it.
    """
    executable = _debian_tool("plastimatch", "plastimatch")

    def read(rtstruct: Path, ct_folder: Path, out: Path, xor: bool = True) -> dict:
        import SimpleITK as sitk

        command = [executable, "convert", "--input", str(rtstruct), "--referenced-ct", str(ct_folder),
                   "--output-prefix", str(out), "--prefix-format", "nrrd", *(["--xor-contours"] if xor else [])]
        run = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if run.returncode != 0:
            pytest.fail(f"plastimatch failed ({run.returncode}):\n{run.stdout}{run.stderr}", pytrace=False)
        return {path.stem: sitk.ReadImage(str(path)) for path in sorted(Path(out).glob("*.nrrd"))}

    return read


@pytest.fixture(scope="session")
def zero_voxel_nifti() -> Callable:
    """``write(path, array, affine, qform_code=1)``: a ``.nii.gz`` as a broken exporter writes it, with no
    sform and pixdim[2] = 0, which nibabel would load at 1 mm. nibabel mends a zero pixdim when it saves,
    too, so the zero goes into the bytes afterwards (pixdim: 8 float32 at offset 76 of a NIfTI-1 header)."""
    import gzip

    import nibabel as nib
    import numpy as np

    def write(path: Path, array, affine, qform_code: int = 1) -> Path:
        image = nib.Nifti1Image(np.asarray(array, np.float32), np.asarray(affine, np.float64))
        image.set_qform(image.affine, code=qform_code)
        image.set_sform(None, code=0)
        raw = path.parent / (path.name.split(".")[0] + ".raw.nii")
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(image, str(raw))
        data = bytearray(raw.read_bytes())
        data[76 + 8:76 + 12] = np.float32(0.0).tobytes()
        path.write_bytes(gzip.compress(bytes(data)))
        raw.unlink()
        return path

    return write


LATERALITY_SHAPE = (40, 32, 24)


@pytest.fixture(scope="session")
def laterality_phantom(tmp_path_factory) -> Path:
    """``radmtl phantom`` output for the laterality tests: two NIfTI cases (40 × 32 × 24 voxels, seed 3) in
    ``data/`` and their MRs as DICOM series in ``dicom/``."""
    from radmtl.cli import main

    root = tmp_path_factory.mktemp("laterality")
    assert main(["-q", "phantom", str(root / "data"), "--cases", "2", "--seed", "3",
                 "--shape", *map(str, LATERALITY_SHAPE), "--dicom", str(root / "dicom")]) == 0
    return root


@pytest.fixture(scope="session")
def dicom_lps_grid() -> Callable:
    """``grid(folder)``: a DICOM series' pixels (columns, rows, slices) and LPS voxel→world affine, read
    from the raw attributes with pydicom, independent of radmtl's DICOM reader (for laterality tests)."""
    import numpy as np
    import pydicom

    def grid(folder: Path):
        slices = [pydicom.dcmread(p) for p in sorted(Path(folder).glob("*.dcm"))]
        row_cos = np.array(slices[0].ImageOrientationPatient[:3], dtype=float)
        col_cos = np.array(slices[0].ImageOrientationPatient[3:], dtype=float)
        normal = np.cross(row_cos, col_cos)
        slices.sort(key=lambda ds: float(np.dot(normal, np.array(ds.ImagePositionPatient, dtype=float))))
        positions = np.array([ds.ImagePositionPatient for ds in slices], dtype=float)
        row_spacing, col_spacing = (float(v) for v in slices[0].PixelSpacing)
        affine = np.eye(4)
        affine[:3, 0] = row_cos * col_spacing  # along a row: the column index i
        affine[:3, 1] = col_cos * row_spacing  # down a column: the row index j
        affine[:3, 2] = positions[1] - positions[0]
        affine[:3, 3] = positions[0]
        pixels = np.stack([ds.pixel_array.T for ds in slices], axis=-1)
        return pixels, affine

    return grid


# --- SynthRAD-shaped trees made from phantoms ----------------------------------------------------

def _write_mha(volume, path: Path, dtype) -> None:
    """Write a radmtl Volume as .mha the way SimpleITK-based tools do (LPS world), independent of
    radmtl's own writer so that a test of the reader is not a test of the writer against itself."""
    import numpy as np
    import SimpleITK as sitk

    affine_lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.affine
    spacing = np.linalg.norm(affine_lps[:3, :3], axis=0)
    image = sitk.GetImageFromArray(np.transpose(volume.array.astype(dtype)))
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(v) for v in (affine_lps[:3, :3] / spacing).ravel()])
    image.SetOrigin([float(v) for v in affine_lps[:3, 3]])
    sitk.WriteImage(image, str(path), useCompression=True)


def _write_nifti(volume, path: Path, dtype) -> None:
    import nibabel as nib
    import numpy as np

    image = nib.Nifti1Image(np.asarray(volume.array).astype(dtype), volume.affine)
    image.set_qform(volume.affine, code=1)
    image.set_sform(volume.affine, code=1)
    nib.save(image, str(path))


def copy_case(source: Path, dest: Path, keys: Iterable[str], fmt: str = "nii.gz") -> None:
    """Copy a phantom case's files ``keys`` into ``dest`` as ``.nii.gz`` (CT int16) or ``.mha``."""
    import numpy as np

    from radmtl.data.io import read_volume

    dest.mkdir(parents=True, exist_ok=True)
    dtypes = {"mr": np.float32, "ct": np.int16, "mask": np.uint8, "labels": np.uint8, "ct_noise_sd": np.float32}
    for key in keys:
        volume = read_volume(source / f"{key}.nii.gz")
        if key == "ct":
            volume = type(volume)(np.rint(volume.array), volume.affine, volume.path)
        writer = _write_mha if fmt == "mha" else _write_nifti
        writer(volume, dest / f"{key}.{fmt}", dtypes[key])


@pytest.fixture(scope="session")
def phantom_cases(tmp_path_factory) -> Path:
    """Six phantom cases (32 × 32 × 24 voxels) to build other trees from."""
    from radmtl.data.phantom import generate_dataset

    root = tmp_path_factory.mktemp("phantom_source")
    generate_dataset(root, cases=6, seed=11, shape=(32, 32, 24))
    return root


@pytest.fixture(scope="session")
def synthrad_trees(phantom_cases, tmp_path_factory) -> dict[str, Path]:
    """Task roots laid out as published, without organ labels:

    * ``2023``: SynthRAD2023 Task 1, ``Task1/pelvis/1PA00k/{mr,ct,mask}.nii.gz`` (CT int16) and an
      ``overview/`` folder of spreadsheets;
    * ``2025``: SynthRAD2025 Task 1, ``Task1/{AB,TH}/1<C>A00k/{mr,ct,mask}.mha`` and ``overview/``;
    * ``mixed``: ``c1``, ``c2`` with ct and labels, ``c3`` ct only, ``c4`` labels only (no ct).
    """
    root = tmp_path_factory.mktemp("synthrad")
    cases = [phantom_cases / f"case_{i:03d}" for i in range(1, 7)]
    task = root / "2023" / "Task1"
    for k, case in enumerate(cases[:4], start=1):
        copy_case(case, task / "pelvis" / f"1PA00{k}", ("mr", "ct", "mask"))
    (task / "overview").mkdir()
    (task / "overview" / "1_pelvis_train.xlsx").write_bytes(b"PK\x03\x04 not a real spreadsheet")
    task = root / "2025" / "Task1"
    for k, (centre, case) in enumerate(zip(("AB", "AB", "TH", "TH"), cases[:4])):
        copy_case(case, task / centre / f"1{centre}A00{k + 1}", ("mr", "ct", "mask"), fmt="mha")
    (task / "overview").mkdir()
    (task / "overview" / "1_AB_train.xlsx").write_bytes(b"PK\x03\x04 not a real spreadsheet")
    mixed = root / "mixed"
    for name, case, keys in (("c1", cases[0], ("mr", "ct", "mask", "labels")),
                             ("c2", cases[1], ("mr", "ct", "mask", "labels")),
                             ("c3", cases[2], ("mr", "ct", "mask")),
                             ("c4", cases[3], ("mr", "mask", "labels"))):
        copy_case(case, mixed / name, keys)
    return {"2023": root / "2023" / "Task1", "2025": root / "2025" / "Task1", "mixed": mixed}
