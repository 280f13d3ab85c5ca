"""``radmtl infer``: MR volumes → sCT, segmentation and uncertainty maps on each input's own grid.

Per case: read and check the MR → the training preprocessing (:func:`radmtl.data.transforms.eval_transforms`:
RAS, model spacing, MR normalisation) → :func:`radmtl.inference.predict.predict_volume` on the network grid →
each map resampled back onto the input grid (:mod:`radmtl.inference.resample`) and written with the input's
header geometry (:func:`radmtl.data.io.write_like`), in the input's own format unless ``--output-format``
says otherwise (a SynthRAD2025 ``.mha`` gives ``.mha`` maps). A case is written into a hidden folder
``.<case>.partial-<host>-<pid>-*`` beside its final folder that is renamed to ``OUT/<case>`` only when every
file is complete, so a killed run never leaves a half-written case under its final name; the next run
into the same output removes what a killed one left (:mod:`radmtl.inference.work_dirs`). An MR that
:func:`radmtl.data.volume_rules.mr_problems` rejects (broken affine, NaN, a constant image) is refused
in one line, and an output folder this run created stays only if a case was written into it. A case id
may hold folders (``AB/1ABA005`` from a SynthRAD2025 tree): its outputs go to ``OUT/AB/1ABA005/``.

A folder of DICOM files is one case: its MR series (``--series`` picks one of several) is read with
:mod:`radmtl.data.dicom_series` and run like a NIfTI MR; with ``--dicom-out`` (on for DICOM input) the
sCT and the organs are also written as a CT series and an RT Structure Set in ``OUT/<case>/dicom/``
(:mod:`radmtl.inference.dicom_out`), inside the same hidden folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from radmtl import __version__
from radmtl.device import amp_dtype_for, resolve_device
from radmtl.errors import RadmtlError
from radmtl.inference.model_uri import ModelSource, resolve_checkpoint, sha256_of
from radmtl.data.dicom_series import SeriesInfo
from radmtl.data.io import (OUTPUT_FORMATS, VolumeError, Grid, output_suffix, read_volume,
                            strip_volume_suffix, write_like, write_volume)

from radmtl.inference.case_maps import MAP_OUTPUTS, map_to_input_grid, predict_on_network_grid
from radmtl.inference.inputs import (case_folder, check_mr, find_cases,  # noqa: F401  (find_cases: public here too)
                                     make_parents, prepare_output_root, remove_if_empty)
from radmtl.inference.work_dirs import remove_stale_work_folders, work_folder, work_prefix

log = logging.getLogger(__name__)

PROVENANCE = "provenance.json"


@dataclass(frozen=True)
class InferOptions:
    """How to run the network; ``None`` fields fall back to the checkpoint's ``cfg.infer``."""

    mc_samples: int | None = None
    overlap: float | None = None
    sw_batch_size: int | None = None
    device: str = "auto"
    save_probabilities: bool = False
    progress: bool = False
    # Apply the checkpoint's σ-scaling factor (fitted on the validation cases after training).
    sigma_scaling: bool = True
    # The SeriesInstanceUID to run when a DICOM folder holds several series.
    series: str | None = None
    # Also write a DICOM CT series and RT Structure Set; None: only when the input is DICOM.
    dicom_out: bool | None = None
    # File format of the maps: "auto" (the input's own; NIfTI for DICOM), "nii.gz", "nii" or "mha".
    output_format: str = "auto"


@dataclass
class CaseResult:
    case_id: str
    seconds: float
    outputs: list[str] = field(default_factory=list)
    error: str | None = None


# --- one case ----------------------------------------------------------------------------------


def _progress_bar(enabled: bool, total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", file=sys.stderr, leave=False, dynamic_ncols=True,
                disable=not enabled)


