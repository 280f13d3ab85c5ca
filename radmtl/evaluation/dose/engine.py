"""Photon IMRT and proton PBS plans on a CT, and the same plans recomputed with fixed weights on another CT
(the sCT), over pyRadPlan 0.5.0 (DKFZ's Python matRad; the optional ``dose`` extra).

Per modality, on the reference CT: beam geometry (``generate_stf``), the dose influence matrix of every
bixel/spot (``calc_dose_influence``), fluence optimisation against the prescription (:class:`PlanSettings`)
and the optimised dose. On another CT of the same grid, :func:`recompute` runs the pencil beam once more
with those weights (``calc_dose_forward``): same beams, same spots and energies, same weights; only the
densities (photons: rED) or stopping powers (protons: SPR) along each ray change, from the one HU table.

The prescription (documented defaults of :class:`PlanSettings`): 60 Gy to the target (squared deviation,
priority 1000); squared overdosing above 40 Gy on bladder and rectum (priority 300), above 30 Gy on the
femoral heads (priority 100), above 30 Gy on the rest of the body (priority 30). Doses are totals in Gy
(pyRadPlan's objectives take total dose). Photons: 5 equispaced coplanar 6 MV beams (gantry 0°, 72° …),
5 mm bixels, the SVD pencil beam. Protons: two opposed lateral fields (gantry 90° and 270°), 5 mm spot
spacing, the Hong pencil beam. Spot energies are chosen by pyRadPlan's own generator from the reference CT
(with its default table, which is :data:`~radmtl.evaluation.dose.hlut.DEFAULT_HLUT`'s); doses use
``settings.hlut``.

Dose grid: by default the CT grid itself (``dose_grid_mm=None``), so doses on the CT and the sCT are
compared voxel by voxel without interpolation; a coarser isotropic grid (``dose_grid_mm=5``, pyRadPlan's
default) is faster, and pyRadPlan then returns the dose linearly interpolated onto the CT grid.

Geometry: radmtl arrays are (X, Y, Z) with a RAS voxel → mm affine. pyRadPlan works in DICOM LPS with an
identity direction, so the arrays are transposed and flipped into that frame (no resampling; an oblique
grid is refused) and doses are mapped back onto the input grid. Gantry angles are pyRadPlan's (IEC 61217):
270° is a beam entering from the patient's right (RAS +x), 90° from the left.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from radmtl.evaluation.dose.errors import INSTALL_HINT, DoseDependencyError, DoseError
from radmtl.evaluation.dose.hlut import DEFAULT_HLUT, Hlut

logger = logging.getLogger(__name__)

MODALITIES = ("photons", "protons")
PYRADPLAN_VERSION = "0.5.0"
# organ name → (objective, dose in Gy, priority); the target's entry is filled from the prescription.
DEFAULT_OAR_OBJECTIVES: dict[str, tuple[str, float, float]] = {
    "bladder": ("squared_overdosing", 40.0, 300.0),
    "rectum": ("squared_overdosing", 40.0, 300.0),
    "femoral_head_left": ("squared_overdosing", 30.0, 100.0),
    "femoral_head_right": ("squared_overdosing", 30.0, 100.0),
}
BODY_OBJECTIVE = ("squared_overdosing", 30.0, 30.0)
TARGET_PRIORITY = 1000.0


@dataclass(frozen=True)
class PlanSettings:
    """What a plan is: prescription, objectives, beams, dose grid and HU table (see the module docstring)."""

    prescription_gy: float = 60.0
    fractions: int = 30
    oar_objectives: Mapping[str, tuple[str, float, float]] = field(default_factory=lambda: dict(DEFAULT_OAR_OBJECTIVES))
    body_objective: tuple[str, float, float] | None = BODY_OBJECTIVE
    photon_gantry_deg: tuple[float, ...] = (0.0, 72.0, 144.0, 216.0, 288.0)
    photon_bixel_mm: float = 5.0
    proton_gantry_deg: tuple[float, ...] = (90.0, 270.0)
    proton_spot_mm: float = 5.0
    dose_grid_mm: float | None = None
    hlut: Hlut = DEFAULT_HLUT

    def __post_init__(self) -> None:
        if not self.prescription_gy > 0:
            raise DoseError(f"prescription_gy must be > 0, got {self.prescription_gy}")
        if self.dose_grid_mm is not None and not self.dose_grid_mm > 0:
            raise DoseError(f"dose_grid_mm must be > 0 mm or None (the CT grid), got {self.dose_grid_mm}")
        for name in ("photon_gantry_deg", "proton_gantry_deg"):
            if len(getattr(self, name)) == 0:
                raise DoseError(f"{name} needs at least one beam")


@dataclass
class LpsFrame:
    """The transposes and flips that take an (X, Y, Z) RAS-affine array to pyRadPlan's LPS identity frame."""

    order: tuple[int, int, int]
    flips: tuple[int, ...]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    shape: tuple[int, int, int]

    @classmethod
    def from_affine(cls, affine: np.ndarray, shape: tuple[int, ...]) -> LpsFrame:
        affine = np.asarray(affine, np.float64)
        if affine.shape != (4, 4) or len(shape) != 3:
            raise DoseError(f"need a 4 × 4 affine and a 3D shape, got {affine.shape} and {shape}")
        lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
        columns = lps[:3, :3]
        spacing_old = np.linalg.norm(columns, axis=0)
        world_axis = np.argmax(np.abs(columns), axis=0)
        if sorted(world_axis) != [0, 1, 2] or not np.allclose(np.abs(columns / spacing_old).max(axis=0), 1.0, atol=1e-5):
            raise DoseError("the dose engine needs an axis-aligned grid; resample this oblique CT onto an "
                            "axis-aligned one first")
        order = tuple(int(np.flatnonzero(world_axis == j)[0]) for j in range(3))
        signs = [np.sign(columns[j, order[j]]) for j in range(3)]
        flips = tuple(j for j in range(3) if signs[j] < 0)
        new_shape = tuple(int(shape[order[j]]) for j in range(3))
        # new index m → old index k, as a 4 × 4 matrix, gives the new grid's LPS origin.
        old_from_new = np.zeros((4, 4))
        old_from_new[3, 3] = 1.0
        for j in range(3):
            if j in flips:
                old_from_new[order[j], j], old_from_new[order[j], 3] = -1.0, new_shape[j] - 1
            else:
                old_from_new[order[j], j] = 1.0
        new_lps = lps @ old_from_new
        return cls(order, flips, tuple(float(spacing_old[order[j]]) for j in range(3)),
                   tuple(float(v) for v in new_lps[:3, 3]), tuple(int(s) for s in shape))

    def to_lps(self, array: np.ndarray) -> np.ndarray:
        out = np.transpose(np.asarray(array), self.order)
        return np.ascontiguousarray(np.flip(out, self.flips) if self.flips else out)

    def from_lps(self, array: np.ndarray) -> np.ndarray:
        out = np.flip(np.asarray(array), self.flips) if self.flips else np.asarray(array)
        return np.ascontiguousarray(np.transpose(out, np.argsort(self.order)))

    def image(self, array: np.ndarray):
        """A SimpleITK image of an (X, Y, Z) input array, in the LPS identity frame."""
        import SimpleITK as sitk

        image = sitk.GetImageFromArray(np.transpose(self.to_lps(array), (2, 1, 0)).copy())
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
        return image

    def array(self, image) -> np.ndarray:
        """An LPS-frame SimpleITK image back as an (X, Y, Z) array on the input grid."""
        import SimpleITK as sitk

        return self.from_lps(np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0)))


