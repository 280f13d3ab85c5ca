"""The per-case review picture of ``radmtl infer``: where not to trust the sCT, readable without a viewer.

``review/review.png`` shows axial, coronal and sagittal slices through the body centre and through
the worst-flagged region (:mod:`radmtl.evaluation.flagged_region`); ``review/review.html`` embeds the
same picture with the verdict, the reasons and the per-organ statistics of ``review.json``
(:mod:`radmtl.evaluation.review_page`). Slices follow the display convention of
:mod:`radmtl.evaluation.display`.
"""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from radmtl.data.atomic import atomic_path
from radmtl.evaluation.display import (
    CONTOUR_COLOURS,
    DEFAULT_HU_WINDOW,
    PANEL_INCHES,
    VIEW_GEOMETRY,
    VIEWS,
    as_volume,
    check_spacing,
    display_point,
    display_slice,
    draw_orientation_letters,
    draw_outline,
    foreground_centre,
    names_by_label,
    render_png,
    robust_range,
    slice_extent,
)
from radmtl.evaluation.flagged_region import FlaggedRegion, worst_flagged_region
from radmtl.evaluation.review_page import review_html, verdict_colour

logger = logging.getLogger(__name__)

FLAG_COLOUR = (1.0, 0.15, 0.15, 0.6)  # translucent red over the MR: "do not trust the sCT here"
THRESHOLD_COLOUR = "cyan"  # the threshold on the σ colour bar and the worst-flagged marker: neither is in magma
_MAX_REASON_LINES = 6
_TITLE_IN = 0.65  # header layout in inches: the 26 pt verdict line, then 11 pt lines
_LINE_IN = 0.22
_ROW_GAP_IN = 0.5  # a row's title and the space between rows
_DPI = 100
# The grid's columns in inches, placed by hand rather than by layout="constrained", whose extra measuring draw
# was about half of this picture's time (it is drawn for every case infer writes): room for the two-line row
# label at the left, then MR, sCT + colour bar, σ + colour bar, flagged.
_LEFT_IN, _RIGHT_IN, _GAP_IN, _BOTTOM_IN = 0.75, 0.1, 0.15, 0.15
_COLORBAR_IN = (0.08, 0.12, 0.6)  # gap, bar width, room for its ticks and label
_COLORBAR_COLUMNS = (1, 2)


@dataclass(frozen=True)
class ReviewFigure:
    """A rendered review figure.

    Attributes:
        png: the figure as PNG bytes.
        region: the worst-flagged region it slices through, None when nothing is flagged.
        notes: what is flagged and how the panels are scaled, as the figure states it.
    """

    png: bytes
    region: FlaggedRegion | None
    notes: tuple[str, ...]


@dataclass(frozen=True)
class _Volumes:
    mr: np.ndarray
    sct_hu: np.ndarray
    sigma_total_hu: np.ndarray
    labels: np.ndarray | None
    flagged: np.ndarray
    body: np.ndarray


def _volumes(mr: Any, sct_hu: Any, sigma_total_hu: Any, labels: Any, flagged: Any, body: Any) -> _Volumes:
    mr = as_volume("mr", mr, None)
    given = {name: as_volume(name, array, mr.shape) for name, array in (
        ("sct_hu", sct_hu), ("sigma_total_hu", sigma_total_hu), ("labels", labels), ("flagged", flagged), ("body", body))}
    missing = [name for name in ("sct_hu", "sigma_total_hu", "flagged") if given[name] is None]
    if missing:
        raise ValueError(f"{', '.join(missing)}: required (X, Y, Z) arrays, got None")
    body = given["body"]
    # An empty or absent mask would leave every in-body statistic undefined: use the whole volume.
    body = body.astype(bool) if body is not None and np.any(body) else np.ones(mr.shape, dtype=bool)
    return _Volumes(mr, given["sct_hu"], given["sigma_total_hu"], given["labels"], given["flagged"].astype(bool), body)


