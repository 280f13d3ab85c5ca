"""What a NIfTI header says as stored, before nibabel mends it on load.

nibabel replaces a zero voxel size by 1 mm when it loads a header without an sform (and when it saves
one), so the affine a reader gets is plausible and no rule on the affine can tell the true voxel size is
unknown; only the stored bytes can. :func:`radmtl.data.io.read_volume` asks this module first.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np


def stored_header_problem(path: Path) -> tuple[str, str] | None:
    """(what, fix) of what is wrong with the header as stored, before nibabel mends it; None if nothing
    (or unreadable: nib.load then reports that).

    nibabel replaces a zero voxel size by 1 mm when it loads a header without an sform (it logs
    "setting 0 dims to 1"), so the affine radmtl sees is finite and plausible and no affine rule can
    tell that the true voxel size is unknown: only the stored ``pixdim`` can.
    """
    try:
        with nib.openers.ImageOpener(str(path)) as fileobj:
            header = nib.Nifti1Header.from_fileobj(fileobj, check=False)
            if int(header["sizeof_hdr"]) != 348:
                fileobj.seek(0)
                header = nib.Nifti2Header.from_fileobj(fileobj, check=False)
    except Exception:  # corrupt or truncated: nib.load says so in its own words
        return None
    if header.get_data_dtype().kind == "c":
        return (f"complex-valued voxels ({header.get_data_dtype()}), radmtl reads magnitude images",
                "save the magnitude (numpy.abs) as float32")
    if int(header["sform_code"]) == 0:  # the affine comes from pixdim (qform or the bare voxel sizes)
        zooms = [float(v) for v in header["pixdim"][1:4]]
        if not all(np.isfinite(zooms)) or any(v == 0 for v in zooms):
            return (f"voxel size pixdim[1:4] = {zooms} has a zero or non-finite value and the header has no "
                    "sform, so the voxel size is unknown (nibabel would assume 1 mm)",
                    "re-export the image with its true voxel size")
    return None
