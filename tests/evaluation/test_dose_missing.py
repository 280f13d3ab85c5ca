"""Without the dose extra, the engine and γ say in one line how to install it."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from radmtl.errors import RadmtlError
from radmtl.evaluation.dose.errors import DoseDependencyError


def test_missing_engine_and_gamma_library_say_how_to_install(monkeypatch):
    from radmtl.evaluation.dose.engine import plan_on_ct
    from radmtl.evaluation.dose.gamma import gamma_index

    monkeypatch.setitem(sys.modules, "pyRadPlan", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "pymedphys", None)
    ct_hu, mask = np.zeros((4, 4, 4)), np.ones((4, 4, 4), bool)
    with pytest.raises(DoseDependencyError, match=r'pip install "radmtl\[dose\]".*--no-deps "pyradplan==0.5.0"') as err:
        plan_on_ct(ct_hu, np.eye(4), {"prostate": mask}, "prostate", mask, "protons")
    assert isinstance(err.value, RadmtlError) and "\n" not in str(err.value)
    with pytest.raises(DoseDependencyError, match="pymedphys"):
        gamma_index(np.ones((3, 3, 3)), np.ones((3, 3, 3)), (1, 1, 1), 2, 2)