def _sigma_scale(sigma_in_body: np.ndarray, threshold_hu: float | None) -> tuple[float, str]:
    """Upper end of the σ_total colour scale (it starts at 0 HU) and how it was chosen, for the figure.

    The 99th percentile in the body, so that a few extreme voxels do not flatten the map; raised to
    1.25 × the flagging threshold where that is higher, so the threshold is always on the scale.
    """
    p99 = robust_range(sigma_in_body, 0.0, 99.0)[1]
    if threshold_hu is not None and 1.25 * threshold_hu > p99:
        return 1.25 * float(threshold_hu), "1.25 × threshold"
    return max(p99, 1e-3), "99th percentile in body"


def _notes(volumes: _Volumes, region: FlaggedRegion | None, spacing: Sequence[float], threshold_hu: float | None,
           sigma_max: float, sigma_rule: str, hu_window: tuple[float, float]) -> tuple[str, str]:
    """What is flagged, and how the panels are scaled."""
    rule = f" (σ_total ≥ {threshold_hu:.0f} HU)" if threshold_hu is not None else ""
    if region is None:
        flag_note = f"no voxel flagged{rule}: no worst-flagged rows"
    else:
        voxel_ml = float(np.prod([float(s) for s in spacing])) / 1000.0
        n_flagged = int(np.count_nonzero(volumes.flagged))
        body_percent = 100.0 * np.count_nonzero(volumes.flagged & volumes.body) / np.count_nonzero(volumes.body)
        flag_note = (f"flagged{rule}: {n_flagged} voxels = {n_flagged * voxel_ml:.1f} ml, {body_percent:.2f} % of body, "
                     f"in {region.n_regions} region(s); worst-flagged (+): the largest, {region.n_voxels * voxel_ml:.1f} ml")
    threshold_line = f", {THRESHOLD_COLOUR} line: threshold" if threshold_hu is not None else ""
    scale_note = (f"sCT window [{hu_window[0]:.0f}, {hu_window[1]:.0f}] HU; σ_total scale 0 to {sigma_max:.0f} HU "
                  f"({sigma_rule}{threshold_line}); radiological view, voxel "
                  f"{' × '.join(f'{float(s):g}' for s in spacing)} mm")
    return flag_note, scale_note


def _reason_lines(summary: Mapping[str, Any]) -> list[str]:
    reasons = summary.get("reasons") or []
    reasons = [reasons] if isinstance(reasons, str) else [str(reason) for reason in reasons]
    lines = [line for reason in reasons for line in textwrap.wrap(f"• {reason}", 105, subsequent_indent="  ")]
    if len(lines) > _MAX_REASON_LINES:
        lines = lines[:_MAX_REASON_LINES - 1] + ["  … more in review.html and review.json"]
    return lines or ["no reason to review" if summary.get("verdict") == "ok" else "no reasons given"]


def _note_lines(note: str) -> list[str]:
    """One line per clause of a note, wrapped short enough to stay clear of the organ legend."""
    return [line for clause in note.split("; ") for line in textwrap.wrap(clause, 110)]


def _draw_header(fig: Any, width_in: float, height_in: float, title: str, verdict: str,
                 blocks: Sequence[tuple[list[str], dict]], organ_handles: list[Any]) -> None:
    """Verdict (large, coloured), then text blocks one under the other, the organ legend at the right, in the
    top of ``fig`` (``width_in`` × ``height_in`` inches)."""
    def below_top(inches: float) -> float:  # a figure fraction, so text keeps its place whatever the rows
        return 1.0 - inches / height_in

    left = 0.15 / width_in
    fig.text(left, below_top(0.1), f"{title}: {verdict.upper()}", ha="left", va="top", fontsize=26,
             fontweight="bold", color=verdict_colour(verdict))
    top_in = _TITLE_IN
    for lines, style in blocks:
        fig.text(left, below_top(top_in), "\n".join(lines), ha="left", va="top", linespacing=1.3, **style)
        top_in += _LINE_IN * len(lines) + 0.05
    if organ_handles:
        fig.legend(handles=organ_handles, loc="upper right", bbox_to_anchor=(1 - 0.1 / width_in, below_top(0.1)),
                   fontsize=9, title="organ outlines", title_fontsize=9, frameon=True)


