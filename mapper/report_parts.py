"""HTML pieces shared by report.html and the passes' report sections (kept apart from
mapper.report, which imports those sections)."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any


def html_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], numeric: set[int]
               ) -> str:
    """A table with escaped cells; columns whose index is in `numeric` right-aligned."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td class='n'>{escape(str(c))}</td>" if i in numeric
                         else f"<td>{escape(str(c))}</td>" for i, c in enumerate(row)) + "</tr>"
        for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"
