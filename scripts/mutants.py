"""Mutation check: deliberate bugs the test suite must catch (issue 14). Not part of CI.

Each mutant is one or more exact text replacements in the library. For each, ``radmtl/``,
``tests/``, ``scripts/`` and ``pyproject.toml`` are copied into a temporary folder, the copy is patched, and
``python -m pytest -x -q <tests>`` runs there with ``PYTHONPATH`` pointing at the copy, so the
patched copy is imported rather than the installed package (checked before any mutant runs, and
again by the ``sanity`` mutant, a blatant bug that must be caught).

A mutant is *caught* when pytest reports failing tests (exit status 1), *MISSED* when the tests
pass, *ERROR* for any other status (a collection error usually means the replacement broke the
syntax, which proves nothing about the tests). An original text that is not found exactly once
in the current library is *STALE*: edit the table when the library changes, so the check cannot
silently stop testing anything. The unmutated copy must pass the same tests first.

To add a mutant, append a row to ``MUTANTS``: a short name, the test files that should catch
it, and its replacements ``(file, original text, mutated text)``.

Usage: python scripts/mutants.py [--only NAME ...] [--list] [--keep]
Exit status: 0 when every mutant is caught; 1 otherwise (missed, stale, error or failing baseline).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Mutant:
    name: str
    tests: tuple[str, ...]
    edits: tuple[tuple[str, str, str], ...]  # (file relative to the repository, original, mutated)


PREDICT, INFER, RESAMPLE = "radmtl/inference/predict.py", "radmtl/inference/infer.py", "radmtl/inference/resample.py"
CASE_MAPS = "radmtl/inference/case_maps.py"
DICOM_COMMON, DICOM_CT = "radmtl/data/dicom/common.py", "radmtl/data/dicom/ct.py"
DICOM_RTSTRUCT, DICOM_GRID = "radmtl/data/dicom/rtstruct.py", "radmtl/inference/dicom_grid.py"
DICOM_OUT = "radmtl/inference/dicom_out.py"
DICOM_TESTS = ("tests/data/dicom/test_dicom_series.py", "tests/data/dicom/test_dicom_ct.py", "tests/inference/test_infer_dicom.py")
DICOM_GRID_TESTS = ("tests/inference/test_dicom_grid.py", "tests/inference/test_infer_dicom.py")
LOSSES, LIKELIHOODS, MODEL = "radmtl/nn/losses.py", "radmtl/nn/likelihoods.py", "radmtl/nn/model.py"
TRANSFORMS = "radmtl/data/transforms.py"
PHANTOM_TESTS = ("tests/data/phantom/test_realism.py",)
CONFIG = "radmtl/config/schema.py"
RECALIBRATION, STEP, SCHEDULE = ("radmtl/training/recalibration.py", "radmtl/training/step.py",
                                 "radmtl/training/schedule.py")

MUTANTS: list[Mutant] = [
    Mutant("sanity: the patched copy is imported (sCT mean + 1)", ("tests/inference/test_predict.py",), (
        (PREDICT, 'out["sct"] = stats["sct"]', 'out["sct"] = stats["sct"] + 1.0'),
    )),
    Mutant("epistemic variance as E[x²] (−E[x]² dropped)", ("tests/inference/test_predict.py",), (
        (PREDICT, "m2 = ((sct - mean) ** 2).sum(0)", "m2 = (sct ** 2).sum(0)"),
    )),
    Mutant("aleatoric σ from the mean σ, not the mean σ²", ("tests/inference/test_predict.py",), (
        (PREDICT, 'sigma2_from_log_var(samples["sct_log_var"].float(), likelihood).sum(0)',
         'sigma2_from_log_var(samples["sct_log_var"].float(), likelihood).sqrt().sum(0)'),
        (PREDICT, 'stats["var_aleatoric"] = sums.pop("var_aleatoric") / count',
         'stats["var_aleatoric"] = (sums.pop("var_aleatoric") / count).square()'),
    )),
    Mutant("mutual information = expected entropy", ("tests/inference/test_predict.py",), (
        (PREDICT, 'out["seg_mutual_info"] = (entropy - stats["seg_expected_entropy"]).clamp_min(0.0)',
         'out["seg_mutual_info"] = stats["seg_expected_entropy"]'),
    )),
    Mutant("window disagreement counted as epistemic (variance after blending)", ("tests/inference/test_predict.py",), (
        (PREDICT, 'stats["var_epistemic"] = sct_m2 / count if mc_samples > 1',
         'stats["var_epistemic"] = sct_m2 / count + sct_mean ** 2 if mc_samples > 1'),
        (PREDICT, 'var_epistemic = stats["var_epistemic"].clamp_min(0.0)',
         'var_epistemic = (stats["var_epistemic"] - stats["sct"] ** 2).clamp_min(0.0)'),
    )),
    Mutant("σ-scaling applied to σ_total as a whole", ("tests/inference/test_predict.py",), (
        (PREDICT, 'out["sigma_total"] = total.sqrt()',
         'out["sigma_total"] = (total - var_aleatoric + var_aleatoric / sigma_scale**2).sqrt() * sigma_scale'
         ' if var_aleatoric is not None else total.sqrt()'),
    )),
    Mutant("Laplace σ = b (√2 dropped)", ("tests/inference/test_predict.py", "tests/nn/test_losses.py"), (
        (LIKELIHOODS, "return 2.0 * torch.exp(2.0 * log_var)", "return torch.exp(2.0 * log_var)"),
    )),
    Mutant("σ maps written in scaled units (×ct_scale_hu dropped)", ("tests/inference/test_infer.py",), (
        (CASE_MAPS, "    if MAP_OUTPUTS[key][2]:\n        array *= ct_scale_hu",
         "    if MAP_OUTPUTS[key][2] and not as_variance:\n        array *= ct_scale_hu"),
    )),
    Mutant("checkpoint σ-scaling factor ignored", ("tests/inference/test_infer.py",), (
        (INFER, "sigma_scale = sigma_scale_of(loaded.payload) if options.sigma_scaling else 1.0",
         "sigma_scale = 1.0"),
    )),
    Mutant("segmentation CE averaged over the body mask", ("tests/nn/test_losses.py",), (
        (LOSSES, "raw = ce_voxel.mean() if dice is None else ce_voxel.mean() + dice",
         'raw = masked_mean(ce_voxel, batch["mask"]) if dice is None '
         'else masked_mean(ce_voxel, batch["mask"]) + dice'),
    )),
    Mutant("mixed supervision: stand-in targets trained on (task flags ignored)", ("tests/nn/test_losses.py",), (
        (LOSSES, 'flag = batch.get(f"has_{key}")', "flag = None"),
    )),
    Mutant("crops without labels centred on stand-in organs (none), not body voxels",
           ("tests/data/test_transforms.py",), (
        (TRANSFORMS, 'd["crop_fg_indices"], d["crop_bg_indices"] = (fg if fg.size else bg), bg',
         'd["crop_fg_indices"], d["crop_bg_indices"] = fg, bg'),
    )),
    Mutant("σ-scaling factor fitted as mean |r|/σ, not the RMS z", ("tests/training/test_recalibration.py",), (
        (RECALIBRATION, "return float(math.sqrt(np.mean(r2 / a2)))", "return float(np.mean(np.sqrt(r2 / a2)))"),
    )),
    Mutant("log-variances at the network's learning rate", ("tests/training/test_train_step.py",), (
        (LOSSES, '| ({"lr": float(log_var_lr)} if log_var_lr is not None else {})', "| {}"),
    )),
    Mutant("log-variances under the network's warm-up", ("tests/training/test_train_step.py",), (
        (SCHEDULE, 'constant if group.get("name") == "log_vars" else factor', "factor"),
    )),
    Mutant("per-task clip factor ignored", ("tests/training/test_train_step.py",), (
        (STEP, "clipped[task] = [g * factor.to(g.device) if factor is not None and g is not None else g "
               "for g in net_grads]", "clipped[task] = list(net_grads)"),
    )),
    Mutant("loss scale left in the per-task encoder norm", ("tests/training/test_train_step.py",), (
        (STEP, 'norms[f"grad_norm_encoder_{task}"] = (_norm(encoder) * inv_scale).detach()',
         'norms[f"grad_norm_encoder_{task}"] = _norm(encoder).detach()'),
    )),
    Mutant("default optimisation balances the encoder norms (the σ weighting cancelled)",
           ("tests/training/test_train_step.py",), (
        (CONFIG, 'grad_clip_mode: Literal["global", "per_task", "balanced"] = "global"',
         'grad_clip_mode: Literal["global", "per_task", "balanced"] = "balanced"'),
    )),
    Mutant("β-NLL factors not scaled to mean 1", ("tests/nn/test_losses.py",), (
        (LIKELIHOODS, "factor = factor / masked_mean(factor, mask).clamp_min(_MASK_SUM_FLOOR)", "factor = factor"),
    )),
    Mutant("laterality: the patient's left taken at positive RAS x", ("tests/data/test_laterality.py",), (
        ("radmtl/data/laterality.py", "LEFT_SIGN_RAS_X = -1.0", "LEFT_SIGN_RAS_X = 1.0"),
    )),
    Mutant("HD95 of a missed organ dropped (NaN)", ("tests/evaluation/test_metrics.py",), (
        ("radmtl/evaluation/metrics.py", "return hd95_penalty_mm(ref_labels.shape, spacing)", "return math.nan"),
    )),
    Mutant("MR normalised over the whole field of view, not the body", ("tests/data/test_transforms.py",), (
        (TRANSFORMS, "inside = values[body] if body.sum() >= 10 else values.ravel()", "inside = values.ravel()"),
        (TRANSFORMS, "inside = clipped[body] if body.sum() >= 10 else clipped.ravel()", "inside = clipped.ravel()"),
    )),
    Mutant("CT targets not clipped to data.ct_clip_hu", ("tests/data/test_transforms.py",), (
        (TRANSFORMS, "b_max=hi / cfg.ct_scale_hu, clip=True", "b_max=hi / cfg.ct_scale_hu, clip=False"),
    )),
    Mutant("σ-scaling fitted without MC dropout (T = 1)", ("tests/training/test_recalibration.py",), (
        (RECALIBRATION, "res = [case_residuals(loaded, case, mc_samples, device) for case in usable]",
         "res = [case_residuals(loaded, case, 1, device) for case in usable]"),
    )),
    Mutant("body outline closed without padding (eroded at the field of view's edge)",
           ("tests/data/test_transforms.py",), (
        (TRANSFORMS, 'body = ndimage.binary_closing(np.pad(body, pad, mode="edge"), iterations=CLOSING_ITERATIONS)',
         "body = np.pad(ndimage.binary_closing(body, iterations=CLOSING_ITERATIONS), pad)"),
    )),
    Mutant("a zero stored voxel size read as nibabel's 1 mm", ("tests/data/test_io.py",), (
        ("radmtl/data/nifti_header.py", "if not all(np.isfinite(zooms)) or any(v == 0 for v in zooms):", "if False:"),
    )),
    Mutant("output heads inside bf16 autocast", ("tests/training/test_train_step.py",), (
        (MODEL, "with torch.autocast(device_type=points[0].device.type, enabled=False):",
         "with torch.autocast(device_type=points[0].device.type, dtype=torch.bfloat16):"),
    )),
    Mutant("DICOM: LPS taken as RAS (no x/y sign flip)", DICOM_TESTS, (
        (DICOM_COMMON, "RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])", "RAS_FROM_LPS = np.diag([1.0, 1.0, 1.0, 1.0])"),
    )),
    Mutant("DICOM: PixelSpacing row/column swapped", DICOM_TESTS, (
        (DICOM_COMMON, "pixel_spacing=(float(spacing[1]), float(spacing[0]))",
         "pixel_spacing=(float(spacing[0]), float(spacing[1]))"),
    )),
    Mutant("DICOM: CT stored values without the rescale intercept", DICOM_TESTS, (
        (DICOM_CT, "stored = np.rint(np.asarray(sct_hu, dtype=np.float64) - HU_INTERCEPT)",
         "stored = np.rint(np.asarray(sct_hu, dtype=np.float64))"),
    )),
    Mutant("DICOM: ImageType AXIAL on an oblique grid", DICOM_TESTS, (
        (DICOM_CT, "image_type = list(IMAGE_TYPE_AXIAL if planes.is_axial() else IMAGE_TYPE_NOT_AXIAL)",
         "image_type = list(IMAGE_TYPE_AXIAL)"),
    )),
    Mutant("DICOM: transverse judged by the row direction only", ("tests/data/dicom/test_dicom_ct.py",), (
        (DICOM_COMMON, "and abs(self.column_cosines[2]) <= ORIENTATION_TOL", ""),
    )),
    Mutant("DICOM: SeriesNumber fixed (every rerun 901)", DICOM_TESTS, (
        (DICOM_COMMON, "return int((when - SERIES_NUMBER_EPOCH).total_seconds())", "return 901"),
    )),
    Mutant("DICOM: empty Laterality written again", DICOM_TESTS, (
        (DICOM_CT, '    ds.ImageLaterality = side if side in ("R", "L", "B", "U") else "U"',
         '    ds.Laterality = ""\n    ds.ImageLaterality = side if side in ("R", "L", "B", "U") else "U"'),
    )),
    Mutant("DICOM: a NIfTI MR's series in NIfTI's order (IOP -1\\0\\0\\0\\-1\\0)", DICOM_GRID_TESTS, (
        (DICOM_OUT, "on = dicom_grid(grid, volume.affine, volume.shape, scanner_order=source is None)",
         "on = dicom_grid(grid, volume.affine, volume.shape, scanner_order=False)"),
    )),
    Mutant("DICOM: scanner order flips the pixels but keeps the affine", DICOM_GRID_TESTS, (
        (DICOM_COMMON, "return transform, affine_ras @ orientations.inv_ornt_aff(transform, shape)",
         "return transform, affine_ras"),
    )),
    Mutant("axial grid: sCT by nearest neighbour", DICOM_GRID_TESTS, (
        (DICOM_GRID, 'mode="nearest" if how == "nearest" else "bilinear"', 'mode="nearest"'),
    )),
    Mutant("axial grid: σ interpolated as σ, not σ²", DICOM_GRID_TESTS, (
        (DICOM_GRID, 'values = array.astype(np.float32) ** 2 if how == "variance" else array.astype(np.float32)',
         "values = array.astype(np.float32)"),
        (DICOM_GRID, "np.sqrt(np.clip(out, 0.0, None))", "np.clip(out, 0.0, None)"),
    )),
    Mutant("axial grid: covers the MR's voxel centres, not its voxels", DICOM_GRID_TESTS, (
        (DICOM_GRID, "*[(-0.5, n - 0.5) for n in mr_shape]", "*[(0, n - 1) for n in mr_shape]"),
    )),
    Mutant("axial grid: labels beyond the MR's field of view (edge values repeated)", DICOM_GRID_TESTS, (
        (DICOM_GRID, "out = np.where(self.inside, np.rint(out), 0).astype(array.dtype)",
         "out = np.rint(out).astype(array.dtype)"),
    )),
    Mutant("RT Structure Set: contours half a pixel off", DICOM_GRID_TESTS, (
        (DICOM_RTSTRUCT, "points = np.asarray(line, dtype=np.float64) - 1.0",
         "points = np.asarray(line, dtype=np.float64) - 0.5"),
    )),
    Mutant("RT Structure Set: rows and columns swapped, and swapped back by radmtl's own reader",
           ("tests/inference/test_infer_dicom.py",), (
        (DICOM_RTSTRUCT, "ijk = np.column_stack([points, np.full(len(points), float(k))])",
         "ijk = np.column_stack([points[:, ::-1], np.full(len(points), float(k))])"),
        (DICOM_RTSTRUCT, "inside = Polygon(ijk[:, :2], closed=False)", "inside = Polygon(ijk[:, 1::-1], closed=False)"),
    )),
    Mutant("slab offset negated (z0 → −z0)", ("tests/inference/test_resample.py",), (
        (RESAMPLE, "shift[2, 3] = z0", "shift[2, 3] = -z0"),
    )),
    Mutant("slab shift in world mm, not voxels", ("tests/inference/test_resample.py",), (
        (RESAMPLE, "torch.as_tensor(dst_affine @ shift)", "torch.as_tensor(shift @ dst_affine)"),
    )),
    # Issue 29: the phantom's realism, the outline and σ_grid on finer input grids, rotation augmentation.
    Mutant("phantom: CT texture dropped (the MR's share left alone)", PHANTOM_TESTS, (
        ("radmtl/data/phantom/cases.py", "ct_fine = hu_table[tissue_ct] + extra.texture_hu(ct_coords, tissue_ct)",
         "ct_fine = hu_table[tissue_ct]"),
    )),
    Mutant("phantom: CT drawn on the MR's side (no misregistration)", PHANTOM_TESTS, (
        ("radmtl/data/phantom/cases.py", "    ct_coords = extra.ct_coords(coords)\n", "    ct_coords = coords\n"),
    )),
    Mutant("outline: the sCT not cut at the input MR's body", ("tests/inference/test_body_outline.py",), (
        (CASE_MAPS, "array[~outline.input_body] = AIR_HU", "pass"),
    )),
    Mutant("σ_grid: a linear ramp's spread (H²/12), not a step's (H²/6)", ("tests/inference/test_body_outline.py",), (
        (CASE_MAPS, "for axis in range(3)) / 6.0", "for axis in range(3)) / 12.0"),
    )),
    Mutant("rotation augmentation: labels interpolated", ("tests/data/test_transforms.py",), (
        (TRANSFORMS, 'mode=["nearest" if k in DISCRETE_KEYS else "bilinear" for k in all_keys]', 'mode="bilinear"'),
    )),
    Mutant("review: the flag level cut inside a tie (voxels of equal σ split)", ("tests/evaluation/test_review.py",), (
        ("radmtl/evaluation/review.py", "cut = np.append(sigma_desc[1:] != sigma_desc[:-1], True) & (count >= min_voxels)",
         "cut = (count >= min_voxels)"),
    )),
    Mutant("review: the highest level reaching the precision, not the lowest", ("tests/evaluation/test_review.py",), (
        ("radmtl/evaluation/review.py", "k = int(np.flatnonzero(reached)[-1])", "k = int(np.flatnonzero(reached)[0])"),
    )),
    Mutant("review: rare σ counted over the whole volume, not the body", ("tests/inference/test_review_out.py",
                                                                         "tests/evaluation/test_review.py"), (
        ("radmtl/evaluation/review.py", "rare = float(np.count_nonzero(sigma_total_hu[body] >= thresholds.rare_sigma_total_hu) / n_body)",
         "rare = float(np.count_nonzero(sigma_total_hu >= thresholds.rare_sigma_total_hu) / n_body)"),
    )),
]

REPO = Path(__file__).resolve().parents[1]
COPIED = ("radmtl", "tests", "scripts", "pyproject.toml")  # tests load scripts/ too (load_script)


def stale_edits(mutant: Mutant) -> list[str]:
    """Why the mutant cannot be applied to the current library (empty when it can)."""
    problems = []
    for file, old, _ in mutant.edits:
        path = REPO / file
        count = path.read_text(encoding="utf-8").count(old) if path.is_file() else 0
        if count != 1:
            problems.append(f"{file}: original text found {count} times, expected once: {old!r}")
    return problems


def make_copy(dest: Path) -> None:
    dest.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for name in COPIED:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)


def apply(mutant: Mutant, root: Path) -> None:
    for file, old, new in mutant.edits:
        path = root / file
        text = path.read_text(encoding="utf-8")
        assert text.count(old) == 1, f"{file}: {old!r} (checked before copying; changed since?)"
        path.write_text(text.replace(old, new), encoding="utf-8")


def environment(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def imported_from(root: Path) -> Path:
    """Where ``import radmtl`` resolves with the environment the tests run in."""
    out = subprocess.run([sys.executable, "-c", "import radmtl; print(radmtl.__file__)"], cwd=root,
                         env=environment(root), capture_output=True, text=True, check=True)
    return Path(out.stdout.strip()).resolve()


def run_tests(root: Path, tests: tuple[str, ...]) -> tuple[int, str, float]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                          cwd=root, env=environment(root), capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - start


def first_failure(output: str) -> str:
    """The first ``FAILED path::test`` of pytest's short summary, as ``file::test``."""
    for line in output.splitlines():
        if line.startswith("FAILED "):
            return line.split()[1].removeprefix("tests/")
    return ""