def _grid_axes(fig: Any, width_in: float, height_in: float, header_in: float, heights: Sequence[float]):
    """Per row, the four panel axes and the colour-bar axes of the sCT and σ columns, placed in inches."""
    columns_x, x = [], _LEFT_IN
    for column in range(4):
        columns_x.append(x)
        x += PANEL_INCHES + (sum(_COLORBAR_IN) if column in _COLORBAR_COLUMNS else 0.0) + _GAP_IN
    rows, top = [], header_in
    for row_h in heights:
        top += _ROW_GAP_IN
        bottom = height_in - top - row_h
        axes = [fig.add_axes((cx / width_in, bottom / height_in, PANEL_INCHES / width_in, row_h / height_in))
                for cx in columns_x]
        gap, bar_w, _ = _COLORBAR_IN
        bars = {column: fig.add_axes(((columns_x[column] + PANEL_INCHES + gap) / width_in,
                                      (bottom + 0.05 * row_h) / height_in, bar_w / width_in, 0.9 * row_h / height_in))
                for column in _COLORBAR_COLUMNS}
        rows.append((axes, bars))
        top += row_h
    return rows


def _grid_width_in() -> float:
    return (_LEFT_IN + 4 * PANEL_INCHES + len(_COLORBAR_COLUMNS) * sum(_COLORBAR_IN) + 3 * _GAP_IN + _RIGHT_IN)


def _draw_row(fig: Any, axes: Sequence[Any], bars: Mapping[int, Any], volumes: _Volumes, view: str,
              voxel: tuple[int, int, int], spacing: Sequence[float], style: dict[str, Any]) -> None:
    """One row: MR with outlines, sCT, σ_total, flagged over MR, all through ``voxel`` in ``view``."""
    shape = volumes.mr.shape
    index = voxel[VIEW_GEOMETRY[view][0]]
    extent = slice_extent(view, shape, spacing)
    shown = {"extent": extent, "origin": "upper", "aspect": "equal", "interpolation": "nearest"}
    ax_mr, ax_sct, ax_sigma, ax_flag = axes
    mr2d = display_slice(volumes.mr, view, index)
    for ax in (ax_mr, ax_flag):
        ax.imshow(mr2d, **style["mr"], **shown)
    if volumes.labels is not None:
        labels2d = display_slice(volumes.labels, view, index)
        for label, colour in style["organ_colours"].items():
            draw_outline(ax_mr, labels2d == label, colour, extent)
    image = ax_sct.imshow(display_slice(volumes.sct_hu, view, index), **style["sct"], **shown)
    fig.colorbar(image, cax=bars[1], label="HU")
    body2d = display_slice(volumes.body, view, index)
    sigma2d = np.where(body2d, display_slice(volumes.sigma_total_hu, view, index), np.nan)
    bar = fig.colorbar(ax_sigma.imshow(sigma2d, **style["sigma"], **shown), cax=bars[2], label="HU")
    if style["threshold_hu"] is not None:
        bar.add_lines([float(style["threshold_hu"])], colors=[THRESHOLD_COLOUR], linewidths=[2.0])
    ax_flag.imshow(display_slice(volumes.flagged, view, index).astype(np.uint8), **style["flagged"], **shown)
    if style["marked_voxel"] is not None and style["marked_voxel"][VIEW_GEOMETRY[view][0]] == index:
        ax_flag.plot(*display_point(view, style["marked_voxel"], shape, spacing), marker="+", markersize=16,
                     markeredgewidth=2, color=THRESHOLD_COLOUR)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_facecolor("black")
        draw_orientation_letters(ax, VIEW_GEOMETRY[view][5])