def _publish(tmp_dir: Path, final_dir: Path) -> None:
    """Rename the finished hidden folder onto ``final_dir``, replacing an older result."""
    old = None
    if final_dir.exists():
        old = work_folder(final_dir, "old")
        os.replace(final_dir, old)
    os.replace(tmp_dir, final_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def infer_case(
    loaded: Any,
    source: ModelSource,
    case_id: str,
    mr_path: Path | SeriesInfo | None,
    output: Path,
    options: InferOptions,
) -> CaseResult:
    """Predict one case and write ``output/<case_id>/``.

    ``mr_path`` is an MR volume file or a DICOM MR series chosen by :func:`find_cases`; maps are
    written in ``options.output_format`` (:func:`radmtl.data.io.output_suffix`).

    Raises:
        RadmtlError: the MR cannot be used or an output cannot be written; nothing is left under
            ``output/<case_id>`` from this attempt.
    """
    from radmtl.config import to_dict
    from radmtl.inference.resample import argmax_labels_on_grid

    if mr_path is None:
        raise VolumeError(f"case {case_id}: has no mr file; add mr.nii.gz to the case folder")
    final_dir = case_folder(output, case_id)
    cfg = loaded.cfg
    mc_samples = int(options.mc_samples if options.mc_samples is not None else cfg.infer.mc_samples)
    overlap = float(options.overlap if options.overlap is not None else cfg.infer.overlap)
    sw_batch_size = int(options.sw_batch_size if options.sw_batch_size is not None else cfg.infer.sw_batch_size)
    device = resolve_device(options.device)
    amp_dtype = amp_dtype_for(cfg.train.amp, device, fp16_fallback=False)
    timings: dict[str, float] = {}
    t_start = time.perf_counter()

    from radmtl.data.dicom_common import generated_identity
    from radmtl.data.dicom_series import read_series

    is_dicom = isinstance(mr_path, SeriesInfo)
    dicom_out = is_dicom if options.dicom_out is None else options.dicom_out
    identity, source_series = None, None
    if is_dicom:
        dicom_mr = read_series(mr_path)
        volume, identity, source_series = dicom_mr.volume, dicom_mr.identity, dicom_mr.source
        mr_path = mr_path.folder
    else:
        volume = read_volume(mr_path)
    check_mr(volume)
    if dicom_out and identity is None:
        identity = generated_identity(case_id, mr_path)
    timings["read_s"] = time.perf_counter() - t_start

    n_maps = len(MAP_OUTPUTS) + 1 + int(dicom_out)
    suffix = output_suffix(options.output_format, None if is_dicom else mr_path)
    file_format = suffix.lstrip(".")
    # The hidden folders sit beside the final one (OUT/AB/.1ABA005.partial-*), so the rename stays
    # within one folder and a nested id never creates OUT/.AB/.
    created = make_parents(final_dir.parent)
    bar = _progress_bar(options.progress, total=3 + n_maps, desc=case_id)
    tmp_dir = work_folder(final_dir, "partial")
    # The network reads a file; a DICOM MR goes to it as a NIfTI copy that is not an output.
    scratch = (tempfile.TemporaryDirectory(prefix=work_prefix(final_dir.name, "mr"), dir=final_dir.parent)
               if is_dicom else None)
    sct_hu, labels = None, None
    published = False
    try:
        network_input = mr_path
        if scratch is not None:
            network_input = write_volume(volume.array, volume.affine, Path(scratch.name) / "mr.nii.gz", np.float32)
        sigma_scale = sigma_scale_of(loaded.payload) if options.sigma_scaling else 1.0
        maps, net_affine, net_shape = predict_on_network_grid(
            loaded, network_input, mc_samples=mc_samples, overlap=overlap, sw_batch_size=sw_batch_size,
            device=device, amp_dtype=amp_dtype, sigma_scale=sigma_scale, timings=timings)
        bar.update(2)

        t0 = time.perf_counter()
        tmp_dir.mkdir()
        written: dict[str, dict[str, Any]] = {}
        for key, (stem, dtype, to_hu, needs_mc) in MAP_OUTPUTS.items():
            network_map = maps.pop(key, None)
            if network_map is None or (needs_mc and mc_samples <= 1):
                continue
            array = map_to_input_grid(key, network_map, net_affine, volume, cfg.data.ct_scale_hu)
            write_like(array, volume, tmp_dir / f"{stem}{suffix}", dtype)
            written[stem] = {"file": f"{stem}{suffix}", "format": file_format, "dtype": np.dtype(dtype).name,
                             "units": "HU" if to_hu else "nats"}
            if key == "sct" and dicom_out:
                sct_hu = array
            del array
            bar.update(1)
        if "seg_probs" in maps:
            probs = maps.pop("seg_probs")[0]
            labels, probs_on_input = argmax_labels_on_grid(
                probs, net_affine, volume.affine, volume.shape, keep_probs=options.save_probabilities)
            write_like(labels, volume, tmp_dir / f"seg{suffix}", np.uint8)
            written["seg"] = {"file": f"seg{suffix}", "format": file_format, "dtype": "uint8", "units": "label",
                              "labels": dict(loaded.label_names)}
            if not dicom_out:
                del labels
            if probs_on_input is not None:
                write_like(np.moveaxis(probs_on_input, 0, -1), volume, tmp_dir / f"seg_probabilities{suffix}",
                           np.float32)
                written["seg_probabilities"] = {"file": f"seg_probabilities{suffix}", "format": file_format,
                                                "dtype": "float32", "units": "probability",
                                                "axis_3": "class index" if file_format.startswith("nii")
                                                else "vector component = class index"}
                del probs_on_input
            bar.update(1)
        dicom_provenance = None
        if dicom_out:
            from radmtl.inference.dicom_out import DICOM_FOLDER, write_dicom_outputs

            if sct_hu is None:
                raise RadmtlError(f"{source.argument}: the model has no sCT task; --dicom-out needs one")
            dicom_provenance = write_dicom_outputs(
                tmp_dir / DICOM_FOLDER, sct_hu=sct_hu, labels=labels, label_names=loaded.label_names,
                volume=volume, identity=identity, source=source_series, model_sha256=source.sha256)
            written["dicom"] = {"file": f"{DICOM_FOLDER}/", "format": "dicom",
                                "dtype": "int16 CT series + RT structure set", "units": "HU"}
            del sct_hu, labels
            bar.update(1)
        timings["resample_write_s"] = time.perf_counter() - t0
        timings["total_s"] = time.perf_counter() - t_start

        provenance = {
            "radmtl_version": __version__,
            "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "case": case_id,
            "input": {
                "path": str(Path(mr_path).resolve()),
                "format": "dicom" if is_dicom else "volume",
                "grid": volume.grid.describe(),
                "affine": np.round(volume.affine, 6).tolist(),
                "qform_code": int(volume.header["qform_code"]) if volume.header is not None else None,
                "sform_code": int(volume.header["sform_code"]) if volume.header is not None else None,
            },
            "network_grid": Grid.from_affine(net_shape, net_affine).describe(),
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
                "mc_samples": mc_samples, "overlap": overlap, "sw_batch_size": sw_batch_size,
                "device": str(device), "amp_dtype": str(amp_dtype).replace("torch.", "") if amp_dtype else None,
                "seed": cfg.seed, "sliding_window": "gaussian", "roi_size": list(cfg.data.patch_size),
                "label_resampling": "argmax of bilinearly resampled probabilities",
                "sigma_scaling": {
                    "applied": bool(options.sigma_scaling and "sigma_scaling" in loaded.payload),
                    "factor": sigma_scale,
                    "fitted": loaded.payload.get("sigma_scaling"),
                },
                "sigma_epistemic": "spread of the MC-dropout samples only; window overlap excluded",
                "output_format": options.output_format,
            },
            "outputs": written,
            "timings_s": {k: round(v, 3) for k, v in timings.items()},
        }
        if dicom_provenance is not None:
            provenance["dicom"] = dicom_provenance
        try:
            (tmp_dir / PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
            _publish(tmp_dir, final_dir)
            published = True
        except OSError as err:
            raise VolumeError(f"{final_dir}: cannot write ({err.strerror}); check space and "
                              "permissions") from err
        bar.update(1)
    finally:
        bar.close()
        if scratch is not None:
            scratch.cleanup()
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir, ignore_errors=True)
        if not published:
            remove_if_empty(created)
    outputs = [info["file"] for info in written.values()] + [PROVENANCE]
    return CaseResult(case_id=case_id, seconds=time.perf_counter() - t_start, outputs=outputs)


