"""Synthetic male pelvis phantom: paired T2-like MR, CT (HU), body mask, organ labels, CT noise SD.

The CT carries Gaussian noise of a known, spatially varying standard deviation (``ct_noise_sd``), so a
network's predicted aleatoric σ can be compared with the truth. The MR deliberately shows cortical
bone and air both dark, the ambiguity that makes MR→CT hard.

Geometry: arrays are (X, Y, Z) with a RAS+ affine (axis 0 → +x = the patient's right, axis 1 → +y =
anterior, axis 2 → +z = superior; :mod:`radmtl.data.laterality` states the convention, so
``femoral_head_left`` lies at negative world x), diagonal spacing and the origin placed so the grid is
centred on (0, 0, 0).
Anatomy is defined in millimetres (:mod:`radmtl.data.phantom.anatomy`), so any shape/spacing samples the
same case, coarser or finer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from radmtl.data.phantom import anatomy as anat
from radmtl.errors import RadmtlError
from radmtl.data.phantom.grids import ORIENTATIONS, orientation_affine, world_coords
from radmtl.data.phantom.noise import ct_noise_sd
from radmtl.data.phantom.realism import CaseRealism, Realism, draw_case_realism

PHANTOM_LABELS: dict[str, int] = {
    "background": 0,
    "bladder": anat.BLADDER,
    "rectum": anat.RECTUM,
    "prostate": anat.PROSTATE_LABEL,
    "femoral_head_left": anat.FEMORAL_HEAD_LEFT,
    "femoral_head_right": anat.FEMORAL_HEAD_RIGHT,
}

# Phantom dataset seeds, kept apart so that no headline number is measured on cases a choice was made
# on: training/validation datasets use seed TRAIN_SEED; recipe and design choices are read off held-out
# cases of DESIGN_SEED (the demo's and the ablation's test set until 2026-12-06, so every choice made
# before then was made on it); headline numbers (README, docs/results.md, the demo) come from cases of
# TEST_SEED, on which no choice has been made. Case i of a dataset seed is case_seed(seed, i).
TRAIN_SEED = 0
DESIGN_SEED = 1000
TEST_SEED = 5000

DEFAULT_SHAPE = (96, 96, 64)
# Field of view (mm) covering a male pelvis: ~380 left-right, ~260 antero-posterior (plus air margin),
# ~190 cranio-caudal. With the default shape this gives 4.0 × 3.0 × 3.0 mm voxels.
DEFAULT_FOV_MM = (384.0, 288.0, 192.0)
# Partial-volume blur of the MR tissue maps (mm), applied before the bias field and noise.
MR_PARTIAL_VOLUME_SIGMA_MM = 1.5
# A scanner's voxel value is the mean signal over the voxel's volume, not the tissue at its centre.
# Both images are computed on a sub-grid of at most this spacing and averaged into each voxel, so a
# 3 mm cortical shell in a 6 mm voxel is a partial-volume mixture in the CT and in the MR (as it is on
# real scans) instead of a random all-or-nothing pick that no network could predict.
SUBVOXEL_MM = 3.0
CASE_FILES = ("mr", "ct", "mask", "labels", "ct_noise_sd")


class PhantomError(RadmtlError, ValueError):
    """Invalid phantom arguments; the message names the argument and its value."""


@dataclass(frozen=True, eq=False)
class PhantomCase:
    """One synthetic case; every array is (X, Y, Z) on the grid of ``affine``.

    Attributes:
        mr: T2-weighted-like MR, float32, arbitrary units (urine ≈ 1000 before gain and bias).
        ct_hu: noisy CT in HU, float32: ``ct_clean_hu + N(0, ct_noise_sd_hu²)``.
        mask: body outline, uint8 0/1.
        labels: organ labels (:data:`PHANTOM_LABELS`), uint8.
        ct_noise_sd_hu: the exact per-voxel SD (HU) of the noise added to the CT, float32.
        affine: 4×4 voxel→RAS world (mm).
        ct_clean_hu: the CT before noise, float32 (for tests and noise checks).
        tissue: tissue classes of :mod:`radmtl.data.phantom.anatomy` (``TISSUE_NAMES``) the CT
            shows, uint8.
        seed: the seed the case was generated from.
        mr_tissue: the tissue classes the MR shows (``tissue`` before the MR→CT deformation), uint8.
        displacement_mm: length (mm) of the MR→CT displacement at each voxel, float32.
    """

    mr: np.ndarray
    ct_hu: np.ndarray
    mask: np.ndarray
    labels: np.ndarray
    ct_noise_sd_hu: np.ndarray
    affine: np.ndarray
    ct_clean_hu: np.ndarray
    tissue: np.ndarray
    seed: int
    mr_tissue: np.ndarray
    displacement_mm: np.ndarray


def default_spacing(shape: tuple[int, int, int]) -> tuple[float, float, float]:
    """Voxel size (mm) at which ``shape`` covers the default pelvis field of view."""
    return tuple(fov / n for fov, n in zip(DEFAULT_FOV_MM, shape))


def case_seed(seed: int, index: int) -> int:
    """Seed of case ``index`` (0-based) of a dataset; independent of how many cases are made."""
    state = np.random.SeedSequence(seed, spawn_key=(index,)).generate_state(1, dtype=np.uint64)
    return int(state[0] >> np.uint64(1))  # 63 bits keep it a non-negative int64 everywhere


def _check_grid(shape, spacing) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    try:
        shape = tuple(int(n) for n in shape)
    except (TypeError, ValueError) as err:
        raise PhantomError(f"shape must be three integers, got {shape!r}") from err
    if len(shape) != 3 or min(shape) < 8:
        raise PhantomError(f"shape must be three integers ≥ 8, got {shape!r}")
    if spacing is None:
        spacing = default_spacing(shape)
    try:
        spacing = tuple(float(s) for s in spacing)
    except (TypeError, ValueError) as err:
        raise PhantomError(f"spacing must be three numbers in mm, got {spacing!r}") from err
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise PhantomError(f"spacing must be three positive numbers in mm, got {spacing!r}")
    return shape, spacing


def _check_seed(seed, name: str = "seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise PhantomError(f"{name} must be a non-negative integer, got {seed!r}")
    return int(seed)


def _tissue_properties(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per-case CT HU and MR intensity of every tissue class (lookup tables indexed by class)."""
    u = rng.uniform
    n = len(anat.TISSUE_NAMES)
    hu, mr = np.zeros(n, np.float32), np.zeros(n, np.float32)
    # Denser trabecular bone holds less fatty marrow, so its T2 signal is lower: this ties part of
    # the bone HU to something the MR shows. Cortical density follows loosely.
    density = u(0.0, 1.0)
    cortical_density = 0.6 * density + 0.4 * u(0.0, 1.0)
    table = {
        anat.AIR: (-1000.0, 0.0),
        anat.FAT: (u(-110.0, -90.0), 720.0),
        anat.MUSCLE: (u(35.0, 50.0), 170.0),
        anat.PELVIC_FAT: (u(-105.0, -85.0), 660.0),
        anat.CORTICAL: (850.0 + 500.0 * cortical_density, 15.0),
        anat.TRABECULAR: (170.0 + 200.0 * density, 420.0 - 220.0 * density),
        anat.URINE: (u(5.0, 15.0), 1000.0),
        anat.BLADDER_WALL: (u(35.0, 45.0), 230.0),
        anat.PROSTATE: (u(35.0, 45.0), 460.0),
        anat.RECTAL_WALL: (u(35.0, 45.0), 330.0),
        anat.RECTAL_CONTENT: (u(10.0, 30.0), 250.0),
        anat.RECTAL_GAS: (-1000.0, 0.0),
        anat.BOWEL_WALL: (u(35.0, 45.0), 330.0),
        anat.BOWEL_GAS: (-1000.0, 0.0),
    }
    for tissue, (hu_value, mr_value) in table.items():
        hu[tissue] = hu_value
        mr[tissue] = mr_value
    # Tissue contrast varies between scanners and patients; the relative order stays.
    mr *= u(0.9, 1.1, size=n).astype(np.float32)
    return hu, mr


