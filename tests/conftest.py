"""Fixtures shared across the test packages."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def dciodvfy() -> Callable[[Iterable[Path]], str]:
    """Run David Clunie's DICOM validator (Debian ``dicom3tools``) on files; fail on any "Error" line.

    Returns the validator's combined output (warnings are allowed). Where ``dciodvfy`` is missing the
    tests skip, except as root in CI, where ``scripts/test.sh`` installs it: there a missing validator
    is a broken set-up and fails.
    """
    executable = shutil.which("dciodvfy")
    if executable is None:
        if os.geteuid() == 0 and os.environ.get("CI"):
            pytest.fail("dciodvfy not found, although running as root in CI where scripts/test.sh installs "
                        "Debian's dicom3tools; run scripts/test.sh or apt-get install dicom3tools")
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed; scripts/test.sh installs it as root")

    def check(paths: Iterable[Path]) -> str:
        outputs = []
        for path in paths:
            run = subprocess.run([executable, str(path)], capture_output=True, text=True, timeout=60)
            output = (run.stdout + run.stderr).strip()
            errors = [line for line in output.splitlines() if line.startswith("Error")]
            if errors:
                pytest.fail(f"dciodvfy reports {len(errors)} error(s) in {path}:\n{output}", pytrace=False)
            outputs.append(f"{Path(path).name}: {output}")
        return "\n".join(outputs)

    return check
