#!/usr/bin/env python
"""The grid gap: what a perfect network-grid sCT scores on a finer input grid, plainly interpolated and
with radmtl infer's body outline.

A network that predicts on a coarse grid (configs/quick.yaml: 7 × 7 × 6 mm) cannot hold a 4 mm cortical
shell, a 2 mm bowel wall or the skin's exact position; on the user's native grid its sCT is off there
however well it learned. This measures that floor with no network at all: each phantom case is made
on the network grid (each voxel the mean over its volume: the best a network-grid prediction can be)
and on a native input grid, the first is mapped onto the second the way ``radmtl infer`` maps its
sCT (``radmtl.inference.case_maps``), and the body MAE is printed against the native CT, noise-free and
noisy, with a breakdown by tissue.

    python scripts/grid_gap.py                                  # 3 design-seed cases, 7×7×6 → 2×2×3 mm
    python scripts/grid_gap.py --network-spacing 4 4 4 --cases 2
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

NATIVE_SHAPE, NATIVE_SPACING = (192, 144, 64), (2.0, 2.0, 3.0)
TISSUE_GROUPS = {
    "skin ≤ 7 mm": None,  # body voxels within 7 mm of the outline, whatever their tissue
    "bone": ("cortical_bone", "trabecular_bone"),
    "gas": ("rectal_gas", "bowel_gas", "bowel_wall"),
    "soft tissue": ("fat", "pelvic_fat", "muscle", "urine", "bladder_wall", "prostate", "rectal_wall",
                    "rectal_content"),
}


def parse_args(argv):
    from radmtl.data.phantom import DESIGN_SEED

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=3)
    p.add_argument("--seed", type=int, default=DESIGN_SEED, help=f"dataset seed (default {DESIGN_SEED}, design)")
    p.add_argument("--network-spacing", type=float, nargs=3, default=(7.0, 7.0, 6.0))
    p.add_argument("--native-spacing", type=float, nargs=3, default=NATIVE_SPACING)
    return p.parse_args(argv)


def case_gap(seed: int, network_spacing, native_spacing) -> dict[str, float]:
    """Body MAE (HU) on the native grid of the perfect network-grid sCT, plain and with the outline."""
    from scipy import ndimage

    from radmtl.data.io import Volume
    from radmtl.data.phantom import DEFAULT_FOV_MM, generate_case
    from radmtl.data.phantom import anatomy as anat
    from radmtl.inference.case_maps import body_outline, map_to_input_grid

    native_shape = tuple(int(round(f / s)) for f, s in zip(DEFAULT_FOV_MM, native_spacing))
    net_shape = tuple(int(np.ceil(f / s)) for f, s in zip(DEFAULT_FOV_MM, network_spacing))
    native = generate_case(seed, native_shape, tuple(native_spacing))
    net = generate_case(seed, net_shape, tuple(network_spacing))
    volume = Volume(native.mr, native.affine)
    sct_net = (net.ct_clean_hu / 1000.0)[None, None]
    outline = body_outline(sct_net, net.affine, volume, 1000.0)
    body = native.mask > 0
    depth = ndimage.distance_transform_edt(body, sampling=native_spacing)
    names = {name: code for code, name in anat.TISSUE_NAMES.items()}
    row = {}
    for how, used in (("plain", None), ("outline", outline)):
        sct = map_to_input_grid("sct", sct_net, net.affine, volume, 1000.0, used)
        error = np.abs(sct - native.ct_clean_hu)
        row[f"{how}_clean"] = float(error[body].mean())
        row[f"{how}_noisy"] = float(np.abs(sct - native.ct_hu)[body].mean())
        for group, tissues in TISSUE_GROUPS.items():
            where = body & (depth <= 7.0) if tissues is None else body & np.isin(
                native.tissue, [names[t] for t in tissues])
            row[f"{how}_{group}"] = float(error[where].mean()) if where.any() else float("nan")
            row[f"share_{group}"] = float(where.sum() / body.sum())
    row["noise_floor"] = float(np.abs(native.ct_hu - native.ct_clean_hu)[body].mean())
    return row


def main(argv=None) -> int:
    from radmtl.data.phantom import case_seed

    args = parse_args(argv)
    print(f"grid gap: {args.cases} case(s) of dataset seed {args.seed}; network grid "
          f"{' × '.join(f'{s:g}' for s in args.network_spacing)} mm → native "
          f"{' × '.join(f'{s:g}' for s in args.native_spacing)} mm; body MAE (HU) of a perfect network-grid sCT",
          flush=True)
    rows = [case_gap(case_seed(args.seed, i), args.network_spacing, args.native_spacing) for i in range(args.cases)]
    groups = list(TISSUE_GROUPS)
    print("| case | plain (noise-free CT) | outline (noise-free CT) | outline (noisy CT) | noise floor | "
          + " | ".join(f"{g} plain → outline (share)" for g in groups) + " |")
    print("|" + "---|" * (5 + len(groups)))
    for i, r in enumerate(rows):
        print(f"| case_{i + 1:03d} | {r['plain_clean']:.1f} | {r['outline_clean']:.1f} | {r['outline_noisy']:.1f} | "
              f"{r['noise_floor']:.1f} | " + " | ".join(
                  f"{r['plain_' + g]:.0f} → {r['outline_' + g]:.0f} ({100 * r['share_' + g]:.1f} %)" for g in groups)
              + " |")
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    print(f"| mean | {mean['plain_clean']:.1f} | {mean['outline_clean']:.1f} | {mean['outline_noisy']:.1f} | "
          f"{mean['noise_floor']:.1f} | " + " | ".join(
              f"{mean['plain_' + g]:.0f} → {mean['outline_' + g]:.0f}" for g in groups) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
