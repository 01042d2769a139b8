"""report.html: a self-contained human summary of a plan (tables and inline SVG charts).

The report is a pure function of plan.json, so what a person reads and what a CI pipeline
checks can never disagree.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from html import escape
from typing import Any

from mapper.compression.section import report_section as compression_section
from mapper.passes.arena.report import arena_section
from mapper.passes.memory.report import memory_section
from mapper.passes.moe.report import moe_section
from mapper.passes.tiling.report import kernels_section
from mapper.report_parts import html_table
from mapper.units import format_size, format_time

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1100px;
color:#1d2329;padding:0 1rem}h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;
border-bottom:1px solid #d0d7de;padding-bottom:.3rem}table{border-collapse:collapse;
font-size:.85rem}td,th{border:1px solid #d0d7de;padding:.25rem .5rem;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}th{background:#f6f8fa}
.cards{display:flex;gap:1rem;flex-wrap:wrap}.card{border:1px solid #d0d7de;border-radius:6px;
padding:.6rem 1rem}.card b{display:block;font-size:1.2rem}.muted{color:#57606a}
svg text{font-size:11px;fill:#1d2329}.ok{color:#1a7f37}.fallback{color:#9a6700}
.skipped{color:#57606a}.failed{color:#cf222e}
"""
_PALETTE = ["#0969da", "#1a7f37", "#bf3989", "#9a6700", "#8250df", "#cf222e", "#1b7c83",
            "#953800", "#57606a", "#0550ae", "#116329", "#a40e26"]


def _bar_chart(items: Sequence[tuple[str, float]], total: float, unit: str) -> str:
    """Horizontal bars, one per item, labelled with value and share of `total`."""
    width, bar_h, label_w = 760, 20, 170
    height = bar_h * len(items) + 10
    biggest = max((value for _, value in items), default=1.0) or 1.0
    parts = [f"<svg width='{width}' height='{height}' role='img'>"]
    for index, (label, value) in enumerate(items):
        y = 5 + index * bar_h
        length = (width - label_w - 150) * value / biggest
        share = 100.0 * value / total if total else 0.0
        text = format_time(value) if unit == "s" else f"{value:.3g}"
        parts.append(f"<text x='0' y='{y + 14}'>{escape(label)}</text>"
                     f"<rect x='{label_w}' y='{y + 3}' width='{length:.1f}' height='{bar_h - 6}'"
                     f" fill='{_PALETTE[index % len(_PALETTE)]}'/>"
                     f"<text x='{label_w + length + 6:.1f}' y='{y + 14}'>{text} "
                     f"({share:.1f}%)</text>")
    parts.append("</svg>")
    return "".join(parts)


