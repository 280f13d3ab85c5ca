"""The weighted multi-task objective (DESIGN.md section 1): the task terms of
:mod:`radmtl.nn.likelihoods` combined under a weighting mode, and the optimiser groups of its
learned log-variances.
"""

from __future__ import annotations

import logging
import math

import torch
from monai.losses import DiceLoss
from torch import Tensor, nn

from radmtl.config import TASKS, WEIGHTINGS, LossConfig
from radmtl.nn.likelihoods import (  # noqa: F401  (re-exported: the loss terms' public home is here too)
    LIKELIHOODS,
    clamp_log_var,
    heteroscedastic_nll,
    heteroscedastic_segmentation,
    homoscedastic_classification,
    homoscedastic_laplace,
    homoscedastic_regression,
    masked_mean,
    sigma2_from_log_var,
    voxel_cross_entropy,
)

logger = logging.getLogger(__name__)

_TASK_MODES = {  # weighting -> (sCT mode, segmentation mode)
    "fixed": ("fixed", "fixed"),
    "homoscedastic": ("homoscedastic", "homoscedastic"),
    "hetero_homo": ("hetero", "homoscedastic"),
    "hetero": ("hetero", "hetero"),
}


class MultiTaskLoss(nn.Module):
    """The weighted multi-task objective of DESIGN.md section 1.

    Weighting (``cfg.weighting``), applied per task present in ``cfg.tasks``:

    - ``fixed``: ``w_sct·L_sct + w_seg·L_seg``.
    - ``homoscedastic``: learned scalar s per task, regression form for sCT (Gaussian on the MSE,
      or Laplace on the MAE, following ``cfg.likelihood``), classification form for segmentation.
    - ``hetero_homo`` (default): per-voxel Gaussian/Laplace NLL for the sCT, scalar s for segmentation.
    - ``hetero``: per-voxel s(x) for both tasks.

    With one task the same rules apply to that task: sCT-only with ``hetero_homo``/``hetero`` is the
    heteroscedastic single-task model (M2b), with ``fixed`` it is plain M1.

    Base losses:

    - ``L_sct`` = masked MSE for the Gaussian likelihood, masked MAE for Laplace, so the
      constant-σ limit of each NLL is its own base loss. Averaged over body-mask voxels.
    - ``L_seg`` = CE + ``seg_dice_weight``·Dice. CE is averaged over *all* voxels, not the body
      mask: organs lie inside the body and background outside it is cheap to learn, and leaving
      air unsupervised would let organs be predicted there. Dice is MONAI's soft Dice on the
      softmax, foreground classes only, pooled over the batch (patches missing an organ do not
      dominate). In ``fixed``/``homoscedastic`` modes the weight (w_seg or exp(−s)) multiplies the
      whole of CE + Dice; in ``hetero`` Dice has no per-voxel form, so it is added unweighted next
      to the per-voxel σ-weighted CE. That unweighted Dice is also the remedy for M4's
      background-voxel effect: the per-voxel σ learns that the many easy background voxels are
      certain (small s, weight exp(−s) > 1) and organ borders uncertain (weight < 1), so in a
      voxel-mean CE the organs' share of the gradient shrinks as σ(x) is learned; Dice is a ratio
      over the organ voxels and keeps their share whatever σ(x) does. Every CE (raw, scalar-σ, per-voxel σ) is a mean over voxels,
      never a sum, so the sCT/segmentation balance does not depend on the patch size.

    Learned scalars ``log_var_sct``/``log_var_seg`` start at ``cfg.init_log_var``; every s is put
    through :func:`clamp_log_var` into ``[cfg.log_var_min, cfg.log_var_max]``.

    Args:
        cfg: the loss configuration.
    """

    def __init__(self, cfg: LossConfig) -> None:
        super().__init__()
        tasks = tuple(cfg.tasks)
        if not tasks or any(t not in TASKS for t in tasks) or len(set(tasks)) != len(tasks):
            raise ValueError(f"tasks: expected a non-empty subset of {list(TASKS)}, got {list(tasks)}")
        if cfg.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting: must be one of {list(WEIGHTINGS)}, got {cfg.weighting!r}")
        if cfg.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood: must be one of {list(LIKELIHOODS)}, got {cfg.likelihood!r}")
        if not 0.0 <= cfg.beta_nll <= 1.0:
            raise ValueError(f"beta_nll: must be in [0, 1], got {cfg.beta_nll}")
        if cfg.beta_nll > 0 and cfg.likelihood != "gaussian":
            raise ValueError(
                f"beta_nll: needs likelihood='gaussian', got beta_nll={cfg.beta_nll} with {cfg.likelihood!r}"
            )
        for name in ("seg_dice_weight", "fixed_weight_sct", "fixed_weight_seg"):
            if getattr(cfg, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(cfg, name)}")
        if not cfg.log_var_min < cfg.log_var_max:
            raise ValueError(
                f"log_var_min: must be below log_var_max, got {cfg.log_var_min} >= {cfg.log_var_max}"
            )
        if not cfg.log_var_min <= cfg.init_log_var <= cfg.log_var_max:
            raise ValueError(
                f"init_log_var: must lie in [log_var_min, log_var_max] = [{cfg.log_var_min}, "
                f"{cfg.log_var_max}], got {cfg.init_log_var}"
            )
        self.cfg = cfg
        self.tasks = tasks
        self.sct_mode, self.seg_mode = _TASK_MODES[cfg.weighting]
        if "sct" in tasks and self.sct_mode == "homoscedastic":
            self.log_var_sct = nn.Parameter(torch.tensor(float(cfg.init_log_var)))
        if "seg" in tasks and self.seg_mode == "homoscedastic":
            self.log_var_seg = nn.Parameter(torch.tensor(float(cfg.init_log_var)))
        self.dice = (
            DiceLoss(include_background=False, to_onehot_y=True, softmax=True, batch=True)
            if "seg" in tasks and cfg.seg_dice_weight > 0
            else None
        )

    def _clamp(self, log_var: Tensor) -> Tensor:
        return clamp_log_var(log_var, self.cfg.log_var_min, self.cfg.log_var_max)

    @staticmethod
    def _require(outputs: dict[str, Tensor], key: str, why: str) -> Tensor:
        if key not in outputs:
            raise KeyError(f"outputs[{key!r}] is missing: {why}; model outputs are {sorted(outputs)}")
        return outputs[key].float()

    def forward(
        self, outputs: dict[str, Tensor], batch: dict[str, Tensor]
    ) -> tuple[Tensor, dict[str, float]]:
        """Args:
            outputs: the model dict: ``sct``/``sct_log_var`` (B, 1, D, H, W), ``seg_logits``
                (B, C, D, H, W), ``seg_log_var`` (B, 1, D, H, W), as the weighting needs.
            batch: ``ct`` (B, 1, D, H, W) scaled HU, ``labels`` (B, 1, D, H, W) integer,
                ``mask`` (B, 1, D, H, W) body mask.

        Mixed supervision: with ``has_ct``/``has_labels`` (B,) in the batch, each task's term is
        computed on the samples that have its target only — averaged over them, never over the
        samples that lack it — and a task no sample of the batch has is left out of the total
        (its learned s gets no gradient from a batch that says nothing about it).

        Returns:
            The total loss (scalar tensor) and float components for logging: ``loss_total``,
            ``loss_sct``, ``loss_seg``, ``mae_sct``, ``log_var_sct``/``sigma_sct`` and
            ``log_var_seg``/``sigma_seg`` for learned scalars, ``mean_sigma_sct`` (and
            ``mean_sigma_seg``) for per-voxel heads.
        """
        terms, logged = self.task_terms(outputs, batch)
        return self.combine(terms, logged)

    def task_terms(
        self, outputs: dict[str, Tensor], batch: dict[str, Tensor]
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Each task's weighted term (what it contributes to the total) and the tensors to log.

        The training step back-propagates the terms one by one to measure and clip the gradient
        each task sends into the shared encoder; their sum is the total of :meth:`forward`.
        """
        terms: dict[str, Tensor] = {}
        logged: dict[str, Tensor] = {}
        for task, key, term in (("sct", "ct", self._sct_term), ("seg", "labels", self._seg_term)):
            if task not in self.tasks:
                continue
            present = task_samples(batch, key)
            if present is None:
                terms[task] = term(outputs, batch, logged)
            elif present.any():
                sub = {k: v[present] for k, v in outputs.items()}
                terms[task] = term(sub, {k: v[present] for k, v in batch.items() if v.ndim > 0}, logged)
        if not terms:
            raise ValueError(f"no sample of the batch has a target for any of the tasks {list(self.tasks)}")
        return terms, logged

    def combine(
        self, terms: dict[str, Tensor], logged: dict[str, Tensor]
    ) -> tuple[Tensor, dict[str, float]]:
        """Sum the task terms; float components for logging (one device sync)."""
        cfg = self.cfg
        total = sum(terms.values(), torch.zeros((), device=next(iter(terms.values())).device))
        logged = {"loss_total": total, **logged}
        # one device sync for all components
        values = torch.stack([v.detach().float().reshape(()) for v in logged.values()]).tolist()
        if not math.isfinite(values[0]):
            logger.warning("non-finite total loss %s (weighting=%s)", values[0], cfg.weighting)
        return total, dict(zip(logged, values))

    def _sct_term(
        self, outputs: dict[str, Tensor], batch: dict[str, Tensor], logged: dict[str, Tensor]
    ) -> Tensor:
        cfg = self.cfg
        sct = self._require(outputs, "sct", "loss.tasks contains 'sct'")
        ct, mask = batch["ct"].float(), batch["mask"]
        abs_error = (ct - sct).abs()
        logged["mae_sct"] = masked_mean(abs_error, mask)
        if self.sct_mode == "hetero":
            why = f"weighting={cfg.weighting!r} needs a per-voxel sCT s(x) head"
            log_var = self._clamp(self._require(outputs, "sct_log_var", why))
            loss = heteroscedastic_nll(sct, log_var, ct, mask, cfg.likelihood, cfg.beta_nll, cfg.beta_nll_scale)
            logged["loss_sct"] = loss
            logged["mean_sigma_sct"] = masked_mean(sigma2_from_log_var(log_var, cfg.likelihood).sqrt(), mask)
            return loss
        if cfg.likelihood == "laplace":
            raw, form = logged["mae_sct"], homoscedastic_laplace
        else:
            raw, form = masked_mean(abs_error.square(), mask), homoscedastic_regression
        logged["loss_sct"] = raw
        return self._scalar_weighted("sct", raw, logged, form)

    def _seg_term(
        self, outputs: dict[str, Tensor], batch: dict[str, Tensor], logged: dict[str, Tensor]
    ) -> Tensor:
        cfg = self.cfg
        seg_logits = self._require(outputs, "seg_logits", "loss.tasks contains 'seg'")
        labels = batch["labels"]
        ce_voxel = voxel_cross_entropy(seg_logits, labels)
        dice = self.dice(seg_logits, labels) * cfg.seg_dice_weight if self.dice is not None else None
        raw = ce_voxel.mean() if dice is None else ce_voxel.mean() + dice
        logged["loss_seg"] = raw
        if self.seg_mode == "hetero":
            why = f"weighting={cfg.weighting!r} needs a per-voxel seg s(x) head"
            log_var = self._clamp(self._require(outputs, "seg_log_var", why))
            weighted = homoscedastic_classification(ce_voxel, log_var).mean()
            logged["mean_sigma_seg"] = torch.exp(0.5 * log_var).mean()
            return weighted if dice is None else weighted + dice
        return self._scalar_weighted("seg", raw, logged, homoscedastic_classification)

    def _scalar_weighted(self, task: str, raw: Tensor, logged: dict[str, Tensor], form) -> Tensor:
        """A task's raw loss under its fixed weight, or under its learned scalar s via ``form``."""
        if getattr(self, f"{task}_mode") == "fixed":
            return getattr(self.cfg, f"fixed_weight_{task}") * raw
        log_var = self._clamp(getattr(self, f"log_var_{task}"))
        logged[f"log_var_{task}"] = log_var
        # σ of the task's scalar likelihood: exp(s/2) for s = log σ², √2·b for the Laplace s_b
        laplace = form is homoscedastic_laplace
        logged[f"sigma_{task}"] = math.sqrt(2.0) * torch.exp(log_var) if laplace else torch.exp(0.5 * log_var)
        return form(raw, log_var)


def task_samples(batch: dict[str, Tensor], key: str) -> Tensor | None:
    """(B,) bool: the samples whose ``key`` target is real (``has_<key>`` flag); None = all of them."""
    flag = batch.get(f"has_{key}")
    if flag is None:
        return None
    present = flag.reshape(-1) > 0.5
    return None if bool(present.all()) else present


def parameter_groups(
    model: nn.Module, loss_fn: nn.Module, weight_decay: float, log_var_lr: float | None = None
) -> list[dict]:
    """AdamW parameter groups.

    ``weights``: the model's conv/linear weights (ndim > 1), decayed. ``biases_norms``: biases and
    norm affine parameters (ndim <= 1), not decayed, as is usual. ``log_vars``: every learned
    parameter of ``loss_fn`` (the homoscedastic s), never decayed — decay would pull s toward 0,
    i.e. σ toward 1, biasing the task weighting — and with their own learning rate: Adam moves a
    parameter by about its learning rate per step, and s must travel several units to its optimum.
    A per-voxel s(x) head is an ordinary output layer of the network and stays in the network's
    groups. Empty groups are left out.

    Args:
        model: the network.
        loss_fn: the loss module holding learned s parameters.
        weight_decay: decay for the ``weights`` group, >= 0.
        log_var_lr: learning rate of the ``log_vars`` group; None = the optimiser's default.
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay: must be >= 0, got {weight_decay}")
    decayed, not_decayed = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decayed if param.ndim > 1 else not_decayed).append(param)
    log_vars = [p for p in loss_fn.parameters() if p.requires_grad]
    groups = [
        {"name": "weights", "params": decayed, "weight_decay": float(weight_decay)},
        {"name": "biases_norms", "params": not_decayed, "weight_decay": 0.0},
        {"name": "log_vars", "params": log_vars, "weight_decay": 0.0}
        | ({"lr": float(log_var_lr)} if log_var_lr is not None else {}),
    ]
    return [group for group in groups if group["params"]]
