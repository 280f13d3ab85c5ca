#!/usr/bin/env python
"""How hard the phantom is: gas, MR ambiguity, tissue texture, MR/CT misregistration and the noise floor.

Generates N phantom cases (radmtl.data.phantom, default realism) and prints per case and over cases:

- gas % of body: rectal and bowel gas voxels of the CT over body voxels (target 0.2–1 %);
- bone-vs-gas MR AUC: P(MR of a cortical-bone voxel > MR of a gas voxel), each class taken where the
  MR shows it; 0.5 means the MR cannot tell them apart (target ≤ 0.65);
- within-tissue HU SD of fat, muscle and trabecular bone in the noise-free CT, inside each tissue eroded
  by one voxel so partial volume at its border does not count (targets: fat and muscle ≥ 10 HU, all of
  it beyond the noise, which the noise-free CT does not hold);
- RMS and max length of the MR→CT displacement over the body (target RMS 1–3 mm);
- noise-only MAE floor: mean |CT − noise-free CT| over the body, the MAE of a perfect sCT.

    python scripts/phantom_report.py                       # 6 cases of the design seed, default grid
    python scripts/phantom_report.py --cases 12 --seed 0 --shape 192 144 64 --spacing 2 2 3

Exit status 1 when a target is missed over the cases (the mean of each metric is judged).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from scipy import ndimage, stats

GAS_TISSUES = ("rectal_gas", "bowel_gas")
TEXTURE_TISSUES = ("fat", "muscle", "trabecular_bone")
# (key, column label, target text, pass test on the mean over cases; None: reported only)
TARGETS = [
    ("gas_percent", "gas % body", "0.2–1", lambda v: 0.2 <= v <= 1.0),
    ("bone_gas_auc", "bone/gas AUC", "≤ 0.65", lambda v: v <= 0.65),
    ("sd_fat", "fat SD HU", "≥ 10", lambda v: v >= 10.0),
    ("sd_muscle", "muscle SD HU", "≥ 10", lambda v: v >= 10.0),
    ("sd_trabecular_bone", "trab. SD HU", "", None),
    ("displacement_rms_mm", "disp RMS mm", "1–3", lambda v: 1.0 <= v <= 3.0),
    ("displacement_max_mm", "disp max mm", "", None),
    ("noise_mae_floor_hu", "noise MAE floor HU", "", None),
]


def case_metrics(case) -> dict[str, float]:
    """The report's numbers for one :class:`radmtl.data.phantom.PhantomCase`."""
    from radmtl.data.phantom import anatomy as anat

    code = {name: tissue for tissue, name in anat.TISSUE_NAMES.items()}
    body = case.mask > 0
    gas_codes = [code[name] for name in GAS_TISSUES]
    ct_gas = np.isin(case.tissue, gas_codes) & body
    mr_gas = np.isin(case.mr_tissue, gas_codes)
    mr_bone = case.mr_tissue == code["cortical_bone"]
    row = {"gas_percent": 100.0 * ct_gas.sum() / max(int(body.sum()), 1)}
    if mr_gas.any() and mr_bone.any():
        # Mann–Whitney U / (n1·n2) is the AUC of "bone brighter than gas".
        u = stats.mannwhitneyu(case.mr[mr_bone], case.mr[mr_gas]).statistic
        row["bone_gas_auc"] = float(u) / (int(mr_bone.sum()) * int(mr_gas.sum()))
    else:
        row["bone_gas_auc"] = float("nan")
    for name in TEXTURE_TISSUES:
        key = "sd_" + ("fat" if name == "fat" else name)
        inside = ndimage.binary_erosion(case.tissue == code[name])
        if name == "fat":  # subcutaneous and pelvic fat share one texture
            inside |= ndimage.binary_erosion(case.tissue == code["pelvic_fat"])
        row[key] = float(case.ct_clean_hu[inside].std()) if inside.any() else float("nan")
    displacement = case.displacement_mm[body]
    row["displacement_rms_mm"] = float(np.sqrt(np.mean(displacement.astype(np.float64) ** 2)))
    row["displacement_max_mm"] = float(displacement.max())
    row["noise_mae_floor_hu"] = float(np.abs(case.ct_hu - case.ct_clean_hu)[body].mean())
    return row


def table(rows: dict[str, dict[str, float]]) -> tuple[list[str], bool]:
    """Markdown table: a row per case, mean ± SD over cases, and each target's verdict on the mean."""
    header = "| case | " + " | ".join(label for _, label, _, _ in TARGETS) + " |"
    lines = [header, "|" + "---|" * (len(TARGETS) + 1)]
    for case_id, row in rows.items():
        lines.append(f"| {case_id} | " + " | ".join(f"{row[key]:.3f}" if key == "bone_gas_auc" else f"{row[key]:.2f}"
                                                   for key, _, _, _ in TARGETS) + " |")
    means, cells, verdicts, all_met = {}, [], [], True
    for key, _, target, test in TARGETS:
        values = np.array([row[key] for row in rows.values()], dtype=np.float64)
        means[key] = float(np.nanmean(values))
        sd = float(np.nanstd(values, ddof=1)) if np.isfinite(values).sum() > 1 else 0.0
        cells.append(f"{means[key]:.3f} ± {sd:.3f}" if key == "bone_gas_auc" else f"{means[key]:.2f} ± {sd:.2f}")
        if test is None:
            verdicts.append("–")
        else:
            met = bool(test(means[key]))
            all_met &= met
            verdicts.append(f"{target}: {'met' if met else 'MISSED'}")
    lines.append("| mean ± SD | " + " | ".join(cells) + " |")
    lines.append("| target | " + " | ".join(verdicts) + " |")
    return lines, all_met


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from radmtl.data.phantom import DESIGN_SEED

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=6, help="cases to generate (default 6)")
    p.add_argument("--seed", type=int, default=DESIGN_SEED,
                   help=f"dataset seed (default {DESIGN_SEED}, the design seed)")
    p.add_argument("--shape", type=int, nargs=3, default=None, help="grid (default: the phantom's, 96 96 64)")
    p.add_argument("--spacing", type=float, nargs=3, default=None, help="voxel size in mm (default: FOV / shape)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from radmtl.data.phantom import DEFAULT_SHAPE, case_seed, default_spacing, generate_case

    args = parse_args(argv)
    shape = tuple(args.shape or DEFAULT_SHAPE)
    spacing = tuple(args.spacing) if args.spacing else default_spacing(shape)
    print(f"phantom report: {args.cases} case(s) of dataset seed {args.seed}, grid {shape} at "
          f"{' × '.join(f'{s:g}' for s in spacing)} mm", flush=True)
    rows = {}
    for index in range(args.cases):
        case = generate_case(case_seed(args.seed, index), shape, spacing)
        rows[f"case_{index + 1:03d}"] = case_metrics(case)
    lines, all_met = table(rows)
    print("\n".join(lines))
    print("all targets met" if all_met else "a target was MISSED (see the last row)")
    return 0 if all_met else 1


if __name__ == "__main__":
    sys.exit(main())
