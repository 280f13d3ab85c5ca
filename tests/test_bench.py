"""scripts/bench.py --quick writes a report whose every figure is a finite positive measurement and
whose ratios are the quotients of the figures printed beside them. No timing is asserted."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench.py"
COMPARISON_HEADER = "| measure | unit | A | B | A / B |"
FIGURE_HEADER = "| measure | unit | value |"


def _sections(text: str) -> list[tuple[str, str]]:
    """(number, markdown body) of each ``## N. title`` section; the CUDA repeats are all numbered 6."""
    return [(part.split(".", 1)[0], part) for part in re.split(r"^## ", text, flags=re.MULTILINE)[1:]]


def _table(body: str, header: str) -> list[list[str]]:
    """The rows of the table under ``header`` in ``body`` (cells stripped), header and rule left out."""
    lines = body.splitlines()
    if header not in lines:
        return []
    rows = []
    for line in lines[lines.index(header) + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def _positive(cell: str) -> float:
    value = float(cell)
    assert math.isfinite(value) and value > 0, cell
    return value


@pytest.mark.slow
def test_quick_report_has_every_section_with_consistent_ratios(tmp_path: Path) -> None:
    out = tmp_path / "tmp" / "benchmarks.md"
    # One thread: tiny tensors gain nothing from more, and OpenMP workers spinning on a shared 2-core
    # machine about doubled the run (17 s instead of 39 s with the machine busy).
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out)], capture_output=True,
                         text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    text = out.read_text()

    for label in ("| CPU |", "| cores |", "| devices measured |", "| torch / MONAI / Python |", "| date (UTC) |",
                  "| load average"):
        assert label in text
    assert re.search(r"\| command \| `.*scripts/bench\.py --quick --out .*benchmarks\.md` \|", text)

    numbered = _sections(text)
    assert [number for number, _ in numbered][:7] == ["1", "2", "3", "4", "5", "6", "7"], [n for n, _ in numbered]
    for number, body in numbered:  # the CUDA repeats of section 6 too, where a GPU ran them
        rows = _table(body, COMPARISON_HEADER)
        assert rows or "No GPU was available" in body, f"section {number} has no comparison"
        for measure, _unit, a, b, ratio in rows:
            a, b, ratio = _positive(a), _positive(b), _positive(ratio)
            # A and B carry 4 significant digits, A / B 3 decimals: both roundings together stay below this.
            assert ratio == pytest.approx(a / b, rel=2e-3, abs=1e-3), measure
            assert f"ratio {ratio:.3f}" in run.stdout, f"{measure}: not printed as it was measured"
        for _measure, _unit, value in _table(body, FIGURE_HEADER):
            _positive(value)

    sections = dict(numbered[:7])

    stages = [row[0] for row in _table(sections["1"], FIGURE_HEADER) if "stage" in row[0]]
    # A stage shorter than provenance.json's millisecond rounding is left out, on tiny quick inputs too.
    assert any("predict" in name for name in stages) and len(stages) >= 3, stages
    assert any(row[0].startswith("parameters") for row in _table(sections["3"], COMPARISON_HEADER))
    assert any("patches/s" in row[0] for row in _table(sections["4"], COMPARISON_HEADER))
    assert "peak RSS" in sections["5"]
    cohort = [row[0] for row in _table(sections["6"], COMPARISON_HEADER)]
    assert any("2 processes (A) vs 1 (B), `.nii.gz`" in m for m in cohort) and any("`.nii.gz` (A) vs `.nii` (B)" in m
                                                                                 for m in cohort), cohort
    variants = [row[0] for row in _table(sections["1"], COMPARISON_HEADER)]
    assert any("`.nii.gz` outputs" in m for m in variants) and any("--no-review" in m for m in variants), variants
    if "No GPU was available on the machine that ran it" not in sections["7"]:
        assert "CUDA" in sections["7"] and "peak GPU memory" in text
