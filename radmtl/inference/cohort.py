"""A cohort over several processes: ``radmtl infer --workers N`` and ``torchrun --nproc_per_node N -m radmtl infer``.

Every process (rank) deals the whole case list the same way (:func:`deal_cases`: largest MR first, each to
the rank with the least work so far), so the ranks agree on who runs what without talking, and each runs its
share with the single-process machinery of :mod:`radmtl.inference.infer` (read-ahead, writer threads, the
atomic publish of each case's hidden folder) into the one shared ``--output``. A case its rank finds already
published (``provenance.json`` in its folder) is skipped unless ``--overwrite``; only its owner looks, and
only its owner writes it, so the answer cannot change under a rank's feet.

Before any rank writes, one process alone prepares the output (:func:`~radmtl.inference.output_folders.prepare_output`): it creates the root,
removes what killed runs left there and creates every case's parent folder. So no rank ever removes a folder
that another one is about to write into (a failed case leaves the folders alone), and at the end the same
process removes the folders of the run that stayed empty. That process is rank 0 under torchrun, which then
tells the others to start (:func:`~radmtl.distributed.broadcast_from_main`) and at the end gathers every
rank's results over Gloo; under ``--workers`` it is the parent, which reads each child's results from a file.

Each rank on a CPU computes with ``cores // processes on this machine`` threads; on a GPU it takes
``cuda:LOCAL_RANK``. ``provenance.json`` names the rank that wrote the case. The command around it (which
way to run, the summary table) is :mod:`radmtl.inference.infer_cli`.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from radmtl.data.dicom.series import SeriesInfo
from radmtl.distributed import (TIMEOUT_ENV, DistContext, broadcast_from_main, context_from_env, gather_lists,
                                init_distributed, quiet_other_ranks, rank_device, shutdown)
from radmtl.errors import RadmtlError
from radmtl.inference.infer import CaseResult, run_pending
from radmtl.inference.infer_options import InferOptions, check_options
from radmtl.inference.inputs import find_input_cases
from radmtl.inference.output_folders import is_done, prepare_output, remove_empty_folders, work_folder_parents
from radmtl.inference.work_dirs import remove_stale_work_folders

log = logging.getLogger(__name__)

# Set by ``--workers`` in its children: the hidden folder where each child appends its results, one JSON
# line per case (rank-R.jsonl). A child that has it runs its share and reports there; it opens no process
# group, so a sibling that dies can never leave it waiting in a collective.
COHORT_ENV = "RADMTL_INFER_COHORT"
# Under torchrun a rank that has finished its share waits at the final gather for the slowest one, which on
# a CPU may take many hours; a rank that dies is torchrun's to stop, so the timeout only guards against a
# peer that hangs. RADMTL_DIST_TIMEOUT_S still overrides it.
INFER_TIMEOUT_S = 7 * 24 * 3600
_STOP_GRACE_S = 30  # a child's time to remove its hidden folder after SIGTERM, before SIGKILL


# --- dealing the cases -----------------------------------------------------------------------------


def case_size(mr: Path | SeriesInfo | None) -> int:
    """How much work a case is, for dealing: the MR's voxel count from its header, else its file's bytes.

    A DICOM series counts rows × columns × slices from the headers already read; a header that cannot
    be read counts its bytes (the case then fails on its rank, with its own message); a missing MR 0.
    """
    if mr is None:
        return 0
    if isinstance(mr, SeriesInfo):
        try:
            return int(mr.headers[0].Rows) * int(mr.headers[0].Columns) * len(mr.files)
        except (AttributeError, IndexError, TypeError, ValueError):
            return sum(_bytes(path) for path in mr.files)
    path = Path(mr)
    try:
        if path.name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            shape = nib.load(str(path)).shape  # the header only; the voxels stay on disk
        else:
            import SimpleITK as sitk

            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            shape = reader.GetSize()
    except Exception:  # noqa: BLE001 - any unreadable header: deal it by its bytes, let its rank report it
        return _bytes(path)
    size = 1
    for n in shape:
        size *= int(n)
    return size


def _bytes(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def deal_cases(sizes: Sequence[tuple[str, int]], world_size: int) -> list[list[str]]:
    """Deal cases to ``world_size`` ranks: largest first, each to the rank with the least total so far (LPT).

    Deterministic: equal sizes go in case-id order and a tie between ranks goes to the lower rank, so
    every rank computes the same shares from the same list, whatever its order.

    Args:
        sizes: ``(case id, size)`` pairs; case ids are unique.
        world_size: the number of ranks (≥ 1); ranks beyond the number of cases get nothing.

    Returns:
        The case ids of each rank, largest first.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    shares: list[list[str]] = [[] for _ in range(world_size)]
    totals = [0] * world_size
    for case_id, size in sorted(sizes, key=lambda item: (-item[1], item[0])):
        rank = min(range(world_size), key=lambda r: (totals[r], r))
        shares[rank].append(case_id)
        totals[rank] += size
    return shares


