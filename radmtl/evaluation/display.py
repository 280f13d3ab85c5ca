"""How radmtl shows a volume on a page: the display convention shared by every picture it draws.

Volumes are (X, Y, Z) arrays in RAS+ (x grows towards the patient's right, y anterior, z superior).
Slices are shown in the radiological convention (patient's right on the viewer's left; anterior and
superior up) with the orientation letters drawn on every panel, and with the physical aspect ratio of
the voxels. The QA pictures of training (:mod:`radmtl.evaluation.qa`) and the per-case review figure
(:mod:`radmtl.evaluation.review_figure`) both draw through these helpers, so a physicist reads every
radmtl picture the same way.

Matplotlib is imported inside the functions (``radmtl --help`` stays fast) and figures are built on
``matplotlib.figure.Figure`` with the Agg canvas, not pyplot: no global backend or figure state,
nothing to close, safe on headless machines.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from radmtl.data.atomic import atomic_path

# Wide enough for air, soft tissue and bone, where sCT errors concentrate; MR/sCT/CT share it.
DEFAULT_HU_WINDOW = (-1000.0, 1500.0)
VIEWS = ("axial", "coronal", "sagittal")
# For each view: the sliced axis, the axis along image columns and along image rows, whether
# each is flipped for display, and the letters at (left, right, top, bottom).
VIEW_GEOMETRY: dict[str, tuple[int, int, int, bool, bool, tuple[str, str, str, str]]] = {
    # x grows towards R, and the radiological display puts the patient's right on the viewer's
    # left, hence the column flip; rows are flipped so that anterior/superior is up. Sagittal
    # shows anterior on the left, as most viewers do.
    "axial": (2, 0, 1, True, True, ("R", "L", "A", "P")),
    "coronal": (1, 0, 2, True, True, ("R", "L", "S", "I")),
    "sagittal": (0, 1, 2, True, True, ("A", "P", "S", "I")),
}
PANEL_INCHES = 3.2
CONTOUR_COLOURS = ("#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6")


def as_volume(name: str, array: Any, shape: tuple[int, ...] | None) -> np.ndarray | None:
    """``array`` as a 3D (X, Y, Z) numpy array (None stays None); a torch tensor is moved to the CPU.

    Raises:
        ValueError: ``array`` is not 3D after dropping leading singleton axes, or its shape differs
            from ``shape``.
    """
    if array is None:
        return None
    if hasattr(array, "detach"):  # a torch tensor, possibly on a GPU
        array = array.detach().cpu().numpy()
    volume = np.asarray(array)
    while volume.ndim > 3 and volume.shape[0] == 1:
        volume = volume[0]  # (1, 1, X, Y, Z) network output
    if volume.ndim != 3:
        raise ValueError(f"{name} must be a 3D (X, Y, Z) array, got shape {volume.shape}")
    if shape is not None and volume.shape != shape:
        raise ValueError(f"{name} has shape {volume.shape}, expected {shape} like mr")
    return volume


def check_spacing(spacing: Sequence[float]) -> None:
    """Raise ValueError unless ``spacing`` is three positive voxel sizes in mm."""
    if len(spacing) != 3 or any(float(s) <= 0 for s in spacing):
        raise ValueError(f"spacing must be three positive sizes in mm (X, Y, Z), got {tuple(spacing)}")


def foreground_centre(shape: tuple[int, ...], *candidates: np.ndarray | None) -> tuple[int, int, int]:
    """Voxel index of the centroid of the first candidate with any voxel > 0, else the middle of ``shape``."""
    for volume in candidates:
        if volume is None:
            continue
        inside = volume > 0
        count = int(np.count_nonzero(inside))
        if count:
            # From the per-axis projections, not np.argwhere: a planning CT's body holds tens of
            # millions of voxels, and their (N, 3) coordinates would take gigabytes.
            centre = []
            for axis in range(3):
                others = tuple(a for a in range(3) if a != axis)
                profile = np.count_nonzero(inside, axis=others)
                centre.append(int(round(float(np.dot(np.arange(profile.size), profile)) / count)))
            return tuple(centre)
    return tuple(s // 2 for s in shape)


def display_slice(volume: np.ndarray | None, view: str, index: int) -> np.ndarray | None:
    """A 2D display image (rows, cols) of ``volume`` in the radiological convention."""
    if volume is None:
        return None
    axis, col_axis, row_axis, flip_cols, flip_rows, _ = VIEW_GEOMETRY[view]
    # Basic indexing: a view of the one plane. np.take(volume, index, axis) costs a pass over the whole
    # volume (52 ms on a 400×400×120 map, against 0.2 ms), 36 times per review figure.
    plane = np.asarray(volume)[(slice(None),) * axis + (int(index),)]
    # After removing `axis`, the remaining two keep their order; make (rows, cols).
    remaining = [a for a in range(3) if a != axis]
    image = plane if remaining.index(row_axis) == 0 else plane.T
    if flip_rows:
        image = image[::-1]
    if flip_cols:
        image = image[:, ::-1]
    return np.ascontiguousarray(image)


def display_point(view: str, voxel: Sequence[int], shape: tuple[int, ...], spacing: Sequence[float]) -> tuple[float, float]:
    """Where voxel ``voxel`` (x, y, z) lies on a :func:`display_slice` image drawn with :func:`slice_extent`:
    (horizontal, vertical) in mm, the voxel's centre."""
    _, col_axis, row_axis, flip_cols, flip_rows, _ = VIEW_GEOMETRY[view]
    col = shape[col_axis] - 1 - voxel[col_axis] if flip_cols else voxel[col_axis]
    row = shape[row_axis] - 1 - voxel[row_axis] if flip_rows else voxel[row_axis]
    return (col + 0.5) * float(spacing[col_axis]), (row + 0.5) * float(spacing[row_axis])


