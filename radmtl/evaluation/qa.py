"""QA pictures a person would rather look at: orthogonal slices and training curves, as PNG.

Volumes are (X, Y, Z) arrays in RAS+ (x grows towards the patient's right, y anterior, z superior).
Slices are shown in the radiological convention (patient's right on the viewer's left; anterior and superior up) with
the orientation letters drawn on every panel, and with the physical aspect ratio of the voxels.

Matplotlib is imported inside the functions (``radmtl --help`` stays fast) and figures are built
on ``matplotlib.figure.Figure`` with the Agg canvas, not pyplot: no global backend or figure state,
nothing to close, safe on headless machines.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from radmtl.data.io import atomic_path
from radmtl.tracking.metrics_file import read_records

logger = logging.getLogger(__name__)

# Wide enough for air, soft tissue and bone, where sCT errors concentrate; MR/sCT/CT share it.
DEFAULT_HU_WINDOW = (-1000.0, 1500.0)
VIEWS = ("axial", "coronal", "sagittal")
# For each view: the sliced axis, the axis along image columns and along image rows, whether
# each is flipped for display, and the letters at (left, right, top, bottom).
_VIEWS: dict[str, tuple[int, int, int, bool, bool, tuple[str, str, str, str]]] = {
    # x grows towards R, and the radiological display puts the patient's right on the viewer's
    # left, hence the column flip; rows are flipped so that anterior/superior is up. Sagittal
    # shows anterior on the left, as most viewers do.
    "axial": (2, 0, 1, True, True, ("R", "L", "A", "P")),
    "coronal": (1, 0, 2, True, True, ("R", "L", "S", "I")),
    "sagittal": (0, 1, 2, True, True, ("A", "P", "S", "I")),
}
_PANEL_INCHES = 3.2
_CONTOUR_COLOURS = ("#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6")


def _as_volume(name: str, array: Any, shape: tuple[int, ...] | None) -> np.ndarray | None:
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


def _centre(mr: np.ndarray, *candidates: np.ndarray | None) -> tuple[int, int, int]:
    """Voxel index of the organ centre (labels), else the body centre (mask), else the middle."""
    for volume in candidates:
        if volume is not None and np.any(volume > 0):
            return tuple(int(round(float(c))) for c in np.argwhere(volume > 0).mean(axis=0))
    return tuple(s // 2 for s in mr.shape)


def _slice(volume: np.ndarray | None, view: str, index: int) -> np.ndarray | None:
    """A 2D display image (rows, cols) of ``volume`` in the radiological convention."""
    if volume is None:
        return None
    axis, col_axis, row_axis, flip_cols, flip_rows, _ = _VIEWS[view]
    plane = np.take(volume, index, axis=axis)
    # After removing `axis`, the remaining two keep their order; make (rows, cols).
    remaining = [a for a in range(3) if a != axis]
    image = plane if remaining.index(row_axis) == 0 else plane.T
    if flip_rows:
        image = image[::-1]
    if flip_cols:
        image = image[:, ::-1]
    return np.ascontiguousarray(image)


def _extent(view: str, shape: tuple[int, ...], spacing: Sequence[float]) -> list[float]:
    _, col_axis, row_axis, _, _, _ = _VIEWS[view]
    width = shape[col_axis] * float(spacing[col_axis])
    height = shape[row_axis] * float(spacing[row_axis])
    return [0.0, width, height, 0.0]  # imshow origin="upper": mm, so aspect="equal" is physical


def _names_by_label(label_names: Mapping[Any, Any] | Sequence[str] | None) -> dict[int, str]:
    if label_names is None:
        return {}
    if isinstance(label_names, Mapping):
        pairs = list(label_names.items())
        # The checkpoint stores {name: label}; accept {label: name} too.
        if pairs and isinstance(pairs[0][0], str) and not str(pairs[0][0]).isdigit():
            return {int(v): str(k) for k, v in pairs}
        return {int(k): str(v) for k, v in pairs}
    return {i: str(name) for i, name in enumerate(label_names)}


def _orientation_letters(ax: Any, letters: tuple[str, str, str, str]) -> None:
    style = {"color": "yellow", "fontsize": 9, "fontweight": "bold", "transform": ax.transAxes}
    left, right, top, bottom = letters
    ax.text(0.02, 0.5, left, ha="left", va="center", **style)
    ax.text(0.98, 0.5, right, ha="right", va="center", **style)
    ax.text(0.5, 0.98, top, ha="center", va="top", **style)
    ax.text(0.5, 0.02, bottom, ha="center", va="bottom", **style)


def _robust_range(values: np.ndarray, low: float = 1.0, high: float = 99.0) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(finite, [low, high]))
    if hi <= lo:  # a constant image: centre it in the grey range instead of showing it black
        return lo - 1.0, lo + 1.0
    return lo, hi


def _save(fig: Any, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Atomic, so MLflow or a browser never picks up a half-written PNG.
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path


def qa_images(
    mr: Any,
    ct_hu: Any,
    sct_hu: Any,
    sigma_hu: Any,
    seg: Any,
    ref_labels: Any,
    mask: Any,
    out_dir: Path,
    prefix: str,
    spacing: Sequence[float],
    label_names: Mapping[Any, Any] | Sequence[str] | None = None,
    hu_window: tuple[float, float] = DEFAULT_HU_WINDOW,
    views: Sequence[str] = VIEWS,
) -> list[Path]:
    """Write one PNG per view (axial, coronal, sagittal) through the organ centre.

    Each PNG is a row of panels: MR, CT, sCT (same HU window), |sCT − CT| and predicted σ (same
    HU colour scale, so they can be compared), and predicted (solid) vs reference (dashed)
    organ contours on the MR. Panels whose input is None are left out.

    Args:
        mr: MR intensities (X, Y, Z), RAS.
        ct_hu: reference CT in HU, or None.
        sct_hu: synthetic CT in HU, or None.
        sigma_hu: predicted standard deviation of the sCT in HU, or None.
        seg: predicted labels (integers), or None.
        ref_labels: reference labels, or None.
        mask: body mask (error statistics and MR window are taken inside it), or None.
        out_dir: folder for the PNGs.
        prefix: file-name prefix; files are ``<prefix>_<view>.png``.
        spacing: voxel size in mm along (X, Y, Z).
        label_names: ``{name: label}`` as in the checkpoint, ``{label: name}`` or a list.
        hu_window: display window for CT and sCT.
        views: a subset of ``("axial", "coronal", "sagittal")``.

    Returns:
        One PNG path per view, in the order of ``views``.
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    unknown = [view for view in views if view not in _VIEWS]
    if unknown:
        raise ValueError(f"views: unknown {unknown}; choose from {VIEWS}")
    mr = _as_volume("mr", mr, None)
    shape = mr.shape
    ct_hu, sct_hu, sigma_hu = (_as_volume(n, a, shape) for n, a in (("ct_hu", ct_hu), ("sct_hu", sct_hu), ("sigma_hu", sigma_hu)))
    seg, ref_labels, mask = (_as_volume(n, a, shape) for n, a in (("seg", seg), ("ref_labels", ref_labels), ("mask", mask)))
    if len(spacing) != 3 or any(float(s) <= 0 for s in spacing):
        raise ValueError(f"spacing must be three positive sizes in mm (X, Y, Z), got {tuple(spacing)}")
    body = mask > 0 if mask is not None else np.ones(shape, dtype=bool)
    error = np.abs(sct_hu - ct_hu) if (sct_hu is not None and ct_hu is not None) else None
    # |error| and σ share one colour scale: a well-calibrated σ map looks like the error map.
    scale_source = error if error is not None else sigma_hu
    err_max = _robust_range(scale_source[body], 0.0, 99.0)[1] if scale_source is not None else 1.0
    mr_range = _robust_range(mr[body])
    names = _names_by_label(label_names)
    centre = _centre(mr, ref_labels, seg, mask)

    paths = []
    for view in views:
        axis, col_axis, row_axis, _, _, letters = _VIEWS[view]
        index = centre[axis]
        extent = _extent(view, shape, spacing)
        body2d = _slice(body.astype(np.uint8), view, index) > 0
        panels: list[tuple[str, np.ndarray, dict[str, Any], str | None]] = [
            ("MR", _slice(mr, view, index), {"cmap": "gray", "vmin": mr_range[0], "vmax": mr_range[1]}, None)
        ]
        window = {"cmap": "gray", "vmin": hu_window[0], "vmax": hu_window[1]}
        hu_label = f"[{hu_window[0]:.0f}, {hu_window[1]:.0f}] HU"
        if ct_hu is not None:
            panels.append((f"CT {hu_label}", _slice(ct_hu, view, index), window, None))
        if sct_hu is not None:
            panels.append((f"sCT {hu_label}", _slice(sct_hu, view, index), window, None))
        heat = {"cmap": "magma", "vmin": 0.0, "vmax": err_max}
        if error is not None:
            err2d = np.where(body2d, _slice(error, view, index), np.nan)
            mae = float(np.nanmean(err2d)) if np.any(body2d) else float("nan")
            panels.append((f"|sCT − CT| (slice MAE {mae:.0f} HU)", err2d, heat, "HU"))
        if sigma_hu is not None:
            sig2d = np.where(body2d, _slice(sigma_hu, view, index), np.nan)
            mean_sigma = float(np.nanmean(sig2d)) if np.any(body2d) else float("nan")
            panels.append((f"predicted σ (mean {mean_sigma:.0f} HU)", sig2d, heat, "HU"))
        show_contours = seg is not None or ref_labels is not None
        n_panels = len(panels) + int(show_contours)

        width_mm, height_mm = extent[1], extent[2]
        panel_h = max(2.0, min(6.0, _PANEL_INCHES * height_mm / max(width_mm, 1e-6)))
        fig = Figure(figsize=(_PANEL_INCHES * n_panels + 0.6, panel_h + 1.3), layout="constrained")
        axes = fig.subplots(1, n_panels, squeeze=False)[0]
        for ax, (title, image, style, cbar_label) in zip(axes, panels):
            shown = ax.imshow(image, extent=extent, origin="upper", aspect="equal", interpolation="nearest", **style)
            ax.set_title(title, fontsize=10)
            if cbar_label is not None:
                fig.colorbar(shown, ax=ax, shrink=0.85, label=cbar_label)
        if show_contours:
            ax = axes[-1]
            ax.imshow(panels[0][1], extent=extent, origin="upper", aspect="equal", interpolation="nearest", **panels[0][2])
            handles = []
            labels_here = sorted(
                {int(v) for arr in (seg, ref_labels) if arr is not None for v in np.unique(_slice(arr, view, index))} - {0}
            )
            for i, label in enumerate(labels_here):
                colour = _CONTOUR_COLOURS[i % len(_CONTOUR_COLOURS)]
                for volume, linestyle in ((seg, "solid"), (ref_labels, "dashed")):
                    if volume is None:
                        continue
                    binary = (_slice(volume, view, index) == label).astype(float)
                    if binary.any():
                        ax.contour(binary, levels=[0.5], colors=[colour], linestyles=linestyle,
                                   linewidths=1.2, extent=extent, origin="upper")
                handles.append(Line2D([], [], color=colour, label=names.get(label, f"label {label}")))
            if seg is not None:
                handles.append(Line2D([], [], color="white", linestyle="solid", label="predicted"))
            if ref_labels is not None:
                handles.append(Line2D([], [], color="white", linestyle="dashed", label="reference"))
            if handles:
                legend = ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                                   facecolor="0.2", labelcolor="white", framealpha=0.9)
                legend.get_frame().set_edgecolor("0.5")
            ax.set_title("organs: predicted — / reference - -", fontsize=10)
        for ax in axes:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_facecolor("black")
            _orientation_letters(ax, letters)
        position_mm = index * float(spacing[axis])
        fig.suptitle(
            f"{prefix} — {view} slice {index} of {shape[axis]} ({position_mm:.0f} mm), "
            f"voxel {spacing[col_axis]:g}×{spacing[row_axis]:g} mm, radiological view",
            fontsize=11,
        )
        paths.append(_save(fig, Path(out_dir) / f"{prefix}_{view}.png"))
    logger.debug("QA images written: %s", [str(p) for p in paths])
    return paths