def render_review_figure(
    *,
    mr: Any,
    sct_hu: Any,
    sigma_total_hu: Any,
    labels: Any,
    flagged: Any,
    body: Any,
    spacing: Sequence[float],
    summary: Mapping[str, Any],
    title: str,
    label_names: Mapping[Any, Any] | Sequence[str] | None = None,
    sigma_threshold_hu: float | None = None,
    hu_window: tuple[float, float] = DEFAULT_HU_WINDOW,
    sigma_label: str = "σ_total",
) -> ReviewFigure:
    """The review figure of one case, rendered (arguments as :func:`write_review_figure`)."""
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    volumes = _volumes(mr, sct_hu, sigma_total_hu, labels, flagged, body)
    check_spacing(spacing)
    shape = volumes.mr.shape
    region = worst_flagged_region(volumes.flagged, volumes.sigma_total_hu, spacing)
    places = [("body centre", foreground_centre(shape, volumes.body))]
    if region is not None:
        places.append(("worst-flagged region", region.centre))
    sigma_max, sigma_rule = _sigma_scale(volumes.sigma_total_hu[volumes.body], sigma_threshold_hu)
    notes = _notes(volumes, region, spacing, sigma_threshold_hu, sigma_max, sigma_rule, hu_window)
    present = [] if volumes.labels is None else [int(v) for v in np.unique(volumes.labels) if v > 0]
    mr_low, mr_high = robust_range(volumes.mr[volumes.body])
    style = {
        "mr": {"cmap": "gray", "vmin": mr_low, "vmax": mr_high},
        "sct": {"cmap": "gray", "vmin": hu_window[0], "vmax": hu_window[1]},
        "sigma": {"cmap": "magma", "vmin": 0.0, "vmax": sigma_max},
        "flagged": {"cmap": ListedColormap([(0.0, 0.0, 0.0, 0.0), FLAG_COLOUR]), "vmin": 0, "vmax": 1},
        # By label, not by order on the slice: one organ keeps its colour in every panel.
        "organ_colours": {label: CONTOUR_COLOURS[(label - 1) % len(CONTOUR_COLOURS)] for label in present},
        "threshold_hu": sigma_threshold_hu,
        "marked_voxel": region.centre if region is not None else None,
    }

    rows = [(place, voxel, view) for place, voxel in places for view in VIEWS]
    heights = []
    for _, _, view in rows:
        _, width_mm, height_mm, _ = slice_extent(view, shape, spacing)
        heights.append(max(1.5, min(6.0, PANEL_INCHES * height_mm / max(width_mm, 1e-6))))
    blocks = [(_reason_lines(summary), {"fontsize": 11}),
              (_note_lines(notes[0]), {"fontsize": 11, "fontweight": "bold", "color": "0.15"}),
              (_note_lines(notes[1]), {"fontsize": 10, "color": "0.3"})]
    header_in = max(_TITLE_IN + sum(_LINE_IN * len(lines) + 0.05 for lines, _ in blocks) + 0.1, 0.45 + 0.2 * len(present))
    grid_in = sum(heights) + _ROW_GAP_IN * len(rows) + _BOTTOM_IN
    width_in, height_in = _grid_width_in(), header_in + grid_in
    fig = Figure(figsize=(width_in, height_in))
    names = names_by_label(label_names)
    handles = [Line2D([], [], color=colour, linewidth=2, label=names.get(label, f"label {label}"))
               for label, colour in style["organ_colours"].items()]
    _draw_header(fig, width_in, height_in, title, str(summary.get("verdict", "unknown")), blocks, handles)

    grid = _grid_axes(fig, width_in, height_in, header_in, heights)
    column_titles = ("MR, organ outlines", f"sCT [{hu_window[0]:.0f}, {hu_window[1]:.0f}] HU",
                     f"{sigma_label}, 0–{sigma_max:.0f} HU", "flagged voxels over MR" + ("" if region is not None else ": none"))
    for row, (place, voxel, view) in enumerate(rows):
        axes, bars = grid[row]
        _draw_row(fig, axes, bars, volumes, view, voxel, spacing, style)
        axis = VIEW_GEOMETRY[view][0]
        axes[0].set_ylabel(f"{place}\n{view} slice {voxel[axis]} of {shape[axis]} "
                                f"({voxel[axis] * float(spacing[axis]):.0f} mm)", fontsize=9)
        if row == 0 or rows[row - 1][0] != place:  # column titles atop each group of three views
            for ax, column_title in zip(axes, column_titles):
                ax.set_title(column_title, fontsize=10)
    return ReviewFigure(render_png(fig, _DPI), region, notes)


