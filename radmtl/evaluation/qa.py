"""QA pictures a person would rather look at: orthogonal slices and training curves, as PNG.

Slices follow the display convention of :mod:`radmtl.evaluation.display` (RAS+ volumes shown
radiologically, orientation letters on every panel, physical aspect ratio); figures are Agg
``Figure`` objects, never pyplot, so nothing global is touched and headless machines work.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from radmtl.evaluation.display import (
    CONTOUR_COLOURS,
    DEFAULT_HU_WINDOW,
    PANEL_INCHES,
    VIEW_GEOMETRY,
    VIEWS,
    as_volume,
    check_spacing,
    display_slice,
    draw_orientation_letters,
    draw_outline,
    foreground_centre,
    names_by_label,
    robust_range,
    save_png,
    slice_extent,
)
from radmtl.tracking.metrics_file import read_records

logger = logging.getLogger(__name__)


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
    from matplotlib.lines import Line2D

    unknown = [view for view in views if view not in VIEW_GEOMETRY]
    if unknown:
        raise ValueError(f"views: unknown {unknown}; choose from {VIEWS}")
    mr = as_volume("mr", mr, None)
    shape = mr.shape
    ct_hu, sct_hu, sigma_hu = (as_volume(n, a, shape) for n, a in (("ct_hu", ct_hu), ("sct_hu", sct_hu), ("sigma_hu", sigma_hu)))
    seg, ref_labels, mask = (as_volume(n, a, shape) for n, a in (("seg", seg), ("ref_labels", ref_labels), ("mask", mask)))
    check_spacing(spacing)
    body = mask > 0 if mask is not None else np.ones(shape, dtype=bool)
    error = np.abs(sct_hu - ct_hu) if (sct_hu is not None and ct_hu is not None) else None
    # |error| and σ share one colour scale: a well-calibrated σ map looks like the error map.
    scale_source = error if error is not None else sigma_hu
    err_max = robust_range(scale_source[body], 0.0, 99.0)[1] if scale_source is not None else 1.0
    mr_range = robust_range(mr[body])
    names = names_by_label(label_names)
    centre = foreground_centre(mr.shape, ref_labels, seg, mask)

    paths = []
    for view in views:
        axis, col_axis, row_axis, _, _, letters = VIEW_GEOMETRY[view]
        index = centre[axis]
        extent = slice_extent(view, shape, spacing)
        body2d = display_slice(body.astype(np.uint8), view, index) > 0
        panels: list[tuple[str, np.ndarray, dict[str, Any], str | None]] = [
            ("MR", display_slice(mr, view, index), {"cmap": "gray", "vmin": mr_range[0], "vmax": mr_range[1]}, None)
        ]
        window = {"cmap": "gray", "vmin": hu_window[0], "vmax": hu_window[1]}
        hu_label = f"[{hu_window[0]:.0f}, {hu_window[1]:.0f}] HU"
        if ct_hu is not None:
            panels.append((f"CT {hu_label}", display_slice(ct_hu, view, index), window, None))
        if sct_hu is not None:
            panels.append((f"sCT {hu_label}", display_slice(sct_hu, view, index), window, None))
        heat = {"cmap": "magma", "vmin": 0.0, "vmax": err_max}
        if error is not None:
            err2d = np.where(body2d, display_slice(error, view, index), np.nan)
            mae = float(np.nanmean(err2d)) if np.any(body2d) else float("nan")
            panels.append((f"|sCT − CT| (slice MAE {mae:.0f} HU)", err2d, heat, "HU"))
        if sigma_hu is not None:
            sig2d = np.where(body2d, display_slice(sigma_hu, view, index), np.nan)
            mean_sigma = float(np.nanmean(sig2d)) if np.any(body2d) else float("nan")
            panels.append((f"predicted σ (mean {mean_sigma:.0f} HU)", sig2d, heat, "HU"))
        show_contours = seg is not None or ref_labels is not None

        width_mm, height_mm = extent[1], extent[2]
        panel_h = max(2.0, min(6.0, PANEL_INCHES * height_mm / max(width_mm, 1e-6)))
        fig, axes, colorbar_axes = _panel_row(panel_h, [label is not None for _, _, _, label in panels],
                                              show_contours)
        for ax, cax, (title, image, style, cbar_label) in zip(axes, colorbar_axes, panels):
            shown = ax.imshow(image, extent=extent, origin="upper", aspect="equal", interpolation="nearest", **style)
            ax.set_title(title, fontsize=10)
            if cbar_label is not None:
                fig.colorbar(shown, cax=cax, label=cbar_label)
        if show_contours:
            ax = axes[-1]
            ax.imshow(panels[0][1], extent=extent, origin="upper", aspect="equal", interpolation="nearest", **panels[0][2])
            handles = []
            labels_here = sorted(
                {int(v) for arr in (seg, ref_labels) if arr is not None for v in np.unique(display_slice(arr, view, index))} - {0}
            )
            for i, label in enumerate(labels_here):
                colour = CONTOUR_COLOURS[i % len(CONTOUR_COLOURS)]
                for volume, linestyle in ((seg, "solid"), (ref_labels, "dashed")):
                    if volume is None:
                        continue
                    draw_outline(ax, display_slice(volume, view, index) == label, colour, extent, linestyle)
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
            draw_orientation_letters(ax, letters)
        position_mm = index * float(spacing[axis])
        fig.suptitle(
            f"{prefix} — {view} slice {index} of {shape[axis]} ({position_mm:.0f} mm), "
            f"voxel {spacing[col_axis]:g}×{spacing[row_axis]:g} mm, radiological view",
            fontsize=11,
        )
        paths.append(save_png(fig, Path(out_dir) / f"{prefix}_{view}.png"))
    logger.debug("QA images written: %s", [str(p) for p in paths])
    return paths


# The QA row's fixed geometry in inches. Placed by hand rather than by layout="constrained": that engine
# measures the figure in an extra draw, which was about half of each picture's time, and validation draws
# three pictures per case every epoch.
_MARGIN_IN, _TOP_IN, _BOTTOM_IN = 0.15, 0.6, 0.15
_GAP_IN = 0.2  # between panels
_COLORBAR_IN = (0.08, 0.12, 0.65)  # gap, bar width, room for its ticks and label
_LEGEND_IN = 1.45  # the organ legend right of the last panel


def _panel_row(panel_h: float, colorbars: Sequence[bool], contours: bool):
    """A figure with one row of image axes of ``PANEL_INCHES`` × ``panel_h`` inches, a colour-bar axes
    right of each panel that wants one (None for the others), and a last contour panel with room for its
    legend when ``contours``: ``(fig, axes, colorbar_axes)``."""
    from matplotlib.figure import Figure

    flags = [*colorbars, False] if contours else list(colorbars)
    slots = [PANEL_INCHES + (sum(_COLORBAR_IN) if bar else 0.0) for bar in flags]
    if contours:
        slots[-1] += _LEGEND_IN
    width = 2 * _MARGIN_IN + sum(slots) + _GAP_IN * (len(slots) - 1)
    height = _BOTTOM_IN + panel_h + _TOP_IN
    fig = Figure(figsize=(width, height))
    axes, colorbar_axes, x = [], [], _MARGIN_IN
    for slot, bar in zip(slots, flags):
        axes.append(fig.add_axes((x / width, _BOTTOM_IN / height, PANEL_INCHES / width, panel_h / height)))
        if bar:
            gap, bar_w, _ = _COLORBAR_IN
            left = x + PANEL_INCHES + gap
            colorbar_axes.append(fig.add_axes((left / width, (_BOTTOM_IN + 0.075 * panel_h) / height, bar_w / width,
                                               0.85 * panel_h / height)))
        else:
            colorbar_axes.append(None)
        x += slot + _GAP_IN
    return fig, axes, colorbar_axes


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
    width, height = 6.0 * columns, 3.6 * rows
    fig = Figure(figsize=(width, height))
    # Fixed margins in inches rather than layout="constrained": the panels are a regular grid with legends
    # inside, and constrained layout's extra measuring draw took half of this figure's time (0.59 of 1.35 s).
    axes = fig.subplots(rows, columns, squeeze=False, gridspec_kw=dict(
        left=0.8 / width, right=1 - 0.2 / width, bottom=0.55 / height, top=1 - 0.6 / height,
        wspace=1.0 / (6.0 - 1.0), hspace=0.95 / (3.6 - 0.95))).ravel()
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
    return save_png(fig, Path(out_png))