def _series(records: list[dict[str, float]], key: str, x_key: str) -> tuple[list[float], list[float]]:
    # After a resume the unfinished epoch is logged again: the last value per x wins.
    points: dict[float, float] = {}
    for record in records:
        if key in record and x_key in record and record[key] is not None:
            points[float(record[x_key])] = float(record[key])
    xs = sorted(points)
    return xs, [points[x] for x in xs]


def _panels(records: list[dict[str, float]]) -> dict[str, tuple[list[str], str]]:
    """Which metrics go in which panel, and the x axis (``step`` or ``epoch``) of each panel.

    radmtl logs per-step values (``step_loss_total`` …, step = global step) and per-epoch means
    and validation (``train_*``, ``val_*``, in records that carry ``epoch``). One panel never mixes
    the two x scales: losses and σ prefer the per-step series, HU and Dice are per epoch.
    """
    keys = {k for record in records for k in record} - {"step", "time", "epoch"}
    per_epoch = {k for k in keys if all("epoch" in r for r in records if k in r)}

    def pick(selected: set[str], prefer_epoch: bool) -> tuple[list[str], str]:
        preferred = selected & per_epoch if prefer_epoch else selected - per_epoch
        chosen = preferred or selected
        return sorted(chosen), "epoch" if chosen and chosen <= per_epoch else "step"

    return {
        "losses": pick({k for k in keys if "loss" in k}, prefer_epoch=False),
        "sigma": pick({k for k in keys if ("sigma" in k or "log_var" in k) and not k.endswith("_hu")
                       and "over" not in k}, prefer_epoch=False),
        "hu": pick({k for k in keys if k.endswith("_hu")}, prefer_epoch=True),
        "dice": pick({k for k in keys if "dice" in k}, prefer_epoch=True),
        "gradients": pick({k for k in keys if "grad_norm_encoder" in k or "grad_ratio" in k}, prefer_epoch=False),
    }


