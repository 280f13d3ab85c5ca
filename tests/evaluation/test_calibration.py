"""σ recovery over accurate soft tissue: which voxels the soft-tissue Spearman ranks."""

from __future__ import annotations

import numpy as np
import pytest

from radmtl.evaluation.calibration import uncertainty_metrics


def test_soft_tissue_spearman_ranks_only_accurate_soft_tissue_voxels():
    shape = (12, 12, 12)
    x = np.arange(shape[0], dtype=np.float64)[:, None, None] * np.ones(shape)
    true_sd = 10.0 + x  # rises along x
    ct = np.full(shape, 40.0)  # soft tissue everywhere ...
    ct[:, :, 9:] = 1200.0  # ... except a bone slab
    sct = ct.copy()
    sct[:, 6:9, :] -= 300.0  # a badly biased band of soft tissue (|bias| = 300 HU >> true SD)
    # σ follows the truth where the model is accurate, runs against it in the biased band and the bone
    sigma = true_sd.copy()
    sigma[:, 6:9, :] = 100.0 - true_sd[:, 6:9, :]
    sigma[:, :, 9:] = 100.0 - true_sd[:, :, 9:]
    mask = np.ones(shape, bool)
    m = uncertainty_metrics(ct, sct, sigma, mask, sigma_aleatoric_hu=sigma, true_noise_sd_hu=true_sd)
    assert m["spearman_sigma_true_noise"] < 0.5
    # The 3×3×3 bias also reaches one voxel row beyond the band (y = 5, 9): those are left out too.
    assert m["spearman_sigma_true_noise_soft_tissue"] == pytest.approx(1.0)
    kept = np.zeros(shape, bool)
    kept[:, :5, :9] = True  # soft tissue (z < 9) with zero bias, not next to the band (y 6-8) ...
    kept[:, 10:, :9] = True  # ... on either side of it
    assert m["soft_tissue_low_bias_fraction"] == pytest.approx(kept.sum() / mask.sum())