def _bias_field(rng: np.random.Generator, coords_mm) -> np.ndarray:
    """Smooth multiplicative receive-coil bias: exp of a random 2nd-order polynomial (≈ ±25 %)."""
    x, y, z = (c / 200.0 for c in coords_mm)  # ~±1 over the pelvis
    terms = (x, y, z, x * x, y * y, z * z, x * y, x * z, y * z)
    coefficients = rng.normal(0.0, 0.12, size=len(terms))
    log_field = sum(float(c) * t for c, t in zip(coefficients, terms))
    return np.exp(log_field).astype(np.float32)


def _voxel_means(affine, shape, spacing, anatomy, hu_table, mr_table,
                 extra: CaseRealism) -> tuple[np.ndarray, np.ndarray]:
    """CT HU and (partial-volume blurred) MR signal averaged over each voxel's volume.

    The tissue maps are painted on a sub-grid of ``k`` points per voxel and axis (sub-spacing at most
    :data:`SUBVOXEL_MM`), the MR's partial-volume blur is applied there, and both images are
    block-averaged back to the voxel grid. Labels, mask and tissue classes stay centre-sampled. The
    MR shows the anatomy where it is; the CT shows it displaced by the case's MR→CT deformation, with
    the HU texture of the tissue it shows.
    """
    k = [max(1, int(np.ceil(s / SUBVOXEL_MM))) for s in spacing]
    fine_spacing = [s / n for s, n in zip(spacing, k)]
    # Sub-voxel centres in (fractional) voxel indices of the storage grid, whatever its orientation.
    coords = world_coords(affine, [(np.arange(shape[i] * k[i]) + 0.5) / k[i] - 0.5 for i in range(3)])
    gas, wall = extra.gas_pockets, extra.realism.bowel_wall_mm
    tissue_mr, _, _ = anat.build_tissue_map(coords, anatomy, gas, wall)
    mr_fine = mr_table[tissue_mr] * extra.mr_texture_factor(coords, tissue_mr)
    del tissue_mr
    pv_sigma = [MR_PARTIAL_VOLUME_SIGMA_MM / s for s in fine_spacing]
    mr_fine = ndimage.gaussian_filter(mr_fine, pv_sigma, mode="nearest")
    blocks = (shape[0], k[0], shape[1], k[1], shape[2], k[2])
    mr = mr_fine.reshape(blocks).mean(axis=(1, 3, 5), dtype=np.float64)
    del mr_fine
    ct_coords = extra.ct_coords(coords)
    tissue_ct, _, _ = anat.build_tissue_map(ct_coords, anatomy, gas, wall)
    ct_fine = hu_table[tissue_ct] + extra.texture_hu(ct_coords, tissue_ct)
    ct = ct_fine.reshape(blocks).mean(axis=(1, 3, 5), dtype=np.float64)
    return ct.astype(np.float32), mr.astype(np.float32)