def training_curves(metrics_jsonl: Path, out_png: Path) -> Path | None:
    """Draw the training curves of ``metrics.jsonl`` into one multi-panel PNG.

    Panels (each only when its metrics exist): loss components (``*loss*``) and learned σ /
    ``log_var`` against step; MAE and mean σ in HU (``*_hu``, train and validation) and Dice
    (``*dice*``) against epoch (the ``epoch`` field of the record); the per-task gradient norms on
    the shared encoder and their ratio against step.

    Returns:
        ``out_png``, or None when the file is missing or holds nothing to draw.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    metrics_jsonl = Path(metrics_jsonl)
    if not metrics_jsonl.is_file():
        return None
    records = read_records(metrics_jsonl)
    groups = {name: panel for name, panel in _panels(records).items() if panel[0]}
    if not groups:
        return None
    titles = {
        "losses": ("loss components", "loss"),
        "sigma": ("learned uncertainty", "σ / log σ²"),
        "hu": ("MAE and mean σ (HU)", "HU"),
        "dice": ("Dice", "Dice"),
        "gradients": ("gradient each task sends into the shared encoder", "norm / ratio"),
    }
    columns = min(2, len(groups))
    rows = math.ceil(len(groups) / columns)
    fig = Figure(figsize=(6.0 * columns, 3.6 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax, (group, (group_keys, x_key)) in zip(axes, groups.items()):
        title, y_label = titles[group]
        all_y = []
        for key in group_keys:
            xs, ys = _series(records, key, x_key)
            marker = "o" if len(xs) < 30 else None
            ax.plot(xs, ys, label=key, marker=marker, markersize=3, linewidth=1.2)
            all_y.extend(ys)
        finite = [y for y in all_y if math.isfinite(y)]
        # Losses span decades; a log axis shows the late training, but only for positive values.
        if group in ("losses", "gradients") and finite and min(finite) > 0 and max(finite) / min(finite) > 50:
            ax.set_yscale("log")
        if group == "dice":
            ax.set_ylim(0.0, 1.0)
        ax.set_title(title, fontsize=11)
        ax.set_xlabel(x_key)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no "epoch 1.5"
        ax.set_ylabel(y_label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes[len(groups):]:
        ax.set_visible(False)
    fig.suptitle(f"training curves — {metrics_jsonl.parent.name}", fontsize=12)
    return _save(fig, Path(out_png))