def write_review_figure(
    out_dir: Path,
    *,
    mr: Any,
    sct_hu: Any,
    sigma_total_hu: Any,
    labels: Any,
    flagged: Any,
    body: Any,
    spacing: Sequence[float],
    summary: Mapping[str, Any],
    label_names: Mapping[Any, Any] | Sequence[str] | None = None,
    title: str | None = None,
    sigma_threshold_hu: float | None = None,
    hu_window: tuple[float, float] = DEFAULT_HU_WINDOW,
    sigma_label: str = "σ_total",
) -> tuple[Path, Path]:
    """Write ``review.png`` and the self-contained ``review.html`` of one case into ``out_dir``.

    Rows: the body centre and, when any voxel is flagged, the worst-flagged region
    (:func:`radmtl.evaluation.flagged_region.worst_flagged_region`, marked + on the flagged panels), each
    as axial, coronal and sagittal slices. Columns: MR with organ outlines; sCT in a fixed HU window;
    σ_total from 0 HU to the 99th percentile in the body (or 1.25 × the threshold where higher; the
    threshold is a cyan line on its colour bar); flagged voxels in translucent red over the MR. The
    verdict (ok green, review orange) and its reasons head the figure; the figure states the scales.

    Args:
        out_dir: the case's ``review/`` folder (created if missing).
        mr: (X, Y, Z) MR intensities, RAS+ (x towards the patient's right; :mod:`radmtl.evaluation.display`).
        sct_hu: (X, Y, Z) synthetic CT in HU.
        sigma_total_hu: (X, Y, Z) σ_total in HU.
        labels: (X, Y, Z) integer organ labels, or None.
        flagged: (X, Y, Z) bool, voxels where the sCT is not to be trusted.
        body: (X, Y, Z) bool body mask, or None (the whole volume).
        spacing: voxel size in mm along (X, Y, Z) of the arrays as given.
        summary: the content of ``review.json`` (``verdict``, ``reasons``, ``organs`` …).
        label_names: ``{name: label}`` as in the checkpoint, ``{label: name}`` or a list.
        title: the case name on the figure; default ``summary["case"]``.
        sigma_threshold_hu: the fitted σ_total flagging threshold, for the colour bar and the notes.
        hu_window: the sCT display window in HU.
        sigma_label: what the σ column shows (the review flags on σ_total without σ_grid on a finer grid).

    Returns:
        ``(png_path, html_path)``, both written atomically.
    """
    out_dir = Path(out_dir)
    title = str(title if title is not None else summary.get("case", "case"))
    figure = render_review_figure(
        mr=mr, sct_hu=sct_hu, sigma_total_hu=sigma_total_hu, labels=labels, flagged=flagged, body=body,
        spacing=spacing, summary=summary, title=title, label_names=label_names,
        sigma_threshold_hu=sigma_threshold_hu, hu_window=hu_window, sigma_label=sigma_label)
    out_dir.mkdir(parents=True, exist_ok=True)
    png_path, html_path = out_dir / "review.png", out_dir / "review.html"
    with atomic_path(png_path) as tmp:
        tmp.write_bytes(figure.png)
    with atomic_path(html_path) as tmp:
        tmp.write_text(review_html(summary, figure.png, title, figure.notes), encoding="utf-8")
    logger.debug("review figure of %s written to %s (worst-flagged region: %s)", title, out_dir, figure.region)
    return png_path, html_path