def _roofline(ops: Sequence[dict[str, Any]], hardware: dict[str, Any]) -> str:
    """Log-log roofline: attained FLOP/s against arithmetic intensity, with the roofs."""
    points = [(op["flops"] / op["bytes"], op["flops"] / op["time_s"], op["op"])
              for op in ops if op["flops"] > 0 and op["bytes"] > 0 and op["time_s"] > 0]
    peaks = hardware.get("compute", {}).get("peak_ops", {})
    memories = hardware.get("memory", {})
    if not points or not peaks or not memories:
        return "<p class='muted'>No operator with both FLOPs and bytes to plot.</p>"
    bandwidth = list(memories.values())[-1]["bandwidth"]
    top = max(peaks.values())
    xs = [p[0] for p in points] + [top / bandwidth]
    x_lo, x_hi = math.log10(min(xs)) - 0.3, math.log10(max(xs)) + 0.5
    y_hi = math.log10(top) + 0.3
    y_lo = min(math.log10(min(p[1] for p in points)), y_hi - 3) - 0.3
    width, height, pad = 760, 360, 50

    def sx(value: float) -> float:
        return pad + (math.log10(value) - x_lo) / (x_hi - x_lo) * (width - 2 * pad)

    def sy(value: float) -> float:
        return height - pad - (math.log10(value) - y_lo) / (y_hi - y_lo) * (height - 2 * pad)

    parts = [f"<svg width='{width}' height='{height}' role='img'>",
             f"<rect x='{pad}' y='{pad}' width='{width - 2 * pad}' height='{height - 2 * pad}' "
             "fill='none' stroke='#d0d7de'/>"]
    # Roofs for the dtypes the ops actually ran at, so the chart shows the ceilings that bind.
    used = {op["dtype"] for op in ops}
    roofs = sorted(((d, p) for d, p in peaks.items() if d in used), key=lambda item: -item[1])
    for index, (dtype, peak) in enumerate(roofs[:4] or [max(peaks.items(),
                                                            key=lambda item: item[1])]):
        knee = peak / bandwidth
        x0 = 10 ** x_lo
        parts.append(f"<polyline fill='none' stroke='#8c959f' stroke-dasharray='4 3' points='"
                     f"{sx(x0):.1f},{sy(max(x0 * bandwidth, 10 ** y_lo)):.1f} "
                     f"{sx(knee):.1f},{sy(peak):.1f} {sx(10 ** x_hi):.1f},{sy(peak):.1f}'/>"
                     f"<text x='{width - pad - 4 - 110 * index}' y='{sy(peak) - 4:.1f}' "
                     "text-anchor='end'>"
                     f"{escape(dtype)} {peak / 1e12:.3g} TOPS</text>")
    colors: dict[str, str] = {}
    for x, y, op in points:
        color = colors.setdefault(op, _PALETTE[len(colors) % len(_PALETTE)])
        parts.append(f"<circle cx='{sx(x):.1f}' cy='{sy(y):.1f}' r='3' fill='{color}' "
                     f"fill-opacity='0.7'><title>{escape(op)}: {x:.3g} FLOP/B, "
                     f"{y / 1e12:.3g} TFLOP/s</title></circle>")
    parts.append(f"<text x='{width / 2}' y='{height - 12}' text-anchor='middle'>arithmetic "
                 "intensity (FLOP/byte, log)</text>"
                 f"<text x='14' y='{height / 2}' transform='rotate(-90 14 {height / 2})' "
                 "text-anchor='middle'>attained FLOP/s (log)</text>")
    parts.append("</svg>")
    legend = " ".join(f"<span style='color:{color}'>&#9679;</span>&nbsp;{escape(op)}"
                      for op, color in colors.items())
    return "".join(parts) + f"<p class='muted'>{legend}</p>"


def _estimate_section(plan: dict[str, Any]) -> str:
    estimate = plan.get("estimate")
    if not estimate:
        return ""
    ops = estimate["ops"]
    by_type: dict[str, float] = defaultdict(float)
    for op in ops:
        by_type[op["op"]] += op["time_s"]
    total = estimate["latency_s"]
    ranked = sorted(by_type.items(), key=lambda item: (-item[1], item[0]))
    shown = ranked[:12]
    if len(ranked) > 12:
        shown.append(("other", sum(value for _, value in ranked[12:])))
    slowest = sorted(ops, key=lambda op: (-op["time_s"], op["node"]))
    headers = ["node", "op", "dtype", "GFLOP", "bytes", "time", "bound", "share"]

    def rows(selection: Sequence[dict[str, Any]]) -> list[list[Any]]:
        return [[op["node"], op["op"], op["dtype"], f"{op['flops'] / 1e9:.4g}",
                 format_size(op["bytes"]), format_time(op["time_s"]), op["bound"],
                 f"{100 * op['time_s'] / total:.1f}%" if total else "-"] for op in selection]

    return (
        "<h2>Operator time by type</h2>"
        f"<p class='muted'>Roofline estimate at precision '{escape(estimate['precision'])}': "
        "each op at max(FLOPs / peak, bytes / main-memory bandwidth) plus the per-op "
        "overhead, run one after another.</p>"
        + _bar_chart(shown, total, "s")
        + "<h2>Roofline</h2>" + _roofline(ops, plan["hardware"])
        + "<h2>Slowest operators</h2>" + html_table(headers, rows(slowest[:25]), {3, 4, 5, 7})
        + f"<details><summary>All {len(ops)} operators in schedule order</summary>"
        + html_table(headers, rows(ops), {3, 4, 5, 7}) + "</details>")


