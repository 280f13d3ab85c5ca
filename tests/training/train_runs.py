"""What the training tests share: a run's epoch rows, starting `radmtl train` as a process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from radmtl.nn.checkpoint import load_checkpoint
from radmtl.tracking.metrics_file import read_records


def epoch_rows(path: Path) -> dict[int, dict]:
    """A run's epoch rows by epoch, read as radmtl reads them (a killed run's file may hold a cut line)."""
    return {int(r["epoch"]): r for r in read_records(path) if "epoch" in r}


def train_process(args: list[str], cwd: Path) -> subprocess.Popen:
    """`radmtl -q train ARGS` in its own process, stdout and stderr together, unbuffered."""
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "radmtl", "-q", "train", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_epoch(process: subprocess.Popen, latest: Path, epoch: int, timeout: float = 240) -> None:
    """Return once the run's latest checkpoint holds `epoch`, with the run still going (to be killed)."""
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if latest.exists() and load_checkpoint(latest)["epoch"] >= epoch:
            break
        time.sleep(0.05)
    assert process.poll() is None, "run finished before it could be killed"
