"""Shared-encoder multi-task 3D U-Net with Monte-Carlo dropout (DESIGN.md section 4).

One encoder reads the MR; one decoder per task (``sct``, ``seg``) rebuilds full resolution from
the encoder's skip features, and 1×1×1 heads give the sCT mean, the organ logits and, where the
loss needs them, per-voxel log-variances ``s = log σ²``. No final activations.

Epistemic uncertainty (Gal & Ghahramani 2016): Bernoulli dropout at one place, ``mc_dropout_at``:

- ``encoder`` (the original placement, and what a saved config without the key was trained with):
  every encoder feature map the decoders consume. Both decoders see the same dropped features, so
  one sample is a coherent (sCT, segmentation) pair, but each sample repeats both whole decoders.
- ``last_block``: the input of each decoder's last, full-resolution block.
- ``heads``: each decoder's output features, the input of the 1×1×1 heads.

Everything before the dropout is computed once per window and shared by the T samples
(:meth:`MultiTaskUNet.mc_forward`); only what follows it is repeated. docs/mc_dropout.md has the
timings and the calibration that chose the default.
"""

from __future__ import annotations

import dataclasses

import logging
import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, ResidualUnit
from torch import Tensor, nn

from radmtl.config import MC_DROPOUT_PLACES, TASKS, ModelConfig
from radmtl.nn.heads import PointwiseHead

logger = logging.getLogger(__name__)

NORMS = ("instance", "batch", "group")
# MC-dropout samples per call of the per-sample part on a GPU (decoder_batch None): T = 20 runs in one call,
# and a T of hundreds in chunks instead of every sample's activations at once.
GPU_SAMPLES_PER_CALL = 32
SPATIAL_DIMS = 3


def _norm_spec(norm: str, channels: int) -> str | tuple[str, dict[str, int]]:
    """MONAI norm argument; group norm gets up to 8 groups that divide ``channels``."""
    if norm != "group":
        return norm
    return ("group", {"num_groups": math.gcd(channels, 8)})


def _conv_block(
    in_channels: int, out_channels: int, stride: int, num_res_units: int, norm: str, act: str
) -> nn.Module:
    """3×3×3 block: a MONAI ResidualUnit, or a plain Convolution when ``num_res_units`` is 0."""
    if num_res_units > 0:
        return ResidualUnit(
            SPATIAL_DIMS,
            in_channels,
            out_channels,
            strides=stride,
            kernel_size=3,
            subunits=num_res_units,
            act=act,
            norm=_norm_spec(norm, out_channels),
        )
    return Convolution(
        SPATIAL_DIMS,
        in_channels,
        out_channels,
        strides=stride,
        kernel_size=3,
        act=act,
        norm=_norm_spec(norm, out_channels),
    )


class SharedEncoder(nn.Module):
    """Encoder shared by every task.

    Level 0 keeps full resolution with ``channels[0]`` features; level ``i`` downsamples by
    ``strides[i - 1]`` to ``channels[i]`` features. The last level is the bottleneck.
    """

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int],
        strides: Sequence[int],
        num_res_units: int,
        norm: str,
        act: str,
    ) -> None:
        super().__init__()
        levels = [_conv_block(in_channels, channels[0], 1, num_res_units, norm, act)]
        for i in range(1, len(channels)):
            levels.append(_conv_block(channels[i - 1], channels[i], strides[i - 1], num_res_units, norm, act))
        self.levels = nn.ModuleList(levels)

    def forward(self, mr: Tensor) -> list[Tensor]:
        """Args: mr (B, in_channels, D, H, W). Returns one feature map per level, finest first."""
        features = []
        x = mr
        for level in self.levels:
            x = level(x)
            features.append(x)
        return features


class TaskDecoder(nn.Module):
    """U-Net decoder: transposed-conv upsampling, concatenation with the skip, then a conv block."""

    def __init__(
        self, channels: Sequence[int], strides: Sequence[int], num_res_units: int, norm: str, act: str
    ) -> None:
        super().__init__()
        self.upsample = nn.ModuleList()
        self.fuse = nn.ModuleList()
        for i in range(len(channels) - 1, 0, -1):
            self.upsample.append(
                Convolution(
                    SPATIAL_DIMS,
                    channels[i],
                    channels[i - 1],
                    strides=strides[i - 1],
                    kernel_size=3,
                    act=act,
                    norm=_norm_spec(norm, channels[i - 1]),
                    is_transposed=True,
                )
            )
            self.fuse.append(_conv_block(2 * channels[i - 1], channels[i - 1], 1, num_res_units, norm, act))

    def trunk(self, features: list[Tensor]) -> Tensor:
        """Everything before the last block: its input (N, 2·channels[0], D, H, W)."""
        x = features[-1]
        skips = features[-2::-1]
        for upsample, fuse, skip in zip(self.upsample[:-1], self.fuse[:-1], skips[:-1]):
            x = fuse(torch.cat([upsample(x), skip], dim=1))
        return torch.cat([self.upsample[-1](x), skips[-1]], dim=1)

    def forward(self, features: list[Tensor]) -> Tensor:
        """Args: encoder features, finest first. Returns (N, channels[0], D, H, W)."""
        return self.fuse[-1](self.trunk(features))


