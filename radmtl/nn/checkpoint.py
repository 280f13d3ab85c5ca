"""Self-describing checkpoints: everything ``radmtl infer`` and ``--resume`` need, in one file.

A checkpoint holds only plain Python containers, numbers, strings and tensors, so it loads with
``torch.load(..., weights_only=True)`` — no pickled code runs when a user opens a file someone
sent them. It is written to a temporary name and renamed, so a run killed mid-save keeps the
previous checkpoint intact.
"""

from __future__ import annotations

import logging
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from radmtl import __version__
from radmtl.config import Config, config_from_dict, to_dict
from radmtl.errors import RadmtlError
from radmtl.data.atomic import atomic_path

log = logging.getLogger(__name__)

FORMAT = "radmtl-checkpoint/1"
LATEST = "checkpoint_latest.pt"
BEST = "checkpoint_best.pt"


class CheckpointError(RadmtlError, ValueError):
    """A file is not a usable radmtl checkpoint."""


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as weights_only-safe containers."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    # weights_only loading may turn nested tuples into lists; random.setstate needs tuples.
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuple(v) for v in value)
    return value


class CheckpointWriteError(RadmtlError):
    """A checkpoint could not be written (a full disk, a folder that refuses writes); the previous one stays."""


# What torch's zip writer says when a write of the file fails (no room left, an I/O error): it reports
# a failed C++ check, never the operating system's reason.
_TORCH_WRITE_FAILURES = ("inline_container", "PytorchStreamWriter", "unexpected pos", "file write failed")


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Atomically write ``payload`` (see :func:`make_payload`).

    Raises:
        CheckpointWriteError: one line naming the file, the free space on its disk and what to do; the
            file under ``path`` (if any) is the previous one, whole.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
    except OSError as err:
        raise CheckpointWriteError(_write_failure(path, err.strerror or str(err))) from err
    except RuntimeError as err:
        if not any(marker in str(err) for marker in _TORCH_WRITE_FAILURES):
            raise
        raise CheckpointWriteError(_write_failure(path, "torch could not write the file")) from err
    return path


def _write_failure(path: Path, reason: str) -> str:
    try:
        free = f"{shutil.disk_usage(path.parent).free / 2**20:.0f} MiB free on its disk"
    except OSError:
        free = "free space unknown"
    return (f"{path}: the checkpoint could not be written ({reason}; {free}): the disk is probably full or "
            f"not writable; free disk space (or choose another --out) and continue with --resume, which "
            f"starts from the last checkpoint that was written whole")


