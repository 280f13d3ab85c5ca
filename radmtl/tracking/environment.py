"""What produced a run: package versions, the git commit of the radmtl source, host and user."""

from __future__ import annotations

import getpass
import importlib.metadata
import platform
import socket
import subprocess
from pathlib import Path


def package_version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _git(*args: str) -> str | None:
    source = Path(__file__).resolve().parent
    try:
        done = subprocess.run(
            ["git", "-C", str(source), *args], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def run_tags(device: str) -> dict[str, str]:
    """Tags that say what produced a run: versions, git commit of the radmtl source, device, host.

    Args:
        device: the torch device training runs on, e.g. ``"cpu"`` or ``"cuda:0"``.
    """
    import torch

    import radmtl

    tags = {
        "radmtl.version": radmtl.__version__,
        "radmtl.torch_version": torch.__version__,
        "radmtl.monai_version": package_version("monai"),
        "radmtl.mlflow_version": package_version("mlflow"),
        "radmtl.python_version": platform.python_version(),
        "radmtl.device": str(device),
        "radmtl.hostname": socket.gethostname(),
    }
    # An installed wheel has no .git: the commit is simply left out then.
    commit = _git("rev-parse", "HEAD")
    if commit:
        tags["radmtl.git_commit"] = commit
        # MLflow's own key, so that the UI shows the commit in the run's overview.
        tags["mlflow.source.git.commit"] = commit
        status = _git("status", "--porcelain", "--untracked-files=no")
        if status is not None:
            tags["radmtl.git_dirty"] = str(bool(status)).lower()
    return tags


def user_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
