"""The phantom's CT noise model: a per-voxel noise SD from the attenuation along the rays through it.

Split from :mod:`radmtl.data.phantom.cases` (which draws the case) because it is a model of its
own: quantum and electronic noise of filtered back-projection, with exposure control and a bone kernel.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from radmtl.data.phantom import anatomy as anat

# The CT noise SD varies smoothly: scanner noise follows attenuation paths, not tissue borders.
CT_NOISE_SMOOTHING_MM = 3.0
# Water attenuation at a ~70 keV effective energy (1/mm), views over 180°, and the extra weight of
# bone's HU in attenuation (its photoelectric part grows at the lower energies of the spectrum).
MU_WATER_PER_MM = 0.0193
CT_VIEWS = 48
CT_BONE_ATTENUATION_WEIGHT = 1.4


def _mean_view_variance(mu, coords_mm, spacing, electronic_margin: float) -> np.ndarray:
    """Relative CT noise variance of every voxel from the attenuation along the rays through it.

    A filtered back-projection voxel collects the noise of every view's ray through it. The log
    measurement of a ray with attenuation line integral ``L`` has variance ∝ ``exp(L)`` (fewer
    photons) plus an electronic-noise term ∝ ``exp(2L)`` that takes over on photon-starved rays.
    Automatic exposure control raises the tube current for larger patients, so the two terms are
    set equal at ``L = L_max − electronic_margin``, ``L_max`` being the case's most attenuated
    ray. Returns the mean over views, up to a constant factor. Parallel-beam geometry, one axial
    slice at a time, views over 180°.

    Args:
        mu: linear attenuation (1/mm), (X, Y, Z).
        coords_mm: world x, y (and z) voxel-centre coordinates, broadcastable to ``mu``.
        spacing: voxel size (mm).
        electronic_margin: how far (in line-integral units) below the most attenuated ray the
            electronic noise equals the quantum noise.
    """
    nx, ny, nz = mu.shape
    # The rays of the middle slice serve every slice: exact for an axial grid, an approximation for an
    # oblique one (whose slices are tilted planes).
    x = np.broadcast_to(coords_mm[0], mu.shape)[:, :, nz // 2].astype(np.float64).ravel()
    y = np.broadcast_to(coords_mm[1], mu.shape)[:, :, nz // 2].astype(np.float64).ravel()
    # Projections are binned at half the in-plane voxel size (linear splatting), then smoothed by
    # about half a voxel so that oblique views do not alias into ripples that exp() would amplify.
    width = 0.5 * min(spacing[0], spacing[1])
    reach = float(np.sqrt(x**2 + y**2).max()) + 2.0 * width
    n_bins = int(np.ceil(2.0 * reach / width)) + 2
    mass = mu.reshape(nx * ny, nz).astype(np.float64) * (spacing[0] * spacing[1] / width)
    slice_offset = (np.arange(nz) * n_bins)[None, :]
    smoothing = 0.5 * max(spacing[0], spacing[1]) / width
    views = []
    for angle in np.pi * np.arange(CT_VIEWS) / CT_VIEWS:
        s = (x * np.cos(angle) + y * np.sin(angle) + reach) / width
        i0 = np.floor(s).astype(np.int64)
        frac = (s - i0)[:, None]
        index = i0[:, None] + slice_offset
        line = np.bincount(index.ravel(), (mass * (1.0 - frac)).ravel(), minlength=n_bins * nz)
        line += np.bincount((index + 1).ravel(), (mass * frac).ravel(), minlength=n_bins * nz)
        line = ndimage.gaussian_filter1d(line.reshape(nz, n_bins), smoothing, axis=1,
                                         mode="constant")
        views.append((line, i0, frac))
    electronic_path = max(float(line.max()) for line, _, _ in views) - electronic_margin
    total = np.zeros((nx * ny, nz), np.float64)
    for line, i0, frac in views:
        # Relative to exp(electronic_path), which keeps exp() finite for any patient.
        quantum = np.exp(line - electronic_path)
        variance = quantum * (1.0 + quantum)
        total += variance[:, i0].T * (1.0 - frac) + variance[:, i0 + 1].T * frac
    return (total / CT_VIEWS).reshape(nx, ny, nz)


def ct_noise_sd(
    rng: np.random.Generator, ct_clean_hu, tissue, body, coords_mm, spacing
) -> np.ndarray:
    """Per-voxel CT noise SD (HU) from the attenuation paths through each voxel.

    Noise is highest where every view crosses much tissue (the body centre) and along the lateral
    rays through both femoral heads (a photon-starved horizontal band at their level); it is lower
    near the skin, where some views cross little tissue. Attenuation comes from the clean CT
    (μ = μ_water·(1 + HU/1000), bone weighted up as at a lower effective energy). The exposure
    control sets the median soft-tissue noise of the case. Bone voxels get extra noise (a sharper
    bone kernel), air outside the body a small constant level. The map is smoothed, since noise
    follows attenuation paths, not tissue borders.
    """
    # Scanner and patient draws; a fixed number whatever the grid.
    mu_scale = rng.uniform(1.12, 1.2)  # effective beam energy below 70 keV (kVp, filtration)
    electronic_margin = rng.uniform(1.3, 1.8)
    median_sd = rng.uniform(15.0, 21.0)  # HU, the exposure control's noise target
    bone_factor = rng.uniform(1.5, 1.8)
    is_bone = (tissue == anat.CORTICAL) | (tissue == anat.TRABECULAR)
    relative = np.where(is_bone, CT_BONE_ATTENUATION_WEIGHT, 1.0) * ct_clean_hu / 1000.0
    mu = (mu_scale * MU_WATER_PER_MM) * np.clip(1.0 + relative, 0.0, None)
    variance = _mean_view_variance(mu, coords_mm, spacing, electronic_margin)
    soft = body & ~is_bone & (ct_clean_hu > -500.0)
    reference = np.median(variance[soft]) if soft.any() else np.median(variance)
    sd = median_sd * np.sqrt(variance / reference)
    sd = np.where(is_bone, bone_factor * sd, sd)
    # Air outside the body keeps a small, finite noise level, as on a real scanner.
    sd = np.where(body, sd, 0.25 * median_sd).astype(np.float32)
    sigma_vox = [CT_NOISE_SMOOTHING_MM / s for s in spacing]
    return ndimage.gaussian_filter(sd, sigma_vox, mode="nearest").astype(np.float32)