@dataclass
class DosePlan:
    """A plan optimised on a reference CT, ready to be recomputed on another CT of the same grid."""

    modality: str
    settings: PlanSettings
    frame: LpsFrame
    dose_gy: np.ndarray  # (X, Y, Z) optimised dose on the reference CT, input grid
    weights: np.ndarray
    bixels: int
    timings_s: dict[str, float]
    _pln: Any = field(repr=False)
    _stf: Any = field(repr=False)
    _cst: Any = field(repr=False)
    # pyRadPlan pops the engine's name out of pln.prop_dose_calc when it reads it: kept to set again.
    _prop_dose_calc: dict = field(repr=False, default_factory=dict)


def _pyradplan():
    try:
        import pyRadPlan
    except Exception as err:  # ImportError, or a pydantic it cannot work with
        raise DoseDependencyError(f"the dose engine needs pyRadPlan {PYRADPLAN_VERSION} (import failed: {err}); "
                                  f"install it with: {INSTALL_HINT}") from err
    return pyRadPlan


@contextlib.contextmanager
def _quiet_pyradplan() -> Iterator[None]:
    """pyRadPlan's progress bars, GPU-fallback warnings and INFO chatter off for one call (restored after)."""
    from pyRadPlan.core._progress import ProgressReporter

    pyradplan_logger = logging.getLogger("pyRadPlan")
    level, progress = pyradplan_logger.level, ProgressReporter.console_progress
    pyradplan_logger.setLevel(logging.ERROR)
    ProgressReporter.console_progress = False
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*GPU.*")
            warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"pyRadPlan\..*")
            warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"numpy\..*")
            yield
    finally:
        pyradplan_logger.setLevel(level)
        ProgressReporter.console_progress = progress


