"""One case on the network: the training preprocessing of an MR file, the network on its grid, and
each map brought back onto the input grid in HU. Shared by ``radmtl infer`` and the σ recalibration
after training, so that the σ-scaling factor is fitted on exactly what infer writes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from radmtl.data.io import VolumeError, Volume

# predict_volume key -> (file stem, dtype, multiply by ct_scale_hu, written only when T > 1)
MAP_OUTPUTS: dict[str, tuple[str, type, bool, bool]] = {
    "sct": ("sct", np.float32, True, False),
    "sigma_aleatoric": ("sct_sigma_aleatoric", np.float32, True, False),
    "sigma_epistemic": ("sct_sigma_epistemic", np.float32, True, True),
    "sigma_total": ("sct_sigma_total", np.float32, True, True),
    "seg_entropy": ("seg_entropy", np.float32, False, True),
    "seg_mutual_info": ("seg_mutual_info", np.float32, False, True),
}
# σ maps are resampled as variances: interpolation is linear, so σ_total² = σ_aleatoric² +
# σ_epistemic² then holds exactly on the input grid, as it does on the network grid.
VARIANCE_MAPS = ("sigma_aleatoric", "sigma_epistemic", "sigma_total")


@dataclass(frozen=True)
class NetworkMR:
    """An MR after the training preprocessing: (1, 1, x, y, z) on the network grid, and that grid."""

    mr: Any
    affine: np.ndarray
    shape: tuple[int, ...]


def preprocess_mr(loaded: Any, mr_path: Path) -> NetworkMR:
    """The training preprocessing (:func:`radmtl.data.transforms.eval_transforms`) of one MR file.

    Raises:
        VolumeError: the reader's own one-line message, or one naming the file and the failing step.
    """
    from radmtl.data.transforms import eval_transforms

    try:
        net_mr = eval_transforms(loaded.cfg.data, ["mr"])({"mr": str(mr_path)})["mr"]
    except Exception as err:  # MONAI wraps reader/transform errors in RuntimeError chains
        from radmtl.data.reader import volume_error_in

        cause = volume_error_in(err)
        if cause is not None:  # the reader's own one-line message names the file and the fix
            raise VolumeError(str(cause)) from err
        raise VolumeError(f"{mr_path}: preprocessing failed ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''}); check the file") from err
    return NetworkMR(mr=net_mr.as_tensor()[None], affine=np.asarray(net_mr.affine, np.float64),
                     shape=tuple(int(s) for s in net_mr.shape[1:]))


def predict_on_network_grid(
    loaded: Any,
    mr_path: Path | NetworkMR,
    *,
    mc_samples: int,
    overlap: float,
    sw_batch_size: int,
    device: Any,
    amp_dtype: Any,
    sigma_scale: float = 1.0,
    timings: dict[str, float] | None = None,
    keep_on_device: bool = False,
) -> tuple[dict[str, Any], np.ndarray, tuple[int, ...]]:
    """The training preprocessing of one MR file (unless given already done), then the network on its grid.

    Shared by ``radmtl infer`` and the σ recalibration after training, so that the factor is
    fitted on exactly what infer produces.

    Args:
        keep_on_device: leave the maps where the network ran (a GPU), for resampling there.

    Returns:
        (maps of :func:`radmtl.inference.predict.predict_volume` in scaled units, network-grid affine,
        network-grid shape).
    """
    import torch

    from radmtl.inference.predict import predict_volume

    cfg = loaded.cfg
    timings = {} if timings is None else timings
    if not isinstance(mr_path, NetworkMR):
        t0 = time.perf_counter()
        mr_path = preprocess_mr(loaded, mr_path)
        timings["preprocess_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)  # MC dropout masks: the same outputs for the same case and model
    maps = predict_volume(
        loaded.model, mr_path.mr, cfg.data.patch_size, overlap=overlap,
        sw_batch_size=sw_batch_size, mc_samples=mc_samples, likelihood=cfg.loss.likelihood,
        device=device, amp_dtype=amp_dtype, sigma_scale=sigma_scale, keep_on_device=keep_on_device,
    )
    timings["predict_s"] = time.perf_counter() - t0
    return maps, mr_path.affine, mr_path.shape


def map_to_input_grid(key: str, network_map: Any, net_affine: np.ndarray, volume: Volume,
                      ct_scale_hu: float) -> np.ndarray:
    """One (1, 1, x, y, z) network-grid map → (X, Y, Z) float32 on the input grid, in HU if an sCT/σ map."""
    from radmtl.inference.resample import resample_to_grid

    # Resample in network units; HU scaling is linear so it commutes with interpolation.
    as_variance = key in VARIANCE_MAPS
    values = network_map[0] ** 2 if as_variance else network_map[0]
    array = resample_to_grid(values, net_affine, volume.affine, volume.shape)[0]
    if as_variance:
        array = np.sqrt(np.clip(array, 0.0, None))
    if MAP_OUTPUTS[key][2]:
        array *= ct_scale_hu
    return array


def input_grid_outputs(maps: dict[str, Any], net_affine: np.ndarray, volume: Volume, ct_scale_hu: float,
                       mc_samples: int, keep_probs: bool = False) -> Iterator[tuple[str, np.ndarray, type, str]]:
    """Each map that infer writes, on the input grid: ``(stem, array, dtype, units)``.

    Maps are produced one at a time and ``maps`` entries are dropped as they are used, so a caller
    that writes each array and lets it go holds few full-resolution maps at once. ``seg`` (uint8
    labels, the argmax of the resampled probabilities) follows the float maps, then
    ``seg_probabilities`` (X, Y, Z, C) when ``keep_probs``.
    """
    from radmtl.inference.resample import argmax_labels_on_grid

    for key, (stem, dtype, to_hu, needs_mc) in MAP_OUTPUTS.items():
        network_map = maps.pop(key, None)
        if network_map is None or (needs_mc and mc_samples <= 1):
            continue
        yield stem, map_to_input_grid(key, network_map, net_affine, volume, ct_scale_hu), dtype, \
            "HU" if to_hu else "nats"
    if "seg_probs" in maps:
        labels, probs = argmax_labels_on_grid(maps.pop("seg_probs")[0], net_affine, volume.affine, volume.shape,
                                              keep_probs=keep_probs)
        yield "seg", labels, np.uint8, "label"
        if probs is not None:
            yield "seg_probabilities", np.moveaxis(probs, 0, -1), np.float32, "probability"
