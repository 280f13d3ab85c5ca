"""The network's 1×1×1 output heads (sCT mean, log-variances, organ logits)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class PointwiseHead(nn.Module):
    """A 1×1×1 convolution computed as one matrix product over the channels.

    oneDNN's 3D convolution is slow for a kernel of 1 with a handful of channels in float32, where
    the heads run: in a CPU training step of configs/quick.yaml the three heads' convolutions and
    their backward took about half of the step (torch profiler: 500 of 1055 ms), against a few ms
    as a matmul. The weight keeps the Conv3d shape and name (``conv.weight``), so checkpoints and
    the state dict are unchanged.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        """Args: x (B, in_channels, D, H, W). Returns (B, out_channels, D, H, W)."""
        weight, bias = self.conv.weight, self.conv.bias
        # bmm, not matmul with a broadcast 2-D weight: matmul folds the batch into a transposed
        # product, which hands the decoder a channels-last gradient that its convolutions' backward
        # then converts (slower than the heads it saved).
        flat = x.flatten(2)
        y = torch.baddbmm(bias.view(1, -1, 1), weight.flatten(1).expand(x.shape[0], -1, -1), flat)
        return y.view(x.shape[0], weight.shape[0], *x.shape[2:])


__all__ = ["PointwiseHead"]
