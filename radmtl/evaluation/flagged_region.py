"""Where a case's flagged voxels concentrate: the region the review figure slices through.

The worst-flagged region is the largest 26-connected component of flagged voxels (voxels whose
σ_total is above the fitted threshold). A contiguous region of untrustworthy density is what shifts
a dose calculation along a beam path, whereas scattered single voxels average out; size, not peak
σ, therefore ranks the regions, and summed σ_total only breaks ties. Full (26-) connectivity keeps a
thin oblique region, such as a rim along a bone edge, in one piece. The slices go through the
component's voxel nearest to its centroid, not the centroid itself, which for a curved region (a
rim around the bladder) can lie outside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FlaggedRegion:
    """The worst-flagged region of a case.

    Attributes:
        centre: (x, y, z) voxel index, the region's voxel nearest to its centroid.
        n_voxels: voxels in the region.
        n_regions: how many separate (26-connected) flagged regions the case has.
    """

    centre: tuple[int, int, int]
    n_voxels: int
    n_regions: int


def worst_flagged_region(
    flagged: np.ndarray,
    sigma_total_hu: np.ndarray | None = None,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
) -> FlaggedRegion | None:
    """The largest 26-connected region of ``flagged`` voxels, or None when nothing is flagged.

    Args:
        flagged: (X, Y, Z) bool, voxels where the sCT is not to be trusted.
        sigma_total_hu: (X, Y, Z) σ_total in HU; breaks ties between equally large regions (the one
            with the larger summed σ_total wins). Without it, or on a full tie, the region met first
            in x, y, z order wins.
        spacing: voxel size in mm along (X, Y, Z): "nearest to the centroid" is measured in mm.

    Returns:
        The region (:class:`FlaggedRegion`); its ``centre`` is always a flagged voxel, and of voxels
        equally near the centroid the first in x, y, z order.
    """
    from scipy import ndimage

    flagged = np.asarray(flagged, dtype=bool)
    if flagged.ndim != 3:
        raise ValueError(f"flagged must be a 3D (X, Y, Z) array, got shape {flagged.shape}")
    components, n_regions = ndimage.label(flagged, structure=np.ones((3, 3, 3), dtype=bool))
    if n_regions == 0:
        return None
    sizes = np.bincount(components.ravel(), minlength=n_regions + 1)[1:]
    largest = np.flatnonzero(sizes == sizes.max()) + 1
    if sigma_total_hu is not None and largest.size > 1:
        sums = ndimage.sum_labels(np.asarray(sigma_total_hu, dtype=np.float64), components, largest)
        largest = largest[[int(np.argmax(sums))]]
    voxels = np.argwhere(components == largest[0])
    offsets_mm = (voxels - voxels.mean(axis=0)) * np.asarray(spacing, dtype=np.float64)
    nearest = voxels[int(np.argmin((offsets_mm ** 2).sum(axis=1)))]
    return FlaggedRegion(tuple(int(v) for v in nearest), int(sizes.max()), int(n_regions))
