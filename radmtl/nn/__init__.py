"""The network and its objective: the shared-encoder multi-task U-Net, the uncertainty-weighted
losses, and self-describing checkpoints that rebuild the network.

Public pieces are imported on first access (:mod:`radmtl._lazy`), so importing one module of
this package does not import the others.
"""

from radmtl._lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "MultiTaskUNet": "model", "build_model": "model",
    "MultiTaskLoss": "losses", "parameter_groups": "losses", "heteroscedastic_nll": "likelihoods", "sigma2_from_log_var": "likelihoods",
    "make_payload": "checkpoint", "save_checkpoint": "checkpoint", "load_checkpoint": "checkpoint", "model_from_checkpoint": "checkpoint", "LoadedModel": "checkpoint", "CheckpointError": "checkpoint",
})
