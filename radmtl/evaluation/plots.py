"""Matplotlib figures for evaluation: calibration, error-vs-σ and risk–coverage curves, saved as PNG.

Matplotlib is imported inside the functions so that importing radmtl (and ``radmtl --help``) stays
fast, and figures are built on ``matplotlib.figure.Figure`` with the Agg canvas instead of pyplot,
so no global backend or figure state is touched (safe on headless machines and in threads).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


def _save_png_atomically(fig, path: str | os.PathLike) -> Path:
    """Write ``fig`` to a temporary file next to ``path`` then rename it into place.

    A reader (MLflow, a browser) never sees a half-written PNG, and a crash leaves no partial file.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"path must end in .png, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png.tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            fig.savefig(stream, format="png", dpi=120)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    logger.debug("wrote %s", path)
    return path


def calibration_plot(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    path: str | os.PathLike,
    title: str = "sCT uncertainty calibration",
) -> Path:
    """Observed vs expected coverage of central Gaussian intervals, one line per model or case.

    Args:
        curves: ``{name: (expected, observed)}`` as returned by
            :func:`radmtl.evaluation.calibration.calibration_curve`.
        path: output ``.png`` file; parent folders are created.
        title: figure title.

    Returns:
        The written path.
    """
    from matplotlib.figure import Figure

    if not curves:
        raise ValueError("curves must hold at least one (expected, observed) pair, got none")
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.5", linestyle="--", linewidth=1, label="perfect calibration")
    for name, (expected, observed) in curves.items():
        expected, observed = np.asarray(expected, float), np.asarray(observed, float)
        if expected.shape != observed.shape:
            raise ValueError(
                f"curve {name!r}: expected and observed must have one shape, "
                f"got {expected.shape} and {observed.shape}"
            )
        ax.plot(expected, observed, marker="o", markersize=3, label=name)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("expected coverage (nominal Gaussian interval)")
    ax.set_ylabel("observed coverage (fraction of body voxels)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    return _save_png_atomically(fig, path)


def error_vs_sigma_plot(
    abs_error: np.ndarray,
    sigma: np.ndarray,
    path: str | os.PathLike,
    label: str | None = None,
    n_bins: int = 20,
    title: str = "sCT error vs predicted σ",
) -> Path:
    """Binned mean |error| against predicted σ (both in HU), over a 2D histogram of all voxels.

    Bins hold equal numbers of voxels (σ quantiles) so sparse high-σ tails do not give noisy points.
    Two reference lines: identity, and ``√(2/π)·σ``, the mean |error| of a calibrated Gaussian — a
    calibrated model follows the second, not the first.

    Args:
        abs_error: |ct − sct| in HU, any shape (already restricted to the body by the caller).
        sigma: predicted σ in HU, same shape.
        path: output ``.png`` file.
        label: legend name of the binned curve (e.g. the model or case).
        n_bins: number of σ bins.
        title: figure title.

    Returns:
        The written path.
    """
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    abs_error = np.asarray(abs_error, float).ravel()
    sigma = np.asarray(sigma, float).ravel()
    if abs_error.shape != sigma.shape:
        raise ValueError(f"abs_error and sigma must have one size, got {abs_error.size} and {sigma.size}")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    finite = np.isfinite(abs_error) & np.isfinite(sigma)
    abs_error, sigma = abs_error[finite], sigma[finite]
    if abs_error.size == 0:
        raise ValueError("abs_error and sigma hold no finite voxel pairs")

    order = np.argsort(sigma)
    bins = [chunk for chunk in np.array_split(order, min(n_bins, sigma.size)) if chunk.size]
    sigma_binned = np.array([sigma[chunk].mean() for chunk in bins])
    error_binned = np.array([abs_error[chunk].mean() for chunk in bins])

    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    upper = float(max(np.percentile(sigma, 99.5), np.percentile(abs_error, 99.5), 1e-6))
    ax.hist2d(
        sigma, abs_error, bins=60, range=[[0, upper], [0, upper]], cmap="Greys", norm=LogNorm(), cmin=1
    )
    line = np.array([0.0, upper])
    ax.plot(line, line, color="0.4", linestyle="--", linewidth=1, label="identity")
    ax.plot(line, np.sqrt(2 / np.pi) * line, color="tab:green", linestyle=":", label="calibrated: √(2/π)·σ")
    ax.plot(sigma_binned, error_binned, marker="o", markersize=3, label=label or "binned mean |error|")
    ax.set_xlim(0, upper)
    ax.set_ylim(0, upper)
    ax.set_xlabel("predicted σ (HU)")
    ax.set_ylabel("|CT − sCT| (HU)")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    return _save_png_atomically(fig, path)


def risk_coverage_plot(
    coverage: np.ndarray,
    curves: Mapping[str, tuple[np.ndarray, int]],
    path: str | os.PathLike,
    oracle: str = "oracle",
    title: str = "sCT risk–coverage (mean of per-case curves)",
) -> Path:
    """MAE of the voxels kept against the fraction kept, the most uncertain discarded first.

    A dotted line at the MAE of all voxels is what an uninformative σ gives; the ``oracle`` curve
    (discarding by the true error) is the best any σ could do, drawn dashed. A useful σ falls between.

    Args:
        coverage: fractions of body voxels kept (N,).
        curves: ``{map name: (MAE per coverage (N,), number of cases averaged)}`` as returned by
            :func:`radmtl.evaluation.detection.mean_risk_coverage`.
        path: output ``.png`` file.
        oracle: the name in ``curves`` of the discard-by-true-error curve.
        title: figure title.

    Returns:
        The written path.
    """
    from matplotlib.figure import Figure

    coverage = np.asarray(coverage, float)
    if not curves:
        raise ValueError("curves must hold at least one (MAE, n cases) pair, got none")
    fig = Figure(figsize=(5.5, 4.5))
    ax = fig.add_subplot()
    for name, (mae, n_cases) in curves.items():
        mae = np.asarray(mae, float)
        if mae.shape != coverage.shape:
            raise ValueError(f"curve {name!r}: MAE must have the shape of coverage {coverage.shape}, got {mae.shape}")
        style = {"linestyle": "--", "color": "0.3"} if name == oracle else {"marker": "o", "markersize": 3}
        ax.plot(coverage, mae, label=f"{name} (n = {n_cases})", **style)
    everything = [np.asarray(mae, float)[np.argmax(coverage)] for name, (mae, _) in curves.items() if name != oracle]
    if everything:
        ax.axhline(everything[0], color="0.5", linestyle=":", linewidth=1, label="uninformative σ")
    ax.set_xlim(coverage.max() + 0.02, coverage.min() - 0.02)  # from all voxels kept to fewest
    ax.set_ylim(bottom=0)
    ax.set_xlabel("fraction of body voxels kept (lowest σ first)")
    ax.set_ylabel("MAE of the kept voxels (HU)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")  # the curves may fill any corner
    fig.tight_layout()
    return _save_png_atomically(fig, path)
