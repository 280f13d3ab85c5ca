"""``--dicom-out``: one case's sCT as a DICOM CT series and its organs as an RT Structure Set, in a
folder a treatment planning system imports as it is (``OUT/<case>/dicom/``).

The sCT outside the body (derived from the MR, as for MR normalisation) is written as air, −1024 HU:
the network is trained on body voxels only, so what it predicts in the air around the patient is
not a CT value, and a planning system would otherwise count it as patient. The body outline is also
written as an EXTERNAL structure, which planning systems need for dose calculation.

Both lie on the grid of ``--dicom-grid`` (:mod:`radmtl.inference.dicom_grid`): the MR's own (a NIfTI
MR's in the scanners' row order), or an axial grid covering the MR, with the σ maps put onto it too
(``OUT/<case>/dicom_grid/``) so that they can be read against the CT voxel by voxel.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from radmtl import __version__
from radmtl.data.dicom.common import DicomIdentity, SourceSeries, series_number_at
from radmtl.data.io import Volume

log = logging.getLogger(__name__)

DICOM_FOLDER = "dicom"
# σ maps on the DICOM grid when that is not the input's (--dicom-grid axial), beside the DICOM folder:
# a planning system imports DICOM_FOLDER as it is, and other files in it would only be in the way.
GRID_MAPS_FOLDER = "dicom_grid"
RTSTRUCT_FILE = "RS_radmtl.dcm"
AIR_HU = -1024.0
BODY_ROI = "BODY"


def series_description(model_sha256: str) -> str:
    """The sCT's SeriesDescription: what it is and which model made it (≤ 64 characters)."""
    return f"radmtl synthetic CT (sCT), model {model_sha256[:12]}"


def derivation_description(model_sha256: str, source: SourceSeries | None, mr_path: Path,
                           grid: str = "input") -> str:
    made = f"Synthetic CT predicted from MR by radmtl {__version__}, model sha256 {model_sha256}, "
    if source is None:
        made += f"from the NIfTI MR {mr_path.name} (not a DICOM series)"
    else:
        made += (f"from MR series \"{source.series_description}\" (number {source.series_number}, "
                 f"SeriesInstanceUID {source.series_instance_uid})")
    return made + ("; resampled onto an axial grid covering the MR" if grid == "axial" else "")


def _with_patient_position(identity: DicomIdentity, option: str | None,
                           case_id: str) -> tuple[DicomIdentity, dict[str, str]]:
    """The identity with the PatientPosition the series will carry, and where it came from."""
    from_mr = identity.patient_position.strip().upper()
    if option:
        if from_mr and from_mr != option:
            log.warning("case %s: --patient-position %s overrides the MR's PatientPosition %s", case_id, option,
                        from_mr)
        value, source = option, "option"
    elif from_mr:
        value, source = from_mr, "mr"
    else:
        log.warning("case %s: the MR does not say how the patient lay (PatientPosition, 0018,5100); the CT series "
                    "says HFS (head first, supine); pass --patient-position if that is wrong", case_id)
        value, source = "HFS", "assumed"
    return dataclasses.replace(identity, patient_position=value), {"value": value, "source": source}


