"""radmtl.inference.resample: the axis-aligned (separable) path gives what MONAI's SpatialResample gives.

``radmtl infer`` always takes the separable path (the network grid is the input grid with axes
permuted, flipped and rescaled), so it must agree with the general 3-D path voxel for voxel: on
permuted, flipped, anisotropic and commonly-rotated grids, where the target runs past the source
(border padding), in slabs, plane by plane (CPU) or slab by slab (GPU), and for the labels.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from radmtl.inference import resample as R


def _general(image: torch.Tensor, src: np.ndarray, dst: np.ndarray, shape, mode="bilinear") -> np.ndarray:
    out = np.empty((image.shape[0], *shape), np.float32)
    for _, _, z0, part in R._general_blocks(image.float(), src, dst, tuple(shape), 10**9, mode):
        out[..., z0:z0 + part.shape[-1]] = part.numpy()
    return out


def _grids(seed: int):
    """A random source grid and a target grid whose axes run along the source's (permuted, flipped,
    rescaled, shifted), both rotated together when ``seed`` is odd (an oblique acquisition)."""
    rng = np.random.default_rng(seed)
    common = Rotation.random(random_state=seed).as_matrix() if seed % 2 else np.eye(3)
    src = np.eye(4)
    src[:3, :3] = common @ np.diag(rng.uniform(0.7, 3.0, 3))
    src[:3, 3] = rng.normal(0, 5, 3)
    dst = np.eye(4)
    dst[:3, :3] = common @ (np.eye(3)[:, rng.permutation(3)] * rng.choice([-1.0, 1.0], 3) * rng.uniform(0.5, 3.0, 3))
    # starting a little before the source, often running past its far edge: border padding is exercised
    dst[:3, 3] = src[:3, 3] + common @ rng.uniform(-2.0, 6.0, 3)
    src_shape = tuple(int(n) for n in rng.integers(2, 12, 3))
    dst_shape = tuple(int(n) for n in rng.integers(2, 14, 3))
    image = torch.as_tensor(rng.normal(size=(3, *src_shape)), dtype=torch.float32)
    return image, src, dst, dst_shape


@pytest.mark.parametrize("seed", range(12))
def test_separable_path_matches_monai_spatial_resample(seed):
    image, src, dst, dst_shape = _grids(seed)
    assert R.axis_aligned(R.voxel_map(src, dst), dst_shape) is not None  # the fast path is the one tested
    fast = R.resample_to_grid(image, src, dst, dst_shape, slab_voxels=dst_shape[0] * dst_shape[1] * 2)
    np.testing.assert_allclose(fast, _general(image, src, dst, dst_shape), atol=2e-5)
    # nearest: the same source voxel (ties rounded alike), so exactly equal
    fast_nn = R.resample_to_grid(image, src, dst, dst_shape, mode="nearest")
    np.testing.assert_array_equal(fast_nn, _general(image, src, dst, dst_shape, "nearest"))


def test_border_padding_takes_the_edge_value_and_interior_is_trilinear():
    # Source 0..3 along x (1 mm), target every 0.5 mm from -1 to 4: clamped outside, linear inside.
    image = torch.arange(4, dtype=torch.float32).reshape(1, 4, 1, 1).expand(1, 4, 2, 2).contiguous()
    dst = np.diag([0.5, 1.0, 1.0, 1.0])
    dst[0, 3] = -1.0
    out = R.resample_to_grid(image, np.eye(4), dst, (11, 2, 2))
    np.testing.assert_allclose(out[0, :, 0, 0], [0, 0, 0, 0.5, 1, 1.5, 2, 2.5, 3, 3, 3], atol=1e-6)


def test_a_rotated_target_takes_the_general_path():
    dst = np.eye(4)
    dst[:3, :3] = Rotation.from_euler("z", 10, degrees=True).as_matrix()
    assert R.axis_aligned(R.voxel_map(np.eye(4), dst), (20, 20, 20)) is None
    # float64 rounding of an oblique affine (1e-13) is not a rotation
    tiny = np.eye(4)
    tiny[0, 1] = 1e-13
    assert R.axis_aligned(R.voxel_map(np.eye(4), tiny), (512, 512, 300)) is not None


@pytest.mark.parametrize("serial_elements", [32768, 13])  # 13: rows of 2 voxels (3 channels, 2 slices)
def test_slab_at_once_gpu_branch_equals_plane_by_plane_cpu_branch(monkeypatch, serial_elements):
    monkeypatch.setattr(R, "_SERIAL_ELEMENTS", serial_elements)
    image, src, dst, dst_shape = _grids(3)
    axes = R.axis_aligned(R.voxel_map(src, dst), dst_shape)

    def assemble(per_plane: bool) -> np.ndarray:
        out = np.full((3, *dst_shape), np.nan, np.float32)
        for x0, y0, z0, block in R._separable_blocks(image, axes, dst_shape, 2, "bilinear", per_plane):
            assert np.isnan(out[:, x0:x0 + block.shape[1], y0:y0 + block.shape[2], z0:z0 + block.shape[3]]).all()
            out[:, x0:x0 + block.shape[1], y0:y0 + block.shape[2], z0:z0 + block.shape[3]] = block.numpy()
        return out

    planes, slabs = assemble(True), assemble(False)
    assert not np.isnan(planes).any()  # the blocks tile the whole target, each voxel once
    np.testing.assert_allclose(planes, slabs, atol=1e-6)


def test_labels_are_the_argmax_of_the_resampled_probabilities_with_ties_to_the_lower_class():
    image, src, dst, dst_shape = _grids(4)
    probs = torch.stack([image[0], image[1], image[1]])  # classes 1 and 2 tie everywhere: 2 never wins
    labels, kept = R.argmax_labels_on_grid(probs, src, dst, dst_shape, keep_probs=True, slab_voxels=7)
    resampled = R.resample_to_grid(probs, src, dst, dst_shape)
    np.testing.assert_allclose(kept, resampled, atol=1e-6)
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, np.argmax(resampled, axis=0))
    assert (labels != 2).all() and (labels == 1).any() and (labels == 0).any()
