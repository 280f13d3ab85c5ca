"""`radmtl train`: patch training with validation, atomic checkpoints, resume and MLflow tracking.

Read :func:`train` top to bottom: set-up, data, model, optimisation state, the epoch loop. Each
epoch reseeds every random source from (seed, epoch), so an epoch is the same whether the run
went straight through or was killed and resumed; the checkpoint written after the epoch is the
only state that matters, and per-step metrics of an unfinished epoch are never sent to MLflow,
so a resumed run has neither duplicated nor missing epochs.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from monai.data import CacheDataset

from radmtl.nn.checkpoint import BEST, LATEST, load_checkpoint, make_payload, save_checkpoint, set_rng_state
from radmtl.config import Config, config_from_dict, dump_config, flatten, load_config
from radmtl.device import amp_dtype_for, keep_freed_memory_for_reuse, resolve_device
from radmtl.errors import RadmtlError
from radmtl.data.atomic import atomic_path
from radmtl.nn.losses import MultiTaskLoss, parameter_groups
from radmtl.nn.model import build_model
from radmtl.tracking.datasets import log_case_datasets
from radmtl.tracking.environment import run_tags
from radmtl.tracking.registry import Registration, check_model_name
from radmtl.tracking.tracker import NullTracker, Tracker, make_run_name, start_tracking
from radmtl.training.console import attach_file_log, progress_bar, summary_line
from radmtl.training.data_setup import case_table, data_params, prepare_training_data
from radmtl.training.distributed import (DistContext, all_finite, context_from_env, gather_lists,
                                         init_distributed, quiet_other_ranks, shutdown, wrap_model)
from radmtl.training.best_checkpoint import reconcile_best
from radmtl.training.finish import finish_run, recalibrate_best
from radmtl.training.run_lock import prepare_run_dir, run_lock
from radmtl.training.schedule import epoch_loader, seed_epoch, warmup_cosine
from radmtl.training.step import forward_losses, optimise
from radmtl.data.transforms import case_dicts, data_keys, eval_transforms, training_transforms
from radmtl.training.validation import validate

log = logging.getLogger(__name__)


class NonFiniteLossError(RadmtlError):
    """The loss became NaN/Inf; the message names the step and the last good checkpoint."""


@dataclass
class TrainState:
    """What changes as training proceeds (everything else is rebuilt from the config)."""

    epoch: int = 0
    global_step: int = 0
    best_metric: float | None = None
    best_epoch: int | None = None
    run_id: str | None = None
    registered: Registration | None = None  # --register: the model version made at the end


def to_device(batch: dict, device: torch.device) -> dict[str, torch.Tensor]:
    out = {k: v.to(device, non_blocking=True) for k, v in batch.items() if isinstance(v, torch.Tensor)}
    if "labels" in out:
        out["labels"] = out["labels"].round().long()
    if "mask" in out:
        out["mask"] = (out["mask"] > 0.5).float()
    return out


def train(
    cfg: Config,
    data_dir: Path | Sequence[Path],
    out_dir: Path,
    *,
    resume: bool = False,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    device: str = "auto",
    progress: bool = True,
    tracker: Tracker | None = None,
    register: str | None = None,
) -> TrainState:
    """Train a model on one dataset folder or several; returns the final state. See the module
    docstring for the guarantees. ``register``: add the logged model to MLflow's Model Registry
    under this name at the end (:mod:`radmtl.tracking.registry`)."""
    data_dirs = [Path(data_dir)] if isinstance(data_dir, (str, Path)) else [Path(d) for d in data_dir]
    out_dir = Path(out_dir)
    if register is not None:
        check_model_name(register)
    ctx, dist_device = init_distributed(device)  # torchrun's process group; single process otherwise
    finished = False
    try:
        if not ctx.is_main:  # rank 0 owns the run folder, its lock and its log (training/distributed.py)
            quiet_other_ranks(ctx)
            state = _train(cfg, data_dirs, out_dir, resume, tracking_uri, experiment, device, progress,
                           tracker, register, ctx, dist_device)
        else:
            created = prepare_run_dir(out_dir)
            with run_lock(out_dir, created):
                file_log = attach_file_log(out_dir / "train.log")
                try:
                    state = _train(cfg, data_dirs, out_dir, resume, tracking_uri, experiment, device, progress,
                                   tracker, register, ctx, dist_device)
                finally:
                    logging.getLogger("radmtl").removeHandler(file_log)
                    file_log.close()
        finished = True
        return state
    finally:
        shutdown(ctx, finished)


def _train(cfg, data_dirs, out_dir, resume, tracking_uri, experiment, device_name, progress, tracker,
           register, ctx: DistContext, dist_device: torch.device | None) -> TrainState:
    # --- state to resume from --------------------------------------------------------------
    state = TrainState()
    payload = None
    latest = out_dir / LATEST
    if resume and latest.exists():
        payload = load_checkpoint(latest)
        # rank 0 owns the files: a kill between publishing latest and best is completed there
        best_metric, best_epoch = (reconcile_best(out_dir, payload) if ctx.is_main
                                   else (payload["best_metric"], payload["best_epoch"]))
        state = TrainState(payload["epoch"], payload["global_step"], best_metric, best_epoch,
                           payload["mlflow_run_id"])
        log.info("resuming %s from epoch %d (step %d)", out_dir, state.epoch, state.global_step)
        if payload.get("world_size", 1) != ctx.world_size:
            log.warning("--resume: the run trained with %d process(es) and goes on with %d; the epochs from "
                        "here draw their patches differently", payload.get("world_size", 1), ctx.world_size)
    elif resume:
        log.warning("--resume: %s not found; starting from epoch 1", latest)
    elif latest.exists():
        raise RadmtlError(f"{out_dir}: already holds a run ({LATEST}); add --resume to continue it "
                          "or choose another --out")

    if ctx.enabled and len(set(seen := gather_lists([state.epoch], ctx))) > 1:
        raise RadmtlError(f"--resume: the processes found different checkpoints in {out_dir} (epochs {seen} "
                          "by rank); every node must see the same --out: put it on a file system they share")

    # --- data ------------------------------------------------------------------------------
    no_config_given = cfg == Config()
    data = prepare_training_data(cfg, data_dirs)
    if payload is not None:  # the saved config rules; the data may only have fitted its tasks
        cfg = _config_for_resume(data.cfg, config_from_dict(payload["config"]), latest, no_config_given)
        data = replace(data, cfg=cfg)
    cfg, labels, train_cases, val_cases = data.cfg, data.labels, data.train_cases, data.val_cases
    keys = data_keys(cfg, train_cases + val_cases)
    log.info("data: %d training and %d validation cases from %s, keys %s", len(train_cases),
             len(val_cases), ", ".join(map(str, data_dirs)), list(keys))
    train_tf = training_transforms(cfg.data, keys, labels)
    cache_rate = 1.0 if cfg.data.cache else 0.0
    train_ds = CacheDataset(case_dicts(train_cases, keys), train_tf, cache_rate=cache_rate,
                            num_workers=None, progress=False)
    val_ds = CacheDataset(case_dicts(val_cases, keys), eval_transforms(cfg.data, keys),
                          cache_rate=cache_rate, num_workers=None, progress=False)

    # --- model and optimisation ------------------------------------------------------------
    device = dist_device or resolve_device(device_name)
    if device.type == "cpu":
        keep_freed_memory_for_reuse()  # each step's activations are reused, not page-faulted anew
    amp_dtype = amp_dtype_for(cfg.train.amp, device, training=True)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model).to(device)
    loss_fn = MultiTaskLoss(cfg.loss).to(device)
    optimizer = torch.optim.AdamW(parameter_groups(model, loss_fn, cfg.train.weight_decay, cfg.train.log_var_lr),
                                  lr=cfg.train.lr)
    steps_per_epoch = cfg.train.steps_per_epoch or math.ceil(math.ceil(len(train_ds) / ctx.world_size)
                                                             / cfg.train.batch_size)
    scheduler = warmup_cosine(optimizer, cfg.train.warmup_epochs * steps_per_epoch,
                              cfg.train.epochs * steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    if payload is not None:
        model.load_state_dict(payload["model_state"])
        loss_fn.load_state_dict(payload["loss_state"])
        optimizer.load_state_dict(payload["optimizer_state"])
        scheduler.load_state_dict(payload["scheduler_state"])
        scaler.load_state_dict(payload["scaler_state"])
        set_rng_state(payload["rng"])
    ddp_model = wrap_model(model, ctx, device)  # `model` stays the bare network: validation, checkpoints

    # --- tracking ----------------------------------------------------------------------------
    if not ctx.is_main:
        tracker = NullTracker()
    elif tracker is None:
        tracker = start_tracking(tracking_uri, experiment or cfg.tracking.experiment,
                                 make_run_name(out_dir, cfg.loss.weighting, data_dirs), out_dir, state.run_id)
    state.run_id = tracker.run_id
    if payload is not None:
        # files and values an earlier process kept for a store that did not answer (mlflow_unsent.json); its
        # model and final status are this run's to log again
        tracker.take_unsent()
        _flush_pending(tracker, payload, out_dir)
    if payload is None and ctx.is_main:
        tracker.log_params(flatten(cfg) | data_params(data, data_dirs) | {"dist.world_size": ctx.world_size})
        tracker.set_tags(run_tags(str(device)) | {"radmtl.out_dir": str(out_dir.resolve())})
        for name, text in (("config.yaml", dump_config(cfg)), ("cases.csv", case_table(data))):
            with atomic_path(out_dir / name) as tmp:
                tmp.write_text(text)
            tracker.log_artifact(out_dir / name)
        log_case_datasets(tracker, case_table(data), {c.case_id: c.paths for c in train_cases + val_cases}, data_dirs)
    log.info("model: %d parameters on %s%s%s; MLflow run %s", sum(p.numel() for p in model.parameters()),
             device, f" with {amp_dtype}" if amp_dtype else "",
             f", {ctx.world_size} processes (batch {cfg.train.batch_size} each)" if ctx.enabled else "",
             state.run_id or "(none)")

    # --- epochs --------------------------------------------------------------------------------
    status = "FAILED"
    try:
        for epoch in range(state.epoch + 1, cfg.train.epochs + 1):
            t0 = time.perf_counter()
            draw_seed = seed_epoch(cfg.seed, epoch)  # the same on every rank: which cases this epoch draws
            rank_seed = seed_epoch(cfg.seed, epoch, ctx.rank) if ctx.enabled else draw_seed  # crops, dropout
            train_tf.set_random_state(seed=rank_seed)
            loader = epoch_loader(train_ds, cfg, draw_seed, ctx.rank, ctx.world_size)
            step_metrics, epoch_metrics, n_patches = _train_epoch(
                ddp_model, loss_fn, optimizer, scheduler, scaler, loader, cfg, state, device, amp_dtype,
                epoch, progress and ctx.is_main, out_dir, ctx)
            elapsed = time.perf_counter() - t0
            epoch_metrics["patches_per_s"] = n_patches / max(elapsed, 1e-9)
            if epoch % cfg.train.val_every == 0 or epoch == cfg.train.epochs:
                # sharded: rank r validates cases r, r + N, …; the rows are gathered before averaging
                shard = (val_ds[i] for i in range(ctx.rank, len(val_ds), ctx.world_size))
                val_metrics, qa_paths = validate(model, shard, cfg, labels, device, amp_dtype,
                                                 qa_dir=out_dir / "qa" if ctx.is_main else None,
                                                 qa_prefix=f"epoch_{epoch:04d}",
                                                 gather=lambda rows: gather_lists(rows, ctx))
                epoch_metrics.update(val_metrics)
                improved = _update_best(state, epoch, val_metrics, cfg)
            else:
                qa_paths, improved = [], False
            state.epoch = epoch
            # Checkpoint first, carrying this epoch's metrics; then send them. A kill before the
            # save re-runs the epoch without any of its points in MLflow; a kill after it is
            # mended on resume by _flush_pending, so every point is logged exactly once.
            pending = step_metrics + [(epoch, epoch_metrics | {"epoch": epoch})]
            if ctx.is_main:
                ckpt = make_payload(cfg=cfg, label_names=labels, model=model, loss_fn=loss_fn,
                                    optimizer=optimizer, scheduler=scheduler, scaler=scaler, epoch=epoch,
                                    global_step=state.global_step, best_metric=state.best_metric,
                                    best_epoch=state.best_epoch, run_id=state.run_id)
                ckpt["pending_metrics"] = pending
                ckpt["pending_artifacts"] = [str(path.relative_to(out_dir)) for path in qa_paths]
                ckpt["world_size"] = ctx.world_size
                save_checkpoint(latest, ckpt)
                if improved:
                    save_checkpoint(out_dir / BEST, ckpt)
                _send(tracker, pending)
                for path in qa_paths:
                    tracker.log_artifact(path, artifact_path="qa")
            log.info(summary_line(epoch, cfg.train.epochs, epoch_metrics, elapsed, improved))
        if ctx.is_main:
            if cfg.train.recalibrate:
                recalibrate_best(out_dir, val_cases, device, tracker, state.epoch)
            finish_run(cfg, out_dir, tracker, state, register)
        status = "FINISHED"
        return state
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.end(status)


def _send(tracker: Tracker, pending: list[tuple[int, dict[str, float]]]) -> None:
    for step, metrics in pending:
        tracker.log_metrics(metrics, step=step)


def _flush_pending(tracker: Tracker, payload: dict, out_dir: Path) -> None:
    """Send what the killed process did not of the last checkpointed epoch: the metric points it
    had not logged, and that epoch's QA pictures (logged again: an artifact upload overwrites)."""
    epoch = payload["epoch"]
    pending = payload.get("pending_metrics") or []
    missing = tracker.mend([(int(step), dict(metrics)) for step, metrics in pending])
    if missing:
        log.info("resume: sent %d metric point(s) of epoch %d that the interrupted run had not logged "
                 "(metrics.jsonl and MLflow counted apart)", missing, epoch)
    for name in payload.get("pending_artifacts", []):
        if (out_dir / name).is_file():
            tracker.log_artifact(out_dir / name, artifact_path="qa")


