"""What the training tests share: reading a run's metrics.jsonl, starting `radmtl train` as a process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def epoch_rows(path: Path) -> dict[int, dict]:
    return {int(r["epoch"]): r for r in read_jsonl(path) if "epoch" in r}


def train_process(args: list[str], cwd: Path) -> subprocess.Popen:
    """`radmtl -q train ARGS` in its own process, stdout and stderr together, unbuffered."""
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "radmtl", "-q", "train", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
