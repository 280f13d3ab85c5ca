"""Training: the loop, one optimisation step, validation, and σ recalibration after training.

Public pieces are imported on first access (:mod:`radmtl._lazy`), so importing one module of
this package does not import the others.
"""

from radmtl._lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "train": "train", "train_from_cli": "train", "TrainState": "train", "NonFiniteLossError": "train",
    "forward_losses": "step", "optimise": "step",
    "validate": "validation",
    "recalibrate": "recalibration", "fit_sigma_scale": "recalibration",
})
