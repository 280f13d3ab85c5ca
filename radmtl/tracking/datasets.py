"""The cases a run trained and validated on, as MLflow dataset inputs with a content digest.

Each split is logged as an ``mlflow.data`` pandas dataset (one row per case: ``case``, ``group``,
``split``, ``tasks``, ``mr`` and the case's own ``digest``) with the context ``training`` or
``validation``, so MLflow's UI lists the datasets beside each run and tells two runs on different data
apart. The digests are of the file **contents**, not of names or modification times: a case's digest is
the SHA-256 of its id and of each of its files (role, size, SHA-256 of the bytes); a split's digest hashes
its cases' digests in order; the run's data digest (tag ``radmtl.data_digest``, and a version tag of a
registered model) hashes both splits'. The same data copied to another folder or machine gets the same
digests; one changed voxel in one file changes them. Hashing reads every file once (about a second per
GB on one core).
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import time
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DATA_DIGEST_TAG = "radmtl.data_digest"
# MLflow keeps at most 36 characters of a dataset digest.
DATASET_DIGEST_CHARS = 32
CONTEXTS = ("training", "validation")


def file_digest(path: Path) -> str:
    """SHA-256 (hex) of the bytes of ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def case_digest(case_id: str, paths: Mapping[str, Path]) -> tuple[str, int]:
    """The content digest of one case and the bytes read: its id, then per file (by role) the role,
    size and SHA-256 of the bytes. A declared file that does not exist counts as missing."""
    digest = hashlib.sha256(f"case\0{case_id}\0".encode())
    read = 0
    for role in sorted(paths):
        path = Path(paths[role])
        if path.is_file():
            size = path.stat().st_size
            digest.update(f"{role}\0{size}\0{file_digest(path)}\0".encode())
            read += size
        else:
            digest.update(f"{role}\0missing\0".encode())
    return digest.hexdigest(), read


def digest_of(digests: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


def case_frames(case_table: str, case_paths: Mapping[str, Mapping[str, Path]]) -> tuple[dict[str, Any], str]:
    """Per split, a DataFrame of the cases with their content digests; and the run's data digest.

    Args:
        case_table: CSV with the columns case, group, split, tasks, mr (what ``OUT/cases.csv`` holds).
        case_paths: case id -> role (``mr``, ``ct``, ``mask``, ``labels``) -> file.

    Returns:
        ``({"training": frame, "validation": frame}, data digest)``; a split without cases is left out.
    """
    import pandas as pd

    t0 = time.perf_counter()
    rows = list(csv.DictReader(io.StringIO(case_table)))
    total = 0
    for row in rows:
        row["digest"], read = case_digest(row["case"], case_paths.get(row["case"], {"mr": Path(row["mr"])}))
        total += read
    frames = {}
    for split in CONTEXTS:
        members = [row for row in rows if row["split"] == split]
        if members:
            frames[split] = pd.DataFrame(members, columns=["case", "group", "split", "tasks", "mr", "digest"])
    data_digest = digest_of(f"{split}:{digest_of(frame['digest'])}" for split, frame in frames.items())
    log.info("data digest %s: %d cases, %.0f MB hashed in %.1f s", data_digest[:16], len(rows), total / 1e6,
             time.perf_counter() - t0)
    return frames, data_digest


def log_case_datasets(tracker: Any, case_table: str, case_paths: Mapping[str, Mapping[str, Path]],
                      data_dirs: Iterable[Path]) -> str | None:
    """Log the training and validation cases as the run's dataset inputs and tag the data digest.

    The datasets are named ``<data folder(s)>-training`` and ``<data folder(s)>-validation``; their source
    is the ``--data`` folder(s).

    Args:
        tracker: a :class:`radmtl.tracking.tracker.Tracker`; without an MLflow run nothing is hashed.
        case_table: see :func:`case_frames`.
        case_paths: see :func:`case_frames`.
        data_dirs: the dataset folders the cases came from.

    Returns:
        The data digest, or None when there is no MLflow run.
    """
    if tracker.client is None or getattr(tracker, "disabled", False):
        return None
    import mlflow.data

    folders = [Path(d).resolve() for d in data_dirs]
    prefix = "+".join(folder.name for folder in folders) or "data"
    frames, data_digest = case_frames(case_table, case_paths)
    datasets = []
    for split, frame in frames.items():
        with warnings.catch_warnings():
            # MLflow registers its local-file source twice and warns that a path is ambiguous.
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
            dataset = mlflow.data.from_pandas(frame, source=", ".join(map(str, folders)), name=f"{prefix}-{split}",
                                              digest=digest_of(frame["digest"])[:DATASET_DIGEST_CHARS])
        datasets.append((dataset, split))
    tracker.log_inputs(datasets)
    tracker.set_tags({DATA_DIGEST_TAG: data_digest})
    return data_digest
