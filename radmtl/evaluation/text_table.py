"""The plain-text tables the commands print (evaluate's per-case and per-group tables, the dose and range
tables, infer's summary): one rule for column widths, so every table lines up the same way."""

from __future__ import annotations

from collections.abc import Sequence


def table_lines(header: Sequence[str], cells: Sequence[Sequence[str]], rule: bool = False) -> list[str]:
    """The lines of a table, each column left-aligned to its widest cell; ``rule``: a line of dashes under
    the header."""
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(header)]
    lines = ["  ".join(v.ljust(w) for v, w in zip(header, widths)).rstrip()]
    if rule:
        lines.append("  ".join("-" * w for w in widths))
    return lines + ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
