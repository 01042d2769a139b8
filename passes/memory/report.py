"""The memory pass's report section: the traffic table against the baselines and a timeline
of the scratchpad (address over steps, one box per residency)."""

from __future__ import annotations

import zlib
from html import escape
from typing import Any

from mapper.report_parts import svg_open
from mapper.units import format_size

_COLORS = ["#0969da", "#1a7f37", "#bf3989", "#9a6700", "#8250df", "#cf222e", "#1b7c83",
           "#953800", "#0550ae", "#116329", "#a40e26", "#6639ba"]


def _color(name: str) -> str:
    # A stable colour per tensor (crc32, not hash(): the report must be reproducible).
    return _COLORS[zlib.crc32(name.encode()) % len(_COLORS)]


def timeline_svg(memory: dict[str, Any], steps: int, width: int = 1000, height: int = 320
                 ) -> str:
    """Residency over steps: x = step, y = scratchpad address. The axis tops out at the
    capacity, or at twice the footprint when the plan uses under half of it (a 50 MiB L2
    holding 600 KiB would otherwise draw as an empty box), with the capacity noted."""
    sizes = memory["tensors"]
    used = max((r["offset"] + sizes.get(r["tensor"], 0) for r in memory["residency"]),
               default=0)
    capacity = max(1, memory["capacity"])
    zoomed = 0 < 2 * used < capacity
    if zoomed:
        capacity = 2 * used
    pad_l, pad_r, pad_t, pad_b = 84, 10, 10, 28
    plot_w, plot_h = width - pad_l - pad_r, height - pad_t - pad_b
    steps = max(1, steps)

    def x(step: float) -> float:
        return pad_l + plot_w * step / steps

    def y(address: float) -> float:
        return pad_t + plot_h * (1 - address / capacity)

    parts = [svg_open(width, height, "scratchpad residency over steps"),
             f"<rect x='{pad_l}' y='{pad_t}' width='{plot_w}' height='{plot_h}' fill='#f6f8fa' "
             "stroke='#d0d7de'/>"]
    for r in memory["residency"]:
        size = sizes.get(r["tensor"], 0)
        top, bottom = y(r["offset"] + size), y(r["offset"])
        parts.append(
            f"<rect x='{x(r['start']):.1f}' y='{top:.1f}' "
            f"width='{max(0.8, x(r['end'] + 1) - x(r['start'])):.1f}' "
            f"height='{max(0.8, bottom - top):.1f}' fill='{_color(r['tensor'])}' "
            f"fill-opacity='0.75'><title>{escape(r['tensor'])}: steps {r['start']}-{r['end']}, "
            f"{format_size(size)} at {r['offset']}</title></rect>")
    for fraction in (0.0, 0.5, 1.0):
        parts.append(f"<text class='tick' x='{pad_l - 4}' y='{y(capacity * fraction) + 4:.1f}' "
                     f"text-anchor='end'>{escape(format_size(capacity * fraction))}</text>")
    if zoomed:
        parts.append(f"<text x='{pad_l + plot_w - 6}' y='{pad_t + 16}' text-anchor='end'>"
                     f"axis zoomed to 2 x the footprint; capacity "
                     f"{escape(format_size(memory['capacity']))}</text>")
    middle = pad_t + plot_h / 2
    parts.append(f"<text class='tick' x='{pad_l}' y='{height - 8}'>step 0</text>"
                 f"<text class='tick' x='{width - pad_r}' y='{height - 8}' text-anchor='end'>"
                 f"step {steps - 1}</text><text class='axis' x='{pad_l + plot_w / 2}' "
                 f"y='{height - 8}' text-anchor='middle'>schedule step (operator) →</text>"
                 f"<text class='axis' x='14' y='{middle}' transform='rotate(-90 14 {middle})' "
                 "text-anchor='middle'>scratchpad address (bytes)</text></svg>")
    return "".join(parts)


def _traffic_rows(traffic: dict[str, Any]) -> list[tuple[str, int]]:
    baselines = traffic.get("baselines", {})
    return [("this plan", traffic["total"]),
            *((name, value) for name, value in sorted(baselines.items()))]


def memory_section(plan: dict[str, Any]) -> str:
    """The report section for `plan["memory"]` (empty when the pass did not run)."""
    memory = plan.get("memory")
    if not memory:
        return ""
    traffic = memory["traffic"]
    compulsory = traffic["compulsory"]
    belady = traffic.get("baselines", {}).get("belady")
    rows = []
    for label, total in _traffic_rows(traffic):
        extra = total - compulsory
        versus = (f"{100 * (total - belady) / belady:+.1f}%" if belady else "-")
        rows.append(f"<tr><td>{escape(label)}</td><td class='n'>{escape(format_size(total))}"
                    f"</td><td class='n'>{total}</td><td class='n'>{escape(format_size(extra))}"
                    f"</td><td class='n'>{versus}</td></tr>")
    table = ("<div class='scroll'><table><tr><th>plan</th><th>off-chip</th><th>bytes</th>"
             "<th>non-compulsory</th><th>vs belady</th></tr>" + "".join(rows) + "</table></div>")
    solver = next((p.get("solver") for p in plan.get("passes", []) if p["name"] == "memory"),
                  None)
    proof = ""
    if solver and solver.get("bound") is not None:
        scope = solver.get("scope")
        proof = (f" CP-SAT {escape(str(solver['status']))}"
                 + (f" for {escape(str(scope))}" if scope else "")
                 + f"; proven lower bound {escape(format_size(solver['bound']))}"
                 + (" for that order alone" if scope and "order" in str(scope)
                    and not str(scope).startswith("any") else "") + ".")
    steps = len(plan.get("schedule", {}).get("order", []))
    return (
        "<h2>Scratchpad memory</h2>"
        f"<p class='muted'>Level '{escape(memory['level'])}', capacity "
        f"{escape(format_size(memory['capacity']))}, offsets aligned to {memory['alignment']} "
        f"B; {len(memory['residency'])} residencies, footprint "
        f"{escape(format_size(memory.get('peak', 0)))}. Compulsory bytes (weights and inputs "
        f"read once, outputs written once): {escape(format_size(compulsory))}.{proof}</p>"
        + table + "<h3>Residency timeline</h3>" + timeline_svg(memory, steps))
