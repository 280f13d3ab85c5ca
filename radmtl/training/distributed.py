"""Training on several processes: PyTorch's torchrun + DistributedDataParallel, nothing home-made.

``torchrun --nproc_per_node N -m radmtl train …`` starts N copies of ``radmtl train``; each reads
its place (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, the rendezvous address) from the environment
torchrun sets, and :func:`init_distributed` joins them into one process group: NCCL when the
processes run on CUDA (one GPU each, ``cuda:LOCAL_RANK``), Gloo on the CPU. Without torchrun's
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

import gc
import logging
import math
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor, nn

from radmtl.errors import RadmtlError

log = logging.getLogger(__name__)

TIMEOUT_ENV = "RADMTL_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 1800


@dataclass(frozen=True)
class DistContext:
    """This process's place in the run: rank r of ``world_size`` (1 = no torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def context_from_env() -> DistContext:
    """The place torchrun gave this process; a single process when torchrun did not start it."""
    try:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError as err:
        raise RadmtlError(f"torchrun environment: WORLD_SIZE/RANK/LOCAL_RANK must be integers ({err}); "
                          "start several processes with torchrun, or unset these variables") from err
    if world_size < 1 or not 0 <= rank < world_size:
        raise RadmtlError(f"torchrun environment: RANK={rank} is not within WORLD_SIZE={world_size}")
    return DistContext(rank, world_size, local_rank)


def init_distributed(device_name: str) -> tuple[DistContext, torch.device | None]:
    """Join torchrun's process group; returns the context and this rank's device (None: single process).

    ``device_name`` is ``--device``: ``auto`` uses one GPU per process when there are GPUs, else CPU.
    """
    ctx = context_from_env()
    if not ctx.enabled:
        return ctx, None
    use_cuda = device_name in ("auto", "cuda") and torch.cuda.is_available()
    if device_name == "cuda" and not use_cuda:
        raise RadmtlError("--device cuda: no CUDA device is available; use --device cpu or auto")
    if use_cuda:
        if ctx.local_rank >= torch.cuda.device_count():
            raise RadmtlError(f"torchrun: local rank {ctx.local_rank} but only {torch.cuda.device_count()} GPU(s) "
                              "on this node; lower --nproc_per_node")
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timeout,
                                device_id=device if use_cuda else None)
    if ctx.is_main:  # the other ranks' logs are quieted next; one line says how the run is spread
        log.info("%d processes under torchrun (backend %s); rank 0 on %s", ctx.world_size, dist.get_backend(),
                 device)
    return ctx, device


def shutdown(ctx: DistContext, finished: bool = True) -> None:
    """Leave the process group: together after a finished run, not at all after a failure.

    A failed rank must not wait for the others here (they may be stuck in a collective it left);
    torchrun stops them. Before destroying the group, the DDP wrapper (kept alive by reference
    cycles through its reducer) is collected: a reducer outliving its Gloo group aborts the
    process at exit ("terminate called without an active exception").
    """
    if not (finished and ctx.enabled and dist.is_initialized()):
        return
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


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


def gather_lists(items: list, ctx: DistContext) -> list:
    """Every rank's list, concatenated in rank order, on every rank."""
    if not ctx.enabled:
        return list(items)
    gathered: list[list | None] = [None] * ctx.world_size
    dist.all_gather_object(gathered, list(items))
    return [item for part in gathered for item in (part or [])]


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def quiet_other_ranks(ctx: DistContext) -> None:
    """Ranks other than 0 log warnings only, so the console shows one run, not N copies of it."""
    if ctx.enabled and not ctx.is_main:
        logging.getLogger("radmtl").setLevel(logging.WARNING)


__all__ = ["DistContext", "all_finite", "average_gradients", "barrier", "context_from_env", "gather_lists",
           "init_distributed", "quiet_other_ranks", "shutdown", "unwrap", "wrap_model"]
