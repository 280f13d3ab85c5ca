"""``radmtl infer``: MR volumes → sCT, segmentation and uncertainty maps on each input's own grid.

Per case: read and check the MR → the training preprocessing (:func:`radmtl.data.transforms.eval_transforms`:
RAS, model spacing, MR normalisation) → :func:`radmtl.inference.predict.predict_volume` on the network grid →
each map resampled back onto the input grid (:mod:`radmtl.inference.resample`) and written with the input's
header geometry (:func:`radmtl.data.io.write_like`), in the input's own format unless ``--output-format``
says otherwise (a SynthRAD2025 ``.mha`` gives ``.mha`` maps). A case is written into a hidden folder
``.<case>.partial-<host>-<pid>-*`` beside its final folder that is renamed to ``OUT/<case>`` only when every
file is complete, so a killed run never leaves a half-written case under its final name; the next run
into the same output removes what a killed one left (:mod:`radmtl.inference.work_dirs`) and skips the cases
it published (``--overwrite`` runs them again). An MR that :func:`radmtl.data.volume_rules.mr_problems`
rejects (broken affine, NaN, a constant image) is refused in one line, and an output folder this run
created stays only if a case was written into it. A case id may hold folders (``AB/1ABA005`` from a
SynthRAD2025 tree): its outputs go to ``OUT/AB/1ABA005/``.
Around the network everything overlaps (:func:`run_inference`): the next case is read ahead, files are
written on writer threads (:class:`radmtl.inference.work_dirs.CaseWriter`), a case is published while the
next one runs, and ``provenance.json`` says where the time went.

A folder of DICOM files is one case: its MR series (``--series`` picks one of several) is read with
:mod:`radmtl.data.dicom.series` and run like a NIfTI MR; with ``--dicom-out`` (on for DICOM input) the
sCT and the organs are also written as a CT series and an RT Structure Set in ``OUT/<case>/dicom/``
(:mod:`radmtl.inference.dicom_out`), inside the same hidden folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from radmtl.device import amp_dtype_for, keep_freed_memory_for_reuse, resolve_device
from radmtl.errors import RadmtlError
from radmtl.data.laterality import check_laterality, laterality_problems, midline_x
from radmtl.inference.model_uri import ModelSource, resolve_checkpoint, sha256_of
from radmtl.inference.provenance import PROVENANCE, case_provenance, output_entry
from radmtl.inference.review_out import REVIEW_FOLDER, CaseReview, thresholds_of
from radmtl.data.io import VolumeError, output_suffix, write_like

from radmtl.inference.case_maps import MAP_OUTPUTS, input_grid_outputs, predict_on_network_grid
from radmtl.inference.infer_options import InferOptions, check_model_options, check_options, mc_samples_of
# find_cases: re-exported, its home was here
from radmtl.inference.inputs import (PreparedCase, find_cases, find_input_cases, prepare_case,  # noqa: F401
                                     read_ahead)
from radmtl.inference.output_folders import is_done, prepare_output, remove_empty_folders, remove_if_empty
from radmtl.inference.work_dirs import CaseWriter

log = logging.getLogger(__name__)


@dataclass
class CaseResult:
    case_id: str
    seconds: float
    outputs: list[str] = field(default_factory=list)
    error: str | None = None
    # What a person must look at before using the case: the review's codes ("laterality": a left/right
    # pair swapped, "body_flagged": more of the body flagged than the validation cases had, ...).
    flags: list[str] = field(default_factory=list)
    # Published by an earlier run (provenance.json in its folder) and not run again (no --overwrite).
    skipped: bool = False
    rank: int = 0  # the process that ran it (radmtl.inference.cohort); 0 in a single process

    @property
    def status(self) -> str:
        """``written``, ``failed`` or ``skipped``."""
        return "failed" if self.error else "skipped" if self.skipped else "written"


# sCT voxels above this (HU) are the body whose centroid is the midline of the laterality guard: air
# outside a patient is predicted near −1000 HU, the least dense tissue (fat, lung) well above −500.
BODY_HU = -500.0


def laterality_of(case_id: str, labels: np.ndarray, affine: np.ndarray, label_names: dict[str, int],
                  midline_x_mm: float | None) -> dict[str, Any]:
    """The laterality guard (:func:`radmtl.data.laterality.check_laterality`) on a predicted segmentation,
    with one warning line per swapped pair."""
    result = check_laterality(labels, affine, label_names, midline_x_mm)
    for problem in laterality_problems(result):
        log.warning("case %s: laterality check failed: %s; do not use this segmentation until a person has "
                    "checked the model's label names and the input's orientation (RAS+: +x is the patient's "
                    "right)", case_id, problem)
    return result


# --- one case ----------------------------------------------------------------------------------


def _progress_bar(enabled: bool, total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", file=sys.stderr, leave=False, dynamic_ncols=True,
                disable=not enabled)


# Writer threads. Two keep a gzip (zlib, GIL released) busy on each of two cores while the caller
# resamples the next map or runs the next case; more only queue arrays in memory. 0: write on the
# calling thread, one file after another (the sequential path the tests compare against).
WRITERS = 2


def start_case(loaded: Any, source: ModelSource, prepared: PreparedCase, options: InferOptions,
               pool: Executor | None, t_start: float) -> Callable[[], CaseResult]:
    """Run the network on a prepared case, resample its maps and queue their writes on ``pool``.

    Returns the case's finish: a call that waits for the writes, writes ``provenance.json`` and
    publishes the folder (or removes it and returns the error), meant to run while the next case
    is predicted.

    Raises:
        RadmtlError: the network could not be run or the hidden folder not made; nothing is left.
    """
    cfg = loaded.cfg
    volume = prepared.volume
    mc_samples = mc_samples_of(options, cfg)
    overlap = float(options.overlap if options.overlap is not None else cfg.infer.overlap)
    sw_batch_size = int(options.sw_batch_size if options.sw_batch_size is not None else cfg.infer.sw_batch_size)
    device = resolve_device(options.device)
    if device.type == "cpu":
        keep_freed_memory_for_reuse()  # each window's buffers are reused, not page-faulted anew
    amp_dtype = amp_dtype_for(cfg.train.amp, device, training=False)
    dicom_out = prepared.is_dicom if options.dicom_out is None else options.dicom_out
    suffix = output_suffix(options.output_format, None if prepared.is_dicom else prepared.mr_path)
    file_format = suffix.lstrip(".")
    timings: dict[str, float] = dict(prepared.timings)
    timings["input_wait_s"] = time.perf_counter() - t_start  # what read-ahead did not hide
    steps = 3 + len(MAP_OUTPUTS) + 1 + int(dicom_out) + int(options.save_samples > 0)
    bar = _progress_bar(options.progress, total=steps, desc=prepared.case_id)
    writer: CaseWriter | None = None
    written: dict[str, dict[str, Any]] = {}
    dicom_future = None
    try:
        sigma_scale = sigma_scale_of(loaded.payload) if options.sigma_scaling else 1.0
        # On a GPU the maps stay there and are resampled there (DESIGN.md section 3).
        maps, net_affine, net_shape = predict_on_network_grid(
            loaded, prepared.network_mr, mc_samples=mc_samples, overlap=overlap, sw_batch_size=sw_batch_size,
            device=device, amp_dtype=amp_dtype, sigma_scale=sigma_scale, timings=timings,
            keep_on_device=device.type == "cuda", save_samples=options.save_samples)
        bar.update(2)
        try:
            writer = CaseWriter(prepared.final_dir, pool)
        except OSError as err:
            raise VolumeError(f"{prepared.final_dir}: cannot write ({err.strerror}); check space and "
                              "permissions") from err
        on_input = {}
        midline, laterality = None, None
        resample_s, t0 = 0.0, time.perf_counter()
        # The input MR's body mask, derived in prepare_case (read ahead) where the DICOM outputs or the review
        # need it; the sCT's outline on a finer grid uses the same one (else derives it if it applies).
        input_body = prepared.input_body
        review = (CaseReview(prepared.case_id, volume, loaded.label_names, thresholds_of(loaded.payload), sigma_scale,
                             input_body) if options.review else None)
        for stem, array, dtype, units in input_grid_outputs(maps, net_affine, volume, cfg.data.ct_scale_hu,
                                                            mc_samples, keep_probs=options.save_probabilities,
                                                            input_body=input_body):
            resample_s += time.perf_counter() - t0
            writer.submit(write_like, array, volume, writer.tmp_dir / f"{stem}{suffix}", dtype)
            written[stem] = output_entry(stem, f"{stem}{suffix}", file_format, dtype, units, array,
                                         loaded.label_names)
            if stem == "sct":
                midline = midline_x(array > BODY_HU, volume.affine)  # for the laterality guard below
            elif stem == "seg":
                laterality = laterality_of(prepared.case_id, array, volume.affine, loaded.label_names, midline)
            # σ maps too when the DICOM grid is not the input's: they are put onto it beside the CT.
            if dicom_out and (stem in ("sct", "seg") or
                              (options.dicom_grid != "input" and stem.startswith("sct_sigma"))):
                on_input[stem] = array
            if review is not None:
                review.keep(stem, array)
            del array
            bar.update(1)
            t0 = time.perf_counter()
        resample_s += time.perf_counter() - t0
        timings["resample_s"] = resample_s
        del maps
        review_future = (writer.submit(review.write, writer.tmp_dir / REVIEW_FOLDER, laterality)
                         if review is not None else None)
        if dicom_out:
            from radmtl.inference.dicom_out import DICOM_FOLDER, GRID_MAPS_FOLDER, write_dicom_outputs

            if "sct" not in on_input:
                raise RadmtlError(f"{source.argument}: the model has no sCT task; --dicom-out needs one")
            sigma_maps = {stem: on_input.pop(stem) for stem in list(on_input) if stem.startswith("sct_sigma")}
            dicom_future = writer.submit(
                write_dicom_outputs, writer.tmp_dir / DICOM_FOLDER, sct_hu=on_input.pop("sct"),
                labels=on_input.pop("seg", None), label_names=loaded.label_names, volume=volume,
                identity=prepared.identity, source=prepared.source_series, model_sha256=source.sha256,
                hu_range=tuple(cfg.data.ct_clip_hu), case_id=prepared.case_id,
                patient_position=options.patient_position, grid=options.dicom_grid, sigma_maps=sigma_maps,
                maps_suffix=suffix, input_body=input_body)
            written["dicom"] = {"file": f"{DICOM_FOLDER}/", "format": "dicom",
                                "dtype": "int16 CT series + RT structure set", "units": "HU"}
            if sigma_maps:  # only off the input grid (--dicom-grid axial)
                written["dicom_grid"] = {"file": f"{GRID_MAPS_FOLDER}/", "format": file_format, "dtype": "float32",
                                         "units": "HU", "maps": sorted(sigma_maps)}
    except BaseException:
        bar.close()
        if writer is not None:
            writer.discard()
        remove_if_empty(prepared.created)
        raise
    t_resampled = time.perf_counter()
    context = dict(mc_samples=mc_samples, overlap=overlap, sw_batch_size=sw_batch_size, device=device,
                   amp_dtype=amp_dtype, sigma_scale=sigma_scale, net_affine=net_affine, net_shape=net_shape,
                   laterality=laterality)

    def finish() -> CaseResult:
        try:
            writer.wait()
            timings["write_s"] = writer.write_s
            timings["write_wait_s"] = writer.blocked_s + time.perf_counter() - t_resampled
            timings["total_s"] = time.perf_counter() - t_start
            verdict = review_future.result() if review_future is not None else None
            if verdict is not None:
                written["review"] = {"file": f"{REVIEW_FOLDER}/", "format": "json, png, html", "files": verdict["files"]}
            provenance = case_provenance(loaded, source, prepared, options, written, timings, context)
            if dicom_future is not None:
                provenance["dicom"] = dicom_future.result()
            if verdict is not None:
                provenance["review"] = {key: verdict[key] for key in ("verdict", "reasons", "codes")}
            try:
                (writer.tmp_dir / PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
                writer.publish()
            except OSError as err:
                raise VolumeError(f"{prepared.final_dir}: cannot write ({err.strerror}); check space and "
                                  "permissions") from err
            bar.update(1)
        except RadmtlError as err:
            log.debug("case %s failed", prepared.case_id, exc_info=True)
            writer.discard()
            remove_if_empty(prepared.created)
            return CaseResult(case_id=prepared.case_id, seconds=time.perf_counter() - t_start, error=str(err),
                              rank=options.rank)
        except BaseException:
            writer.discard()
            remove_if_empty(prepared.created)
            raise
        finally:
            bar.close()
        outputs = [info["file"] for info in written.values()] + [PROVENANCE]
        flags = ["laterality"] if laterality is not None and laterality["status"] == "swapped" else []
        if verdict is not None:
            flags = sorted(set(flags) | set(verdict["codes"]))
        return CaseResult(case_id=prepared.case_id, seconds=time.perf_counter() - t_start, outputs=outputs,
                          flags=flags, rank=options.rank)

    return finish


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


def run_cases(loaded: Any, source: ModelSource, cases: list[tuple[str, Any]], output: Path, options: InferOptions,
              on_result: Callable[[CaseResult], None] | None = None) -> list[CaseResult]:
    """Run ``cases`` with the loaded model, overlapping reading, the network and writing (:func:`run_inference`).

    ``on_result`` is called with each case's result as soon as it is known (on the publishing thread
    for a case that ran), so that a caller can record progress that survives a killed process.
    """
    report = on_result or (lambda result: None)

    def prepare(case: tuple[str, Any]) -> PreparedCase:
        return prepare_case(loaded, case[0], case[1], output, options.dicom_out, body_mask=options.review)

    def finish_and_report(finish: Callable[[], CaseResult]) -> CaseResult:
        result = finish()
        report(result)
        return result

    slots: list[CaseResult | Future] = []
    writer_pool = (ThreadPoolExecutor(WRITERS, thread_name_prefix="radmtl-write") if WRITERS > 0
                   else contextlib.nullcontext())
    with writer_pool as writers, ThreadPoolExecutor(1, thread_name_prefix="radmtl-publish") as publisher:
        finishing: Future | None = None
        for (case_id, _), prepared in read_ahead(cases, prepare):
            t0 = time.perf_counter()
            try:
                finish = start_case(loaded, source, prepared.result(), options, writers, t0)
            except RadmtlError as err:
                log.debug("case %s failed", case_id, exc_info=True)
                result = CaseResult(case_id=case_id, seconds=time.perf_counter() - t0, error=str(err),
                                    rank=options.rank)
                report(result)
                slots.append(result)
                continue
            if finishing is not None:  # one case finishing at a time
                futures_wait([finishing])
            finishing = publisher.submit(finish_and_report, finish)
            slots.append(finishing)
        return [slot.result() if isinstance(slot, Future) else slot for slot in slots]


def run_pending(model: str, cases: list[tuple[str, Any]], output: Path, options: InferOptions,
                tracking_uri: str | None = None,
                on_result: Callable[[CaseResult], None] | None = None) -> list[CaseResult]:
    """Run the cases not published yet (all of them with ``options.overwrite``); results in case order.

    A case whose folder already holds ``provenance.json`` is reported skipped. The model is loaded
    only when some case is left to run.

    Raises:
        RadmtlError: the model cannot be loaded.
    """
    report = on_result or (lambda result: None)
    results = {case_id: CaseResult(case_id=case_id, seconds=0.0, skipped=True, rank=options.rank)
               for case_id, _ in cases if not options.overwrite and is_done(output, case_id)}
    for result in results.values():
        report(result)
    if results:
        log.info("%s: %d case(s) skipped, published by an earlier run (provenance.json); --overwrite runs them "
                 "again", output, len(results))
    pending = [case for case in cases if case[0] not in results]
    if pending:
        loaded, source = load_model(model, tracking_uri, options.device)
        check_model_options(options, loaded.cfg)  # T may be the model's: refused before any case runs
        log.info("%d case(s) to run, model %s", len(pending), source.checkpoint)
        results.update((r.case_id, r) for r in run_cases(loaded, source, pending, output, options, on_result))
    return [results[case_id] for case_id, _ in cases]


def run_inference(
    model: str,
    input_path: str | Path,
    output: str | Path,
    options: InferOptions = InferOptions(),
    tracking_uri: str | None = None,
) -> list[CaseResult]:
    """Run every case of ``input_path`` in this process; a failing case is recorded and the others still run.

    A case an earlier run published into ``output`` (its folder holds ``provenance.json``) is skipped
    unless ``options.overwrite``. Three things overlap: the next case is read and preprocessed on a
    background thread (:func:`~radmtl.inference.inputs.read_ahead`) while the network runs, each map is
    written on the writer threads while the next one is resampled, and a case's last writes and its
    publication run while the next case is predicted. At most one case is read ahead and one is
    finishing, which bounds memory. Several processes share a cohort out in :mod:`radmtl.inference.cohort`.

    Raises:
        RadmtlError: problems that stop every case (model, input, output folder, options).
    """
    check_options(options)
    cases = find_input_cases(input_path, options)
    # The root and every case's parent made up front, what killed runs left removed, before anything is written.
    output, created = prepare_output(output, cases)
    try:
        # The case count is logged once the model is loaded (run_pending): a model that cannot be fetched
        # gets its one error line and nothing before it.
        return run_pending(model, cases, output, options, tracking_uri)
    finally:
        remove_empty_folders(created)  # leave no folder this run made and wrote nothing into