def _train_epoch(model, loss_fn, optimizer, scheduler, scaler, loader, cfg, state, device, amp_dtype,
                 epoch, progress, out_dir, ctx: DistContext):
    model.train()
    loss_fn.train()
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    step_metrics: list[tuple[int, dict[str, float]]] = []
    n_steps = n_patches = 0
    bar = progress_bar(progress, len(loader), epoch, cfg.train.epochs)
    t0 = time.perf_counter()
    for batch in loader:
        batch = to_device(batch, device)
        terms, loss, parts = forward_losses(model, loss_fn, batch, amp_dtype)
        if not all_finite(parts["loss_total"], ctx, device):  # every rank stops on any rank's NaN
            last = out_dir / LATEST
            raise NonFiniteLossError(
                f"loss is {loss.item()} at step {state.global_step + 1} (epoch {epoch}); last good "
                f"checkpoint: {last if last.exists() else 'none yet'}; lower train.lr or check the data"
            )
        logging_step = (state.global_step + 1) % cfg.train.log_every == 0
        # Per-task gradient norms cost a backward pass per extra task: measured on logging steps only.
        grad_norms = optimise(terms, model, loss_fn, optimizer, scaler, cfg.train, measure=logging_step)
        scheduler.step()
        state.global_step += 1
        n_steps += 1
        n_patches += int(batch["mr"].shape[0])
        if "mae_sct" in parts:
            parts["mae_hu"] = parts["mae_sct"] * cfg.data.ct_scale_hu
        for key, value in parts.items():  # a task absent from a batch (mixed supervision) logs nothing
            sums[key] = sums.get(key, 0.0) + float(value)
            counts[key] = counts.get(key, 0) + 1
        if logging_step:
            norms = dict(zip(grad_norms, torch.stack(list(grad_norms.values())).tolist())) if grad_norms else {}
            step_metrics.append((state.global_step, {f"step_{k}": float(v) for k, v in (parts | norms).items()}
                                 | {"lr": scheduler.get_last_lr()[0]}))
        rate = n_patches / max(time.perf_counter() - t0, 1e-9)
        bar.set_postfix(loss=f"{loss.item():.4f}", patches_s=f"{rate:.1f}", refresh=False)
        bar.update(1)
    bar.close()
    # Epoch means over every rank's steps (per-step values, logged every log_every, are rank 0's).
    totals: dict[str, float] = {}
    numbers: dict[str, int] = {}
    all_patches = 0
    for rank_sums, rank_counts, rank_patches in gather_lists([(sums, counts, n_patches)], ctx):
        for key, value in rank_sums.items():
            totals[key] = totals.get(key, 0.0) + value
            numbers[key] = numbers.get(key, 0) + rank_counts[key]
        all_patches += rank_patches
    epoch_metrics = {f"train_{k}": v / numbers[k] for k, v in totals.items()}
    return step_metrics, epoch_metrics, all_patches


