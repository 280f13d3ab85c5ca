"""Files that appear whole or not at all: written under a hidden temporary name beside the final one and
renamed onto it (``os.replace``, atomic on one file system) only when the writing succeeded."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary name keeps the suffix (nibabel picks gzip from ``.nii.gz``) and starts with a
    dot so a crash never leaves a file under the final name or one that looks like an output.
    """
    path = Path(path)
    tmp = path.with_name(f".{uuid.uuid4().hex[:8]}.tmp.{path.name}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
