"""``radmtl infer`` on the command line: in one process, under torchrun or with ``--workers N``
(:mod:`radmtl.inference.cohort`), then one summary table of every case, the counts per rank and each failure."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from radmtl.data.io import strip_volume_suffix
from radmtl.distributed import context_from_env
from radmtl.errors import RadmtlError
from radmtl.inference.cohort import COHORT_ENV, run_under_torchrun, run_worker, run_workers
from radmtl.evaluation.text_table import table_lines
from radmtl.inference.infer import PROVENANCE, CaseResult, InferOptions, run_inference


def format_summary(results: list[CaseResult], ranks: bool = False) -> str:
    """The end-of-run table: case, (rank,) seconds, outputs (file stems, FAILED or skipped), and flags
    where any case has one."""
    def outputs(r: CaseResult) -> str:
        if r.error or r.skipped:
            return "FAILED" if r.error else "skipped"
        return ", ".join(strip_volume_suffix(f) for f in r.outputs if f != PROVENANCE)

    rows = [(r.case_id, str(r.rank), f"{r.seconds:.1f}", outputs(r), ", ".join(f"REVIEW {flag}" for flag in r.flags))
            for r in results]
    header = ("case", "rank", "seconds", "outputs", "flags")
    keep = [0, *([1] if ranks else []), 2, 3, *([4] if any(r.flags for r in results) else [])]
    rows, header = [tuple(row[i] for i in keep) for row in rows], tuple(header[i] for i in keep)
    return "\n".join(table_lines(header, rows, rule=True))


def format_rank_counts(results: list[CaseResult], world_size: int) -> str:
    """``rank 0: 4 written, 0 failed, 1 skipped; rank 1: …``."""
    parts = []
    for rank in range(world_size):
        mine = [r.status for r in results if r.rank == rank]
        parts.append(f"rank {rank}: " + ", ".join(f"{mine.count(s)} {s}" for s in ("written", "failed", "skipped")))
    return "; ".join(parts)


def _options_of(args: argparse.Namespace) -> InferOptions:
    return InferOptions(
        mc_samples=args.mc_samples, overlap=args.overlap, sw_batch_size=args.batch_size, device=args.device,
        save_probabilities=args.save_probabilities,
        progress=not args.no_progress and not getattr(args, "quiet", False) and sys.stderr.isatty(),
        sigma_scaling=not args.no_sigma_scaling,
        series=args.series, dicom_out=True if args.dicom_out else None, output_format=args.output_format,
        patient_position=args.patient_position, dicom_grid=args.dicom_grid, review=not args.no_review,
        overwrite=args.overwrite, save_samples=args.save_samples,
    )


def infer_from_cli(args: argparse.Namespace) -> int:
    """``radmtl infer``: run, print the summary table, list failures; 1 if any case failed.

    In one process, under torchrun (rank 0 prints for all) or with ``--workers N`` (the parent prints).
    """
    options = _options_of(args)
    workers = getattr(args, "workers", 1)
    if workers < 1:
        raise RadmtlError(f"--workers: must be >= 1, got {workers}")
    ctx = context_from_env()
    cohort_dir = os.environ.get(COHORT_ENV)
    if cohort_dir and ctx.enabled:  # a child of --workers: its parent reports
        run_worker(args.model, args.input, args.output, options, args.tracking_uri, Path(cohort_dir))
        return 0
    if workers > 1:
        results = run_workers(getattr(args, "argv", sys.argv[1:]), workers, args.input, args.output, options)
        world_size = workers
    elif ctx.enabled:
        results = run_under_torchrun(args.model, args.input, args.output, options, args.tracking_uri)
        if results is None:
            return 0  # rank 0 reports every case, and its exit status is the run's
        world_size = ctx.world_size
    else:
        results, world_size = run_inference(args.model, args.input, args.output, options, args.tracking_uri), 1
    print(format_summary(results, ranks=world_size > 1))
    written = sum(r.status == "written" for r in results)
    skipped = sum(r.skipped for r in results)
    line = f"{written} of {len(results)} case(s) written to {args.output}"
    if skipped:
        line += f"; {skipped} skipped, published by an earlier run (--overwrite runs them again)"
    print(line)
    if world_size > 1:
        print(format_rank_counts(results, world_size))
    failed = [r for r in results if r.error]
    for result in failed:
        print(f"radmtl infer: error: case {result.case_id}: {result.error}", file=sys.stderr)
    return 1 if failed else 0