def _objective(kind: str, dose_gy: float, priority: float):
    from pyRadPlan.optimization.objectives import SquaredDeviation, SquaredOverdosing

    if kind == "squared_overdosing":
        return SquaredOverdosing(priority=priority, d_max=dose_gy)
    if kind == "squared_deviation":
        return SquaredDeviation(priority=priority, d_ref=dose_gy)
    raise DoseError(f"unknown objective {kind!r}; use squared_overdosing or squared_deviation")


def _check_inputs(ct_hu: np.ndarray, structures: Mapping[str, np.ndarray], target: str, body: np.ndarray) -> None:
    ct_hu = np.asarray(ct_hu)
    if ct_hu.ndim != 3 or not np.all(np.isfinite(ct_hu)):
        raise DoseError(f"the CT must be a finite 3D (X, Y, Z) HU array, got shape {ct_hu.shape}")
    for name, mask in {**structures, "body": body}.items():
        if np.shape(mask) != ct_hu.shape:
            raise DoseError(f"structure {name} is on grid {np.shape(mask)}, not the CT's {ct_hu.shape}")
    if target not in structures or not np.any(structures[target]):
        raise DoseError(f"target {target!r} is missing or empty (structures: {sorted(structures)}); "
                        "pass --target with a structure the reference labels hold")


