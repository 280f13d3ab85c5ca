"""One case on the network: the training preprocessing of an MR file, the network on its grid, and
each map brought back onto the input grid in HU. Shared by ``radmtl infer`` and the σ recalibration
after training, so that the σ-scaling factor is fitted on exactly what infer writes."""

from __future__ import annotations

import time
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


def predict_on_network_grid(
    loaded: Any,
    mr_path: Path,
    *,
    mc_samples: int,
    overlap: float,
    sw_batch_size: int,
    device: Any,
    amp_dtype: Any,
    sigma_scale: float = 1.0,
    timings: dict[str, float] | None = None,
) -> tuple[dict[str, Any], np.ndarray, tuple[int, ...]]:
    """The training preprocessing of one MR file, then the network on its grid.

    Shared by ``radmtl infer`` and the σ recalibration after training, so that the factor is
    fitted on exactly what infer produces.

    Returns:
        (maps of :func:`radmtl.inference.predict.predict_volume` in scaled units, network-grid affine,
        network-grid shape).
    """
    import torch

    from radmtl.inference.predict import predict_volume
    from radmtl.data.transforms import eval_transforms

    cfg = loaded.cfg
    timings = {} if timings is None else timings
    t0 = time.perf_counter()
    try:
        net_mr = eval_transforms(cfg.data, ["mr"])({"mr": str(mr_path)})["mr"]
    except Exception as err:  # MONAI wraps reader/transform errors in RuntimeError chains
        from radmtl.data.reader import volume_error_in

        cause = volume_error_in(err)
        if cause is not None:  # the reader's own one-line message names the file and the fix
            raise VolumeError(str(cause)) from err
        raise VolumeError(f"{mr_path}: preprocessing failed ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''}); check the file") from err
    net_affine = np.asarray(net_mr.affine, np.float64)
    net_shape = tuple(int(s) for s in net_mr.shape[1:])
    timings["preprocess_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)  # MC dropout masks: the same outputs for the same case and model
    maps = predict_volume(
        loaded.model, net_mr.as_tensor()[None], cfg.data.patch_size, overlap=overlap,
        sw_batch_size=sw_batch_size, mc_samples=mc_samples, likelihood=cfg.loss.likelihood,
        device=device, amp_dtype=amp_dtype, sigma_scale=sigma_scale,
    )
    timings["predict_s"] = time.perf_counter() - t0
    return maps, net_affine, net_shape


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
