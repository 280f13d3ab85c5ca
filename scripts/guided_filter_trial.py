#!/usr/bin/env python
"""Would sharpening the sCT with the native MR close the grid gap? A guided filter (He, Sun and Tang,
ECCV 2010), tried on infer's output, by body MAE against the native CT.

The network predicts on its own coarse grid (configs/quick.yaml: 7 × 7 × 6 mm); on a 2 × 2 × 3 mm input
the sCT is interpolated and misses what the grid cannot hold (scripts/grid_gap.py). The input MR shows
those edges at its own resolution, so a local linear model sCT ≈ a·MR + b fitted in a window and applied
to the native MR could restore some of them. On 6 design phantoms (seed 1000, the demo's model) it made
the MAE worse at every radius and regularisation tried: bone and gas are both dark on this MR, and the
2 mm MR→CT misregistration moves the MR's edges off the CT's. Hence not in radmtl infer.

    radmtl phantom D/heldout --cases 6 --seed 1000 --shape 192 144 64 --spacing 2 2 3 --orientations ras lps oblique
    radmtl infer --model demo_out/run/checkpoint_best.pt --input D/heldout --output D/pred --no-review
    python scripts/guided_filter_trial.py D/heldout D/pred
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

RADII = ((3, 3, 2), (5, 5, 3), (7, 7, 4))  # half-windows in voxels: about 1, 1.5 and 2 network voxels
EPSILONS = (1e-3, 1e-2, 1e-1)  # in (MR / its body's 99th percentile)²


def guided_filter(guide: np.ndarray, image: np.ndarray, radius: tuple[int, int, int], eps: float) -> np.ndarray:
    """``image`` filtered by the local linear model of ``guide`` in boxes of half-size ``radius``."""
    from scipy import ndimage

    def box(x: np.ndarray) -> np.ndarray:
        return ndimage.uniform_filter(x, size=[2 * r + 1 for r in radius], mode="nearest")

    mean_g, mean_i = box(guide), box(image)
    a = (box(guide * image) - mean_g * mean_i) / (box(guide * guide) - mean_g * mean_g + eps)
    b = mean_i - a * mean_g
    return box(a) * guide + box(b)


def main(argv: list[str] | None = None) -> int:
    import nibabel as nib

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ref", type=Path, help="phantom dataset folder (mr, ct, mask per case)")
    p.add_argument("pred", type=Path, help="radmtl infer output folder for it")
    args = p.parse_args(argv)

    def load(path: Path) -> np.ndarray:
        return np.asarray(nib.load(path).dataobj, np.float32)

    settings = [None] + [(r, e) for r in RADII for e in EPSILONS]
    mae: dict[object, list[float]] = {s: [] for s in settings}
    for case in sorted(args.ref.glob("**/mr.nii.gz")):
        folder = case.parent
        ct, body_ref = load(folder / "ct.nii.gz"), load(folder / "mask.nii.gz") > 0
        sct = load(args.pred / folder.relative_to(args.ref) / "sct.nii.gz")
        mr = load(case)
        outline = sct > -999.0  # infer's body outline: air outside
        guide = mr / np.percentile(mr[outline], 99)
        for s in settings:
            out = sct if s is None else np.where(outline, guided_filter(guide, sct, *s), -1000.0)
            mae[s].append(float(np.abs(out - ct)[body_ref].mean()))
    print(f"body MAE (HU) over {len(mae[None])} case(s), mean [per case]")
    for s, values in mae.items():
        name = "infer's sCT" if s is None else f"guided filter radius {s[0]} eps {s[1]:g}"
        print(f"{name:42s} {np.mean(values):7.2f}  {np.round(values, 1).tolist()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
