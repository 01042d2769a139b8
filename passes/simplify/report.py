"""The simplify pass's report section: op counts before and after, and what each step did."""

from __future__ import annotations

from html import escape
from typing import Any

from mapper.report_parts import html_table


def simplify_section(plan: dict[str, Any]) -> str:
    """HTML for `plan.simplify` (empty when the pass did not run)."""
    section = plan.get("simplify")
    if not section:
        return ""
    before, after = section["before"], section["after"]
    ops = sorted(set(before) | set(after),
                 key=lambda op: (-max(before.get(op, 0), after.get(op, 0)), op))
    rows = [(op, before.get(op, 0), after.get(op, 0), after.get(op, 0) - before.get(op, 0))
            for op in ops]
    rows.append(("all nodes", section["nodes_before"], section["nodes_after"],
                 section["nodes_after"] - section["nodes_before"]))
    steps = section.get("rules") or {}
    step_rows = [(name, count) for name, count in steps.items()]
    return ("<h2>Graph simplification</h2>"
            f"<p class='muted'>{section['nodes_before']} nodes as loaded, "
            f"{section['nodes_after']} after simplification: the graph every later pass plans "
            "and that mapper emits (standard ONNX ops, same numerics).</p>"
            + html_table(["op", "before", "after", "change"], rows, {1, 2, 3})
            + ("<h3>Steps</h3>" + html_table(["step", "nodes removed or rewrites"], step_rows,
                                             {1}) if step_rows else
               f"<p>{escape('Nothing to simplify.')}</p>"))
