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
    "sigma_grid": ("sct_sigma_grid", np.float32, True, False),
    "sigma_total": ("sct_sigma_total", np.float32, True, True),
    "seg_entropy": ("seg_entropy", np.float32, False, True),
    "seg_mutual_info": ("seg_mutual_info", np.float32, False, True),
}
# σ maps are resampled as variances: interpolation is linear, so σ_total² = σ_aleatoric² +
# σ_epistemic² then holds exactly on the input grid, as it does on the network grid.
VARIANCE_MAPS = ("sigma_aleatoric", "sigma_epistemic", "sigma_grid", "sigma_total")


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
    save_samples: int = 0,
) -> tuple[dict[str, Any], np.ndarray, tuple[int, ...]]:
    """The training preprocessing of one MR file (unless given already done), then the network on its grid.

    Shared by ``radmtl infer`` and the σ recalibration after training, so that the factor is
    fitted on exactly what infer produces.

    Args:
        keep_on_device: leave the maps where the network ran (a GPU), for resampling there.
        save_samples: K: the maps also hold ``sct_samples``, the first K MC-dropout samples of the sCT.

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
        save_samples=save_samples,
    )
    timings["predict_s"] = time.perf_counter() - t0
    return maps, mr_path.affine, mr_path.shape


# The body outline on an input grid finer than the network's. A network voxel on the skin holds a
# mixture of tissue and air (the training CT was averaged into it), so interpolating the sCT onto a
# finer grid smears air into the tissue along the whole skin: on 2 × 2 × 3 mm phantoms with the CPU
# recipe's 7 × 7 × 6 mm grid, a perfect network-grid sCT scores 74–77 HU MAE on the input grid, 56–59 HU
# with this (scripts/grid_gap.py). Resamplers (MONAI's, ITK's) interpolate values, not outlines, hence by
# hand: each network voxel of the sCT that is not body interior takes the value of the nearest interior
# one, the sCT is interpolated, and the input MR's own body mask, at its own resolution, draws the
# outline (air outside it). The σ maps are interpolated as the network predicted them: on the skin they
# keep its uncertainty about the outline, which the MR draws and the CT need not share (misregistration).
OUTLINE_MIN_VOXEL_RATIO = 2.0  # network voxel volume over input voxel volume from which the outline is used
# A network voxel on the body's outer ring whose sCT is above this holds at most a few per cent of air
# (fat is about −100 HU) and keeps its own value; −400 and −200 kept more of the skin's mixture (perfect
# network-grid sCT of two design phantoms on 2 × 2 × 3 mm: 61.2/63.9 and 56.7/59.8 HU; −150: 56.3/59.3).
TISSUE_MIN_HU = -150.0
AIR_HU = -1000.0


@dataclass(frozen=True)
class BodyOutline:
    """Where each network voxel takes its value from, and the body mask of the input grid."""

    source_index: tuple[np.ndarray, np.ndarray, np.ndarray]
    input_body: np.ndarray  # (X, Y, Z) bool


def finer_than_network(net_affine: np.ndarray, input_affine: np.ndarray) -> bool:
    """Whether a network voxel holds at least :data:`OUTLINE_MIN_VOXEL_RATIO` input voxels."""
    net_voxel = abs(float(np.linalg.det(np.asarray(net_affine, np.float64)[:3, :3])))
    input_voxel = abs(float(np.linalg.det(np.asarray(input_affine, np.float64)[:3, :3])))
    return net_voxel >= OUTLINE_MIN_VOXEL_RATIO * input_voxel


def body_outline(sct_network: Any, net_affine: np.ndarray, volume: Volume, ct_scale_hu: float,
                 input_body: np.ndarray | None = None) -> BodyOutline | None:
    """The outline rule for ``volume``'s grid, or None where that grid is not finer than the network's.

    Args:
        sct_network: the sCT on the network grid, (1, 1, x, y, z) in scaled units.
        input_body: the body mask of the input grid; None derives it from ``volume`` (the MR).
    """
    from scipy import ndimage

    from radmtl.data.transforms import derive_body_mask
    from radmtl.inference.resample import resample_to_grid

    if not finer_than_network(net_affine, volume.affine):
        return None
    if input_body is None:
        input_body = derive_body_mask(volume.array) != 0
    sct_hu = np.asarray(_to_numpy(sct_network[0, 0]), np.float32) * ct_scale_hu
    import torch

    on_network = resample_to_grid(torch.from_numpy(input_body.astype(np.float32))[None], volume.affine,
                                  net_affine, sct_hu.shape, mode="nearest")[0] > 0.5
    # Interior: mostly tissue, or a voxel deep enough in the body that gas there is gas, not skin.
    interior = (sct_hu > TISSUE_MIN_HU) & on_network | ndimage.binary_erosion(on_network)
    if not interior.any():
        return None
    spacing = np.linalg.norm(np.asarray(net_affine, np.float64)[:3, :3], axis=0)
    index = ndimage.distance_transform_edt(~interior, sampling=spacing, return_distances=False, return_indices=True)
    return BodyOutline(source_index=tuple(index), input_body=input_body)


def grid_sigma(sct_network: Any) -> np.ndarray:
    """σ of what the network grid cannot resolve, on the network grid, (1, 1, x, y, z) scaled units.

    A network voxel holds the mean of the tissue inside it; on a finer input grid the tissue shows
    again, and where an edge crosses the voxel its fine voxels lie above and below that mean. For a
    step edge of contrast H at a uniformly random place in the voxel, the fine values vary about the
    mean with variance H²/6; H is estimated along each axis by the network sCT's change over one
    network voxel (central differences), the skin included: where in a network voxel the skin lies is
    as unresolved as where a bone edge lies. The σ_total written on a finer input grid is
    √(σ_total² + σ_grid²). On 6 design phantoms (seed 1000; 7×7×6 mm network grid, 2×2×3 mm input
    grid, configs/quick.yaml trained on seed 0) σ_total without this term gave z SD 1.365 and
    coverage_95 0.911 on the input grid; with it 1.084 and 0.943 (z mean −0.002); with H²/12 (a linear
    ramp rather than a step) about 1.17 and 0.93.
    """
    sct = _to_numpy(sct_network[0, 0]).astype(np.float64)
    variance = sum(np.square(np.gradient(sct, axis=axis)) for axis in range(3)) / 6.0
    return np.sqrt(variance).astype(np.float32)[None, None]


def _to_numpy(x: Any) -> np.ndarray:
    return x.detach().float().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def map_to_input_grid(key: str, network_map: Any, net_affine: np.ndarray, volume: Volume,
                      ct_scale_hu: float, outline: BodyOutline | None = None) -> np.ndarray:
    """One (1, 1, x, y, z) network-grid map → (X, Y, Z) float32 on the input grid, in HU if an sCT/σ map.

    With ``outline`` (:func:`body_outline`) the sCT is carried outward from the body interior before
    interpolation and is air outside the input's body mask; other maps ignore it.
    """
    from radmtl.inference.resample import resample_to_grid

    # Resample in network units; HU scaling is linear so it commutes with interpolation.
    as_variance = key in VARIANCE_MAPS
    values = network_map[0] ** 2 if as_variance else network_map[0]
    if outline is not None and key == "sct":
        if hasattr(values, "detach"):
            import torch

            index = tuple(torch.from_numpy(i).to(values.device) for i in outline.source_index)
        else:
            index = outline.source_index
        values = values[0][index][None]
    array = resample_to_grid(values, net_affine, volume.affine, volume.shape)[0]
    if as_variance:
        array = np.sqrt(np.clip(array, 0.0, None))
    if MAP_OUTPUTS[key][2]:
        array *= ct_scale_hu
    if outline is not None and key == "sct":
        array[~outline.input_body] = AIR_HU
    return array


def samples_to_input_grid(samples: Any, net_affine: np.ndarray, volume: Volume, ct_scale_hu: float,
                          outline: BodyOutline | None = None) -> np.ndarray:
    """(1, K, x, y, z) network-grid sCT samples → (X, Y, Z, K) float32 HU on the input grid.

    Each sample is brought back exactly as the sCT is (:func:`map_to_input_grid`: the same outline, the
    same interpolation, both linear), so the mean of all T samples is the written sCT. One sample at a
    time into one preallocated array: the peak is the K outputs plus one sample being resampled.
    """
    count = int(samples.shape[1])
    array = np.empty((*volume.shape, count), np.float32)
    for k in range(count):
        array[..., k] = map_to_input_grid("sct", samples[:, k:k + 1], net_affine, volume, ct_scale_hu, outline)
    return array


def add_grid_sigma(maps: dict[str, Any]) -> None:
    """Put :func:`grid_sigma` in ``maps`` as ``sigma_grid`` and into ``sigma_total`` (network grid)."""
    sigma_grid = grid_sigma(maps["sct"])
    total = maps["sigma_total"]
    if hasattr(total, "detach"):
        import torch

        grid = torch.from_numpy(sigma_grid).to(device=total.device, dtype=total.dtype)
        maps["sigma_total"] = torch.sqrt(total * total + grid * grid)
        maps["sigma_grid"] = grid
    else:
        maps["sigma_total"] = np.sqrt(np.square(total) + np.square(sigma_grid)).astype(np.float32)
        maps["sigma_grid"] = sigma_grid


def input_grid_outputs(maps: dict[str, Any], net_affine: np.ndarray, volume: Volume, ct_scale_hu: float,
                       mc_samples: int, keep_probs: bool = False,
                       use_outline: bool = True,
                       input_body: np.ndarray | None = None) -> Iterator[tuple[str, np.ndarray, type, str]]:
    """Each map that infer writes, on the input grid: ``(stem, array, dtype, units)``.

    On an input grid finer than the network's, the sCT follows the input MR's body outline
    (:func:`body_outline`, from ``input_body`` when given; ``use_outline=False`` interpolates it plainly),
    and σ_total also holds
    what the network grid cannot resolve (:func:`grid_sigma`, written as ``sct_sigma_grid``).

    Maps are produced one at a time and ``maps`` entries are dropped as they are used, so a caller
    that writes each array and lets it go holds few full-resolution maps at once. ``sct_samples``
    (X, Y, Z, K) follows the float maps when ``maps`` holds it (:func:`samples_to_input_grid`); then
    ``seg`` (uint8 labels, the argmax of the resampled probabilities), then ``seg_probabilities``
    (X, Y, Z, C) when ``keep_probs``.
    """
    from radmtl.inference.resample import argmax_labels_on_grid

    outline = (body_outline(maps["sct"], net_affine, volume, ct_scale_hu, input_body)
               if "sct" in maps and use_outline else None)
    if outline is not None and "sigma_total" in maps:
        add_grid_sigma(maps)
    for key, (stem, dtype, to_hu, needs_mc) in MAP_OUTPUTS.items():
        network_map = maps.pop(key, None)
        if network_map is None or (needs_mc and mc_samples <= 1):
            continue
        yield stem, map_to_input_grid(key, network_map, net_affine, volume, ct_scale_hu, outline), dtype, \
            "HU" if to_hu else "nats"
    if "sct_samples" in maps:
        yield "sct_samples", samples_to_input_grid(maps.pop("sct_samples"), net_affine, volume, ct_scale_hu,
                                                   outline), np.float32, "HU"
    if "seg_probs" in maps:
        labels, probs = argmax_labels_on_grid(maps.pop("seg_probs")[0], net_affine, volume.affine, volume.shape,
                                              keep_probs=keep_probs)
        yield "seg", labels, np.uint8, "label"
        if probs is not None:
            yield "seg_probabilities", np.moveaxis(probs, 0, -1), np.float32, "probability"
