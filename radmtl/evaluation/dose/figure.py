"""The per-case dose figure of ``radmtl evaluate --dose``: CT dose on the CT, sCT dose on the sCT, their
difference and the DVHs (CT solid, sCT dashed), on the axial slice through the target's centre. With the
doses of the MC-dropout sCT samples (:mod:`.sample_dose`) a fifth panel shows their SD map, and each
structure's DVH gets the band between the lowest and highest sample DVH.

Drawn in radmtl's display convention (:mod:`radmtl.evaluation.display`: radiological, orientation letters,
physical aspect) on a ``matplotlib.figure.Figure`` with the Agg canvas. The arrays arrive in their file's voxel
order (an LPS-stored case, an oblique one planned on its LPS-ordered axial grid) and are put into RAS order by
their affine first (:func:`~radmtl.evaluation.display.as_ras`), so the patient's right is on the image's left
whatever the storage.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from radmtl.evaluation.display import (CONTOUR_COLOURS, DEFAULT_HU_WINDOW, VIEW_GEOMETRY, as_ras, display_slice,
                                       draw_orientation_letters, draw_outline, save_png, slice_extent)

DOSE_WASH_PERCENT = 10.0  # dose below this % of the prescription is not coloured


def dose_figure(ct_hu: np.ndarray, sct_hu: np.ndarray, ct_dose: np.ndarray, sct_dose: np.ndarray,
                structures: Mapping[str, np.ndarray], target: str, affine: np.ndarray, prescription_gy: float,
                title: str, path: Path, sample_doses: np.ndarray | None = None,
                sample_sd: np.ndarray | None = None) -> Path:
    """Write the figure to ``path`` (PNG, atomically) and return it.

    Args:
        ct_hu … structures: arrays in the voxel order of ``affine`` (voxel → RAS mm).
        sample_doses: (K, X, Y, Z) the plan's doses on K sCT samples, or None.
        sample_sd: their :func:`~.sample_dose.dose_sd` when the caller has it already; None computes it.
    """
    from matplotlib.figure import Figure

    from radmtl.evaluation.dose.sample_dose import dose_sd

    def ras(array: np.ndarray) -> np.ndarray:
        return as_ras(np.asarray(array), affine)[0]

    spacing = as_ras(np.asarray(ct_hu), affine)[1]
    # The images in RAS order; the DVHs need none (a DVH is a function of the voxel set), so the sample doses,
    # used only for their DVH bands and SD map, stay as they are.
    if sample_doses is not None and sample_sd is None:
        sample_sd = dose_sd(sample_doses)
    sd = ras(sample_sd) if sample_sd is not None else None
    ct_hu, sct_hu, ct_dose, sct_dose = ras(ct_hu), ras(sct_hu), ras(ct_dose), ras(sct_dose)
    masks = {name: ras(mask) for name, mask in structures.items()}
    shape = np.shape(ct_hu)
    index = int(round(float(np.argwhere(masks[target])[:, 2].mean())))  # axial: z through the target
    extent = slice_extent("axial", shape, spacing)
    letters = VIEW_GEOMETRY["axial"][5]
    colours = {name: CONTOUR_COLOURS[i % len(CONTOUR_COLOURS)] for i, name in enumerate(structures)}
    panels = 4 if sample_doses is None else 5
    fig = Figure(figsize=(4.0 * panels, 4.2))
    axes = list(fig.subplots(1, panels))
    dvh_axis = axes.pop()  # the DVH panel, last: after the three images (and the SD map)
    vmax = max(float(np.max(ct_dose)), float(np.max(sct_dose)), 1e-6)
    for ax, image, dose, name in ((axes[0], ct_hu, ct_dose, "CT dose on the CT"),
                                  (axes[1], sct_hu, sct_dose, "sCT dose on the sCT")):
        ax.imshow(display_slice(image, "axial", index), cmap="gray", vmin=DEFAULT_HU_WINDOW[0],
                  vmax=DEFAULT_HU_WINDOW[1], extent=extent, interpolation="nearest")
        wash = np.ma.masked_less(display_slice(dose, "axial", index), DOSE_WASH_PERCENT / 100 * prescription_gy)
        shown = ax.imshow(wash, cmap="jet", alpha=0.45, vmin=0.0, vmax=vmax, extent=extent, interpolation="nearest")
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02, label="Gy")
        ax.set_title(name, fontsize=10)
    difference = np.asarray(sct_dose, np.float64) - np.asarray(ct_dose, np.float64)
    limit = max(float(np.abs(difference).max()), 0.01 * prescription_gy)
    shown = axes[2].imshow(display_slice(difference, "axial", index), cmap="RdBu_r", vmin=-limit, vmax=limit,
                           extent=extent, interpolation="nearest")
    fig.colorbar(shown, ax=axes[2], fraction=0.046, pad=0.02, label="Gy")
    axes[2].set_title("sCT dose − CT dose", fontsize=10)
    if sd is not None:
        shown = axes[3].imshow(display_slice(sd, "axial", index), cmap="magma", vmin=0.0,
                               vmax=max(float(sd.max()), 1e-3 * prescription_gy), extent=extent,
                               interpolation="nearest")
        fig.colorbar(shown, ax=axes[3], fraction=0.046, pad=0.02, label="Gy")
        axes[3].set_title(f"dose SD over {len(sample_doses)} sCT samples", fontsize=10)
    for ax in axes:
        for name, mask in masks.items():
            draw_outline(ax, display_slice(mask, "axial", index), colours[name], extent)
        draw_orientation_letters(ax, letters)
        ax.set_xticks([])
        ax.set_yticks([])
    from radmtl.evaluation.dose.dvh import cumulative_dvh

    bins = np.linspace(0.0, 1.1 * vmax, 221)
    for name, mask in masks.items():
        dvh_axis.plot(bins, 100 * cumulative_dvh(ct_dose, mask, bins), color=colours[name], label=name)
        dvh_axis.plot(bins, 100 * cumulative_dvh(sct_dose, mask, bins), color=colours[name], linestyle="--")
        if sample_doses is not None:
            from radmtl.evaluation.dose.sample_dose import dvh_band

            low, high = dvh_band(sample_doses, structures[name], bins)
            dvh_axis.fill_between(bins, 100 * low, 100 * high, color=colours[name], alpha=0.25, linewidth=0)
    dvh_axis.set_xlabel("dose (Gy)")
    dvh_axis.set_ylabel("volume (%)")
    dvh_axis.set_title("DVH: CT solid, sCT dashed" + (", sample band" if sample_doses is not None else ""),
                       fontsize=10)
    dvh_axis.set_ylim(0, 102)
    dvh_axis.grid(alpha=0.3)
    dvh_axis.legend(fontsize=8, loc="lower left")
    fig.suptitle(f"{title} (axial slice {index})", fontsize=11)
    fig.tight_layout()
    return save_png(fig, path)
