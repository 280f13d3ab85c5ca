"""One process's place in a run of several, as torchrun sets it: shared by training and inference.

``torchrun --nproc_per_node N -m radmtl …`` starts N copies of radmtl; each reads its place (``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, the rendezvous address) from the environment torchrun sets. Here is what
is not specific to a stage: reading that place (:func:`context_from_env`), taking this rank's device
(:func:`rank_device`: ``cuda:LOCAL_RANK``, or the CPU), joining the process group
(:func:`init_distributed`: NCCL on CUDA unless the caller asks for Gloo, Gloo on the CPU), Python objects
passed between ranks, and leaving. Without torchrun's environment (or with ``WORLD_SIZE=1``) everything
here is a no-op. What the ranks of a training run do together (DDP, averaged log-variances) stays in
:mod:`radmtl.training.distributed`; how ``radmtl infer`` shares a cohort out is
:mod:`radmtl.inference.cohort`.
"""

from __future__ import annotations

import gc
import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

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


def rank_device(ctx: DistContext, device_name: str) -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` (made the current CUDA device) or the CPU.

    ``device_name`` is ``--device``: ``auto`` uses one GPU per process when there are GPUs, else CPU.
    """
    use_cuda = device_name in ("auto", "cuda") and torch.cuda.is_available()
    if device_name == "cuda" and not use_cuda:
        raise RadmtlError("--device cuda: no CUDA device is available; use --device cpu or auto")
    if not use_cuda:
        return torch.device("cpu")
    if ctx.local_rank >= torch.cuda.device_count():
        raise RadmtlError(f"torchrun: local rank {ctx.local_rank} but only {torch.cuda.device_count()} GPU(s) "
                          "on this node; lower --nproc_per_node")
    device = torch.device("cuda", ctx.local_rank)
    torch.cuda.set_device(device)
    return device


def init_distributed(device_name: str, backend: str | None = None,
                     timeout_s: float | None = None) -> tuple[DistContext, torch.device | None]:
    """Join torchrun's process group; returns the context and this rank's device (None: single process).

    Args:
        device_name: ``--device`` (:func:`rank_device`).
        backend: None: NCCL when the rank runs on CUDA, else Gloo; ``"gloo"`` where only Python objects
            travel between the ranks (inference), which needs no NCCL communicator on the GPU.
        timeout_s: how long a collective waits for the other ranks; None: ``RADMTL_DIST_TIMEOUT_S``, else
            1800 s.
    """
    ctx = context_from_env()
    if not ctx.enabled:
        return ctx, None
    device = rank_device(ctx, device_name)
    use_cuda = device.type == "cuda"
    if timeout_s is None:
        timeout_s = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    backend = backend or ("nccl" if use_cuda else "gloo")
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s),
                                device_id=device if use_cuda and backend == "nccl" else None)
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


def gather_lists(items: list, ctx: DistContext) -> list:
    """Every rank's list, concatenated in rank order, on every rank."""
    if not ctx.enabled:
        return list(items)
    gathered: list[list | None] = [None] * ctx.world_size
    dist.all_gather_object(gathered, list(items))
    return [item for part in gathered for item in (part or [])]


def broadcast_from_main(value: Any, ctx: DistContext) -> Any:
    """Rank 0's ``value`` (any picklable object) on every rank; also a barrier behind rank 0."""
    if not ctx.enabled:
        return value
    box = [value if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def quiet_other_ranks(ctx: DistContext) -> None:
    """Ranks other than 0 log warnings only, so the console shows one run, not N copies of it."""
    if ctx.enabled and not ctx.is_main:
        logging.getLogger("radmtl").setLevel(logging.WARNING)


__all__ = ["DEFAULT_TIMEOUT_S", "TIMEOUT_ENV", "DistContext", "barrier", "broadcast_from_main", "context_from_env",
           "gather_lists", "init_distributed", "quiet_other_ranks", "rank_device", "shutdown"]
