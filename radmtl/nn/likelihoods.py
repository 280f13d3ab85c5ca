"""The per-task likelihood terms of the uncertainty-weighted objective (DESIGN.md section 1).

Every uncertainty head or parameter predicts ``s = log σ²`` (for the Laplace likelihood
``s_b = log b``, with σ = √2·b). Terms:

- Gaussian heteroscedastic NLL: ``0.5·exp(−s)·(y−μ)² + 0.5·s`` (no ½·log 2π).
- Laplace heteroscedastic NLL: ``exp(−s_b)·|y−μ| + s_b`` (no log 2).
- Homoscedastic regression weight: ``0.5·exp(−s)·L + 0.5·s``, optimum ``s = log L`` (Gaussian,
  L = MSE); for the Laplace likelihood ``exp(−s_b)·L + s_b`` with ``s_b = log b``, optimum
  ``s_b = log L`` (L = MAE), the scalar form of the Laplace NLL.
- Homoscedastic classification weight: ``exp(−s)·L + 0.5·s``, optimum ``s = log 2L``.
- Heteroscedastic segmentation (Bragman et al. 2018, M4): per voxel ``exp(−s(x))·CE(x) + 0.5·s(x)``.

Clamping ``s``: every ``s`` (learned scalars and per-voxel heads) goes through
:func:`clamp_log_var` into ``[log_var_min, log_var_max]`` before use. The forward value is clamped
so ``exp(±s)`` stays finite and a task loss reaching 0 cannot drag a scalar ``s`` to −∞. The
gradient passes where ``s`` is inside the range, and outside it only when a descent step would
move ``s`` back inside: so ``s`` overshoots the boundary by at most an optimiser step (plus Adam's
decaying momentum), never runs away, and never gets stuck outside as a hard clamp's zero
gradient would leave it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

LIKELIHOODS = ("gaussian", "laplace")
BETA_SCALES = ("mean", "none")

# Denominator floor for masked means: with non-negative weights an all-zero mask makes the
# numerator exactly 0, so the mean is defined as 0 (with a gradient of 0) instead of 0/0 = NaN.
_MASK_SUM_FLOOR = 1e-12


class _InwardClamp(torch.autograd.Function):
    """Clamp whose backward blocks only the gradient that would push ``s`` further out of range."""

    @staticmethod
    def forward(ctx, log_var: Tensor, low: float, high: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(log_var)
        ctx.low, ctx.high = low, high
        return log_var.clamp(low, high)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        (log_var,) = ctx.saved_tensors
        # gradient descent moves s by −grad
        outward = ((log_var < ctx.low) & (grad > 0)) | ((log_var > ctx.high) & (grad < 0))
        return grad.masked_fill(outward, 0.0), None, None


def clamp_log_var(log_var: Tensor, low: float, high: float) -> Tensor:
    """Clamp ``s`` to ``[low, high]`` with inward-only gradients outside (see module docstring)."""
    if not low < high:
        raise ValueError(f"low: must be below high, got low={low}, high={high}")
    return _InwardClamp.apply(log_var, float(low), float(high))


def masked_mean(values: Tensor, mask: Tensor | None = None) -> Tensor:
    """Weighted mean of ``values`` over the voxels where ``mask`` is non-zero.

    Args:
        values: (B, C, D, H, W).
        mask: (B, 1, D, H, W) or (B, C, D, H, W), bool or non-negative float weights; None = all
            voxels. An all-zero mask gives 0 (and zero gradients), not NaN.

    Returns:
        Scalar tensor.
    """
    if mask is None:
        return values.mean()
    if mask.ndim != values.ndim or mask.shape[0] != values.shape[0] or mask.shape[2:] != values.shape[2:]:
        raise ValueError(
            f"mask: shape {tuple(mask.shape)} does not match values {tuple(values.shape)}; "
            "expected (B, 1, D, H, W) on the same grid"
        )
    weights = mask.to(values.dtype).expand_as(values)
    return (values * weights).sum() / weights.sum().clamp_min(_MASK_SUM_FLOOR)


def heteroscedastic_nll(
    mean: Tensor,
    log_var: Tensor,
    target: Tensor,
    mask: Tensor | None = None,
    likelihood: str = "gaussian",
    beta: float = 0.0,
    beta_scale: str = "mean",
) -> Tensor:
    """Per-voxel negative log-likelihood, averaged over mask voxels.

    Gaussian (``log_var`` = s = log σ²): ``0.5·exp(−s)·(y−μ)² + 0.5·s``, minimised at
    σ² = (y−μ)².
    Laplace (``log_var`` = s_b = log b): ``exp(−s_b)·|y−μ| + s_b``, minimised at b = |y−μ|; its
    standard deviation is σ = √2·b. Constants (½·log 2π, log 2) are left out.

    β-NLL (Seitzer et al. 2022, Gaussian only): the per-voxel term is multiplied by
    stop-gradient(σ^(2β)) = stop-gradient(exp(β·s)); β = 0 is the plain NLL, β = 1 gives the mean
    the MSE gradient. With ``beta_scale="mean"`` (radmtl's default) those factors are divided by their
    (stop-gradient) mean over the mask voxels: β then only redistributes the NLL's gradient among the
    voxels, from the confident ones to the uncertain ones, as Seitzer et al. intend, and leaves the size
    of the whole term that of the NLL. ``"none"`` is the paper's form, whose factors average σ̄^(2β):
    ≈ 0.03 for β = 0.5 in units of HU/1000, which shrinks the sCT term against every other term of the
    multi-task objective by that arbitrary unit-dependent number, so a learned task weighting
    (DESIGN.md section 1) sees a sCT that is 30 times quieter than its likelihood says.

    Args:
        mean: (B, 1, D, H, W) predicted μ.
        log_var: (B, 1, D, H, W) predicted s (not clamped here; see :func:`clamp_log_var`).
        target: (B, 1, D, H, W) y.
        mask: (B, 1, D, H, W) weights, None = all voxels; see :func:`masked_mean`.
        likelihood: ``"gaussian"`` or ``"laplace"``.
        beta: β-NLL exponent in [0, 1]; must be 0 for Laplace.
        beta_scale: ``"mean"`` (factors of mean 1 over the mask) or ``"none"`` (the paper's factors).

    Returns:
        Scalar tensor.
    """
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood: must be one of {list(LIKELIHOODS)}, got {likelihood!r}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta: must be in [0, 1], got {beta}")
    if beta_scale not in BETA_SCALES:
        raise ValueError(f"beta_scale: must be one of {list(BETA_SCALES)}, got {beta_scale!r}")
    if likelihood == "laplace" and beta != 0.0:
        raise ValueError(
            f"beta: β-NLL is defined for the Gaussian likelihood only, got beta={beta} with laplace"
        )
    if mean.shape != target.shape or log_var.shape != mean.shape:
        raise ValueError(
            f"mean, log_var, target: shapes must match, got {tuple(mean.shape)}, "
            f"{tuple(log_var.shape)}, {tuple(target.shape)}"
        )
    residual = target - mean
    if likelihood == "gaussian":
        term = 0.5 * torch.exp(-log_var) * residual.square() + 0.5 * log_var
        if beta > 0.0:
            factor = torch.exp(beta * log_var).detach()
            if beta_scale == "mean":
                factor = factor / masked_mean(factor, mask).clamp_min(_MASK_SUM_FLOOR)
            term = term * factor
    else:
        term = torch.exp(-log_var) * residual.abs() + log_var
    return masked_mean(term, mask)


def homoscedastic_regression(task_loss: Tensor, log_var: Tensor) -> Tensor:
    """``0.5·exp(−s)·L + 0.5·s`` (Kendall et al. 2018); minimised at s = log L."""
    return 0.5 * torch.exp(-log_var) * task_loss + 0.5 * log_var


def homoscedastic_laplace(task_loss: Tensor, log_b: Tensor) -> Tensor:
    """``exp(−s_b)·L + s_b`` with ``s_b = log b``: the Laplace NLL with one scalar b, L = MAE;
    minimised at s_b = log L."""
    return torch.exp(-log_b) * task_loss + log_b


def homoscedastic_classification(task_loss: Tensor, log_var: Tensor) -> Tensor:
    """``exp(−s)·L + 0.5·s`` (Kendall et al. 2018); minimised at s = log 2L."""
    return torch.exp(-log_var) * task_loss + 0.5 * log_var


def heteroscedastic_segmentation(
    seg_logits: Tensor, log_var: Tensor, labels: Tensor, mask: Tensor | None = None
) -> Tensor:
    """Bragman et al. 2018 (M4): per-voxel ``exp(−s(x))·CE(x) + 0.5·s(x)``, mean over mask voxels.

    Args:
        seg_logits: (B, C, D, H, W).
        log_var: (B, 1, D, H, W) s(x).
        labels: (B, 1, D, H, W) integer class indices.
        mask: (B, 1, D, H, W) weights, None = all voxels.

    Returns:
        Scalar tensor.
    """
    ce = voxel_cross_entropy(seg_logits, labels)
    if log_var.shape != ce.shape:
        raise ValueError(f"log_var: expected shape {tuple(ce.shape)}, got {tuple(log_var.shape)}")
    return masked_mean(homoscedastic_classification(ce, log_var), mask)


def voxel_cross_entropy(seg_logits: Tensor, labels: Tensor) -> Tensor:
    """Per-voxel CE (B, 1, D, H, W) from logits (B, C, D, H, W) and labels (B, 1, D, H, W)."""
    if labels.ndim != seg_logits.ndim or labels.shape[1] != 1 or labels.shape[2:] != seg_logits.shape[2:]:
        raise ValueError(
            f"labels: expected shape (B, 1, D, H, W) matching logits {tuple(seg_logits.shape)}, "
            f"got {tuple(labels.shape)}"
        )
    return F.cross_entropy(seg_logits, labels[:, 0].long(), reduction="none").unsqueeze(1)


def sigma2_from_log_var(log_var: torch.Tensor, likelihood: str) -> torch.Tensor:
    """Variance σ² from the network's log-scale output.

    Gaussian heads predict s = log σ². Laplace heads predict s_b = log b and a Laplace(b) has
    variance 2·b², so σ² = 2·exp(2·s_b) (DESIGN.md section 1: σ = √2·b).
    """
    if likelihood == "gaussian":
        return torch.exp(log_var)
    if likelihood == "laplace":
        return 2.0 * torch.exp(2.0 * log_var)
    raise ValueError(f"likelihood: expected 'gaussian' or 'laplace', got {likelihood!r}")