def shares_of(cases: list[tuple[str, Any]], world_size: int) -> list[list[str]]:
    """The shares of every rank for ``cases`` (:func:`deal_cases` on :func:`case_size`)."""
    return deal_cases([(case_id, case_size(mr)) for case_id, mr in cases], world_size)


# --- the shared output ----------------------------------------------------------------------------


def set_rank_threads(ctx: DistContext) -> int:
    """Give this rank its part of the CPU: ``cores // processes on this machine`` threads (at least 1)."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world_size))
    threads = max(1, cores // max(1, local_world_size))
    torch.set_num_threads(threads)
    return threads


def _rank_options(options: InferOptions, ctx: DistContext) -> InferOptions:
    # Progress bars from several processes would overwrite each other on one terminal: rank 0's only.
    return replace(options, rank=ctx.rank, world_size=ctx.world_size, progress=options.progress and ctx.is_main)


def _start_rank(options: InferOptions, ctx: DistContext) -> InferOptions:
    quiet_other_ranks(ctx)
    device = rank_device(ctx, options.device)
    # On a GPU too: reading, preprocessing and writing run on the CPU cores, shared by the node's ranks.
    threads = set_rank_threads(ctx)
    log.info("rank %d of %d on %s, %d CPU thread(s)", ctx.rank, ctx.world_size, device, threads)
    return _rank_options(options, ctx)


# --- under torchrun -------------------------------------------------------------------------------


def run_under_torchrun(model: str, input_path: str | Path, output: str | Path, options: InferOptions,
                       tracking_uri: str | None = None) -> list[CaseResult] | None:
    """This rank's part of ``torchrun … -m radmtl infer``; every case's result on rank 0, None on the others.

    Raises:
        RadmtlError: problems that stop the whole run (options, input, output folder, model).
    """
    check_options(options)
    timeout_s = float(os.environ.get(TIMEOUT_ENV, INFER_TIMEOUT_S))
    # Gloo even on GPUs: only Python objects pass between the ranks, no tensors.
    ctx, _ = init_distributed(options.device, backend="gloo", timeout_s=timeout_s)
    finished = False
    try:
        options = _start_rank(options, ctx)
        cases = find_input_cases(input_path, options)
        created: list[Path] = []
        failure: RadmtlError | None = None
        if ctx.is_main:
            try:
                output, created = prepare_output(output, cases)
            except RadmtlError as err:
                failure = err
        # The other ranks start writing only once rank 0 has prepared the output (or learn that it could not).
        problem = broadcast_from_main(None if failure is None else str(failure), ctx)
        if failure is not None:
            raise failure
        if problem is not None:
            raise RadmtlError(f"rank 0 could not prepare {output}: {problem}")
        output = Path(output).expanduser()
        by_id = dict(cases)
        share = [(case_id, by_id[case_id]) for case_id in shares_of(cases, ctx.world_size)[ctx.rank]]
        results = run_pending(model, share, output, options, tracking_uri)
        gathered = gather_lists([asdict(result) for result in results], ctx)
        finished = True
        if not ctx.is_main:
            return None
        remove_empty_folders(created)  # every rank is done: the run's folders that stayed empty go
        rank_of = {row["case_id"]: CaseResult(**row) for row in gathered}
        return [rank_of[case_id] for case_id, _ in cases]
    finally:
        shutdown(ctx, finished)


# --- radmtl infer --workers N --------------------------------------------------------------------


def run_worker(model: str, input_path: str | Path, output: str | Path, options: InferOptions,
               tracking_uri: str | None, cohort_dir: Path) -> None:
    """A child of ``--workers``: run this rank's share into the output its parent prepared, and append
    each case's result to ``cohort_dir/rank-R.jsonl`` as soon as it is known."""
    ctx = context_from_env()
    options = _start_rank(options, ctx)
    check_options(options)
    cases = find_input_cases(input_path, options)
    by_id = dict(cases)
    share = [(case_id, by_id[case_id]) for case_id in shares_of(cases, ctx.world_size)[ctx.rank]]
    lock = threading.Lock()  # results come from the publishing thread and the main thread
    with open(cohort_dir / f"rank-{ctx.rank}.jsonl", "a", encoding="utf-8") as report_file:

        def report(result: CaseResult) -> None:
            with lock:
                report_file.write(json.dumps(asdict(result)) + "\n")
                report_file.flush()

        run_pending(model, share, Path(output).expanduser(), options, tracking_uri, on_result=report)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_workers(argv: list[str], workers: int, input_path: str | Path, output: str | Path,
                options: InferOptions) -> list[CaseResult]:
    """``radmtl infer --workers N``: run the cohort in N child processes of ``radmtl infer`` on this machine.

    Each child is ``python -m radmtl <argv> --workers 1`` with the environment torchrun would give it
    (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``), so it
    runs the same code as a torchrun rank, plus :data:`COHORT_ENV`. Plain child processes rather than
    torchrun's own launcher (``torch.distributed.run`` internals): torchrun stops every rank when one fails,
    and here a child that dies must not stop the others; and rather than ``torch.multiprocessing.spawn``:
    a child is then the very command a user runs, with its logging and SIGTERM handling, and its exit status
    (a signal too) is the operating system's. A rank whose cases are all published already is not started.

    Returns:
        Every case's result in case order; the cases of a child that died are failed, saying so.

    Raises:
        RadmtlError: problems that stop the whole run (options, input, output folder).
    """
    if context_from_env().enabled:
        raise RadmtlError(f"--workers {workers}: this process is already rank {os.environ.get('RANK')} of a "
                          "torchrun run; use either torchrun or --workers")
    check_options(options)
    if options.device != "cpu":
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if gpus and workers > gpus:  # each child takes cuda:LOCAL_RANK
            raise RadmtlError(f"--workers {workers}: one GPU per process, but this machine has {gpus}; use "
                              f"--workers {gpus} or fewer, or --device cpu")
    cases = find_input_cases(input_path, options)
    shares = shares_of(cases, workers)
    output, created = prepare_output(output, cases)
    try:
        with tempfile.TemporaryDirectory(prefix="radmtl-infer-") as cohort_dir:
            base_env = os.environ | {"WORLD_SIZE": str(workers), "LOCAL_WORLD_SIZE": str(workers),
                                     "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
                                     "GROUP_RANK": "0", COHORT_ENV: cohort_dir}
            children: dict[int, subprocess.Popen] = {}
            try:
                for rank, share in enumerate(shares):
                    if share and (options.overwrite or not all(is_done(output, case_id) for case_id in share)):
                        env = base_env | {"RANK": str(rank), "LOCAL_RANK": str(rank)}
                        children[rank] = subprocess.Popen([sys.executable, "-m", "radmtl", *argv, "--workers", "1"],
                                                          env=env)
                log.info("%d case(s) dealt to %d process(es); %d started", len(cases), workers, len(children))
                codes = {rank: child.wait() for rank, child in children.items()}
            finally:
                _stop(children)
            reports = {rank: _read_report(Path(cohort_dir) / f"rank-{rank}.jsonl") for rank in children}
        # A child killed mid-case left its hidden folder: its pid is gone now, so it counts as stale.
        remove_stale_work_folders(work_folder_parents(output, cases))
        return collect_results([case_id for case_id, _ in cases], shares, reports, codes)
    finally:
        remove_empty_folders(created)


