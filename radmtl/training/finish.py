"""After the last epoch: σ recalibration, the logged and registered model, the training curves."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from radmtl.config import Config
from radmtl.errors import RadmtlError
from radmtl.nn.checkpoint import BEST, LATEST
from radmtl.tracking.registry import register_model
from radmtl.tracking.tracker import Tracker

log = logging.getLogger(__name__)

VALIDATION_REVIEW = "validation_review"  # the run folder's, and the MLflow run's, review/ of each validation case


def recalibrate_best(out_dir: Path, val_cases: list, device: torch.device, tracker: Tracker, epoch: int) -> None:
    """Fit the σ-scaling factor into the best checkpoint and log it (DESIGN.md section 1)."""
    from radmtl.training.recalibration import recalibrate

    best = out_dir / BEST
    if not best.exists():
        return
    try:
        record = recalibrate(best, val_cases, device)
    except (ValueError, RadmtlError) as err:
        log.warning("σ recalibration failed (%s); %s keeps the uncalibrated σ", err, best)
        return
    if record is None:
        return
    metrics = {"sigma_scale": record["factor"]}
    for when in ("before", "after"):
        metrics |= {f"val_{k}_{when}_recalibration": v for k, v in record[when].items()}
    review = record["review_thresholds"]  # the per-case review's flag levels, fitted on the same voxels
    metrics |= {"review_sigma_total_hu": review["sigma_total_hu"], "review_precision": review["precision"],
                "review_recall": review["recall"], "review_case_flagged_fraction": review["case_flagged_fraction"],
                "review_rare_sigma_total_hu": review["rare_sigma_total_hu"],
                "review_case_rare_fraction": review["case_rare_fraction"]}
    tracker.log_metrics(metrics, step=epoch)
    review_validation_cases(best, val_cases, out_dir / VALIDATION_REVIEW, device, tracker)


def review_validation_cases(checkpoint: Path, val_cases: list, folder: Path, device: torch.device,
                            tracker: Tracker) -> None:
    """Run ``radmtl infer``'s path on each validation case and keep its ``review/`` (review.png logged).

    The review a user will get on a case like these, with the thresholds just fitted: the picture a person
    looks at in the MLflow UI to see what "flagged" means for this model. The maps themselves are dropped.
    """
    import shutil
    import tempfile

    from radmtl.inference.infer import InferOptions, run_inference
    from radmtl.inference.review_out import REVIEW_FOLDER

    options = InferOptions(device=device.type, progress=False)
    with tempfile.TemporaryDirectory(prefix="radmtl-val-review-") as scratch:
        for case in (c for c in val_cases if "mr" in c.paths):
            try:
                (result,) = run_inference(str(checkpoint), case.paths["mr"], Path(scratch) / case.case_id, options)
            except RadmtlError as err:
                log.warning("validation case %s: no review (%s)", case.case_id, err)
                continue
            review = Path(scratch) / case.case_id / result.case_id / REVIEW_FOLDER
            if result.error or not review.is_dir():
                log.warning("validation case %s: no review (%s)", case.case_id, result.error or "not written")
                continue
            shutil.copytree(review, folder / case.case_id, dirs_exist_ok=True)
            if (folder / case.case_id / "review.png").exists():
                tracker.log_artifact(folder / case.case_id / "review.png", artifact_path=f"{VALIDATION_REVIEW}/{case.case_id}")


def finish_run(cfg: Config, out_dir: Path, tracker: Tracker, state, register: str | None) -> None:
    """Log the best (else latest) checkpoint, the servable model (and register it), the training curves.

    ``state`` is the run's ``TrainState``; its ``registered`` is set when ``register`` is given.
    """
    best = out_dir / BEST if (out_dir / BEST).exists() else out_dir / LATEST
    tracker.wait_for_store()  # a store that stopped answering mid-run gets a last chance before the model
    tracker.log_artifact(best, artifact_path="checkpoints")
    from radmtl.inference.pyfunc_model import log_servable_model

    model_uri = log_servable_model(tracker, best)
    if model_uri is None and tracker.offline:  # for `radmtl train --sync-mlflow`, once the store answers
        tracker.note_unsent("model", {"checkpoint": best.name, "register": register,
                                      "best_metric": cfg.train.best_metric, "best_mode": cfg.train.best_mode,
                                      "best_epoch": state.best_epoch})
    if register is not None:
        state.registered = register_model(tracker, register, model_uri, cfg.train.best_metric, cfg.train.best_mode,
                                          state.best_epoch)
    from radmtl.evaluation.qa import training_curves

    curves = training_curves(out_dir / "metrics.jsonl", out_dir / "training_curves.png")
    if curves is not None:
        tracker.log_artifact(curves)
    tracker.log_artifact(out_dir / "train.log")


