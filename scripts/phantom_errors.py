#!/usr/bin/env python
"""Where the sCT error concentrates on phantom cases, and whether σ_total is high there.

The phantom knows what no reference CT says: which tissue every voxel holds on the CT and on the MR.
This regenerates each case of a phantom dataset (its seed, grid and storage orientation from
``dataset.json``), splits the body into regions and prints, per region, its share of the body, the
MAE, its share of the total absolute error, the mean σ_total and the coverage of ±1.96 σ_total:

- gas: rectal and bowel gas and the bowel wall around it (dark on MR like bone);
- bone: cortical and trabecular bone;
- misregistered: soft-tissue voxels where the CT shows another tissue than the MR (the MR→CT
  displacement moved an edge across them);
- skin: the rest within 7 mm of the body outline;
- soft tissue: everything else in the body.

    python scripts/phantom_errors.py --pred demo_out/pred --ref demo_out/heldout
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REGIONS = ("gas", "bone", "misregistered", "skin", "soft tissue")


def regions(case) -> dict[str, np.ndarray]:
    """Disjoint body regions of a :class:`radmtl.data.phantom.PhantomCase` (first match wins)."""
    from scipy import ndimage

    from radmtl.data.phantom import anatomy as anat

    body = case.mask > 0
    spacing = np.linalg.norm(case.affine[:3, :3], axis=0)
    gas = np.isin(case.tissue, (anat.RECTAL_GAS, anat.BOWEL_GAS, anat.BOWEL_WALL)) | np.isin(
        case.mr_tissue, (anat.RECTAL_GAS, anat.BOWEL_GAS))
    bone = np.isin(case.tissue, (anat.CORTICAL, anat.TRABECULAR))
    moved = case.tissue != case.mr_tissue
    skin = ndimage.distance_transform_edt(body, sampling=spacing) <= 7.0
    out, taken = {}, ~body
    for name, where in zip(REGIONS, (gas, bone, moved, skin, np.ones_like(body))):
        out[name] = where & ~taken
        taken = taken | where
    return out


def case_table(case, sct: np.ndarray, sigma: np.ndarray) -> dict[str, dict[str, float]]:
    error = np.abs(sct - case.ct_hu)
    body = case.mask > 0
    total = float(error[body].sum())
    rows = {}
    for name, where in regions(case).items():
        n = int(where.sum())
        if not n:
            continue
        rows[name] = {"voxels": n, "share_body": n / float(body.sum()), "mae_hu": float(error[where].mean()),
                      "share_error": float(error[where].sum()) / total, "sigma_hu": float(sigma[where].mean()),
                      "coverage_95": float(np.mean(error[where] <= 1.96 * sigma[where]))}
    return rows


def main(argv=None) -> int:
    import nibabel as nib

    from radmtl.data.phantom import generate_case
    from radmtl.data.phantom.realism import Realism

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pred", type=Path, required=True, help="radmtl infer's --output folder")
    p.add_argument("--ref", type=Path, required=True, help="the phantom dataset it ran on (with dataset.json)")
    args = p.parse_args(argv)
    spec = json.loads((args.ref / "dataset.json").read_text())
    realism = Realism(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec["realism"].items()})
    pooled: dict[str, list[dict[str, float]]] = {name: [] for name in REGIONS}
    # The cases in the order they were written (case_seeds, case_orientations), whichever split holds them.
    entries = [entry for split in ("training", "validation", "test") for entry in spec.get(split, [])]
    for index, entry in enumerate(entries):
        case_id = entry["case"]
        case = generate_case(spec["case_seeds"][index], tuple(spec["shape"]), tuple(spec["spacing_mm"]), realism,
                             spec.get("case_orientations", ["ras"] * len(entries))[index])
        sct = nib.load(args.pred / case_id / "sct.nii.gz").get_fdata(dtype=np.float32)
        sigma_file = args.pred / case_id / "sct_sigma_total.nii.gz"
        sigma = nib.load(sigma_file if sigma_file.exists() else args.pred / case_id / "sct_sigma_aleatoric.nii.gz"
                         ).get_fdata(dtype=np.float32)
        for name, row in case_table(case, sct, sigma).items():
            pooled[name].append(row)
    print(f"sCT error by region over {len(entries)} case(s) of {args.ref} (mean over cases)")
    print("| region | share of body | MAE (HU) | share of the absolute error | mean σ_total (HU) | coverage_95 |")
    print("|---|---|---|---|---|---|")
    for name in REGIONS:
        rows = pooled[name]
        if not rows:
            continue
        mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
        print(f"| {name} | {100 * mean['share_body']:.1f} % | {mean['mae_hu']:.0f} | {100 * mean['share_error']:.0f} % | "
              f"{mean['sigma_hu']:.0f} | {mean['coverage_95']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