def slice_extent(view: str, shape: tuple[int, ...], spacing: Sequence[float]) -> list[float]:
    """The imshow extent, in mm, of a :func:`display_slice` image: with ``aspect="equal"`` it is physical."""
    _, col_axis, row_axis, _, _, _ = VIEW_GEOMETRY[view]
    width = shape[col_axis] * float(spacing[col_axis])
    height = shape[row_axis] * float(spacing[row_axis])
    return [0.0, width, height, 0.0]  # imshow origin="upper"


def names_by_label(label_names: Mapping[Any, Any] | Sequence[str] | None) -> dict[int, str]:
    """``{label: name}`` from the checkpoint's ``{name: label}``, from ``{label: name}`` or from a list."""
    if label_names is None:
        return {}
    if isinstance(label_names, Mapping):
        pairs = list(label_names.items())
        # The checkpoint stores {name: label}; accept {label: name} too.
        if pairs and isinstance(pairs[0][0], str) and not str(pairs[0][0]).isdigit():
            return {int(v): str(k) for k, v in pairs}
        return {int(k): str(v) for k, v in pairs}
    return {i: str(name) for i, name in enumerate(label_names)}


def draw_orientation_letters(ax: Any, letters: tuple[str, str, str, str]) -> None:
    """The patient-direction letters at the (left, right, top, bottom) edges of a panel."""
    style = {"color": "yellow", "fontsize": 9, "fontweight": "bold", "transform": ax.transAxes}
    left, right, top, bottom = letters
    ax.text(0.02, 0.5, left, ha="left", va="center", **style)
    ax.text(0.98, 0.5, right, ha="right", va="center", **style)
    ax.text(0.5, 0.98, top, ha="center", va="top", **style)
    ax.text(0.5, 0.02, bottom, ha="center", va="bottom", **style)


def draw_outline(ax: Any, mask2d: np.ndarray, colour: str, extent: Sequence[float], linestyle: str = "solid") -> None:
    """The boundary of a 2D mask as a line on ``ax`` (nothing when the mask is empty on this slice)."""
    binary = np.asarray(mask2d, dtype=float)
    if binary.any():
        ax.contour(binary, levels=[0.5], colors=[colour], linestyles=linestyle, linewidths=1.2,
                   extent=extent, origin="upper")


def as_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float]]:
    """``array`` with its axes permuted and flipped to the closest RAS+ order, as every picture of this module
    expects its arrays (for pictures only: an oblique grid keeps its tilt), and the voxel spacing along the new
    axes (mm)."""
    from nibabel.orientations import apply_orientation, io_orientation

    ornt = io_orientation(affine)
    zooms = np.linalg.norm(np.asarray(affine, np.float64)[:3, :3], axis=0)
    spacing = [0.0, 0.0, 0.0]
    for axis, (target, _) in enumerate(ornt):
        spacing[int(target)] = float(zooms[axis])
    # A view (axes flipped and swapped), not a copy: the figure reads a few slices of six volumes.
    return apply_orientation(array, ornt), (spacing[0], spacing[1], spacing[2])


def robust_range(values: np.ndarray, low: float = 1.0, high: float = 99.0) -> tuple[float, float]:
    """The ``low``–``high`` percentiles of the finite ``values`` (a usable range even when constant or empty)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(finite, [low, high]))
    if hi <= lo:  # a constant image: centre it in the grey range instead of showing it black
        return lo - 1.0, lo + 1.0
    return lo, hi


def render_png(fig: Any, dpi: int = 100) -> bytes:
    """``fig`` rendered on an Agg canvas, as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def save_png(fig: Any, path: Path, dpi: int = 100) -> Path:
    """Render ``fig`` and write it to ``path`` atomically; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    png = render_png(fig, dpi)
    # Atomic, so MLflow or a browser never picks up a half-written PNG.
    with atomic_path(path) as tmp:
        tmp.write_bytes(png)
    return path
