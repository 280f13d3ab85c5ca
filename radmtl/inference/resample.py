"""Map network-grid predictions back onto the input volume's own voxel grid.

The network sees the MR reoriented to RAS and resampled to the model's spacing; every output must
land on the input's grid (shape, affine) so planning tools overlay it without a registration step.
The inversion is one MONAI ``SpatialResample`` from the network-grid affine to the input affine:
it composes the two voxel→world matrices, so RAS, LPS, oblique and anisotropic inputs are all the
same case and no orientation bookkeeping is hand-rolled here.

Large inputs (e.g. 512×512×200) are resampled in slabs of output slices: ``grid_sample`` builds a
(X, Y, Z, 3) coordinate grid per call, which at full size is several times the map itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import SpatialResample

# Output voxels per resampling call; bounds the coordinate grid to ~200 MB.
SLAB_VOXELS = 16 * 1024 * 1024


def resample_to_grid(
    image: torch.Tensor,
    src_affine: np.ndarray | torch.Tensor,
    dst_affine: np.ndarray,
    dst_shape: Sequence[int],
    mode: str = "bilinear",
    slab_voxels: int = SLAB_VOXELS,
) -> np.ndarray:
    """Resample a channel-first image from one voxel grid onto another.

    Args:
        image: (C, x, y, z) on the grid of ``src_affine`` (e.g. the network grid).
        src_affine: 4×4 voxel→world (RAS mm) of ``image``.
        dst_affine: 4×4 voxel→world (RAS mm) of the target grid (the input volume's).
        dst_shape: (X, Y, Z) of the target grid.
        mode: ``bilinear`` (trilinear in 3D) or ``nearest``.
        slab_voxels: resample at most this many output voxels per call.

    Returns:
        (C, X, Y, Z) float32 numpy array on the target grid. Target voxels outside the source
        field of view take the nearest edge value (``border`` padding): the network grid covers the
        input's field of view, but its voxel centres may stop up to half a network voxel short of the
        input's outermost centres, and zero there would read as 0 HU / σ = 0.
    """
    if image.ndim != 4:
        raise ValueError(f"image: expected (C, x, y, z), got shape {tuple(image.shape)}")
    dst_shape = tuple(int(s) for s in dst_shape)
    if len(dst_shape) != 3 or min(dst_shape) < 1:
        raise ValueError(f"dst_shape: expected three positive sizes, got {dst_shape}")
    if isinstance(image, MetaTensor):  # its own metadata would clash with the affine given here
        image = image.as_tensor()
    src = MetaTensor(image.float(), affine=torch.as_tensor(np.asarray(src_affine, np.float64)))
    dst_affine = np.asarray(dst_affine, np.float64)
    resampler = SpatialResample(mode=mode, padding_mode="border", align_corners=False, dtype=torch.float32)
    n_channels = int(image.shape[0])
    out = np.empty((n_channels, *dst_shape), dtype=np.float32)
    slab = max(1, min(dst_shape[2], slab_voxels // max(1, dst_shape[0] * dst_shape[1])))
    for z0 in range(0, dst_shape[2], slab):
        nz = min(slab, dst_shape[2] - z0)
        # The slab's first voxel (0, 0, z0) of the target grid becomes voxel (0, 0, 0) of the slab.
        shift = np.eye(4)
        shift[2, 3] = z0
        part = resampler(src, dst_affine=torch.as_tensor(dst_affine @ shift),
                         spatial_size=(dst_shape[0], dst_shape[1], nz))
        out[..., z0:z0 + nz] = torch.as_tensor(part).detach().cpu().numpy()
    return out


def argmax_labels_on_grid(
    probs: torch.Tensor,
    src_affine: np.ndarray | torch.Tensor,
    dst_affine: np.ndarray,
    dst_shape: Sequence[int],
    keep_probs: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels on the target grid as the argmax of bilinearly resampled class probabilities.

    Not nearest-neighbour resampling of the network-grid labels: the network grid is usually
    coarser than the input, and nearest neighbour would copy its staircase boundaries (shifted by
    up to half a network voxel) onto the fine grid. Interpolating the probabilities puts each
    boundary where the classes' probabilities cross, at the input's resolution, and keeps the label
    map consistent with ``seg_probabilities``. Classes are resampled one at a time with a running
    argmax so memory holds two full-resolution maps, not C.

    Args:
        probs: (C, x, y, z) class probabilities on the source grid.
        keep_probs: also return the resampled probabilities (C, X, Y, Z).

    Returns:
        (labels (X, Y, Z) int64, probabilities or None).
    """
    n_classes = int(probs.shape[0])
    best = np.full(tuple(dst_shape), -np.inf, dtype=np.float32)
    labels = np.zeros(tuple(dst_shape), dtype=np.int64)
    kept = np.empty((n_classes, *dst_shape), dtype=np.float32) if keep_probs else None
    for c in range(n_classes):
        p = resample_to_grid(probs[c:c + 1], src_affine, dst_affine, dst_shape)[0]
        # Strict '>' so ties go to the lower class, as torch.argmax does on the network grid.
        better = p > best
        labels[better] = c
        np.maximum(best, p, out=best)
        if kept is not None:
            kept[c] = p
    return labels, kept

