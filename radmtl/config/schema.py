"""The configuration's schema: one frozen dataclass per section, their defaults with the reasons for
them, and the checks across fields that no single type can state (:func:`required_heads`, ranges)."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Literal

from radmtl.config.build import ConfigError

TASKS = ("sct", "seg")
WEIGHTINGS = ("fixed", "homoscedastic", "hetero_homo", "hetero")
# Initial bias of the per-voxel s(x) head when the config does not set one, per likelihood: both
# start σ near 80 HU at ct_scale_hu = 1000 (Gaussian s = log σ²: exp(-5/2) = 0.082; Laplace
# s_b = log b with σ = √2·b: √2·exp(-2.9) = 0.078). 0 would start σ at 1000 HU, far above CT
# noise (10-50 HU), and the σ head would spend most of a short run walking down.
DEFAULT_SCT_LOG_VAR_INIT = {"gaussian": -5.0, "laplace": -2.9}
# A saved config without model.mc_dropout_at predates it: it was trained with encoder dropout.
MC_DROPOUT_PLACES = ("encoder", "last_block", "heads")
LEGACY_MC_DROPOUT_AT = "encoder"
# The most MC-dropout samples T radmtl runs (infer.mc_samples, --mc-samples, the pyfunc's mc_samples). The
# samples are reduced as they come, so memory does not grow with T, but time does, linearly; the Monte-Carlo
# error of σ_epistemic is about 1/√(2T) of it (2 % at 1000), far below what separates models (the paper: T = 20).
MAX_MC_SAMPLES = 1000


def mc_samples_problem(value: Any) -> str | None:
    """Why ``value`` cannot be the number of MC-dropout samples T (a whole number from 1 to
    :data:`MAX_MC_SAMPLES`), in words that follow the option's name; None when it can."""
    whole = isinstance(value, numbers.Integral) or (isinstance(value, numbers.Real) and float(value).is_integer())
    if isinstance(value, bool) or not whole:
        return f"must be a whole number of samples, got {value!r}"
    if not 1 <= int(value) <= MAX_MC_SAMPLES:
        return (f"must be from 1 to {MAX_MC_SAMPLES}, got {int(value)} (time grows with every sample while the "
                f"estimate hardly changes beyond a few hundred; the paper uses 20)")
    return None


@dataclass(frozen=True)
class DataConfig:
    """How volumes become network input.

    ``spacing`` is the voxel size (mm, RAS order x, y, z) the network sees; ``patch_size`` is the
    training crop and the sliding-window size at inference.
    """

    spacing: tuple[float, float, float] = (3.0, 3.0, 3.0)
    patch_size: tuple[int, int, int] = (64, 64, 32)
    patches_per_volume: int = 4
    pos_fraction: float = 0.67
    mr_percentiles: tuple[float, float] = (0.5, 99.5)
    ct_clip_hu: tuple[float, float] = (-1024.0, 3071.0)
    ct_scale_hu: float = 1000.0
    val_fraction: float = 0.2
    cache: bool = True
    num_workers: int = 0
    augment_flip: bool = True
    augment_intensity: bool = True
    # Random rotation of each training patch by up to these angles (degrees) about x, y and z: an
    # oblique MR reaches the network tilted by its acquisition angle (MONAI's Spacingd keeps direction
    # cosines), a pose axial training data never shows. 0: off.
    augment_rotate_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass(frozen=True)
class ModelConfig:
    """The shared-encoder multi-task U-Net.

    ``tasks``, ``sct_log_var`` and ``seg_log_var`` say which decoders and heads exist. In a YAML
    file they are normally left out: :func:`load_config` derives them from ``loss.tasks`` and
    ``loss.weighting`` so the network always has exactly the heads the loss needs.
    """

    in_channels: int = 1
    num_classes: int = 6
    channels: tuple[int, ...] = (16, 32, 64, 128)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: int = 1
    norm: Literal["instance", "batch", "group"] = "instance"
    act: str = "leakyrelu"
    dropout: float = 0.5
    tasks: tuple[str, ...] = TASKS
    sct_log_var: bool = True
    seg_log_var: bool = False
    # Initial bias of the s(x) head (s = log σ² for gaussian, log b for laplace, scaled units);
    # derived from loss.likelihood when left out (DEFAULT_SCT_LOG_VAR_INIT).
    sct_log_var_init: float = DEFAULT_SCT_LOG_VAR_INIT["gaussian"]
    # Where MC dropout acts (radmtl/nn/model.py); all before it runs once for the T samples.
    mc_dropout_at: Literal["encoder", "last_block", "heads"] = "encoder"


