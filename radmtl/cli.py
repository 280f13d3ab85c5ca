"""Command line: argument parsing only.

Heavy modules (torch, MONAI, MLflow) are imported inside the command functions so that
``radmtl --help`` and ``radmtl check`` start instantly. Every :class:`RadmtlError` becomes one
line on stderr and a non-zero exit; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import warnings
from pathlib import Path

from radmtl import __version__
from radmtl.errors import RadmtlError, Terminated, raise_terminated
from radmtl.data.dicom.common import PATIENT_POSITIONS

log = logging.getLogger("radmtl")

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _setup_logging(verbosity: int, log_file: Path | None = None) -> None:
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    handlers[0].setFormatter(logging.Formatter("%(message)s"))
    # The level is on the handler too: train's own log file lowers the radmtl logger to INFO.
    handlers[0].setLevel(level)
    logging.basicConfig(level=level, handlers=handlers, force=True)
    # Third-party libraries are chatty at INFO (alembic migrations, MLflow tips); keep them quiet.
    for name in ("alembic", "mlflow", "urllib3", "matplotlib", "PIL", "numexpr"):
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
    # A store that does not answer (a locked SQLite file) makes MLflow log each failed call with its traceback
    # and SQL, and its system-metrics thread warn at every sample; MLflow raises the same failure to radmtl,
    # whose tracker reports it once and says how the run catches up (radmtl/tracking/outage.py).
    for name in ("mlflow.store.db.utils", "mlflow.system_metrics"):
        logging.getLogger(name).setLevel(logging.CRITICAL if verbosity <= 0 else logging.DEBUG)
    # With pydicom installed (DICOM input), MONAI's LoadImage builds its GPU DICOM decoder and warns, on
    # every NIfTI read, that the optional nvImageCodec is absent; radmtl decodes DICOM with SimpleITK.
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader", category=UserWarning)


def _add_common_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="compute device (default: auto = CUDA when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (for logs and CI)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="radmtl",
        description="Multi-task MR → synthetic CT + organ segmentation with per-voxel uncertainty.",
    )
    parser.add_argument("--version", action="version", version=f"radmtl {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("phantom", help="generate synthetic paired MR/CT/labels pelvis cases",
                       description="Write synthetic male pelvis cases (MR, CT in HU, body mask, organ "
                       "labels, true CT noise SD) in the radmtl dataset layout, with dataset.json.")
    p.add_argument("out", type=Path, help="output dataset folder")
    p.add_argument("--cases", type=int, default=10, help="number of cases (default 10)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--shape", type=int, nargs=3, metavar=("X", "Y", "Z"), default=None,
                   help="grid size in voxels (default 96 96 64)")
    p.add_argument("--spacing", type=float, nargs=3, metavar=("SX", "SY", "SZ"), default=None,
                   help="voxel size in mm (default: covers a pelvis at the given shape)")
    p.add_argument("--dicom", type=Path, default=None, metavar="DIR",
                   help="also write each case's MR as a DICOM MR series in DIR/<case>/ (to try DICOM input)")
    p.add_argument("--workers", type=int, default=None,
                   help="processes making cases side by side (default: one per CPU from 4 cases on)")
    p.add_argument("--deformation-mm", type=float, default=None, metavar="MM",
                   help="RMS length of the smooth MR→CT misregistration (default 2.0; 0: perfectly registered)")
    p.add_argument("--orientations", nargs="+", default=["ras"], choices=["ras", "lps", "oblique"],
                   metavar="O", help="storage grids taken in turn, among ras, lps, oblique (default ras); with "
                   "several, case folders are <orientation>/case_NNN")
    p.add_argument("--plain", action="store_true",
                   help="no bowel gas, tissue texture or MR→CT misregistration (one HU per tissue)")
    p.add_argument("--first-case", type=int, default=1, metavar="N",
                   help="number of the first case (default 1): case_N and its seed (its anatomy) are those of case N "
                   "of any dataset with this seed, on any grid; --orientations start again from this case")
    p.add_argument("--split", default="training", choices=["training", "validation", "test"],
                   help="the dataset.json list the cases go to (default training); `radmtl train --data TRAIN VAL` "
                   "validates, and fits σ-scaling, on a folder written with --split validation")
    p.set_defaults(func=cmd_phantom)

    p = sub.add_parser("check", help="validate every case of a dataset folder before training",
                       description="Check every case of DATA: readable 3D files, finite values, one grid "
                       "per case, labels known to dataset.json, CT in HU, non-empty CT and mask, and a "
                       "target (ct and/or labels) for at least one task. Prints one line per problem, "
                       "then the cases per group and per task; exit 0 when clean, 1 otherwise.")
    p.add_argument("data", type=Path, nargs="+",
                   help="dataset folder(s): a tree in which every folder holding an mr file is a case "
                        "(e.g. a SynthRAD task root), optional dataset.json")
    p.add_argument("--for", dest="purpose", choices=("train", "infer"), default="train",
                   help="train: every case needs a ct or labels target (default); infer: mr only")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("train", help="train a model, tracked in MLflow",
                       description="Patch-based training with validation, checkpoints and MLflow tracking.")
    p.add_argument("--config", type=Path, default=None,
                   help="YAML config (default: built-in defaults = configs/default.yaml)")
    p.add_argument("--data", type=Path, nargs="+", action="extend", default=None,
                   help="dataset folder(s), e.g. a SynthRAD task root; several are trained on together "
                        "(default: data_samples/)")
    p.add_argument("--out", type=Path, default=Path("runs/latest"), help="run folder (default runs/latest)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=5 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint_latest.pt")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite mlflow.db here)")
    p.add_argument("--experiment", default=None, help="MLflow experiment name (default from config)")
    p.add_argument("--sync-mlflow", action="store_true",
                   help="train nothing: send the MLflow store what the run in --out could not log while the store "
                        "did not answer (OUT/mlflow_unsent.json: metric points, files, the model, the final status)")
    p.add_argument("--register", default=None, metavar="NAME",
                   help="after training, register the logged model in MLflow's Model Registry as a new version "
                        "of NAME (tags: best validation metrics, data digest); alias @best moves to it when its "
                        "best metric is better: radmtl infer --model models:/NAME@best")
    _add_common_run_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("infer", help="predict sCT, segmentation and uncertainty maps",
                       description="Run a trained model on MR volumes; every output lands on the input's grid. "
                       "A case is published into OUT/<case>/ in one rename when all its files are written; a case "
                       "whose folder already holds provenance.json is skipped (--overwrite runs it again), so a "
                       "rerun resumes an interrupted one. Many cases: --workers N runs N processes on this "
                       "machine, and torchrun --nproc_per_node N -m radmtl infer ... (also across nodes) runs one "
                       "per rank, each on its own GPU (cuda:LOCAL_RANK) or its share of the CPU cores; the cases "
                       "are dealt largest first, one summary lists them all.")
    p.add_argument("--model", required=True,
                   help="checkpoint file, a radmtl train run folder (its checkpoint_best.pt), or an MLflow model URI "
                        "(runs:/<id>/model, models:/<name>/<version>, "
                        "models:/<name>@best)")
    p.add_argument("--input", required=True, type=Path,
                   help="an MR file, a folder of MR files (CASE.nii.gz, CASE_mr.*, nnU-Net CASE_0000.*; files "
                        "named *_ct, *_mask, *_labels, *_seg and other channels are skipped), a dataset folder "
                        "(SynthRAD trees too: Task1/AB/1ABA005/mr.mha → OUT/AB/1ABA005/), or a folder of DICOM "
                        "files holding an MR series")
    p.add_argument("--series", default=None, metavar="UID",
                   help="SeriesInstanceUID of the MR series to run when the DICOM folder holds several")
    p.add_argument("--dicom-out", action="store_true",
                   help="also write the sCT as a DICOM CT series and the organs as an RT Structure Set in "
                        "OUT/<case>/dicom/ (always on for DICOM input; NIfTI input gets generated identifiers)")
    p.add_argument("--patient-position", default=None, type=str.upper, choices=PATIENT_POSITIONS,
                   metavar="HFS|FFS|HFP|...",
                   help="PatientPosition (0018,5100) of the DICOM outputs (default: the MR's; HFS with a warning "
                        "where the MR has none, as every NIfTI MR)")
    p.add_argument("--dicom-grid", choices=("input", "axial"), default="input",
                   help="grid of the DICOM outputs: input (default) = the MR's, oblique if the MR is; axial = "
                        "an axial grid covering the MR (sCT interpolated, organs by nearest neighbour; σ maps "
                        "on it in OUT/<case>/dicom_grid/), for a planning system that needs axial CT")
    p.add_argument("--output", required=True, type=Path, help="output folder (OUT/<case>/...)")
    p.add_argument("--output-format", choices=("auto", "nii.gz", "nii", "mha"), default="auto",
                   help="file format of the maps: auto (default) = the input's own (.mha → .mha, .nrrd → .nrrd, "
                        ".nii → .nii; DICOM → .nii.gz)")
    p.add_argument("--mc-samples", type=int, default=None, help="MC dropout samples T (default from the model)")
    p.add_argument("--overlap", type=float, default=None, help="sliding-window overlap (default from the model)")
    p.add_argument("--batch-size", type=int, default=None, help="windows per forward pass")
    p.add_argument("--save-probabilities", action="store_true",
                   help="also write seg_probabilities (one channel per class)")
    p.add_argument("--save-samples", type=int, default=0, metavar="K",
                   help="also write sct_samples: the first K of the T MC-dropout samples of the sCT, one 4D file "
                        "(K float32 volumes; K <= --mc-samples; default 0 = none)")
    p.add_argument("--no-sigma-scaling", action="store_true",
                   help="write the raw predicted aleatoric σ, without the σ-scaling factor fitted on the "
                        "validation cases after training")
    p.add_argument("--no-review", action="store_true",
                   help="do not write review/ (review.json with the case's verdict, review.png, review.html)")
    p.add_argument("--overwrite", action="store_true",
                   help="run cases again whose output folder already holds provenance.json from an earlier run "
                        "(default: skip them, listed as skipped)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="processes sharing the cases on this machine (default 1); each gets cores/N CPU threads, "
                        "or GPU i of N; for several machines use torchrun --nproc_per_node N -m radmtl infer ...")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI for runs:/ and models:/ URIs")
    _add_common_run_args(p)
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("evaluate", help="SynthRAD-style metrics of predictions against references",
                       description="Image, segmentation and uncertainty metrics per case and mean ± SD; per "
                       "group too when the reference has several centre/anatomy folders (SynthRAD2025's AB, HN, TH).")
    p.add_argument("--pred", required=True, type=Path,
                   help="output folder of radmtl infer: PRED/<case id>/sct, seg, σ maps (.nii.gz, .nii, .mha or "
                        ".nrrd), nested ids too (PRED/AB/1ABA005)")
    p.add_argument("--ref", required=True, type=Path, help="dataset folder with ct/mask/labels")
    p.add_argument("--out", type=Path, default=None, help="CSV file (default PRED/metrics.csv)")
    p.add_argument("--json", type=Path, default=None, help="JSON file (default PRED/metrics.json)")
    p.add_argument("--allow-missing", action="store_true",
                   help="exit 0 although reference cases have no (complete) prediction; they are still listed")
    p.add_argument("--run-id", default=None,
                   help="log the mean metrics to this MLflow run (eval_<metric>; with several centre/anatomy "
                        "groups also eval_<group>_<metric>)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI for --run-id")
    dose = p.add_argument_group("dose", "--dose plans photons and protons on each reference CT and recomputes "
                                "the plans on the sCT (needs the dose extra: pyRadPlan, pymedphys)")
    dose.add_argument("--dose", action="store_true",
                      help="add dose metrics: MAE in the >10 %%/>90 %% dose regions, γ 2%%/2mm and 3%%/3mm, DVH "
                           "differences sCT − CT, a figure per case and modality in PRED/dose/")
    dose.add_argument("--target", default="prostate", help="label prescribed the dose (default prostate)")
    dose.add_argument("--hlut", default=None, metavar="PATH",
                      help="HU → SPR/rED table, CSV (hu,spr,red) or YAML (default: matrad_default)")
    dose.add_argument("--dose-modalities", default="photons,protons", metavar="LIST",
                      help="comma-separated, of photons, protons (default both)")
    dose.add_argument("--dose-grid-mm", type=float, default=None, metavar="MM",
                      help="isotropic dose grid in mm (default: the reference CT's grid, no interpolation)")
    dose.add_argument("--dose-samples", type=int, default=None, metavar="N",
                      help="recompute each plan on the first N MC-dropout sCT samples of radmtl infer "
                           "--save-samples (PRED/<case>/sct_samples.*) for a dose SD map, DVH bands and their "
                           "coverage of the CT's dose (default: all samples present; 0: none)")
    p.set_defaults(func=cmd_evaluate)

    return parser


def cmd_phantom(args: argparse.Namespace) -> int:
    from radmtl.data.phantom import PhantomError, generate_dataset
    from radmtl.data.phantom.realism import Realism

    realism = Realism.none() if args.plain else Realism()
    if args.deformation_mm is not None:
        if not args.deformation_mm >= 0:
            raise PhantomError(f"--deformation-mm must be ≥ 0 mm, got {args.deformation_mm}")
        realism = realism.replace(deformation_rms_mm=args.deformation_mm)
    kwargs = {"realism": realism, "orientations": tuple(args.orientations), "first_case": args.first_case,
              "split": args.split}
    if args.shape is not None:
        kwargs["shape"] = tuple(args.shape)
    if args.spacing is not None:
        kwargs["spacing"] = tuple(args.spacing)
    case_ids = generate_dataset(args.out, cases=args.cases, seed=args.seed, workers=args.workers, **kwargs)
    print(f"wrote {len(case_ids)} phantom cases to {args.out}")
    if args.dicom is not None:
        from radmtl.data.phantom.dicom import write_dataset_mr_series

        folders = write_dataset_mr_series(args.out, case_ids, args.dicom)
        print(f"wrote {len(folders)} DICOM MR series to {args.dicom} (one folder per case)")
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from radmtl.data.check import check_dataset, describe_dataset
    from radmtl.data.discovery import DatasetError, discover_all

    failed = False
    for data in args.data:
        index, problems = check_dataset(data, purpose=args.purpose)
        for problem in problems:
            print(problem.line())
        if index is None:
            print(f"{data}: not a usable dataset folder (see above)")
            failed = True
        elif problems:
            bad = len({p.case_id for p in problems})
            print(f"{data}: {len(problems)} problem(s) in {bad} of {len(index.cases)} case(s)")
            failed = True
        else:
            print(f"{data}: {describe_dataset(index)}; no problems")
    if len(args.data) > 1 and not failed:
        try:
            discover_all(args.data)  # the folders must also combine: unique case ids, one label map
        except DatasetError as err:
            print(str(err))
            failed = True
    return EXIT_FAIL if failed else EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    from radmtl.training.train import train_from_cli

    return train_from_cli(args)


def cmd_infer(args: argparse.Namespace) -> int:
    from radmtl.inference.infer_cli import infer_from_cli

    return infer_from_cli(args)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from radmtl.evaluation.evaluate import evaluate_from_cli

    return evaluate_from_cli(args)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # radmtl infer --workers reruns it in its children
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    _setup_logging(-1 if args.quiet else args.verbose)
    # MLflow sets its own loggers to INFO when it is first imported (later, lazily); this keeps them
    # at the level radmtl chose.
    mlflow_level = "DEBUG" if args.verbose > 1 else "INFO" if args.verbose else "WARNING"
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", mlflow_level)
    if args.quiet or getattr(args, "no_progress", False):
        # MLflow draws its own "Downloading artifacts" bars (a model fetched from a remote store).
        os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    previous = signal.signal(signal.SIGTERM, raise_terminated) if _main_thread() else None
    # Under torchrun N processes print to one console: say which one speaks.
    name = f"radmtl {args.command}"
    if os.environ.get("WORLD_SIZE", "1") not in ("", "1"):
        name += f" (rank {os.environ.get('RANK', '?')})"
    try:
        return int(args.func(args) or 0)
    except RadmtlError as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        return EXIT_FAIL
    except Terminated:
        print(f"{name}: terminated (SIGTERM)", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
