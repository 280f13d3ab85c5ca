"""Whole-volume prediction on the network grid: Gaussian-weighted sliding window × MC dropout.

Shared by validation during training and by ``radmtl infer``. Each window runs the encoder once
and the decoders T times (``model.mc_forward``) and returns *statistics* rather than samples, so
stitching memory does not grow with T. Statistics are chosen so that linear blending at window
overlaps stays exact: the sCT mean, the MC-dropout variance *within* the window, the mean aleatoric
variance, the mean softmax and the mean per-sample entropy; entropy and mutual information are
formed after stitching.

σ_epistemic is the spread of the T dropout samples only (DESIGN.md section 1). It is computed inside
each window and then blended, so the disagreement between overlapping windows (a stitching
artefact, not model uncertainty) never enters it: at T = 1 it is exactly 0, at T > 1 it is the
Gaussian-weighted mean of the per-window sample variances. Window disagreement is left out of every
map.

Only when asked (``save_samples`` K > 0) are samples kept: the first K sCT samples of each window, for a
later step that recomputes the dose on each. They are blended at window overlaps like every statistic, so
sample k of the volume is the k-th dropout pass of every window, Gaussian-weighted where windows overlap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference

from radmtl.nn.losses import sigma2_from_log_var

# Above this many voxels the stitched output buffers live in CPU memory, not on the GPU.
CPU_STITCH_VOXELS = 256 * 256 * 128


def window_statistics(model: torch.nn.Module, mr: torch.Tensor, mc_samples: int,
                      likelihood: str, save_samples: int = 0) -> dict[str, torch.Tensor]:
    """Per-window statistics, each (B, C, D, H, W).

    ``mc_samples == 1`` is the deterministic forward (dropout off in eval mode); T > 1 draws T
    dropout masks over the shared encoder features. The samples are reduced as they come, a chunk at
    a time (``model.mc_chunks``; a model with only ``mc_forward`` gives one chunk of all T): means are
    summed and the sample variance is merged chunk by chunk (Chan et al.'s pairwise form of Welford's
    update), so memory does not grow with T.

    Args:
        save_samples: K, from 0 to max(T, 1): also return ``sct_samples`` (B, K, D, H, W), the first K
            sCT samples in the order drawn (the sCT task only). Memory then grows with K, not with T.
    """
    if not 0 <= save_samples <= max(mc_samples, 1):
        raise ValueError(f"save_samples: must be from 0 to mc_samples ({mc_samples}), got {save_samples}")
    if mc_samples <= 1:
        chunks = iter([{k: v.unsqueeze(0) for k, v in model(mr).items()}])
    elif hasattr(model, "mc_chunks"):
        chunks = model.mc_chunks(mr, mc_samples)
    else:
        chunks = iter([model.mc_forward(mr, mc_samples)])
    sums: dict[str, torch.Tensor] = {}
    sct_mean = sct_m2 = None  # running mean and sum of squared deviations of the sCT samples
    kept: list[torch.Tensor] = []  # the first save_samples sCT samples, each chunk's (t, B, D, H, W)
    kept_count = 0
    count = 0
    for samples in chunks:
        n = next(iter(samples.values())).shape[0]
        parts: dict[str, torch.Tensor] = {}
        if "sct" in samples:
            sct = samples["sct"].float()
            if kept_count < save_samples:
                # A copy: a view would keep the whole chunk (up to 32 samples on a GPU) alive.
                kept.append(sct[:save_samples - kept_count, :, 0].clone())
                kept_count += kept[-1].shape[0]
            mean = sct.mean(0)
            if mc_samples > 1:  # one sample has no spread: skip torch's var over a length-1 axis
                m2 = ((sct - mean) ** 2).sum(0)
                if sct_mean is None:
                    sct_mean, sct_m2 = mean, m2
                else:
                    delta = mean - sct_mean
                    sct_mean = sct_mean + delta * (n / (count + n))
                    sct_m2 = sct_m2 + m2 + delta**2 * (count * n / (count + n))
            else:
                sct_mean = mean
            if "sct_log_var" in samples:
                parts["var_aleatoric"] = sigma2_from_log_var(samples["sct_log_var"].float(), likelihood).sum(0)
        if "seg_logits" in samples:
            log_probs = F.log_softmax(samples["seg_logits"].float(), dim=2)
            probs = log_probs.exp()
            parts["seg_probs"] = probs.sum(0)
            parts["seg_expected_entropy"] = -(probs * log_probs).sum(dim=2, keepdim=True).sum(0)
        for key, value in parts.items():
            sums[key] = value if key not in sums else sums[key] + value
        count += n
    stats: dict[str, torch.Tensor] = {}
    if sct_mean is not None:
        stats["sct"] = sct_mean
        # population variance (ddof = 0) of the T samples
        stats["var_epistemic"] = sct_m2 / count if mc_samples > 1 else torch.zeros_like(sct_mean)
    if kept:
        stats["sct_samples"] = torch.cat(kept).movedim(0, 1)  # (K, B, ...) -> (B, K, D, H, W)
    if "var_aleatoric" in sums:
        stats["var_aleatoric"] = sums.pop("var_aleatoric") / count
    for key in ("seg_probs", "seg_expected_entropy"):
        if key in sums:
            stats[key] = sums[key] / count
    return stats


def finalize(stats: dict[str, torch.Tensor], mc_samples: int, sigma_scale: float = 1.0) -> dict[str, torch.Tensor]:
    """Stitched statistics → maps (all in the network's scaled units; σ not yet in HU).

    Args:
        stats: the stitched output of :func:`window_statistics`.
        mc_samples: T.
        sigma_scale: σ-scaling factor (Laves et al. 2020) multiplying the aleatoric σ; the total
            is then ``√((scale·σ_aleatoric)² + σ_epistemic²)``.

    Returns keys among ``sct``, ``sigma_aleatoric``, ``sigma_epistemic``, ``sigma_total``,
    ``seg_probs``, ``seg_labels``, ``seg_entropy``, ``seg_mutual_info``, and ``sct_samples`` as stitched.
    """
    if not (math.isfinite(sigma_scale) and sigma_scale > 0):
        raise ValueError(f"sigma_scale: must be a positive finite number, got {sigma_scale}")
    out: dict[str, torch.Tensor] = {}
    if "sct" in stats:
        out["sct"] = stats["sct"]
        if "sct_samples" in stats:
            out["sct_samples"] = stats["sct_samples"]
        if "var_epistemic" not in stats:  # T = 1 in predict_volume: 0 by definition, not stitched
            stats = {**stats, "var_epistemic": torch.zeros_like(stats["sct"])}
        var_epistemic = stats["var_epistemic"].clamp_min(0.0)
        var_aleatoric = stats.get("var_aleatoric")
        if var_aleatoric is not None:
            var_aleatoric = var_aleatoric.clamp_min(0.0) * sigma_scale**2
            out["sigma_aleatoric"] = var_aleatoric.sqrt()
        if mc_samples > 1:
            out["sigma_epistemic"] = var_epistemic.sqrt()
            total = var_epistemic + (var_aleatoric if var_aleatoric is not None else 0.0)
            out["sigma_total"] = total.sqrt()
        elif var_aleatoric is not None:
            out["sigma_total"] = out["sigma_aleatoric"]
    if "seg_probs" in stats:
        probs = stats["seg_probs"].clamp_min(0.0)
        probs = probs / probs.sum(dim=1, keepdim=True).clamp_min(1e-12)
        out["seg_probs"] = probs
        out["seg_labels"] = probs.argmax(dim=1, keepdim=True)
        if mc_samples > 1:
            entropy = -(probs * probs.clamp_min(1e-12).log()).sum(dim=1, keepdim=True)
            out["seg_entropy"] = entropy
            out["seg_mutual_info"] = (entropy - stats["seg_expected_entropy"]).clamp_min(0.0)
    return out


@torch.no_grad()
def predict_volume(
    model: torch.nn.Module,
    mr: torch.Tensor,
    roi_size: Sequence[int],
    *,
    overlap: float = 0.5,
    sw_batch_size: int = 2,
    mc_samples: int = 1,
    likelihood: str = "gaussian",
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    progress: bool = False,
    sigma_scale: float = 1.0,
    keep_on_device: bool = False,
    save_samples: int = 0,
) -> dict[str, torch.Tensor]:
    """Predict a whole (1, 1, X, Y, Z) normalised MR volume on its own (network) grid.

    Args:
        model: a radmtl model; put in eval mode here (MC dropout is drawn by ``mc_forward``).
        mr: (1, 1, X, Y, Z) preprocessed MR.
        roi_size: sliding-window size (the training patch size).
        overlap: window overlap fraction in [0, 1).
        sw_batch_size: windows per forward pass.
        mc_samples: T; 1 = deterministic.
        likelihood: ``gaussian`` or ``laplace`` (how to read the σ head).
        device: where the network runs.
        amp_dtype: autocast dtype on CUDA (``torch.bfloat16``/``torch.float16``) or None.
        progress: MONAI's per-window progress bar.
        sigma_scale: σ-scaling factor applied to the aleatoric σ (see :func:`finalize`).
        keep_on_device: return the maps on ``device`` (a GPU: resampled there) instead of the CPU.
        save_samples: K: also return ``sct_samples`` (1, K, X, Y, Z), the first K dropout samples of
            the sCT, each blended at window overlaps (:func:`window_statistics`); 0: none.

    Returns:
        Maps from :func:`finalize`, each (1, C, X, Y, Z) on the CPU (on ``device`` if ``keep_on_device``).
    """
    device = torch.device(device)
    model.eval()
    if hasattr(mr, "as_tensor"):  # MetaTensor: its metadata would be copied into every window
        mr = mr.as_tensor()
    n_voxels = math.prod(mr.shape[2:])
    stitch_device = torch.device("cpu") if (device.type == "cpu" or n_voxels > CPU_STITCH_VOXELS) else device

    # At T = 1 the sample variance and the expected entropy are 0 and unused: not stitching them
    # saves two of the ten stitched channels.
    unused = ("var_epistemic", "seg_expected_entropy") if mc_samples <= 1 else ()

    def predictor(window: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            stats = window_statistics(model, window, mc_samples, likelihood, save_samples)
        return {k: v for k, v in stats.items() if k not in unused}

    stats = sliding_window_inference(
        mr.float(), roi_size=tuple(int(r) for r in roi_size), sw_batch_size=sw_batch_size,
        predictor=predictor, overlap=overlap, mode="gaussian", sw_device=device, device=stitch_device,
        progress=progress,
    )
    target = device if keep_on_device else torch.device("cpu")
    return {k: v.float().to(target) for k, v in finalize(dict(stats), mc_samples, sigma_scale).items()}
