"""The phantom's hard parts of real paired data: bowel gas, tissue texture and MR/CT misregistration.

Real paired pelvis MR/CT (SynthRAD) differ from a phantom painted from one tissue map in three ways
that dominate real sCT error, and that σ exists to flag:

- bowel gas well beyond the rectum, dark on MR like cortical bone but −1000 HU on CT;
- texture within a tissue (fibrous strands in fat, marbling in muscle, trabecular density) that moves
  the CT's HU while the MR shows it only partly;
- residual misregistration after deformable registration: the CT (and the contours and noise drawn on
  it) is the patient a few millimetres away from where the MR shows it.

Each has a parameter in :class:`Realism` with a documented default; ``Realism.none()`` turns all three
off (the phantom of before 2026-12-06, apart from its random draws). Texture and displacement are
smooth random fields defined in millimetres by random Fourier features (Rahimi & Recht 2007): a sum
of cosines with wave vectors drawn from a Gaussian spectrum is a stationary field with a Gaussian
covariance of the chosen length, evaluated exactly at any point, so the same seed gives the same
field on any grid (the phantom's rule) with a fixed number of random draws. scipy's filters would
need a grid and give a different field on each.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from radmtl.data.phantom import anatomy as anat

# Cosines per field: enough for a near-Gaussian field (the sum of 32 independent waves), few enough that
# the 2 texture and 3 displacement fields cost about a second per case on the demo's grid.
WAVES = 32
TEXTURE_CLIP_SD = 3.0


@dataclass(frozen=True)
class Realism:
    """What the phantom adds to the clean tissue map; every default is the phantom's own.

    Attributes:
        bowel_gas_candidates: sigmoid/small-bowel gas pockets drawn per case (a fixed number, so the
            draws never depend on the grid); each is present with ``bowel_gas_probability``, in the
            pelvic fat above and behind the bladder. Defaults 40 and 0.6 with semi-axes 4–12 mm give
            0.27–0.41 % of the body's voxels as gas and a cortical-bone-vs-gas MR AUC of 0.47–0.58
            (``python scripts/phantom_report.py``: 6 design-seed cases on the default grid).
        bowel_gas_radius_mm: range of each pocket's three semi-axes (mm).
        bowel_wall_mm: thickness of the bowel wall around a pocket (soft tissue on CT and MR).
        texture_sd_hu: SD (HU) of the within-tissue texture of fat (subcutaneous and pelvic),
            muscle and trabecular bone, before partial-volume averaging into voxels.
        texture_length_mm: correlation length of the texture (mm).
        texture_mr_share: the share of the texture's variance that the MR shows (as a darker T2
            signal where the HU is higher); the rest no MR can predict.
        texture_mr_contrast: relative MR signal change per texture SD in the shown part.
        deformation_rms_mm: RMS length of the smooth displacement from the MR to the CT (mm), per
            component √3 smaller; 0 registers MR and CT perfectly.
        deformation_length_mm: correlation length of the displacement (mm): a few centimetres, so
            organs shift and bend rather than tear.
    """

    bowel_gas_candidates: int = 40
    bowel_gas_probability: float = 0.6
    bowel_gas_radius_mm: tuple[float, float] = (4.0, 12.0)
    bowel_wall_mm: float = 2.0
    texture_sd_hu: tuple[float, float, float] = (22.0, 20.0, 70.0)  # fat, muscle, trabecular
    texture_length_mm: float = 5.0
    texture_mr_share: float = 0.5
    texture_mr_contrast: float = 0.06
    deformation_rms_mm: float = 2.0
    deformation_length_mm: float = 40.0

    @classmethod
    def none(cls) -> "Realism":
        """No bowel gas, no texture, MR and CT perfectly registered."""
        return cls(bowel_gas_candidates=0, texture_sd_hu=(0.0, 0.0, 0.0), deformation_rms_mm=0.0)

    def replace(self, **changes) -> "Realism":
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict:
        """JSON-ready parameters (dataset.json records them)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class SmoothField:
    """A zero-mean, unit-variance random field in world mm: √(2/M) Σ cos(ω·x + φ)."""

    omega: np.ndarray  # (M, 3) wave vectors (rad/mm)
    phase: np.ndarray  # (M,)

    @classmethod
    def draw(cls, rng: np.random.Generator, length_mm: float) -> "SmoothField":
        # A Gaussian covariance exp(−r²/2ℓ²) has a Gaussian spectrum of SD 1/ℓ (Bochner).
        omega = rng.normal(0.0, 1.0 / length_mm, size=(WAVES, 3))
        phase = rng.uniform(0.0, 2.0 * np.pi, size=WAVES)
        return cls(omega.astype(np.float32), phase.astype(np.float32))

    def __call__(self, coords_mm) -> np.ndarray:
        shape = np.broadcast_shapes(*(np.shape(c) for c in coords_mm))
        if all(np.ndim(c) == 3 and np.shape(c)[axis] == np.size(c) for axis, c in enumerate(coords_mm)):
            return self._on_axes([np.asarray(c, np.float64).reshape(-1) for c in coords_mm], shape)
        total = np.zeros(shape, np.float32)
        x, y, z = (np.asarray(c, np.float32) for c in coords_mm)
        for (wx, wy, wz), phi in zip(self.omega.tolist(), self.phase.tolist()):
            total += np.cos(wx * x + wy * y + wz * z + phi)
        total *= np.float32(np.sqrt(2.0 / len(self.phase)))
        return total

    def _on_axes(self, axes: list[np.ndarray], shape) -> np.ndarray:
        """The field on a grid given by its three axes' coordinates: cos(a + b + c) is the real part of
        a product of three complex exponentials, so the sum over waves is two matrix products
        (BLAS) instead of one cosine per wave and point (5–10× faster on a case's sub-grid)."""
        omega, phase = self.omega.astype(np.float64), self.phase.astype(np.float64)
        a = np.exp(1j * (omega[:, :1] * axes[0][None] + phase[:, None]))  # (M, X)
        b = np.exp(1j * omega[:, 1:2] * axes[1][None])  # (M, Y)
        c = np.exp(1j * omega[:, 2:3] * axes[2][None])  # (M, Z)
        ab = (a[:, :, None] * b[:, None, :]).reshape(len(phase), -1)  # (M, X·Y)
        total = ab.real.T @ c.real - ab.imag.T @ c.imag  # Re(Σ_m ab_m c_m), (X·Y, Z)
        total *= np.sqrt(2.0 / len(phase))
        return total.reshape(shape).astype(np.float32)