def _fit_and_budgets(plan: dict[str, Any]) -> str:
    """Whether the model fits, level by level with the bytes on both sides, and the budgets."""
    from mapper.budgets import table

    estimate = plan.get("estimate") or {}
    parts = []
    if estimate.get("memory_fit"):
        rows = [[row["memory"], " + ".join(row["holds"]), format_size(row["bytes"]),
                 format_size(row["capacity"]),
                 "<span class='ok'>fits</span>" if row["fits"]
                 else "<span class='failed'>does not fit</span>"]
                for row in estimate["memory_fit"]]
        parts.append("<h2>Does it fit?</h2>" + html_table(
            ["memory", "holds", "needs", "capacity", "verdict"], rows, {2, 3}, raw={4}))
    if plan.get("budgets"):
        _, *body = table(plan["budgets"])
        rows = [[*row[:3], f"<span class='{'ok' if row[3] == 'ok' else 'failed'}'>"
                 f"{escape(row[3])}</span>"] for row in body]
        parts.append("<h2>Budgets</h2>" + html_table(
            ["budget", "limit", "value", "verdict"], rows, {1, 2}, raw={3}))
    return "".join(parts)


# Each renderer takes the plan and returns its HTML (empty when its section is absent);
# a pass with a report section adds its renderer here, in pipeline order.
SECTION_RENDERERS: tuple[Callable[[dict[str, Any]], str], ...] = (
    compression_section,
    moe_section,
    kernels_section,
    memory_section,
    arena_section,
    _estimate_section,
)


def render_report(plan: dict[str, Any]) -> str:
    """The whole report.html for a plan."""
    hardware = plan["hardware"]
    estimate = plan.get("estimate") or {}
    cards = [("hardware", hardware.get("name", "?")),
             ("nodes", str(len(plan["schedule"]["order"])))]
    if estimate:
        cards += [("estimated latency", format_time(estimate["latency_s"])),
                  ("peak device memory", format_size(estimate["peak_device_bytes"])),
                  ("off-chip traffic", format_size(estimate["offchip_bytes"])),
                  ("fits the device", "yes" if estimate["fits"] else "NO")]
    card_html = "".join(f"<div class='card'><span class='muted'>{escape(k)}</span>"
                        f"<b>{escape(v)}</b></div>" for k, v in cards)
    pass_rows = [[p["name"], p["status"], f"{p['seconds']:.3f} s",
                  (f"{p['solver']['name']} {p['solver']['status']}"
                   + (f" ({p['solver']['scope']})" if p["solver"].get("scope") else "")
                   if p["solver"] else "-"),
                  "; ".join(p["notes"]) or "-"] for p in plan["passes"]]
    notes = plan["model"].get("load_notes") or []
    notes_html = ("<ul>" + "".join(f"<li>{escape(n)}</li>" for n in notes) + "</ul>"
                  if notes else "<p class='muted'>The model needed no repair.</p>")
    shapes = ", ".join(f"{k}: {'x'.join(map(str, v))}"
                       for k, v in plan["model"]["input_shapes"].items())
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>mapper report: {escape(plan['model']['path'])}</title>"
        f"<style>{_STYLE}</style></head><body>"
        f"<h1>mapper report: {escape(plan['model']['path'])}</h1>"
        f"<p class='muted'>mapper {escape(plan['mapper_version'])} · inputs {escape(shapes)} · "
        f"sha256 {escape(plan['model']['sha256'][:16])}…</p>"
        f"<div class='cards'>{card_html}</div>"
        + _fit_and_budgets(plan)
        + "<h2>Passes</h2>"
        + html_table(["pass", "status", "time", "solver", "notes"], pass_rows, set())
        + "<h2>Loading</h2>" + notes_html
        + "".join(render(plan) for render in SECTION_RENDERERS)
        + "</body></html>\n")
