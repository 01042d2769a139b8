"""HTML pieces shared by report.html and the passes' report sections (kept apart from
mapper.report, which imports those sections)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from html import escape
from typing import Any


def html_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], numeric: set[int],
               raw: Collection[int] = ()) -> str:
    """A table with escaped cells; columns whose index is in `numeric` right-aligned, those
    in `raw` already HTML (built by the caller from escaped parts)."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)

    def cell(index: int, value: Any) -> str:
        text = str(value) if index in raw else escape(str(value))
        return f"<td class='n'>{text}</td>" if index in numeric else f"<td>{text}</td>"

    body = "".join("<tr>" + "".join(cell(i, c) for i, c in enumerate(row)) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"