class MultiTaskUNet(nn.Module):
    """Shared-encoder multi-task U-Net for sCT regression and organ segmentation.

    Args:
        in_channels: MR channels (normally 1).
        num_classes: segmentation classes including background.
        channels: features per encoder level, finest first, e.g. (16, 32, 64, 128).
        strides: downsampling factor into each level after the first; ``len(channels) - 1`` entries.
        num_res_units: sub-units per MONAI ResidualUnit; 0 uses plain convolutions.
        norm: ``"instance"``, ``"batch"`` or ``"group"``.
        act: MONAI activation name, e.g. ``"leakyrelu"``.
        dropout: MC-dropout probability.
        mc_dropout_at: where dropout acts: ``"encoder"``, ``"last_block"`` or ``"heads"`` (module
            docstring); in training and in :meth:`mc_forward` alike.
        tasks: subset of ``("sct", "seg")``.
        sct_log_var: add a per-voxel ``s(x)`` head to the sCT decoder.
        sct_log_var_init: initial bias of that head (log σ² in scaled units; log b for Laplace).
        seg_log_var: add a per-voxel ``s(x)`` head to the segmentation decoder.

    Inputs of any spatial size are accepted: they are replicate-padded to a multiple of
    ``prod(strides)`` (replicate rather than zero because zero is a real tissue intensity after
    z-scoring) and the outputs are cropped back to the input size.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 6,
        channels: Sequence[int] = (16, 32, 64, 128),
        strides: Sequence[int] = (2, 2, 2),
        num_res_units: int = 1,
        norm: str = "instance",
        act: str = "leakyrelu",
        dropout: float = 0.5,
        tasks: Sequence[str] = TASKS,
        sct_log_var: bool = True,
        seg_log_var: bool = False,
        sct_log_var_init: float = 0.0,
        mc_dropout_at: str = "encoder",
    ) -> None:
        super().__init__()
        channels, strides, tasks = tuple(channels), tuple(strides), tuple(tasks)
        if in_channels < 1:
            raise ValueError(f"in_channels: must be >= 1, got {in_channels}")
        if len(channels) < 2 or any(c < 1 for c in channels):
            raise ValueError(f"channels: need at least 2 positive entries, got {list(channels)}")
        if len(strides) != len(channels) - 1 or any(s < 1 for s in strides):
            raise ValueError(
                f"strides: need len(channels) - 1 = {len(channels) - 1} entries >= 1, got {list(strides)}"
            )
        if num_res_units < 0:
            raise ValueError(f"num_res_units: must be >= 0, got {num_res_units}")
        if norm not in NORMS:
            raise ValueError(f"norm: must be one of {list(NORMS)}, got {norm!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout: must be in [0, 1), got {dropout}")
        if mc_dropout_at not in MC_DROPOUT_PLACES:
            raise ValueError(f"mc_dropout_at: must be one of {list(MC_DROPOUT_PLACES)}, got {mc_dropout_at!r}")
        if not tasks or any(t not in TASKS for t in tasks) or len(set(tasks)) != len(tasks):
            raise ValueError(f"tasks: expected a non-empty subset of {list(TASKS)}, got {list(tasks)}")
        if "seg" in tasks and num_classes < 2:
            raise ValueError(f"num_classes: needs >= 2 for segmentation, got {num_classes}")
        if sct_log_var and "sct" not in tasks:
            raise ValueError(f"sct_log_var: is True but tasks={list(tasks)} has no 'sct'")
        if seg_log_var and "seg" not in tasks:
            raise ValueError(f"seg_log_var: is True but tasks={list(tasks)} has no 'seg'")

        self.tasks = tasks
        self.dropout = float(dropout)
        self.mc_dropout_at = mc_dropout_at
        self.size_multiple = math.prod(strides)
        self.encoder = SharedEncoder(in_channels, channels, strides, num_res_units, norm, act)
        self.decoders = nn.ModuleDict(
            {task: TaskDecoder(channels, strides, num_res_units, norm, act) for task in tasks}
        )
        # output key -> (decoder that feeds it, head)
        self.heads = nn.ModuleDict()
        self._head_source: dict[str, str] = {}
        if "sct" in tasks:
            self._add_head("sct", "sct", PointwiseHead(channels[0], 1))
            if sct_log_var:
                log_var_head = PointwiseHead(channels[0], 1)
                # Start σ(x) at a plausible scale instead of σ = 1 (= ct_scale_hu) everywhere.
                nn.init.constant_(log_var_head.conv.bias, float(sct_log_var_init))
                self._add_head("sct_log_var", "sct", log_var_head)
        if "seg" in tasks:
            self._add_head("seg_logits", "seg", PointwiseHead(channels[0], num_classes))
            if seg_log_var:
                self._add_head("seg_log_var", "seg", PointwiseHead(channels[0], 1))

    def _add_head(self, key: str, task: str, head: nn.Module) -> None:
        self.heads[key] = head
        self._head_source[key] = task

    # --- padding -------------------------------------------------------------------------------

    def _pad(self, mr: Tensor) -> tuple[Tensor, tuple[slice, ...]]:
        """Replicate-pad (B, C, D, H, W) to a multiple of prod(strides); return the crop back."""
        if mr.ndim != 5:
            raise ValueError(f"mr: expected shape (B, C, D, H, W), got {tuple(mr.shape)}")
        pads: list[int] = []
        crop: list[slice] = [slice(None), slice(None)]
        for size in mr.shape[2:]:
            total = -size % self.size_multiple
            before = total // 2
            crop.append(slice(before, before + size))
            pads.append((before, total - before))
        if not any(sum(p) for p in pads):
            return mr, tuple(crop)
        # F.pad lists the last dimension first
        flat = [v for before_after in reversed(pads) for v in before_after]
        return F.pad(mr, flat, mode="replicate"), tuple(crop)

    # --- dropout -------------------------------------------------------------------------------

    def _draw_masks(self, points: list[Tensor], samples: int) -> list[Tensor]:
        """Boolean keep-masks (samples, B, C, d, h, w), one per tensor dropout acts on.

        Drawn sample by sample, tensor by tensor, and the MC paths draw the samples in order, so
        the RNG stream (hence every sample) is the same whether the samples then run batched, in
        chunks or in a loop, and a training forward under a seed equals ``mc_forward(mr, 1)``.
        ``rand < keep`` is about twice as fast as ``bernoulli_`` on CPU.
        """
        keep = 1.0 - self.dropout
        per_sample = [[torch.rand(f.shape, device=f.device) < keep for f in points] for _ in range(samples)]
        return [torch.stack(level) for level in zip(*per_sample)]

    def _apply_masks(self, scaled: list[Tensor], masks: list[Tensor]) -> list[Tensor]:
        """Inverted dropout on tensors already divided by keep, so eval needs no rescaling.

        ``masks`` carry any number of leading sample dimensions in front of (B, C, d, h, w).
        """
        return [torch.where(mask, f, 0.0) for f, mask in zip(scaled, masks)]

    # --- forward paths -------------------------------------------------------------------------

    def _before_dropout(self, padded: Tensor) -> list[Tensor]:
        """The tensors dropout acts on: all the network computes before it, shared by the samples."""
        features = self.encoder(padded)
        if self.mc_dropout_at == "encoder":
            return features
        if self.mc_dropout_at == "last_block":
            return [decoder.trunk(features) for decoder in self.decoders.values()]
        return [decoder(features) for decoder in self.decoders.values()]

    def _after_dropout(self, points: list[Tensor], crop: tuple[slice, ...]) -> dict[str, Tensor]:
        """From the (dropped) tensors of :meth:`_before_dropout` to the outputs: the per-sample part."""
        if self.mc_dropout_at == "encoder":
            decoded = {task: decoder(points) for task, decoder in self.decoders.items()}
        elif self.mc_dropout_at == "last_block":
            decoded = {task: self.decoders[task].fuse[-1](x) for task, x in zip(self.decoders, points)}
        else:
            decoded = dict(zip(self.decoders, points))
        # The 1×1×1 heads run in float32 outside autocast: a bf16 sCT would be rounded to steps of
        # ≈8 HU at 1000-2000 HU, and a bf16 s(x) to steps of ≈3 % in σ, before any .float().
        with torch.autocast(device_type=points[0].device.type, enabled=False):
            return {key: head(decoded[self._head_source[key]].float())[crop] for key, head in self.heads.items()}

    def forward(self, mr: Tensor) -> dict[str, Tensor]:
        """Args:
            mr: (B, in_channels, D, H, W), any spatial size.

        Returns:
            ``sct`` (B, 1, D, H, W), ``sct_log_var`` (B, 1, D, H, W), ``seg_logits``
            (B, num_classes, D, H, W), ``seg_log_var`` (B, 1, D, H, W) — each present when built.
            Dropout is applied only in training mode, so ``eval()`` is deterministic.
        """
        padded, crop = self._pad(mr)
        points = self._before_dropout(padded)
        if self.training and self.dropout > 0:
            keep = 1.0 - self.dropout
            masks = [m[0] for m in self._draw_masks(points, 1)]
            points = self._apply_masks([p / keep for p in points], masks)
        return self._after_dropout(points, crop)

    def mc_forward(
        self, mr: Tensor, samples: int, batched: bool = True, decoder_batch: int | None = None
    ) -> dict[str, Tensor]:
        """Monte-Carlo dropout samples; dropout is on whatever the train/eval mode is.

        All the network computes before the dropout (``mc_dropout_at``) runs once; the masks are
        drawn and the rest runs per chunk of samples. With ``batched=False`` the chunks are single
        samples — the reference path, giving the same samples under the same seed. Other layers
        follow the module's mode: after ``eval()`` norm layers use running statistics. With batch
        norm in training mode a chunk normalises over all its items, so chunkings differ.

        Args:
            mr: (B, in_channels, D, H, W), any spatial size.
            samples: T >= 1.
            batched: run several samples per call (``decoder_batch``); False runs one at a time.
            decoder_batch: at most this many items (whole samples of B, at least one sample) per
                call of the per-sample part. None chooses by device: up to :data:`GPU_SAMPLES_PER_CALL`
                samples of B at once on a GPU, one sample at a time on a CPU, where large batches only
                cost allocation and cache misses (measured in docs/mc_dropout.md).

        Returns:
            The keys of :meth:`forward`, each of shape (T, B, C, D, H, W): every sample held at once.
            :meth:`mc_chunks` gives the same samples a chunk at a time.
        """
        chunks = list(self.mc_chunks(mr, samples, batched, decoder_batch))
        if len(chunks) == 1:
            return chunks[0]
        return {key: torch.cat([chunk[key] for chunk in chunks]) for key in chunks[0]}

    def mc_chunks(
        self, mr: Tensor, samples: int, batched: bool = True, decoder_batch: int | None = None
    ) -> Iterator[dict[str, Tensor]]:
        """The samples of :meth:`mc_forward` (same arguments, same samples), one chunk at a time, each
        (t, B, C, D, H, W): a caller that reduces them as they come holds one chunk, whatever T is."""
        if samples < 1:
            raise ValueError(f"samples: must be >= 1, got {samples}")
        if decoder_batch is not None and decoder_batch < 1:
            raise ValueError(f"decoder_batch: must be >= 1 or None, got {decoder_batch}")
        padded, crop = self._pad(mr)
        points = self._before_dropout(padded)
        batch_size = mr.shape[0]
        keep = 1.0 - self.dropout
        scaled = [p / keep for p in points] if self.dropout > 0 else points

        def run_samples(count: int) -> dict[str, Tensor]:
            if self.dropout > 0:
                dropped = self._apply_masks(scaled, self._draw_masks(points, count))
            else:
                dropped = [p.expand(count, *p.shape) for p in points]
            outputs = self._after_dropout([d.flatten(0, 1) for d in dropped], crop)
            return {key: value.unflatten(0, (count, batch_size)) for key, value in outputs.items()}

        if not batched:
            step = 1
        elif decoder_batch is not None:
            step = max(1, decoder_batch // batch_size)
        else:
            step = 1 if mr.device.type == "cpu" else min(samples, GPU_SAMPLES_PER_CALL)
        for first in range(0, samples, step):
            yield run_samples(min(step, samples - first))


def build_model(cfg: ModelConfig) -> MultiTaskUNet:
    """Build the network described by ``cfg`` (DESIGN.md section 4)."""
    # ModelConfig's fields are exactly the constructor's arguments (checked by the tests).
    model = MultiTaskUNet(**dataclasses.asdict(cfg))
    n_params = sum(p.numel() for p in model.parameters())
    logger.info(
        "built MultiTaskUNet: tasks=%s heads=%s params=%d", list(cfg.tasks), list(model.heads), n_params
    )
    return model