@dataclass(frozen=True)
class CaseRealism:
    """One case's draws: its bowel gas pockets, texture fields and MR→CT displacement."""

    realism: Realism
    gas_pockets: np.ndarray  # (n, 7): centre fractions (3), semi-axes (3) mm, present flag
    texture_shared: SmoothField  # what the MR shows of the texture
    texture_ct_only: SmoothField  # what it does not
    displacement: tuple[SmoothField, SmoothField, SmoothField]

    def ct_coords(self, coords_mm) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Where the tissue seen on the CT at ``coords_mm`` lies in the MR's (anatomy's) frame."""
        if self.realism.deformation_rms_mm <= 0:
            return tuple(coords_mm)
        scale = np.float32(self.realism.deformation_rms_mm / np.sqrt(3.0))
        return tuple(c + scale * field(coords_mm) for c, field in zip(coords_mm, self.displacement))

    def displacement_mm(self, coords_mm) -> np.ndarray:
        """Length (mm) of the MR→CT displacement at ``coords_mm``."""
        moved = self.ct_coords(coords_mm)
        return np.sqrt(sum((m - c) ** 2 for m, c in zip(moved, coords_mm)))

    def texture_hu(self, coords_mm, tissue: np.ndarray) -> np.ndarray:
        """HU texture added to the CT of fat, muscle and trabecular bone at ``coords_mm``."""
        sd = self._tissue_sd(tissue)
        if not sd.any():
            return np.zeros(tissue.shape, np.float32)
        share = self.realism.texture_mr_share
        field = (np.float32(np.sqrt(share)) * self.texture_shared(coords_mm)
                 + np.float32(np.sqrt(1.0 - share)) * self.texture_ct_only(coords_mm))
        # A tissue's HU stays within 3 SD of its mean (a sum of 32 waves can reach ±8).
        return sd * np.clip(field, -TEXTURE_CLIP_SD, TEXTURE_CLIP_SD)

    def mr_texture_factor(self, coords_mm, tissue: np.ndarray) -> np.ndarray:
        """Multiplicative MR signal of the shown part of the texture (darker where the HU is higher)."""
        sd = self._tissue_sd(tissue)
        if not sd.any() or self.realism.texture_mr_share <= 0:
            return np.ones(tissue.shape, np.float32)
        contrast = np.float32(self.realism.texture_mr_contrast)
        shown = self.texture_shared(coords_mm)
        return np.where(sd > 0, np.clip(1.0 - contrast * shown, 0.5, 1.5), 1.0).astype(np.float32)

    def _tissue_sd(self, tissue: np.ndarray) -> np.ndarray:
        fat, muscle, trabecular = (np.float32(v) for v in self.realism.texture_sd_hu)
        table = np.zeros(len(anat.TISSUE_NAMES), np.float32)
        table[[anat.FAT, anat.PELVIC_FAT]] = fat
        table[anat.MUSCLE] = muscle
        table[anat.TRABECULAR] = trabecular
        return table[tissue]


def draw_case_realism(rng: np.random.Generator, realism: Realism) -> CaseRealism:
    """Draw a case's realism; the number of draws is fixed by ``realism``, never by the grid."""
    n = int(realism.bowel_gas_candidates)
    low, high = realism.bowel_gas_radius_mm
    pockets = np.column_stack([
        rng.uniform(-1.0, 1.0, size=(n, 3)),  # position in the bowel region (fractions of its axes)
        rng.uniform(low, high, size=(n, 3)),
        rng.random(n) < realism.bowel_gas_probability,
    ]) if n else np.zeros((0, 7))
    length = realism.texture_length_mm
    return CaseRealism(
        realism=realism,
        gas_pockets=pockets,
        texture_shared=SmoothField.draw(rng, length),
        texture_ct_only=SmoothField.draw(rng, length),
        displacement=tuple(SmoothField.draw(rng, realism.deformation_length_mm) for _ in range(3)),
    )