# --- the command -------------------------------------------------------------------------------


def sigma_scale_of(payload: dict[str, Any]) -> float:
    """The checkpoint's σ-scaling factor (1.0 for a checkpoint saved before recalibration)."""
    fitted = payload.get("sigma_scaling") or {}
    return float(fitted.get("factor", 1.0))


def load_model(model: str, tracking_uri: str | None, device: str) -> tuple[Any, ModelSource]:
    """Resolve ``--model``, load the network onto ``device`` and describe its source."""
    from radmtl.nn.checkpoint import model_from_checkpoint

    checkpoint = resolve_checkpoint(model, tracking_uri)
    loaded = model_from_checkpoint(checkpoint, resolve_device(device))
    if "seg" in loaded.cfg.model.tasks and loaded.cfg.model.num_classes > 256:
        raise RadmtlError(f"{checkpoint}: {loaded.cfg.model.num_classes} classes do not fit uint8 labels")
    return loaded, ModelSource(argument=model, checkpoint=checkpoint, sha256=sha256_of(checkpoint))


def run_inference(
    model: str,
    input_path: str | Path,
    output: str | Path,
    options: InferOptions = InferOptions(),
    tracking_uri: str | None = None,
) -> list[CaseResult]:
    """Run every case of ``input_path``; a failing case is recorded and the others still run.

    Raises:
        RadmtlError: problems that stop every case (model, input, output folder, options).
    """
    if options.mc_samples is not None and options.mc_samples < 1:
        raise RadmtlError(f"--mc-samples: must be >= 1, got {options.mc_samples}")
    if options.overlap is not None and not 0.0 <= options.overlap < 1.0:
        raise RadmtlError(f"--overlap: must be in [0, 1), got {options.overlap}")
    if options.sw_batch_size is not None and options.sw_batch_size < 1:
        raise RadmtlError(f"--batch-size: must be >= 1, got {options.sw_batch_size}")
    if options.output_format not in OUTPUT_FORMATS:
        raise RadmtlError(f"--output-format: must be one of {', '.join(OUTPUT_FORMATS)}, got "
                          f"{options.output_format!r}")
    cases = find_cases(input_path, options.series)
    output, created = prepare_output_root(output)
    results: list[CaseResult] = []
    try:
        # What killed runs left here: in OUT and beside each case's final folder (OUT/AB/.1ABA005.partial-*).
        remove_stale_work_folders([output, *(_case_parent(output, case_id) for case_id, _ in cases)])
        loaded, source = load_model(model, tracking_uri, options.device)
        log.info("%s: %d case(s), model %s", input_path, len(cases), source.checkpoint)
        for case_id, mr_path in cases:
            t0 = time.perf_counter()
            try:
                results.append(infer_case(loaded, source, case_id, mr_path, output, options))
            except RadmtlError as err:
                log.debug("case %s failed", case_id, exc_info=True)
                results.append(CaseResult(case_id=case_id, seconds=time.perf_counter() - t0, error=str(err)))
    finally:
        remove_if_empty(created)  # no case written: leave no output folder this run made
    return results