def _update_best(state: TrainState, epoch: int, val_metrics: dict[str, float], cfg: Config) -> bool:
    name = cfg.train.best_metric
    if name not in val_metrics:
        raise RadmtlError(f"train.best_metric: {name!r} is not a validation metric of this run; "
                          f"choose one of {sorted(val_metrics)}")
    value = val_metrics[name]
    if not math.isfinite(value):
        return False
    better = state.best_metric is None or (
        value < state.best_metric if cfg.train.best_mode == "min" else value > state.best_metric)
    if better:
        state.best_metric, state.best_epoch = value, epoch
    return better


def _config_for_resume(cfg: Config, saved: Config, path: Path, no_config_given: bool) -> Config:
    """Resume with the saved config; only ``train.epochs`` may change (to extend a run)."""
    if no_config_given:
        return saved
    candidate = replace(saved, train=replace(saved.train, epochs=cfg.train.epochs))
    if candidate != cfg:
        ours, theirs = flatten(cfg), flatten(candidate)
        key = next(k for k in theirs if ours.get(k) != theirs[k])
        raise RadmtlError(f"--resume: {key} is {ours.get(key)!r} here but {theirs[key]!r} in {path}; "
                          "resume with the same config (only train.epochs may change) or use a new --out")
    return candidate


def train_from_cli(args: argparse.Namespace) -> int:
    if getattr(args, "sync_mlflow", False):
        from radmtl.training.sync import sync_run

        print(sync_run(args.out, args.tracking_uri))
        return 0
    cfg = load_config(args.config, args.overrides)
    data_dir = args.data or [Path(__file__).resolve().parents[2] / "data_samples"]
    progress = not args.no_progress and sys.stderr.isatty()
    state = train(cfg, data_dir, args.out, resume=args.resume, tracking_uri=args.tracking_uri,
                  experiment=args.experiment, device=args.device, progress=progress,
                  register=getattr(args, "register", None))
    if not context_from_env().is_main:  # under torchrun the summary is rank 0's to print
        return 0
    best = f"{state.best_metric:.4g} at epoch {state.best_epoch}" if state.best_metric is not None else "n/a"
    print(f"trained {state.epoch} epochs; best {cfg.train.best_metric} {best}")
    print(f"checkpoints: {Path(args.out) / BEST}, {Path(args.out) / LATEST}")
    if state.run_id:
        print(f"MLflow run: {state.run_id}")
    if state.registered is not None:
        print(state.registered.line())
    return 0


__all__ = ["NonFiniteLossError", "TrainState", "train", "train_from_cli", "NullTracker"]