@dataclass(frozen=True)
class LossConfig:
    """The multi-task objective (DESIGN.md section 1)."""

    tasks: tuple[str, ...] = TASKS
    weighting: Literal["fixed", "homoscedastic", "hetero_homo", "hetero"] = "hetero_homo"
    likelihood: Literal["gaussian", "laplace"] = "gaussian"
    beta_nll: float = 0.0
    # "mean": β-NLL's per-voxel factors σ^(2β) divided by their mean over the body, so β redistributes
    # the sCT NLL's gradient among voxels without shrinking the whole term by σ̄^(2β) (a number set by
    # the HU scaling) against the segmentation term; "none": Seitzer et al.'s form (nn/likelihoods.py).
    beta_nll_scale: Literal["mean", "none"] = "mean"
    # CE + Dice: Dice keeps small organs' share of the segmentation gradient, which voxel-averaged
    # CE gives to the background (see MultiTaskLoss for how the learned σ weights the pair).
    seg_dice_weight: float = 1.0
    fixed_weight_sct: float = 1.0
    fixed_weight_seg: float = 1.0
    init_log_var: float = 0.0
    log_var_min: float = -10.0
    log_var_max: float = 10.0


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation.

    An epoch is ``steps_per_epoch`` optimiser steps on cases drawn with replacement (as nnU-Net
    does), not one pass over the cases, so a small dataset still gets enough steps; 0 means one
    pass. A step sees ``batch_size`` cases × ``data.patches_per_volume`` crops per process: under
    torchrun with N processes a step sees N times that, and ``lr`` is not rescaled.

    ``lr``, ``weight_decay`` and the warm-up/cosine schedule apply to the network. The learned
    scalar log-variances of the loss have their own group: ``log_var_lr``, constant, no decay.
    Adam moves a parameter by about its learning rate per step, and a scalar ``s`` may have to
    travel several units (the sCT optimum log MSE is near −5 in scaled units), so at the network's
    rate it would in effect never leave its start.

    ``grad_clip_mode``: ``global`` (default) back-propagates the weighted loss as it is and clips the
    summed gradient, which keeps the tasks' ratio: the learned σ weighting reaches the shared encoder
    (DESIGN.md section 1). ``per_task`` clips each task's gradient to ``grad_clip`` before the sum and
    ``balanced`` also gives the tasks equal norms on the shared encoder (``training/step.py``); both
    depart from the method: they replace the cross-task weighting in the shared encoder by equal
    norms (``per_task`` whenever a task's norm exceeds ``grad_clip``).
    """

    epochs: int = 100
    steps_per_epoch: int = 250
    batch_size: int = 2
    lr: float = 3e-4
    log_var_lr: float = 0.05
    weight_decay: float = 1e-4
    warmup_epochs: int = 2
    grad_clip: float = 1.0
    grad_clip_mode: Literal["global", "per_task", "balanced"] = "global"
    # After training, fit the σ-scaling factor on the validation cases (Laves et al. 2020).
    recalibrate: bool = True
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    val_every: int = 5
    best_metric: str = "val_mae_hu"
    best_mode: Literal["min", "max"] = "min"
    log_every: int = 10


@dataclass(frozen=True)
class InferConfig:
    mc_samples: int = 20
    overlap: float = 0.5
    sw_batch_size: int = 2
    # The per-case review's voxel flag (radmtl/evaluation/review.py), fitted after training: the σ_total
    # level above which validation voxels had |sCT − CT| > review_error_hu with this precision.
    review_error_hu: float = 100.0
    review_precision: float = 0.5


@dataclass(frozen=True)
class TrackingConfig:
    experiment: str = "radmtl"
    tracking_uri: str | None = None


@dataclass(frozen=True)
class Config:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        _validate(self)


def required_heads(loss: LossConfig) -> dict[str, Any]:
    """The model fields (tasks, sct_log_var, seg_log_var) that ``loss`` needs."""
    hetero_sct = loss.weighting in ("hetero_homo", "hetero")
    return {
        "tasks": tuple(loss.tasks),
        "sct_log_var": "sct" in loss.tasks and hetero_sct,
        "seg_log_var": "seg" in loss.tasks and loss.weighting == "hetero",
    }


def _validate(cfg: Config) -> None:
    tasks = cfg.loss.tasks
    if not tasks or any(t not in TASKS for t in tasks) or len(set(tasks)) != len(tasks):
        raise ConfigError(f"loss.tasks: expected a non-empty subset of {list(TASKS)}, got {list(tasks)}")
    for key, want in required_heads(cfg.loss).items():
        have = getattr(cfg.model, key)
        if have != want:
            raise ConfigError(
                f"model.{key}: is {have!r} but loss.tasks={list(tasks)} with "
                f"loss.weighting={cfg.loss.weighting!r} needs {want!r}; leave model.{key} out of the "
                "YAML and it is derived"
            )
    if len(cfg.model.strides) != len(cfg.model.channels) - 1:
        raise ConfigError(
            f"model.strides: needs len(model.channels) - 1 = {len(cfg.model.channels) - 1} entries, "
            f"got {len(cfg.model.strides)}"
        )
    if not 0.0 <= cfg.model.dropout < 1.0:
        raise ConfigError(f"model.dropout: must be in [0, 1), got {cfg.model.dropout}")
    if cfg.model.mc_dropout_at not in MC_DROPOUT_PLACES:
        raise ConfigError(f"model.mc_dropout_at: one of {list(MC_DROPOUT_PLACES)}, got {cfg.model.mc_dropout_at!r}")
    if cfg.model.num_classes < 2 and "seg" in tasks:
        raise ConfigError(f"model.num_classes: needs >= 2 for segmentation, got {cfg.model.num_classes}")
    if any(s <= 0 for s in cfg.data.spacing):
        raise ConfigError(f"data.spacing: must be positive, got {list(cfg.data.spacing)}")
    if any(p <= 0 for p in cfg.data.patch_size):
        raise ConfigError(f"data.patch_size: must be positive, got {list(cfg.data.patch_size)}")
    if len(cfg.data.augment_rotate_deg) != 3 or not all(
            math.isfinite(a) and 0.0 <= a <= 45.0 for a in cfg.data.augment_rotate_deg):
        raise ConfigError(f"data.augment_rotate_deg: three angles from 0 to 45 degrees (about x, y, z), got "
                          f"{list(cfg.data.augment_rotate_deg)}")
    lo, hi = cfg.data.ct_clip_hu
    if lo >= hi:
        raise ConfigError(f"data.ct_clip_hu: low must be below high, got {[lo, hi]}")
    if not 0.0 <= cfg.data.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction: must be in [0, 1), got {cfg.data.val_fraction}")
    if cfg.loss.log_var_min >= cfg.loss.log_var_max:
        raise ConfigError("loss.log_var_min: must be below loss.log_var_max")
    for key in ("epochs", "batch_size", "val_every"):
        if getattr(cfg.train, key) < 1:
            raise ConfigError(f"train.{key}: must be >= 1, got {getattr(cfg.train, key)}")
    if cfg.train.steps_per_epoch < 0:
        raise ConfigError(f"train.steps_per_epoch: must be >= 0 (0 = one pass over the cases), "
                          f"got {cfg.train.steps_per_epoch}")
    for key in ("lr", "log_var_lr", "weight_decay"):
        value = getattr(cfg.train, key)
        if not math.isfinite(value) or value < 0 or (key != "weight_decay" and value == 0):
            raise ConfigError(f"train.{key}: must be a finite number {'>= 0' if key == 'weight_decay' else '> 0'}, "
                              f"got {value}")
    if not cfg.train.log_var_lr > 0:
        raise ConfigError(f"train.log_var_lr: must be > 0, got {cfg.train.log_var_lr}")
    if not cfg.train.grad_clip > 0:
        raise ConfigError(f"train.grad_clip: must be > 0, got {cfg.train.grad_clip}")
    problem = mc_samples_problem(cfg.infer.mc_samples)
    if problem is not None:
        raise ConfigError(f"infer.mc_samples: {problem}")
    if not 0.0 <= cfg.infer.overlap < 1.0:
        raise ConfigError(f"infer.overlap: must be in [0, 1), got {cfg.infer.overlap}")
    if not (math.isfinite(cfg.infer.review_error_hu) and cfg.infer.review_error_hu > 0):
        raise ConfigError(f"infer.review_error_hu: must be a finite number > 0 (HU), got {cfg.infer.review_error_hu}")
    if not 0.0 < cfg.infer.review_precision < 1.0:
        raise ConfigError(f"infer.review_precision: must be in (0, 1), got {cfg.infer.review_precision}")