def _stop(children: dict[int, subprocess.Popen]) -> None:
    """SIGTERM to the children still running (the parent was interrupted), then SIGKILL after a grace time."""
    running = [child for child in children.values() if child.poll() is None]
    for child in running:
        child.terminate()
    for child in running:
        try:
            child.wait(_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _read_report(path: Path) -> list[dict[str, Any]]:
    """A child's results; a last line cut off by its death is left out."""
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def collect_results(case_ids: list[str], shares: list[list[str]], reports: dict[int, list[dict[str, Any]]],
                    codes: dict[int, int]) -> list[CaseResult]:
    """Every case's result, in case order, from the children's reports and exit statuses.

    A rank that was not started (``codes`` has no entry: all its cases were published) skips its cases;
    a case a started rank did not report failed with the reason: the child was killed by a signal, or
    stopped with an error of its own.
    """
    results: dict[str, CaseResult] = {}
    for rank, share in enumerate(shares):
        reported = {row["case_id"]: CaseResult(**row) for row in reports.get(rank, [])}
        code = codes.get(rank)
        for case_id in share:
            if case_id in reported:
                results[case_id] = reported[case_id]
            elif code is None:
                results[case_id] = CaseResult(case_id=case_id, seconds=0.0, skipped=True, rank=rank)
            else:
                results[case_id] = CaseResult(case_id=case_id, seconds=0.0, rank=rank,
                                              error=f"not written: {_death(rank, code)} before this case was done")
    return [results[case_id] for case_id in case_ids]


def _death(rank: int, code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"rank {rank} was killed by {name}"
    if code == 0:
        return f"rank {rank} ended without reporting it"
    return f"rank {rank} stopped with exit status {code} (its error is above)"
