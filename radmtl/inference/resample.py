"""Map network-grid predictions back onto the input volume's own voxel grid.

The network sees the MR reoriented to RAS and resampled to the model's spacing; every output must
land on the input's grid (shape, affine) so planning tools overlay it without a registration step.
Both grids are described by their voxel→world matrices; the map from a target voxel to a source
voxel is ``inv(src_affine) @ dst_affine``, so RAS, LPS, oblique and anisotropic inputs are all the
same case and no orientation bookkeeping is hand-rolled here.

Two ways to evaluate it, with the same result (trilinear interpolation at the mapped voxel centre,
coordinates clamped to the source's outermost centres):

- *Axis-aligned* (the case of every ``radmtl infer`` run: MONAI's ``Orientation`` only permutes and
  flips axes and ``Spacing`` keeps the direction cosines, so each target axis runs along one source
  axis): trilinear interpolation is separable, and three 1-D passes (gather two neighbours, blend)
  replace the (X, Y, Z, 3) coordinate grid and the 3-D ``grid_sample``; on a 400×400×120 input this
  is about ten times faster on a CPU. Passes run on the device of the image (the GPU when the
  network ran there), least-expanding axis first so the intermediates stay small.
- *General* (a target grid rotated against the source): one MONAI ``SpatialResample`` per slab.

Large inputs (e.g. 512×512×200) are resampled in slabs of output slices either way, so no
full-size coordinate grid or temporary exists at once; slabs are copied into one float32 output.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import SpatialResample

# Output voxels (per channel) per resampling step; bounds the coordinate grid of the general path
# to ~200 MB and the temporaries of the axis-aligned path to a few slab-sized tensors per channel.
SLAB_VOXELS = 16 * 1024 * 1024
# The axis-aligned path is taken when ignoring the off-axis terms of the voxel map moves no target
# voxel by more than this many source voxels (float64 rounding of oblique affines is ~1e-13).
AXIS_ALIGNED_TOL_VOXELS = 1e-4
# torch runs an elementwise op on the calling thread below this many elements (at::internal::GRAIN_SIZE).
_SERIAL_ELEMENTS = 32768


def _as_affine(affine: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(affine, torch.Tensor):
        affine = affine.detach().cpu().numpy()
    return np.asarray(affine, np.float64)


def voxel_map(src_affine: np.ndarray | torch.Tensor, dst_affine: np.ndarray | torch.Tensor) -> np.ndarray:
    """4×4 float64 matrix taking target voxel indices to source voxel coordinates."""
    return np.linalg.solve(_as_affine(src_affine), _as_affine(dst_affine))


def axis_aligned(xform: np.ndarray, dst_shape: Sequence[int]) -> list[tuple[int, float, float]] | None:
    """Per target axis ``k``: ``(source axis, scale, offset)`` with ``source = scale·k_index + offset``,
    or None when the target grid is rotated against the source (not a permutation of axes)."""
    linear = np.asarray(xform, np.float64)[:3, :3]
    source_axis = [int(np.argmax(np.abs(linear[:, k]))) for k in range(3)]
    if sorted(source_axis) != [0, 1, 2] or any(linear[source_axis[k], k] == 0 for k in range(3)):
        return None
    off_axis = np.abs(linear).copy()
    off_axis[source_axis, [0, 1, 2]] = 0.0
    # Worst-case source-coordinate error from dropping the off-axis terms, over the whole target grid.
    if np.max(off_axis @ (np.asarray(dst_shape, np.float64) - 1.0)) > AXIS_ALIGNED_TOL_VOXELS:
        return None
    return [(source_axis[k], float(linear[source_axis[k], k]), float(xform[source_axis[k], 3])) for k in range(3)]


def _taps(n: int, coords: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Lower neighbour and weight of the upper one for 1-D interpolation on ``n`` samples at
    ``coords``, clamped to the outermost samples (``border`` padding)."""
    coords = np.clip(coords, 0.0, n - 1.0)
    if mode == "nearest" or n == 1:
        # np.rint rounds half to even, as grid_sample's nearest mode does.
        return np.rint(coords).astype(np.int64), np.zeros(len(coords), np.float32)
    low = np.minimum(np.floor(coords), n - 2).astype(np.int64)
    return low, (coords - low).astype(np.float32)