def _case_parent(output: Path, case_id: str) -> Path:
    try:
        return case_folder(output, case_id).parent
    except RadmtlError:  # reported when the case runs
        return output


def format_summary(results: list[CaseResult]) -> str:
    """The end-of-run table: case, seconds, outputs (file stems)."""
    rows = [(r.case_id, f"{r.seconds:.1f}",
             "FAILED" if r.error else ", ".join(strip_volume_suffix(f) for f in r.outputs if f != PROVENANCE))
            for r in results]
    header = ("case", "seconds", "outputs")
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def infer_from_cli(args: argparse.Namespace) -> int:
    """``radmtl infer``: run, print the summary table, list failures; 1 if any case failed."""
    options = InferOptions(
        mc_samples=args.mc_samples, overlap=args.overlap, sw_batch_size=args.batch_size, device=args.device,
        save_probabilities=args.save_probabilities,
        progress=not args.no_progress and not getattr(args, "quiet", False) and sys.stderr.isatty(),
        sigma_scaling=not args.no_sigma_scaling,
        series=args.series, dicom_out=True if args.dicom_out else None, output_format=args.output_format,
    )
    results = run_inference(args.model, args.input, args.output, options, tracking_uri=args.tracking_uri)
    failed = [r for r in results if r.error]
    print(format_summary(results))
    done = len(results) - len(failed)
    print(f"{done} of {len(results)} case(s) written to {args.output}")
    for result in failed:
        print(f"radmtl infer: error: case {result.case_id}: {result.error}", file=sys.stderr)
    return 1 if failed else 0
