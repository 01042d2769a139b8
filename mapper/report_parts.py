"""HTML pieces shared by report.html and the passes' report sections (kept apart from
mapper.report, which imports those sections)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from html import escape
from typing import Any

# Layout rules both reports (compile and study) share: a table never widens the page (its
# container scrolls instead, and long names wrap), a chart scales down to its container.
LAYOUT_STYLE = """
.scroll{overflow-x:auto;max-width:100%}.scroll table{margin:.2rem 0}
td{overflow-wrap:break-word}td.w{overflow-wrap:anywhere}td.n{white-space:nowrap}
svg{max-width:100%;height:auto}img{max-width:100%;height:auto}
"""


def html_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], numeric: set[int],
               raw: Collection[int] = ()) -> str:
    """A table with escaped cells; columns whose index is in `numeric` right-aligned, those
    in `raw` already HTML (built by the caller from escaped parts). Wrapped in a container
    that scrolls sideways rather than let a wide table widen the page."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)

    def cell(index: int, value: Any) -> str:
        text = str(value) if index in raw else escape(str(value))
        if index in numeric:
            return f"<td class='n'>{text}</td>"
        return f"<td{_wrap(str(value))}>{text}</td>"

    body = "".join("<tr>" + "".join(cell(i, c) for i, c in enumerate(row)) + "</tr>"
                   for row in rows)
    return scroll(f"<table><tr>{head}</tr>{body}</table>")


def _wrap(text: str) -> str:
    """The class of a cell holding a long unbroken name (a node or tensor path), which may
    break anywhere rather than widen its column; other cells break only between words."""
    return " class='w'" if any(len(word) > 24 for word in text.split()) else ""


def scroll(html: str) -> str:
    """`html` (a table) in a container that scrolls sideways when it is wider than the page."""
    return f"<div class='scroll'>{html}</div>"


def svg_open(width: float, height: float, label: str = "", extra: str = "") -> str:
    """An <svg> start tag drawn in a `width` x `height` coordinate system (viewBox) that
    scales down with its container (the layout style's max-width) and keeps its aspect."""
    aria = f" aria-label='{escape(label)}'" if label else ""
    return (f"<svg viewBox='0 0 {width:g} {height:g}' width='{width:g}' height='{height:g}' "
            f"role='img'{aria}{extra}>")
