"""One optimisation step of the multi-task network.

The default (``train.grad_clip_mode = global``) is the objective of DESIGN.md section 1 as it is: the
weighted task terms are summed and back-propagated once, and one global clip of the summed gradient
scales both tasks alike, so the learned σ(x) and σ_seg decide how much each task moves the shared
encoder — the uncertainty weighting of Kendall et al. (2018) and Bragman et al. (2018).

On a logging step (and in the other modes) each task's weighted term is back-propagated on its own
(``torch.autograd.grad``) to measure the gradient norm it sends into the shared encoder, which is what
decides whether one task starves the other. Without per-task clipping the summed gradients equal those
of the total loss, so measuring changes nothing but the cost: one extra backward pass through the
shared encoder per extra task, paid on logging steps only.

Two departures from the method, each an option:

- ``per_task`` clips each task's gradient to ``grad_clip`` separately before the sum. Whenever a task's
  norm exceeds the clip, its weight no longer scales its update.
- ``balanced`` also rescales each task's *encoder* gradient to the mean of the tasks' clipped encoder
  norms (GradNorm, Chen et al. 2018, with α = 0, in closed form). It **replaces the cross-task
  weighting in the shared encoder by equal norms**: a task weight, fixed or learned, then cancels
  there (only the decoders, heads and log-variances keep their own gradients).

The learned scalar log-variances of the loss are in their own optimiser group and are never
clipped: their gradient is a scalar that Adam normalises anyway, and clipping it together with
the network would tie how fast the task weights move to the network's gradient scale.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from radmtl.config import TrainConfig
from radmtl.training.distributed import average_gradients, average_log_var_gradients, touch_every_parameter, unwrap

# Added to a norm before dividing by it (clip factors, ratios), so a zero gradient gives no NaN.
_NORM_EPS = 1e-12


def _norm(grads: list[Tensor]) -> Tensor:
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))


def forward_losses(
    model: nn.Module,
    loss_fn: nn.Module,
    batch: dict[str, Tensor],
    amp_dtype: torch.dtype | None,
) -> tuple[dict[str, Tensor], Tensor, dict[str, float]]:
    """Run the network and the loss: the per-task terms, the total and the logged components."""
    device_type = batch["mr"].device.type
    with torch.autocast(device_type=device_type, dtype=amp_dtype, enabled=amp_dtype is not None):
        outputs = model(batch["mr"])
    # The loss runs in float32: exp(−s) of a bf16 log-variance loses too much precision.
    terms, logged = loss_fn.task_terms({k: v.float() for k, v in outputs.items()}, batch)
    total, parts = loss_fn.combine(terms, logged)
    return terms, total, parts


def optimise(
    terms: dict[str, Tensor],
    model: nn.Module,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    train_cfg: TrainConfig,
    measure: bool = True,
) -> dict[str, Tensor]:
    """Back-propagate the task terms, clip, and take one optimiser step.

    Args:
        terms: task name → that task's weighted loss term (from ``MultiTaskLoss.task_terms``).
        model: the network, or DDP around it; its ``encoder`` is the shared part.
        loss_fn: the loss module; its parameters are the learned log-variances.
        optimizer: holds the network's and the loss's parameters.
        scaler: the AMP grad scaler (disabled unless fp16).
        train_cfg: ``grad_clip`` and ``grad_clip_mode`` (``global``, ``per_task`` or ``balanced``).
        measure: measure each task's gradient (a logging step). Under ``global`` a step that does not
            measure is one backward pass of the total and returns no norms; the update is the same.

    Returns:
        Gradient norms (0-dim tensors, before clipping and in unscaled units), where measured:
        ``grad_norm_encoder_<task>`` (the task's gradient on the shared encoder),
        ``grad_norm_<task>`` (on the whole network) and, with two tasks,
        ``grad_ratio_encoder_sct_seg`` and ``grad_ratio_encoder_sct_seg_applied`` (after clipping and
        balancing).
    """
    net = unwrap(model)
    net_params = [p for p in net.parameters() if p.requires_grad]
    encoder_ids = {id(p) for p in net.encoder.parameters()}
    log_vars = [p for p in loss_fn.parameters() if p.requires_grad]
    inv_scale = 1.0 / scaler.get_scale() if scaler.is_enabled() else 1.0
    per_task = train_cfg.grad_clip_mode in ("per_task", "balanced")
    balanced = train_cfg.grad_clip_mode == "balanced"

    optimizer.zero_grad(set_to_none=True)
    if not per_task and not measure:
        total = sum(terms.values())
        # Under DDP every parameter must take part in the backward (a batch without one task's targets
        # leaves its decoder unused); a zero touch costs a few additions. DDP's hooks then average the
        # network's gradients during this backward; the loss's log-variances are averaged by hand.
        total = total + touch_every_parameter(model)
        scaler.scale(total).backward()
        average_log_var_gradients(log_vars)
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(net_params, train_cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        return {}
    log_var_grads: list[Tensor | None] = [None] * len(log_vars)
    clipped: dict[str, list[Tensor | None]] = {}
    norms: dict[str, Tensor] = {}
    applied: dict[str, Tensor] = {}
    tasks = list(terms)
    for i, task in enumerate(tasks):
        grads = torch.autograd.grad(scaler.scale(terms[task]), net_params + log_vars,
                                    retain_graph=i < len(tasks) - 1, allow_unused=True)
        net_grads, lv_grads = grads[: len(net_params)], grads[len(net_params):]
        present = [g for g in net_grads if g is not None]
        encoder = [g for p, g in zip(net_params, net_grads) if g is not None and id(p) in encoder_ids]
        norms[f"grad_norm_encoder_{task}"] = (_norm(encoder) * inv_scale).detach()
        task_norm = (_norm(present) * inv_scale).detach()
        norms[f"grad_norm_{task}"] = task_norm
        factor = (train_cfg.grad_clip / (task_norm + _NORM_EPS)).clamp(max=1.0) if per_task else None
        applied[task] = norms[f"grad_norm_encoder_{task}"] * (factor if factor is not None else 1.0)
        clipped[task] = [g * factor.to(g.device) if factor is not None and g is not None else g for g in net_grads]
        for j, g in enumerate(lv_grads):
            if g is not None:
                log_var_grads[j] = g if log_var_grads[j] is None else log_var_grads[j] + g
    if balanced:
        # Only tasks whose gradient reaches the encoder take part: a task alone in the step (a batch
        # with targets for one task only, under mixed supervision) keeps its norm, and a zero gradient
        # is not blown up. Tensors throughout, so no GPU sync.
        norms_now = torch.stack([applied[task].to(net_params[0].device) for task in tasks])
        reaching = norms_now > 0
        target = norms_now.sum() / reaching.sum().clamp(min=1)
        factors = torch.where(reaching, target / (norms_now + _NORM_EPS), torch.ones_like(norms_now))
        applied = dict(zip(tasks, norms_now * factors))
        for task, factor in zip(tasks, factors):
            clipped[task] = [g * factor if g is not None and id(p) in encoder_ids else g
                             for p, g in zip(net_params, clipped[task])]
    summed: list[Tensor | None] = [None] * len(net_params)
    for task in tasks:
        for j, g in enumerate(clipped[task]):
            if g is not None:
                summed[j] = g if summed[j] is None else summed[j] + g
    for p, g in zip(net_params + log_vars, summed + log_var_grads):
        p.grad = g
    # Under torchrun: average over the ranks (a no-op in one process). The norms above, and the
    # per-task clip factors, are each rank's own: every rank clips its own contribution.
    average_gradients(model, log_vars)
    if len(tasks) == 2:
        norms["grad_ratio_encoder_sct_seg"] = norms["grad_norm_encoder_sct"] / (
            norms["grad_norm_encoder_seg"] + _NORM_EPS)
        # after per-task clipping (and balancing, which makes it 1): the balance the encoder is
        # actually updated with (a global clip scales both tasks alike and leaves the ratio as it was)
        norms["grad_ratio_encoder_sct_seg_applied"] = applied["sct"] / (applied["seg"] + _NORM_EPS)
    scaler.unscale_(optimizer)
    if not per_task:
        torch.nn.utils.clip_grad_norm_(net_params, train_cfg.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return norms


__all__ = ["forward_losses", "optimise"]