def _case_draws(seed: int, realism: Realism = Realism()):
    """The case's generator after its grid-independent draws, its anatomy, tissue tables and realism.

    Everything that does not depend on the grid is drawn first, so anatomy is grid-independent.
    """
    rng = np.random.default_rng(seed)
    anatomy = anat.sample_anatomy(rng)
    hu_table, mr_table = _tissue_properties(rng)
    # Realism draws from a generator of its own (one draw here), so a case with and without it
    # (Realism.none()) has the same anatomy, tissue values, MR gain and CT noise.
    extra = draw_case_realism(np.random.default_rng(rng.integers(2**63)), realism)
    return rng, anatomy, hu_table, mr_table, extra


def case_tissue_hu(seed: int) -> dict[str, float]:
    """The noise-free CT value (HU) that case seed ``seed`` gives each tissue class, by tissue name.

    No MR shows where in its range a case's muscle or organ HU falls, so the mean of these over a
    training set against a test set is what decides an unbiased model's mean z-score on that test set
    (scripts/seeds.py reports it).
    """
    hu_table = _case_draws(_check_seed(seed))[2]
    return {name: float(hu_table[tissue]) for tissue, name in anat.TISSUE_NAMES.items()}


def generate_case(
    seed: int,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing: tuple[float, float, float] | None = None,
    realism: Realism = Realism(),
    orientation: str = "ras",
) -> PhantomCase:
    """Generate one synthetic pelvis case.

    Args:
        seed: non-negative integer; the same seed, shape and spacing give bitwise identical arrays,
            and the same seed gives the same anatomy on any grid.
        shape: grid size (X, Y, Z) in voxels.
        spacing: voxel size (mm); None chooses the spacing at which ``shape`` covers
            :data:`DEFAULT_FOV_MM` (4.0 × 3.0 × 3.0 mm for 96 × 96 × 64).
        realism: bowel gas, tissue texture and MR→CT misregistration
            (:class:`radmtl.data.phantom.realism.Realism`; its defaults are the phantom's).
        orientation: storage grid, one of :data:`radmtl.data.phantom.grids.ORIENTATIONS`: ``ras``
            (the phantom's own), ``lps`` (a scanner's axial order) or ``oblique``; the patient is in
            the same place in the world on each, sampled (not resampled) on that grid.

    Returns:
        The case, arrays (X, Y, Z). Labels, mask, tissue and the noise SD are the CT's (the
        contours of a planning CT, registered to the MR up to the case's residual deformation).
    """
    seed = _check_seed(seed)
    shape, spacing = _check_grid(shape, spacing)
    if orientation not in ORIENTATIONS:
        raise PhantomError(f"orientation must be one of {', '.join(ORIENTATIONS)}, got {orientation!r}")
    rng, anatomy, hu_table, mr_table, extra = _case_draws(seed, realism)
    mr_gain = rng.uniform(0.8, 1.25)  # arbitrary scanner scale
    mr_noise_fraction = rng.uniform(0.015, 0.03)
    noise_rng = np.random.default_rng(rng.integers(2**63))

    affine = orientation_affine(orientation, shape, spacing)
    coords = world_coords(affine, [np.arange(n) for n in shape])
    tissue, labels, extras = anat.build_tissue_map(extra.ct_coords(coords), anatomy, extra.gas_pockets,
                                                   realism.bowel_wall_mm)
    mr_tissue = anat.build_tissue_map(coords, anatomy, extra.gas_pockets, realism.bowel_wall_mm)[0]
    bias = _bias_field(rng, coords)
    mask = extras["body"].astype(np.uint8)

    ct_clean, mr_clean = _voxel_means(affine, shape, spacing, anatomy, hu_table, mr_table, extra)
    noise_sd = ct_noise_sd(rng, ct_clean, tissue, extras["body"], coords, spacing)
    ct = ct_clean + noise_rng.standard_normal(shape, dtype=np.float32) * noise_sd

    signal = mr_clean * bias
    signal *= np.float32(mr_gain)
    mr_noise_sd = np.float32(mr_noise_fraction * mr_gain * mr_table[anat.URINE])
    # Magnitude of a complex signal with Gaussian noise in both channels: Rician, as in MR.
    real = signal + mr_noise_sd * noise_rng.standard_normal(shape, dtype=np.float32)
    imag = mr_noise_sd * noise_rng.standard_normal(shape, dtype=np.float32)
    mr = np.hypot(real, imag).astype(np.float32)

    return PhantomCase(
        mr=mr, ct_hu=ct.astype(np.float32), mask=mask, labels=labels,
        ct_noise_sd_hu=noise_sd, affine=affine, ct_clean_hu=ct_clean.astype(np.float32),
        tissue=tissue, seed=seed, mr_tissue=mr_tissue,
        displacement_mm=np.broadcast_to(extra.displacement_mm(coords), shape).astype(np.float32),
    )
