"""Training on several processes: PyTorch's torchrun + DistributedDataParallel, nothing home-made.

``torchrun --nproc_per_node N -m radmtl train …`` starts N copies of ``radmtl train``; each reads
its place (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, the rendezvous address) from the environment
torchrun sets, and :func:`init_distributed` (:mod:`radmtl.distributed`, shared with inference) joins
them into one process group: NCCL when the processes run on CUDA (one GPU each, ``cuda:LOCAL_RANK``),
Gloo on the CPU. Without torchrun's
environment (or with ``WORLD_SIZE=1``) everything here is a no-op and training is the plain
single-process loop.

What each piece of the run does under N processes (README "Training on several GPUs or nodes"):

* **Batch and learning rate are per rank.** ``train.batch_size`` is each process's batch, so one
  optimiser step sees N × batch_size cases; ``train.lr`` is not rescaled (scale it yourself if you
  want the linear rule); an epoch is still ``train.steps_per_epoch`` optimiser steps.
* **Data:** one draw of cases per epoch, the same on every rank, dealt out rank by rank, and each
  rank's random crops and augmentations seeded from (seed, epoch, rank), so no two ranks train on
  the same patch and a resumed epoch is the same epoch.
* **Gradients:** DDP's reducer averages them (see :func:`average_gradients` for how this meets the
  per-task gradient passes of ``training/step.py``); the learned loss log-variances live outside
  the network and are averaged with one explicit all-reduce, so every rank keeps identical weights.
* **Validation is sharded:** rank r validates cases r, r + N, …; the per-case rows are gathered and
  averaged on every rank, so all ranks agree on the best epoch.
* **Rank 0 alone** holds the run folder's lock, logs to MLflow and ``train.log``, writes checkpoints,
  ``metrics.jsonl`` and QA pictures; the other ranks log warnings only.
* **Failure:** a rank that raises exits non-zero, and torchrun then stops the others (SIGTERM, then
  SIGKILL); a rank stuck in a collective gives up after ``RADMTL_DIST_TIMEOUT_S`` seconds
  (default 1800) instead of hanging for ever.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.distributed as dist
from torch import Tensor, nn

# The process group itself (torchrun's environment, the rank's device, joining and leaving, passing
# Python objects) is shared with inference and lives below both stages; it is re-exported here for
# the training modules and tests that import it from this module.
from radmtl.distributed import (DEFAULT_TIMEOUT_S, TIMEOUT_ENV, DistContext, barrier, context_from_env,
                                gather_lists, init_distributed, quiet_other_ranks, shutdown)

log = logging.getLogger(__name__)


def wrap_model(model: nn.Module, ctx: DistContext, device: torch.device) -> nn.Module:
    """DDP around the network (it also copies rank 0's weights to every rank at the start)."""
    if not ctx.enabled:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a DDP wrapper (validation and checkpoints use it directly)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def average_gradients(model: nn.Module, log_vars: list[Tensor]) -> None:
    """Average ``.grad`` over the ranks: the network's through DDP, the loss's log-variances by hand.

    DDP's reducer is driven by the autograd hooks of a ``backward()``; the step's per-task
    ``torch.autograd.grad`` passes (needed to measure and clip each task's gradient) do not fire
    them. So the summed local gradients are first put in ``.grad``, and one backward of a zero that
    touches every parameter then lets the reducer average ``.grad`` in its buckets — DDP's own
    gradient-accumulation path (local gradients already in ``.grad``, one synchronised backward
    averages them), at the cost of a few parameter-sized additions, not a second backward pass.
    """
    if not isinstance(model, nn.parallel.DistributedDataParallel):
        return
    touch_every_parameter(model).backward()
    average_log_var_gradients(log_vars)


def touch_every_parameter(model: nn.Module) -> Tensor:
    """Under DDP, a zero that depends on every parameter of the network (a 0-dim tensor); else 0.

    Added to a loss, it makes every parameter take part in the backward, as DDP's reducer requires
    (``find_unused_parameters`` would search the graph on every step instead).
    """
    if not isinstance(model, nn.parallel.DistributedDataParallel):
        return torch.zeros(())
    params = [p for p in model.module.parameters() if p.requires_grad]
    return torch.stack([(p.reshape(-1)[:1] * 0.0).sum() for p in params]).sum()


def average_log_var_gradients(log_vars: list[Tensor]) -> None:
    """Average the loss's learned log-variances' ``.grad`` over the ranks (they live outside DDP)."""
    if log_vars and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in log_vars]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        offset = 0
        for p, g in zip(log_vars, grads):
            p.grad = flat[offset:offset + g.numel()].view_as(g).clone()
            offset += g.numel()


def all_finite(value: float, ctx: DistContext, device: torch.device) -> bool:
    """True when ``value`` is finite on every rank, so all ranks stop together on a NaN loss."""
    if not ctx.enabled:  # one process: no tensor, no device round trip on every step
        return math.isfinite(value)
    finite = torch.tensor([1.0 if math.isfinite(value) else 0.0], device=device)
    dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite.item() > 0)


__all__ = ["DEFAULT_TIMEOUT_S", "TIMEOUT_ENV", "DistContext", "all_finite", "average_gradients", "barrier", "context_from_env", "gather_lists",
           "init_distributed", "quiet_other_ranks", "shutdown", "unwrap", "wrap_model"]
