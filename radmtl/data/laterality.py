"""Patient laterality, stated once for all of radmtl, and the guard that checks it.

The convention (every phantom, test, writer and check cites this module):

* NIfTI world coordinates are **RAS+**: +x points to the patient's **right**, +y anterior, +z superior.
* DICOM patient coordinates are **LPS+**: +x points to the patient's **left**, +y posterior, +z superior.
* A ``*_left`` structure therefore lies at **negative RAS x** and **positive LPS x**; a planning
  system shows it on the patient's left.

Storage order does not matter: a volume stored LAS, LPS or oblique holds the same patient, and its
affine maps every voxel to the same RAS world point. Every test of side here is made in world
coordinates, never in voxel indices.

The guard (:func:`check_laterality`) is what ``radmtl infer`` runs on each predicted segmentation and
``radmtl check`` on each training label file: for every pair of labels named ``<organ>_left`` /
``<organ>_right`` (or ``<organ>_l`` / ``<organ>_r``), the left structure's centroid must lie on the
patient's left of its right twin, and, when a body outline is given, the left one on the left of the
body's midline and the right one on its right. A swapped pair is the wrong-side error that
radiotherapy departments treat as never acceptable, so it is reported, never silently passed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

# World RAS x grows towards the patient's right: the sign of RAS x on the patient's left.
LEFT_SIGN_RAS_X = -1.0
# Name endings that mark a left/right twin, longest first so "_left" is not read as "_l" + "eft".
PAIR_SUFFIXES = (("_left", "_right"), ("_l", "_r"))


def left_right_pairs(label_names: Mapping[str, int]) -> list[tuple[str, str]]:
    """The ``(left_name, right_name)`` pairs among ``label_names`` (``*_left``/``*_right``, ``*_l``/``*_r``)."""
    pairs = []
    for name in label_names:
        for left_end, right_end in PAIR_SUFFIXES:
            if name.lower().endswith(left_end):
                stem = name[: -len(left_end)]
                twin = next((other for other in label_names if other.lower() == (stem + right_end).lower()), None)
                if twin is not None:
                    pairs.append((name, twin))
                break
    return pairs


def world_centroid(mask: np.ndarray, affine: np.ndarray) -> np.ndarray | None:
    """World (RAS, mm) centroid of the voxels of ``mask`` (X, Y, Z) on the grid ``affine``; None if empty.

    The affine is linear, so the world centroid is the affine applied to the index centroid, which
    is computed from per-axis projections (no list of voxel coordinates for a large volume).
    """
    mask = np.asarray(mask, dtype=bool)
    count = int(mask.sum())
    if count == 0:
        return None
    index = [float(np.dot(np.arange(n), mask.sum(axis=tuple(a for a in range(3) if a != axis))))
             for axis, n in enumerate(mask.shape)]
    centre = np.asarray(index) / count
    affine = np.asarray(affine, dtype=np.float64)
    return affine[:3, :3] @ centre + affine[:3, 3]


@dataclass(frozen=True)
class PairSide:
    """Where one ``*_left``/``*_right`` pair lies, in world RAS x (mm); None where a structure is absent."""

    left: str
    right: str
    left_x_mm: float | None
    right_x_mm: float | None
    midline_x_mm: float | None
    verdict: str  # "ok", "swapped" or "not_checked"
    reason: str


def _pair_side(left: str, right: str, left_x: float | None, right_x: float | None,
               midline_x: float | None) -> PairSide:
    def side(x: float) -> str:
        return "left" if LEFT_SIGN_RAS_X * (x - midline_x) > 0 else "right"

    if left_x is None or right_x is None:
        missing = " and ".join(n for n, x in ((left, left_x), (right, right_x)) if x is None)
        return PairSide(left, right, left_x, right_x, midline_x, "not_checked", f"{missing} not present")
    problems = []
    if LEFT_SIGN_RAS_X * (left_x - right_x) <= 0:
        problems.append(f"{left} (RAS x {left_x:+.1f} mm) is not on the patient's left of "
                        f"{right} (RAS x {right_x:+.1f} mm)")
    if midline_x is not None:
        for name, x, expected in ((left, left_x, "left"), (right, right_x, "right")):
            if side(x) != expected:
                problems.append(f"{name} (RAS x {x:+.1f} mm) lies on the patient's {side(x)} of the "
                                f"body midline (RAS x {midline_x:+.1f} mm)")
    if problems:
        return PairSide(left, right, left_x, right_x, midline_x, "swapped", "; ".join(problems))
    return PairSide(left, right, left_x, right_x, midline_x, "ok", "left structure on the patient's left")


def midline_x(body: np.ndarray, affine: np.ndarray) -> float | None:
    """World RAS x (mm) of the centroid of a body outline ``body`` (X, Y, Z) on the grid ``affine``."""
    centre = world_centroid(body, affine)
    return None if centre is None else float(centre[0])


def check_laterality(labels: np.ndarray, affine: np.ndarray, label_names: Mapping[str, int],
                     midline_x_mm: float | None = None) -> dict:
    """Check every left/right label pair of ``labels`` (X, Y, Z) on the grid ``affine`` (RAS).

    Args:
        labels: integer organ labels.
        affine: voxel → world RAS (mm) of ``labels`` (any storage orientation).
        label_names: name → label value.
        midline_x_mm: the body's midline (:func:`midline_x`), which both structures of a pair are
            also compared with; None compares the pair's structures with each other only.

    Returns:
        A JSON-ready dict: ``status`` (``"ok"``, ``"swapped"`` if any pair fails, ``"not_checked"``
        where no pair could be checked), ``convention`` (one line) and ``pairs`` (one
        :class:`PairSide` each, as a dict).
    """
    labels = np.asarray(labels)
    pairs = []
    for left, right in left_right_pairs(label_names):
        xs = []
        for name in (left, right):
            centre = world_centroid(labels == label_names[name], affine)
            xs.append(None if centre is None else float(centre[0]))
        pairs.append(_pair_side(left, right, xs[0], xs[1], midline_x_mm))
    verdicts = {pair.verdict for pair in pairs}
    status = "swapped" if "swapped" in verdicts else "ok" if "ok" in verdicts else "not_checked"
    return {
        "status": status,
        "convention": "RAS+ world: +x is the patient's right; a *_left structure lies at negative RAS x",
        "pairs": [_rounded(asdict(pair)) for pair in pairs],
    }


def _rounded(pair: dict) -> dict:
    return {key: round(value, 2) if isinstance(value, float) else value for key, value in pair.items()}


def laterality_problems(result: dict) -> list[str]:
    """One sentence per swapped pair of a :func:`check_laterality` result (empty when all is well)."""
    return [pair["reason"] for pair in result["pairs"] if pair["verdict"] == "swapped"]