def _along_axis(x: torch.Tensor, dim: int, coords: np.ndarray, mode: str) -> torch.Tensor:
    """1-D interpolation of ``x`` along ``dim`` at source coordinates ``coords``."""
    low, weight = _taps(int(x.shape[dim]), coords, mode)
    # Advanced indexing, not index_select: on a CPU index_select along the last axis is ~30× slower
    # (torch 2.x), and the two give the same gather.
    before = (slice(None),) * dim
    low_t = torch.as_tensor(low, device=x.device)
    if not weight.any():
        return x[(*before, low_t)]
    shape = [1] * x.ndim
    shape[dim] = len(coords)
    high_t = torch.clamp(low_t + 1, max=int(x.shape[dim]) - 1)
    return torch.lerp(x[(*before, low_t)], x[(*before, high_t)],
                      torch.as_tensor(weight, device=x.device).reshape(shape))


def _separable_blocks(image: torch.Tensor, axes: list[tuple[int, float, float]], dst_shape: tuple[int, int, int],
                      slab: int, mode: str, per_plane: bool) -> Iterator[tuple[int, int, int, torch.Tensor]]:
    # Bring the source axes into target order once (the source is the small network grid).
    source = image.permute(0, *(1 + a for a, _, _ in axes)).contiguous()
    full = [scale * np.arange(n, dtype=np.float64) + offset for (_, scale, offset), n in zip(axes, dst_shape)]
    low, weight = _taps(int(source.shape[1]), full[0], mode)
    high = np.minimum(low + 1, int(source.shape[1]) - 1)
    channels = int(source.shape[0])
    for z0 in range(0, dst_shape[2], slab):
        # Innermost axis first: a gather along the last axis moves single floats and is much
        # slower per voxel than one along an outer axis, so it runs on the smallest intermediate.
        part = _along_axis(source, 3, full[2][z0:z0 + slab], mode)
        part = _along_axis(part, 2, full[1], mode)
        if not per_plane:  # a GPU: one gather for the slab, one copy back per slab
            yield 0, 0, z0, _along_axis(part, 1, full[0], mode)
            continue
        # On a CPU the full-size (outermost) pass goes plane by plane: each target plane is a blend
        # of two source planes, with no gather and no slab-sized temporary. Blocks stay below
        # torch's parallel grain so each op runs on the calling thread: thousands of small
        # multi-threaded ops would each pay a thread barrier, which costs more than the op and
        # becomes pathological on shared cores (measured on 2 busy cores: 3-6 s against 0.1 s
        # for one 400×400×120 map).
        nz = int(part.shape[3])
        ny = max(1, min(dst_shape[1], _SERIAL_ELEMENTS // (channels * nz)))
        for i in range(dst_shape[0]):
            for y0 in range(0, dst_shape[1], ny):
                lower = part[:, low[i]:low[i] + 1, y0:y0 + ny]
                yield i, y0, z0, (lower if weight[i] == 0 else
                                  torch.lerp(lower, part[:, high[i]:high[i] + 1, y0:y0 + ny], float(weight[i])))


def _general_blocks(image: torch.Tensor, src_affine: np.ndarray, dst_affine: np.ndarray,
                    dst_shape: tuple[int, int, int], slab: int, mode: str) -> Iterator[tuple[int, int, int, torch.Tensor]]:
    src = MetaTensor(image, affine=torch.as_tensor(src_affine))
    resampler = SpatialResample(mode=mode, padding_mode="border", align_corners=False, dtype=torch.float32)
    for z0 in range(0, dst_shape[2], slab):
        nz = min(slab, dst_shape[2] - z0)
        # The slab's first voxel (0, 0, z0) of the target grid becomes voxel (0, 0, 0) of the slab.
        shift = np.eye(4)
        shift[2, 3] = z0
        part = resampler(src, dst_affine=torch.as_tensor(dst_affine @ shift),
                         spatial_size=(dst_shape[0], dst_shape[1], nz))
        yield 0, 0, z0, torch.as_tensor(part)


def resample_blocks(
    image: torch.Tensor,
    src_affine: np.ndarray | torch.Tensor,
    dst_affine: np.ndarray,
    dst_shape: Sequence[int],
    mode: str = "bilinear",
    slab_voxels: int = SLAB_VOXELS,
) -> Iterator[tuple[int, int, int, torch.Tensor]]:
    """Resample a channel-first image onto the target grid, one block of the target at a time.

    Yields ``(x0, y0, z0, block)``: ``block`` is (C, nx, ny, nz) float32 on ``image``'s device, the
    target voxels ``[x0:x0 + nx, y0:y0 + ny, z0:z0 + nz]``; together the blocks tile the target grid
    once. Arguments as :func:`resample_to_grid`.
    """
    if image.ndim != 4:
        raise ValueError(f"image: expected (C, x, y, z), got shape {tuple(image.shape)}")
    dst_shape = tuple(int(s) for s in dst_shape)
    if len(dst_shape) != 3 or min(dst_shape) < 1:
        raise ValueError(f"dst_shape: expected three positive sizes, got {dst_shape}")
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"mode: expected 'bilinear' or 'nearest', got {mode!r}")
    if isinstance(image, MetaTensor):  # its own metadata would clash with the affine given here
        image = image.as_tensor()
    image = torch.as_tensor(image).float()
    src_affine, dst_affine = _as_affine(src_affine), _as_affine(dst_affine)
    slab = max(1, min(dst_shape[2], slab_voxels // max(1, dst_shape[0] * dst_shape[1])))
    axes = axis_aligned(voxel_map(src_affine, dst_affine), dst_shape)
    if axes is not None:
        return _separable_blocks(image, axes, dst_shape, slab, mode, per_plane=image.device.type == "cpu")
    return _general_blocks(image, src_affine, dst_affine, dst_shape, slab, mode)


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
        image: (C, x, y, z) on the grid of ``src_affine`` (e.g. the network grid), on any device.
        src_affine: 4×4 voxel→world (RAS mm) of ``image``.
        dst_affine: 4×4 voxel→world (RAS mm) of the target grid (the input volume's).
        dst_shape: (X, Y, Z) of the target grid.
        mode: ``bilinear`` (trilinear in 3D) or ``nearest``.
        slab_voxels: resample at most this many output voxels (per channel) per step.

    Returns:
        (C, X, Y, Z) float32 numpy array on the target grid. Target voxels outside the source
        field of view take the nearest edge value (``border`` padding): the network grid covers the
        input's field of view, but its voxel centres may stop up to half a network voxel short of the
        input's outermost centres, and zero there would read as 0 HU / σ = 0.
    """
    dst_shape = tuple(int(s) for s in dst_shape)
    out = np.empty((int(image.shape[0]), *dst_shape), dtype=np.float32)
    for x0, y0, z0, block in resample_blocks(image, src_affine, dst_affine, dst_shape, mode, slab_voxels):
        out[:, x0:x0 + block.shape[1], y0:y0 + block.shape[2], z0:z0 + block.shape[3]] = block.cpu().numpy()
    return out


def argmax_labels_on_grid(
    probs: torch.Tensor,
    src_affine: np.ndarray | torch.Tensor,
    dst_affine: np.ndarray,
    dst_shape: Sequence[int],
    keep_probs: bool = False,
    slab_voxels: int = SLAB_VOXELS // 4,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels on the target grid as the argmax of bilinearly resampled class probabilities.

    Not nearest-neighbour resampling of the network-grid labels: the network grid is usually
    coarser than the input, and nearest neighbour would copy its staircase boundaries (shifted by
    up to half a network voxel) onto the fine grid. Interpolating the probabilities puts each
    boundary where the classes' probabilities cross, at the input's resolution, and keeps the label
    map consistent with ``seg_probabilities``. All classes are resampled together slab by slab (one
    voxel map for all of them), so memory holds C slab-sized maps, not C full-resolution ones.

    Args:
        probs: (C, x, y, z) class probabilities on the source grid, on any device.
        keep_probs: also return the resampled probabilities (C, X, Y, Z).
        slab_voxels: output voxels per class per step (smaller than the default of
            :func:`resample_to_grid` because C channels are in flight at once).

    Returns:
        (labels (X, Y, Z) uint8 — int64 beyond 256 classes, probabilities or None). Ties go to the
        lower class, as ``torch.argmax`` does on the network grid.
    """
    n_classes = int(probs.shape[0])
    dst_shape = tuple(int(s) for s in dst_shape)
    labels = np.empty(dst_shape, dtype=np.uint8 if n_classes <= 256 else np.int64)
    kept = np.empty((n_classes, *dst_shape), dtype=np.float32) if keep_probs else None
    for x0, y0, z0, block in resample_blocks(probs, src_affine, dst_affine, dst_shape, "bilinear", slab_voxels):
        where = tuple(slice(start, start + n) for start, n in zip((x0, y0, z0), block.shape[1:]))
        if block.device.type == "cpu":
            # numpy, not torch: a torch reduction over a small block pays a thread barrier (~8 ms per
            # block on 2 busy cores against ~40 µs here); np.argmax keeps the first maximum too.
            best = np.argmax(block.numpy(), axis=0)
        else:
            best = torch.max(block, dim=0).indices.cpu().numpy()
        labels[where] = best
        if kept is not None:
            kept[(slice(None), *where)] = block.cpu().numpy()
    return labels, kept
