"""What each epoch draws and how the learning rate moves: per-epoch seeding, the sampler, the schedule.

An epoch is ``train.steps_per_epoch`` optimiser steps on cases drawn with replacement (nnU-Net's
iterations, not passes over the cases), reseeded from (seed, epoch) so that an epoch is the same
whether a run went straight through or was killed and resumed.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from monai.data import DataLoader
from torch.utils.data import RandomSampler

from radmtl.config import Config


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    """Linear warm-up to the base LR, then cosine decay to 5 % of it, stepped per optimiser step.

    Applies to the network's groups only: the ``log_vars`` group keeps its own constant rate, so
    the learned task weights are neither starved during warm-up nor frozen by the decay.
    """

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    def constant(step: int) -> float:
        return 1.0

    lambdas = [constant if group.get("name") == "log_vars" else factor for group in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)


def seed_epoch(seed: int, epoch: int, rank: int = 0) -> int:
    """Seed torch, NumPy (and return the seed for the MONAI transforms) from (seed, epoch, rank).

    Rank 0's seed is the single-process one; other ranks get their own, so under torchrun each
    rank draws its own crops, augmentations and dropout masks.
    """
    epoch_seed = (seed * 1_000_003 + epoch + 7_919 * rank) % (2**31 - 1)
    torch.manual_seed(epoch_seed)
    np.random.seed(epoch_seed)
    return epoch_seed


def epoch_loader(train_ds, cfg: Config, epoch_seed: int, rank: int = 0, world_size: int = 1) -> DataLoader:
    """``steps_per_epoch`` batches of cases drawn with replacement (0: one shuffled pass).

    ``epoch_seed`` must be the same on every rank (rank 0's): under torchrun the ranks make one
    draw of ``world_size`` × the cases and each takes every ``world_size``-th, so all ranks take
    the same number of steps (DDP needs that) and together follow one sequence of cases.
    """
    generator = torch.Generator().manual_seed(epoch_seed)
    sampler = None
    if world_size > 1:
        per_rank = (cfg.train.steps_per_epoch * cfg.train.batch_size if cfg.train.steps_per_epoch
                    else math.ceil(len(train_ds) / world_size))
        if cfg.train.steps_per_epoch:
            order = torch.randint(len(train_ds), (per_rank * world_size,), generator=generator)
        else:  # one pass: a shuffled permutation, topped up from its start so every rank gets per_rank
            perm = torch.randperm(len(train_ds), generator=generator)
            order = perm.repeat(math.ceil(per_rank * world_size / len(train_ds)))[: per_rank * world_size]
        sampler = order[rank::world_size].tolist()
    elif cfg.train.steps_per_epoch:
        sampler = RandomSampler(train_ds, replacement=True, generator=generator,
                                num_samples=cfg.train.steps_per_epoch * cfg.train.batch_size)
    return DataLoader(train_ds, batch_size=cfg.train.batch_size, sampler=sampler, shuffle=sampler is None,
                      num_workers=cfg.data.num_workers, generator=generator)


__all__ = ["epoch_loader", "seed_epoch", "warmup_cosine"]