def plan_on_ct(ct_hu: np.ndarray, affine: np.ndarray, structures: Mapping[str, np.ndarray], target: str,
               body: np.ndarray, modality: str, settings: PlanSettings = PlanSettings()) -> DosePlan:
    """Optimise a photon IMRT or proton PBS plan on a reference CT.

    Args:
        ct_hu: (X, Y, Z) reference CT in HU.
        affine: (4, 4) RAS voxel → mm; axis-aligned.
        structures: organ name → (X, Y, Z) mask; OARs named in ``settings.oar_objectives`` get objectives,
            others are carried along without one.
        target: the structure prescribed ``settings.prescription_gy``.
        body: (X, Y, Z) body mask; densities outside it are ignored (pyRadPlan sets them to 0).
        modality: ``photons`` or ``protons``.
        settings: prescription, beams, dose grid, HU table.

    Returns:
        :class:`DosePlan` with the optimised dose on the input grid.

    Raises:
        DoseDependencyError: pyRadPlan is not installed.
        DoseError: bad inputs.
    """
    if modality not in MODALITIES:
        raise DoseError(f"modality must be one of {MODALITIES}, got {modality!r}")
    _check_inputs(ct_hu, structures, target, body)
    prp = _pyradplan()
    from pyRadPlan.cst import VOI, StructureSet
    from pyRadPlan.ct import CT

    frame = LpsFrame.from_affine(affine, np.shape(ct_hu))
    timings: dict[str, float] = {}
    with _quiet_pyradplan():
        start = time.perf_counter()
        ct = CT(cube_hu=frame.image(np.asarray(ct_hu, np.float64)))
        vois = []
        for name, mask in {target: structures[target], **structures, "body": body}.items():
            mask = np.asarray(mask) != 0
            if not mask.any() or (name == target and vois):
                continue
            kind = "TARGET" if name == target else "EXTERNAL" if name == "body" else "OAR"
            voi = VOI(name=name, voi_type=kind, mask=frame.image(mask.astype(np.uint8)), ct_image=ct)
            if kind == "TARGET":
                voi.objectives = [_objective("squared_deviation", settings.prescription_gy, TARGET_PRIORITY)]
            elif kind == "EXTERNAL" and settings.body_objective is not None:
                voi.objectives = [_objective(*settings.body_objective)]
            elif name in settings.oar_objectives:
                voi.objectives = [_objective(*settings.oar_objectives[name])]
            vois.append(voi)
        cst = StructureSet(vois=vois, ct_image=ct)
        if modality == "photons":
            pln = prp.PhotonPlan(machine="Generic")
            angles, bixel, engine, quantity = settings.photon_gantry_deg, settings.photon_bixel_mm, "SVDPB", "red"
        else:
            pln = prp.IonPlan(radiation_mode="protons", machine="Generic")
            angles, bixel, engine, quantity = settings.proton_gantry_deg, settings.proton_spot_mm, "HongPB", "spr"
        pln.prescribed_dose = settings.prescription_gy
        pln.num_of_fractions = settings.fractions
        pln.prop_stf = {"gantry_angles": [float(a) for a in angles], "couch_angles": [0.0] * len(angles),
                        "bixel_width": float(bixel)}
        grid = settings.dose_grid_mm
        resolution = dict(zip("xyz", frame.spacing)) if grid is None else {"x": grid, "y": grid, "z": grid}
        prop_dose_calc = {"engine": engine, "dose_grid": {"resolution": resolution},
                          "hlut": settings.hlut.table(quantity)}
        pln.prop_dose_calc = dict(prop_dose_calc)
        pln.prop_opt = {"problem": "nonlin_fluence", "solver": "scipy"}
        try:
            stf = prp.generate_stf(ct, cst, pln)
            timings["stf_s"] = time.perf_counter() - start
            start = time.perf_counter()
            dij = prp.calc_dose_influence(ct, cst, stf, pln)
            timings["influence_s"] = time.perf_counter() - start
            start = time.perf_counter()
            weights = np.asarray(prp.fluence_optimization(ct, cst, stf, dij, pln), dtype=np.float64)
            timings["optimisation_s"] = time.perf_counter() - start
            dose = frame.array(dij.compute_result_ct_grid(weights)["physical_dose"])
        except (ValueError, RuntimeError, KeyError, IndexError) as err:
            raise DoseError(f"pyRadPlan could not plan {modality} on this CT ({type(err).__name__}: {err})") from err
    logger.info("%s plan: %d bixels, influence %.1f s, optimisation %.1f s", modality, weights.size,
                timings["influence_s"], timings["optimisation_s"])
    return DosePlan(modality, settings, frame, dose.astype(np.float32), weights, int(weights.size), timings,
                    _pln=pln, _stf=stf, _cst=cst, _prop_dose_calc=prop_dose_calc)


def recompute(plan: DosePlan, ct_hu: np.ndarray) -> np.ndarray:
    """The plan's dose with its fixed weights on another CT (e.g. the sCT) of the reference grid, in Gy.

    Returns:
        (X, Y, Z) dose on the input grid, float32.
    """
    ct_hu = np.asarray(ct_hu, np.float64)
    if ct_hu.shape != plan.frame.shape or not np.all(np.isfinite(ct_hu)):
        raise DoseError(f"recompute needs a finite CT on the plan's grid {plan.frame.shape}, got {ct_hu.shape}")
    prp = _pyradplan()
    from pyRadPlan.ct import CT

    with _quiet_pyradplan():
        start = time.perf_counter()
        ct = CT(cube_hu=plan.frame.image(ct_hu))
        plan._pln.prop_dose_calc = dict(plan._prop_dose_calc)
        try:
            result = prp.calc_dose_forward(ct, plan._cst, plan._stf, plan._pln, plan.weights)
        except (ValueError, RuntimeError, KeyError, IndexError) as err:
            raise DoseError(f"pyRadPlan could not recompute the {plan.modality} plan ({type(err).__name__}: "
                            f"{err})") from err
        dose = plan.frame.array(result["physical_dose"])
    plan.timings_s["recompute_s"] = time.perf_counter() - start
    logger.info("%s recompute: %.1f s", plan.modality, plan.timings_s["recompute_s"])
    return dose.astype(np.float32)
