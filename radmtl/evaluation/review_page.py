"""``review.html``: one self-contained page per case, for a physicist without an image viewer.

The page holds the review picture as a ``data:image/png;base64`` URI, its CSS inline and no script,
so it opens from a file share or an e-mail attachment on a machine with no network. The verdict and
reasons head it; the case-level fields and one row per organ of ``review.json`` follow, rendered from
whatever keys are present, so a statistic added to ``review.json`` appears without touching this
module. Every piece of text is HTML-escaped: case ids and organ names come from user files.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from numbers import Integral, Real
from typing import Any

VERDICT_COLOURS = {"ok": "#1a9641", "review": "#e66101"}
_UNKNOWN_VERDICT_COLOUR = "#666666"
# Shown in the header or as their own table, so not repeated among the case-level fields.
_HEADED_KEYS = ("case", "verdict", "reasons", "organs")

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; background: #fff; }
h1 { margin: 0 0 0.2em 0; font-size: 1.6em; }
.verdict { display: inline-block; padding: 0.15em 0.6em; border-radius: 0.3em; color: #fff;
           font-size: 1.4em; font-weight: bold; }
ul.reasons { font-size: 1.05em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
p.note { margin: 0.2em 0; color: #444; }
img.review { max-width: 100%; height: auto; border: 1px solid #ccc; }
"""


def verdict_colour(verdict: str) -> str:
    """Green for ``ok``, orange for ``review``, grey for anything else."""
    return VERDICT_COLOURS.get(str(verdict).lower(), _UNKNOWN_VERDICT_COLOUR)


def format_value(value: Any) -> str:
    """A ``review.json`` value as short text: numbers to a readable precision, lists and dicts inline."""
    if hasattr(value, "item") and not isinstance(value, (list, tuple, dict)):
        value = value.item()  # numpy scalar
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Integral):
        return str(int(value))
    if isinstance(value, Real):
        number = float(value)
        if math.isnan(number):
            return "n/a"
        if math.isinf(number):
            return "∞" if number > 0 else "−∞"
        if number == 0 or abs(number) >= 1000:
            return f"{number:.0f}"
        return f"{number:.4g}" if abs(number) >= 1 else f"{number:.3g}"
    if isinstance(value, Mapping):
        return ", ".join(f"{key}: {format_value(item)}" for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(format_value(item) for item in value) or "—"
    return str(value)


def _cell(value: Any) -> str:
    numeric = isinstance(value, Real) and not isinstance(value, bool)
    css = ' class="number"' if numeric else ""
    return f"<td{css}>{html.escape(format_value(value))}</td>"


def _flatten(fields: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts (``thresholds`` …) as ``thresholds.sigma_total_hu`` rows."""
    rows = []
    for key, value in fields.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            rows.extend(_flatten(value, f"{name}."))
        else:
            rows.append((name, value))
    return rows


def _case_table(summary: Mapping[str, Any]) -> str:
    rows = _flatten({key: value for key, value in summary.items() if key not in _HEADED_KEYS})
    if not rows:
        return ""
    body = "".join(f"<tr><th>{html.escape(name)}</th>{_cell(value)}</tr>" for name, value in rows)
    return f"<h2>Case</h2>\n<table>{body}</table>"


def _organ_table(organs: Any) -> str:
    if not isinstance(organs, Mapping) or not organs:
        return ""
    columns: list[str] = []
    for stats in organs.values():
        if isinstance(stats, Mapping):
            columns.extend(key for key in stats if key not in columns)
    head = "<tr><th>organ</th>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in columns) + "</tr>"
    rows = []
    for organ, stats in organs.items():
        stats = stats if isinstance(stats, Mapping) else {"value": stats}
        cells = "".join(_cell(stats.get(column)) for column in columns)
        rows.append(f"<tr><th>{html.escape(str(organ))}</th>{cells}</tr>")
    return f"<h2>Organs</h2>\n<table>{head}{''.join(rows)}</table>"


def review_html(summary: Mapping[str, Any], png: bytes, title: str, notes: Sequence[str] = ()) -> str:
    """The review page of one case.

    Args:
        summary: the content of ``review.json``: ``verdict``, ``reasons`` (list), ``organs``
            (``{name: {statistic: value}}``) and any case-level fields.
        png: the review picture (PNG bytes), embedded as a data URI.
        title: the case name.
        notes: lines shown above the picture (what is flagged, how the panels are scaled).

    Returns:
        The HTML document as text.
    """
    verdict = str(summary.get("verdict", "unknown"))
    reasons = summary.get("reasons") or []
    reasons = [reasons] if isinstance(reasons, str) else reasons
    reason_items = "".join(f"<li>{html.escape(format_value(reason))}</li>" for reason in reasons)
    no_reasons = "no reason to review" if verdict == "ok" else "no reasons given"
    image = base64.b64encode(png).decode("ascii")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">\n<head>\n<meta charset="utf-8">',
        f"<title>{html.escape(title)} — radmtl review: {html.escape(verdict)}</title>",
        f"<style>{_STYLE}</style>\n</head>\n<body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p><span class="verdict" style="background: {verdict_colour(verdict)}">{html.escape(verdict.upper())}</span></p>',
        f'<ul class="reasons">{reason_items}</ul>' if reason_items else f"<p>{no_reasons}</p>",
        *(f'<p class="note">{html.escape(note)}</p>' for note in notes),
        f'<img class="review" alt="review slices of {html.escape(title)}: MR with organ outlines, sCT, '
        f'σ_total and flagged voxels" src="data:image/png;base64,{image}">',
        _organ_table(summary.get("organs")),
        _case_table(summary),
        "</body>\n</html>\n",
    ]
    return "\n".join(part for part in parts if part)
