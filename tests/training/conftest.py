from __future__ import annotations

from pathlib import Path

import pytest

from radmtl.data.phantom import generate_dataset


@pytest.fixture(scope="module")
def phantom_data(tmp_path_factory) -> Path:
    """Four small phantom cases (32 × 32 × 24 voxels) for training runs."""
    root = tmp_path_factory.mktemp("phantom")
    generate_dataset(root, cases=4, seed=3, shape=(32, 32, 24))
    return root
