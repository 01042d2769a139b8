"""The arena pass's report section: the arena against its lower bound and greedy-by-size."""

from __future__ import annotations

from html import escape
from typing import Any

from mapper.report_parts import svg_open
from mapper.units import format_size


def arena_section(plan: dict[str, Any]) -> str:
    """HTML for `plan.arena` (empty when the pass did not run)."""
    arena = plan.get("arena")
    if not arena:
        return ""
    bound = arena["lower_bound"]
    rows = [("arena (this plan)", arena["size"]), ("lower bound (most bytes live at once)", bound),
            ("greedy-by-size", arena["greedy_by_size"])]
    record = next((p for p in plan.get("passes", []) if p.get("name") == "arena"), None)
    solver = (record or {}).get("solver") or {}
    widest = max(value for _, value in rows) or 1
    cells = []
    for label, value in rows:
        gap = f"{value / bound - 1:+.2%}" if bound else "-"
        bar = 360 * value / widest
        cells.append(f"<tr><td>{escape(label)}</td><td class='n'>{escape(format_size(value))}"
                     f"</td><td class='n'>{value:,}</td><td class='n'>{gap}</td><td>"
                     f"{svg_open(370, 14, label)}<rect width='{bar:.1f}' height='12' "
                     "fill='#0969da'/></svg></td></tr>")
    scope = f" for {solver['scope']}" if solver.get("scope") else ""
    proof = escape(f"{solver.get('name', '?')}: {solver.get('status', '?')}{scope}") \
        if solver else ""
    return ("<h2>Activation arena</h2>"
            f"<p class='muted'>{len(arena['buffers'])} activation buffers in one device "
            f"allocation; {proof}</p><div class='scroll'><table><tr><th></th><th>size</th>"
            "<th>bytes</th><th>vs lower bound</th><th></th></tr>" + "".join(cells)
            + "</table></div>")