def make_payload(
    *,
    cfg: Config,
    label_names: dict[str, int],
    model: torch.nn.Module,
    loss_fn: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: Any = None,
    epoch: int = 0,
    global_step: int = 0,
    best_metric: float | None = None,
    best_epoch: int | None = None,
    run_id: str | None = None,
    with_rng: bool = True,
) -> dict[str, Any]:
    """The checkpoint dictionary: weights, resolved config, labels, normalisation and state."""
    return {
        "format": FORMAT,
        "radmtl_version": __version__,
        "config": to_dict(cfg),
        "label_names": {str(k): int(v) for k, v in label_names.items()},
        # Intensity handling and grid are in config.data; repeated here so a reader of the file
        # sees at once what the network expects.
        "preprocessing": {
            "spacing_mm": list(cfg.data.spacing),
            "orientation": "RAS",
            "mr": f"clip to body percentiles {list(cfg.data.mr_percentiles)}, z-score inside body",
            "ct": f"clip to {list(cfg.data.ct_clip_hu)} HU, divide by {cfg.data.ct_scale_hu}",
        },
        "model_state": model.state_dict(),
        "loss_state": loss_fn.state_dict() if loss_fn is not None else {},
        "optimizer_state": optimizer.state_dict() if optimizer is not None else None,
        "scheduler_state": scheduler.state_dict() if scheduler is not None else None,
        "scaler_state": scaler.state_dict() if scaler is not None else None,
        "epoch": int(epoch),
        "global_step": int(global_step),
        "best_metric": None if best_metric is None else float(best_metric),
        "best_epoch": best_epoch,
        "mlflow_run_id": run_id,
        "rng": rng_state() if with_rng else None,
    }


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate a radmtl checkpoint (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; pass a .pt file written by radmtl train")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # pickle/zip errors of many kinds for a foreign or corrupt file
        raise CheckpointError(
            f"{path}: not a radmtl checkpoint or corrupt ({type(err).__name__}); pass a .pt file "
            "written by radmtl train"
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a radmtl checkpoint (no '{FORMAT}' marker); pass a .pt file written by radmtl train"
        )
    return payload


@dataclass(frozen=True)
class LoadedModel:
    model: torch.nn.Module
    cfg: Config
    label_names: dict[str, int]
    payload: dict[str, Any]


# What model_from_checkpoint needs; a file without one of them cannot rebuild the network.
REQUIRED_KEYS = ("config", "model_state", "label_names")


def model_from_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the network from a checkpoint alone (config, weights, labels).

    Raises:
        CheckpointError: one line naming the file: not a checkpoint, a required key missing, a config
            this radmtl cannot build, or weights that do not fit the config the file carries.
    """
    from radmtl.config import ConfigError
    from radmtl.nn.model import build_model  # torch-heavy; keeps this module light to import

    path = Path(path)
    payload = load_checkpoint(path)
    missing = [key for key in REQUIRED_KEYS if key not in payload]
    if missing:
        raise CheckpointError(
            f"{path}: checkpoint lacks {', '.join(repr(k) for k in missing)}, which radmtl train always "
            "writes; use the checkpoint as radmtl train saved it (checkpoint_best.pt), or retrain")
    try:
        cfg = config_from_dict(payload["config"])
        model = build_model(cfg.model)
    except (ConfigError, KeyError, TypeError, ValueError) as err:
        detail = " ".join(str(err).split())
        raise CheckpointError(f"{path}: the config it carries cannot be built by radmtl {__version__} "
                              f"({type(err).__name__}: {detail}); use a radmtl version that can read it "
                              "(see 'radmtl_version' in the file), or retrain") from err
    mismatch = state_mismatch(model.state_dict(), payload["model_state"])
    if mismatch is not None:
        raise CheckpointError(
            f"{path}: its weights do not fit the config it carries ({mismatch}); the config or the weights "
            "were changed after training: use the checkpoint as radmtl train saved it, or retrain")
    broken = [name for name, tensor in payload["model_state"].items()
              if torch.is_tensor(tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if broken:
        # Such a network writes NaN sCT and σ everywhere and an all-background segmentation, exit 0.
        raise CheckpointError(
            f"{path}: {len(broken)} weight tensor(s) hold NaN or Inf (first {broken[0]}): the training diverged "
            "before this checkpoint was saved; use an earlier checkpoint of the run or retrain with a lower "
            "train.lr")
    label_names = dict(payload["label_names"])
    if "seg" in cfg.model.tasks:
        outside = {name: value for name, value in label_names.items()
                   if not isinstance(value, int) or not 0 <= value < cfg.model.num_classes}
        unnamed = sorted(set(range(cfg.model.num_classes)) - set(label_names.values()))
        if outside or unnamed:
            detail = (f"label values {outside} outside 0..{cfg.model.num_classes - 1}" if outside
                      else f"class(es) {unnamed} of the {cfg.model.num_classes} have no name")
            raise CheckpointError(f"{path}: its label names do not fit model.num_classes = "
                                  f"{cfg.model.num_classes} ({detail}); the file was edited after training: "
                                  "use the checkpoint as radmtl train saved it, or retrain")
    model.load_state_dict(payload["model_state"])
    model.to(device).eval()
    return LoadedModel(model=model, cfg=cfg, label_names=label_names, payload=payload)


def state_mismatch(expected: dict[str, Any], found: Any) -> str | None:
    """How the weights ``found`` differ from a model's ``expected`` state dict, in a few words (None: they fit)."""
    if not isinstance(found, dict):
        return f"'model_state' is a {type(found).__name__}, not a dictionary of tensors"
    shapes = [(name, tuple(found[name].shape), tuple(tensor.shape)) for name, tensor in expected.items()
              if name in found and hasattr(found[name], "shape") and tuple(found[name].shape) != tuple(tensor.shape)]
    missing = [name for name in expected if name not in found]
    unexpected = [name for name in found if name not in expected]
    parts = []
    if shapes:
        name, in_file, in_config = shapes[0]
        parts.append(f"{len(shapes)} tensor(s) of another shape, first {name}: {list(in_file)} in the file, "
                     f"{list(in_config)} for the config")
    if missing:
        parts.append(f"{len(missing)} tensor(s) missing, first {missing[0]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected tensor(s), first {unexpected[0]}")
    return "; ".join(parts) or None