def write_dicom_outputs(
    folder: Path,
    *,
    sct_hu: np.ndarray,
    labels: np.ndarray | None,
    label_names: Mapping[str, int],
    volume: Volume,
    identity: DicomIdentity,
    source: SourceSeries | None,
    model_sha256: str,
    hu_range: tuple[float, float] = (-1024.0, 3071.0),
    case_id: str = "",
    patient_position: str | None = None,
    input_body: np.ndarray | None = None,
    grid: str = "input",
    sigma_maps: Mapping[str, np.ndarray] | None = None,
    maps_suffix: str = ".nii.gz",
) -> dict[str, Any]:
    """Write ``folder/CT_*.dcm`` and ``folder/RS_radmtl.dcm`` for one case on the DICOM grid.

    Args:
        sct_hu: (X, Y, Z) sCT in HU on the MR grid (the NIfTI sCT of the same run).
        labels: (X, Y, Z) organ labels on the MR grid, or None for a model without segmentation.
        label_names: organ name → label value; value 0 (background) gets no structure.
        volume: the MR as read (grid and intensities; the body outline is derived from it).
        identity: identifiers to carry (the MR's, or generated for a NIfTI MR).
        source: the MR series, when the input was DICOM.
        hu_range: the CT range the model was trained on (``data.ct_clip_hu``); sCT values beyond it
            are clipped to it and counted: a weak model or an unusual MR can predict −1900 HU inside a
            patient, which no CT holds and a dose engine would read as a void.
        case_id: names the case in the warnings.
        patient_position: ``--patient-position``: overrides the MR's PatientPosition (0018,5100). Without
            it the MR's is carried; an MR without one (and every NIfTI MR) gets HFS, with a warning and
            ``"source": "assumed"`` in provenance, because a planning system sets up beams from it.
        grid: ``--dicom-grid``: ``input`` (the MR's grid) or ``axial`` (an axial grid covering the MR;
            :mod:`radmtl.inference.dicom_grid`).
        sigma_maps: file stem → (X, Y, Z) σ map on the MR grid, put onto an ``axial`` grid and written
            to ``folder/../dicom_grid/<stem><maps_suffix>`` (ignored on the input grid, where the
            case's own maps are).

    Returns:
        The ``dicom`` entry of ``provenance.json``.
    """
    from radmtl.data.dicom.ct import HU_INTERCEPT, write_ct_series
    from radmtl.data.dicom.rtstruct import Roi, write_rtstruct
    from radmtl.data.io import write_volume
    from radmtl.data.transforms import derive_body_mask
    from radmtl.inference.dicom_grid import dicom_grid

    identity, position = _with_patient_position(identity, patient_position, case_id)
    on = dicom_grid(grid, volume.affine, volume.shape, scanner_order=source is None)
    if input_body is None:
        input_body = derive_body_mask(volume.array) != 0
    body = on.put(np.asarray(input_body, bool), "nearest")
    air = int(np.count_nonzero(~body))
    sct_hu = on.put(np.asarray(sct_hu, dtype=np.float32), "linear")
    labels = None if labels is None else on.put(labels, "nearest")
    maps_written = []
    if grid != "input":
        for stem, sigma in (sigma_maps or {}).items():
            name = f"{stem}{maps_suffix}"
            write_volume(on.put(sigma, "variance"), on.affine, folder.parent / GRID_MAPS_FOLDER / name, np.float32)
            maps_written.append(f"{GRID_MAPS_FOLDER}/{name}")
        # CT slice k no longer lies on MR slice k: the series names its source in DerivationDescription only.
        slice_source = None
    else:
        slice_source = source
    when = datetime.now()
    number = series_number_at(when)
    lo, hi = (np.float32(v) for v in hu_range)
    outside_range = int(np.count_nonzero(body & ((sct_hu < lo) | (sct_hu > hi))))
    if outside_range:
        log.warning("case %s: %d sCT voxel(s) inside the body lie outside the trained CT range [%g, %g] HU and "
                    "were clipped to it in the CT series (the NIfTI sCT keeps them)", case_id, outside_range, lo, hi)
    sct_for_tps = np.where(body, np.clip(sct_hu, lo, hi), np.float32(AIR_HU))
    ct = write_ct_series(sct_for_tps, on.affine, folder, identity,
                         series_description=series_description(model_sha256),
                         derivation_description=derivation_description(model_sha256, source,
                                                                       Path(volume.path or ""), grid),
                         source=slice_source, series_number=number)
    rois = [Roi(BODY_ROI, body, kind="EXTERNAL")]
    not_found = []
    if labels is not None:
        for name, value in sorted(label_names.items(), key=lambda kv: kv[1]):
            mask = labels == value
            if value == 0:
                continue
            # A structure without contours is valid DICOM, but some readers (rt-utils) fail on it and a
            # planning system shows an empty structure as if it had been drawn: leave it out, and say so.
            if not mask.any():
                not_found.append(name)
                continue
            rois.append(Roi(name, mask))
    if not_found:
        log.warning("case %s: no voxel predicted for %s; left out of the RT Structure Set", case_id,
                    ", ".join(not_found))
    contours = write_rtstruct(rois, ct, identity, folder / RTSTRUCT_FILE,
                              description=f"radmtl {__version__} segmentation, model {model_sha256[:12]}",
                              series_number=number + 1)
    log.info("%s: %d CT slices (%d voxel(s) clipped to int16) and %d structures", folder, len(ct.files),
             ct.clipped_voxels, len(rois))
    return {
        "folder": folder.name,
        "ct_files": len(ct.files),
        "ct_series_instance_uid": ct.series_instance_uid,
        "series_numbers": {"ct": number, "rtstruct": number + 1},
        "grid": on.describe(),
        "maps_on_grid": maps_written,
        "rtstruct_file": f"{folder.name}/{RTSTRUCT_FILE}",
        "hu_rescale_intercept": HU_INTERCEPT,
        "hu_range": [float(lo), float(hi)],
        "hu_clipped_to_range_voxels": outside_range,
        "hu_clipped_to_int16_voxels": ct.clipped_voxels,
        "air_outside_body_voxels": air,
        "air_hu": AIR_HU,
        "contours_per_roi": contours,
        "structures_not_found": not_found,
        "identifiers": identity.describe(),
        "patient_position": position,
        "source_series": None if source is None else {
            "series_instance_uid": source.series_instance_uid, "description": source.series_description,
            "slices": len(source.sop_instance_uids)},
    }
