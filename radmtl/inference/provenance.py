"""``provenance.json``: what produced one case's outputs, written beside them by ``radmtl infer``."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from radmtl import __version__
from radmtl.data.grid import Grid

if TYPE_CHECKING:  # annotations only: infer imports this module
    from radmtl.inference.infer_options import InferOptions
    from radmtl.inference.inputs import PreparedCase
    from radmtl.inference.model_uri import ModelSource

# Written last into a case's hidden folder, just before the rename: a case folder that holds it is complete.
PROVENANCE = "provenance.json"

# What the stage times in provenance.json measure, for the reader of that file.
TIMINGS_NOTE = ("read_s, preprocess_s, body_mask_s: reading/checking the MR, the training preprocessing and the "
                "MR's body outline on its own grid (for the review and DICOM outputs), on the read-ahead "
                "thread (for a case after the first, while the previous case ran); input_wait_s: the part of "
                "them the run waited for; predict_s: the network; resample_s: maps back onto the input grid; "
                "write_s: time spent writing files, on writer threads, overlapping resample_s; write_wait_s: "
                "the part of writing not hidden behind resampling; total_s: from waiting for the input to the "
                "last file written")


def output_entry(stem: str, file_name: str, file_format: str, dtype: Any, units: str, array: np.ndarray,
                 label_names: dict[str, int]) -> dict[str, Any]:
    """One written map's entry in ``provenance.json``'s ``outputs``: file, format, dtype, units, and for a
    4D map what its fourth axis indexes (in .mha/.nrrd a vector image, its components)."""
    entry: dict[str, Any] = {"file": file_name, "format": file_format, "dtype": np.dtype(dtype).name,
                             "units": units}
    axis_3 = "" if file_format.startswith("nii") else "vector component = "
    if stem == "seg":
        entry["labels"] = dict(label_names)
    elif stem == "seg_probabilities":
        entry["axis_3"] = axis_3 + "class index"
    elif stem == "sct_samples":
        entry["axis_3"] = axis_3 + "MC dropout sample index"
        entry["samples"] = int(array.shape[3])
    return entry


def case_provenance(loaded: Any, source: ModelSource, prepared: PreparedCase, options: InferOptions,
                    written: dict[str, Any], timings: dict[str, float], c: dict[str, Any]) -> dict[str, Any]:
    """The case's ``provenance.json``: input geometry, model, config, inference settings, outputs,
    laterality and where the time went (``c``: the settings :func:`radmtl.inference.infer.start_case` used)."""
    from radmtl.config import to_dict

    volume, cfg = prepared.volume, loaded.cfg
    return {
        "radmtl_version": __version__,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "case": prepared.case_id,
        # Which of the processes sharing the cohort out wrote it (radmtl.inference.cohort); 0 of 1 alone.
        "rank": options.rank,
        "world_size": options.world_size,
        "input": {
            "path": str(Path(prepared.mr_path).resolve()),
            "format": "dicom" if prepared.is_dicom else "volume",
            "grid": volume.grid.describe(),
            "affine": np.round(volume.affine, 6).tolist(),
            "qform_code": int(volume.header["qform_code"]) if volume.header is not None else None,
            "sform_code": int(volume.header["sform_code"]) if volume.header is not None else None,
        },
        "network_grid": Grid.from_affine(c["net_shape"], c["net_affine"]).describe(),
        "model": {
            "source": source.argument,
            "checkpoint": source.recorded,  # a lasting path, or the URI when the copy was temporary
            "sha256": source.sha256,
            "epoch": loaded.payload.get("epoch"),
            "mlflow_run_id": loaded.payload.get("mlflow_run_id"),
            "checkpoint_radmtl_version": loaded.payload.get("radmtl_version"),
            "label_names": dict(loaded.label_names),
        },
        "config": to_dict(cfg),
        "inference": {
            "mc_samples": c["mc_samples"], "overlap": c["overlap"], "sw_batch_size": c["sw_batch_size"],
            "device": str(c["device"]),
            "amp_dtype": str(c["amp_dtype"]).replace("torch.", "") if c["amp_dtype"] else None,
            "seed": cfg.seed, "sliding_window": "gaussian", "roi_size": list(cfg.data.patch_size),
            "label_resampling": "argmax of bilinearly resampled probabilities",
            "sigma_scaling": {
                "applied": bool(options.sigma_scaling and "sigma_scaling" in loaded.payload),
                "factor": c["sigma_scale"],
                "fitted": loaded.payload.get("sigma_scaling"),
            },
            "sigma_epistemic": "spread of the MC-dropout samples only; window overlap excluded",
            "output_format": options.output_format,
        },
        "outputs": written,
        "laterality": c["laterality"],
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "timings_note": TIMINGS_NOTE,
    }