def tail(text: str, lines: int = 25) -> str:
    return "\n".join("    " + line for line in text.rstrip().splitlines()[-lines:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run mutants whose name contains NAME")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copies")
    args = parser.parse_args(argv)

    mutants = [m for m in MUTANTS if not args.only or any(s in m.name for s in args.only)]
    if args.list:
        for m in mutants:
            print(f"{m.name}  [{', '.join(sorted({f for f, _, _ in m.edits}))}]  -> {' '.join(m.tests)}")
        return 0
    if not mutants:
        print(f"no mutant matches {args.only}", file=sys.stderr)
        return 1

    tmp = Path(tempfile.mkdtemp(prefix="radmtl-mutants-"))
    rows: list[tuple[str, str, str, str]] = []
    failed = False
    try:
        baseline = tmp / "baseline"
        make_copy(baseline)
        where = imported_from(baseline)
        if not where.is_relative_to(baseline.resolve()):
            print(f"import radmtl resolves to {where}, not the copy under {baseline}; "
                  "mutants would test the installed package", file=sys.stderr)
            return 1
        all_tests = tuple(sorted({t for m in mutants for t in m.tests}))
        rc, output, seconds = run_tests(baseline, all_tests)
        print(f"baseline (unmutated copy, {len(all_tests)} test files): rc={rc} in {seconds:.0f} s")
        if rc != 0:
            print("the unmutated copy fails its tests; a mutant's failure would prove nothing:\n"
                  + tail(output), file=sys.stderr)
            return 1

        for i, mutant in enumerate(mutants):
            files = ", ".join(sorted({f for f, _, _ in mutant.edits}))
            problems = stale_edits(mutant)
            if problems:
                rows.append((mutant.name, files, "STALE", ""))
                print(f"STALE {mutant.name}:\n" + "\n".join("    " + p for p in problems), file=sys.stderr)
                failed = True
                continue
            root = tmp / f"mutant_{i:02d}"
            make_copy(root)
            apply(mutant, root)
            rc, output, seconds = run_tests(root, mutant.tests)
            if rc == 1:
                result = "caught"
            else:
                result = "MISSED" if rc == 0 else f"ERROR (pytest rc={rc})"
                failed = True
                print(f"{result} {mutant.name} ({' '.join(mutant.tests)}):\n" + tail(output), file=sys.stderr)
            rows.append((mutant.name, files, result, first_failure(output) if rc == 1 else ""))
            print(f"  {result:<8} {mutant.name} ({seconds:.0f} s)", flush=True)
            if not args.keep:
                shutil.rmtree(root, ignore_errors=True)
    finally:
        if args.keep:
            print(f"copies kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    header = ("mutant", "file", "result", "caught by (first failing test)")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print()
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    caught = sum(r[2] == "caught" for r in rows)
    print(f"\n{caught} of {len(rows)} mutants caught")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
