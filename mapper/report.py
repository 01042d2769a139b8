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
from mapper.passes.simplify.report import simplify_section
from mapper.passes.tiling.report import kernels_section
from mapper.report_parts import LAYOUT_STYLE, html_table, svg_open
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
.skipped{color:#57606a}.failed{color:#cf222e}table.setup th{white-space:nowrap;
vertical-align:top}code{background:#f6f8fa;padding:0 .2rem;border-radius:3px;font-size:.85em}
ul.next li{margin:.3rem 0}table.setup{margin-bottom:1rem}
svg text.axis{font-size:12px;font-weight:600}
"""
_PALETTE = ["#0969da", "#1a7f37", "#bf3989", "#9a6700", "#8250df", "#cf222e", "#1b7c83",
            "#953800", "#57606a", "#0550ae", "#116329", "#a40e26"]


def _bar_chart(items: Sequence[tuple[str, float]], total: float, unit: str) -> str:
    """Horizontal bars, one per item, labelled with value and share of `total`."""
    width, bar_h, label_w = 760, 20, 170
    height = bar_h * len(items) + 10
    biggest = max((value for _, value in items), default=1.0) or 1.0
    parts = [svg_open(width, height, "operator time by type")]
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


_SI = {-3: "m", 0: "", 3: "k", 6: "M", 9: "G", 12: "T", 15: "P", 18: "E"}


def _si(value: float) -> str:
    """A decade as a short tick label: 0.01, 0.1, 1, 10, 100, 1k, 10k ... 1G, 10T."""
    exponent = round(math.log10(value))
    if -2 <= exponent <= 2:
        return f"{value:g}"
    base = 3 * math.floor(exponent / 3)
    suffix = _SI.get(base)
    if suffix is None:
        return f"1e{exponent}"
    return f"{10 ** (exponent - base):g}{suffix}"


def _rate(value: float, unit: str) -> str:
    exponent = 3 * math.floor(math.log10(value) / 3) if value > 0 else 0
    suffix = _SI.get(exponent, "")
    scale = 10 ** exponent if suffix or exponent == 0 else 1
    return f"{value / scale:.3g} {suffix}{unit}"


def roofline_points(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Each priced operator as the roofline plots it: FLOPs over the bytes its time was
    priced on (a tiled kernel's own main-memory bytes where its record has them, e.g. an
    accelerator kernel tiled at a narrower dtype than the graph's), attained FLOP/s, and the
    dtype whose peak bounds it (the tiled kernel's dtype for a tiled op)."""
    kernels = {k["node"]: k for k in plan.get("kernels") or [] if k.get("node")}
    points = []
    for op in (plan.get("estimate") or {}).get("ops", []):
        if op["flops"] <= 0 or op["bytes"] <= 0 or op["time_s"] <= 0:
            continue
        moved, dtype = op["bytes"], op["dtype"]
        kernel = kernels.get(op["node"]) if op.get("source") == "tiling" else None
        if kernel:
            dtype = kernel["dtype"]
            moved = (kernel.get("model") or {}).get("dram_bytes") or moved
        points.append({"node": op["node"], "op": op["op"], "dtype": dtype,
                       "intensity": op["flops"] / moved,
                       "attained": op["flops"] / op["time_s"],
                       "tiled": kernel is not None})
    return points


def roofline_roofs(plan: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """The roofs the roofline draws: ({dtype: peak FLOP/s} for the dtypes the operators ran
    at, {memory level: bandwidth} for main memory and, where the memory pass placed bytes on
    chip (the estimate then prices them at that level's bandwidth), the managed level)."""
    hardware = plan["hardware"]
    peaks = hardware.get("compute", {}).get("peak_ops", {})
    memories = hardware.get("memory", {})
    used = {point["dtype"] for point in roofline_points(plan)}
    ceilings = {d: float(p) for d, p in peaks.items() if d in used and p}
    if not ceilings and peaks:
        best = max(peaks, key=lambda d: peaks[d])
        ceilings = {best: float(peaks[best])}
    slopes: dict[str, float] = {}
    if memories:
        main = list(memories)[-1]
        slopes[main] = float(memories[main]["bandwidth"])
    level = (plan.get("memory") or {}).get("level")
    if level in memories and plan.get("estimate"):
        slopes[level] = float(memories[level]["bandwidth"])
    return ceilings, slopes


def roof_at(intensity: float, dtype: str, ceilings: dict[str, float],
            slopes: dict[str, float]) -> float:
    """The highest drawn roof over `intensity` for an op whose dtype is `dtype`."""
    peak = ceilings.get(dtype, max(ceilings.values()))
    return min(peak, intensity * max(slopes.values()))


def _roofline(plan: dict[str, Any]) -> str:
    """Log-log roofline: attained FLOP/s against arithmetic intensity, with the compute roofs
    of the dtypes present and the bandwidth roofs of the levels that served bytes."""
    points = roofline_points(plan)
    ceilings, slopes = roofline_roofs(plan)
    if not points or not ceilings or not slopes:
        return "<p class='muted'>No operator with both FLOPs and bytes to plot.</p>"
    top = max(ceilings.values())
    knees = [peak / bw for peak in ceilings.values() for bw in slopes.values()]
    xs = [p["intensity"] for p in points] + knees
    x_lo = math.floor(math.log10(min(xs)) - 0.2)
    x_hi = math.ceil(math.log10(max(xs)) + 0.2)
    y_hi = math.ceil(math.log10(top) + 0.15)
    y_lo = math.floor(min(math.log10(min(p["attained"] for p in points)), y_hi - 3) - 0.1)
    width, height = 760, 400
    pad_l, pad_r, pad_t, pad_b = 64, 16, 14, 52
    plot_w, plot_h = width - pad_l - pad_r, height - pad_t - pad_b

    def sx(value: float) -> float:
        return pad_l + (math.log10(value) - x_lo) / (x_hi - x_lo) * plot_w

    def sy(value: float) -> float:
        return pad_t + plot_h - (math.log10(value) - y_lo) / (y_hi - y_lo) * plot_h

    parts = [svg_open(width, height, "roofline: attained FLOP/s against arithmetic intensity"),
             f"<rect x='{pad_l}' y='{pad_t}' width='{plot_w}' height='{plot_h}' "
             "fill='none' stroke='#8c959f'/>"]
    x_step = 1 if x_hi - x_lo <= 10 else 2
    for exponent in range(x_lo, x_hi + 1):
        x = sx(10.0 ** exponent)
        parts.append(f"<line x1='{x:.1f}' y1='{pad_t}' x2='{x:.1f}' y2='{pad_t + plot_h}' "
                     "stroke='#eaeef2'/>"
                     f"<line x1='{x:.1f}' y1='{pad_t + plot_h}' x2='{x:.1f}' "
                     f"y2='{pad_t + plot_h + 5}' stroke='#57606a'/>")
        if (exponent - x_lo) % x_step == 0:
            parts.append(f"<text class='tick' x='{x:.1f}' y='{pad_t + plot_h + 17}' "
                         f"text-anchor='middle'>{_si(10.0 ** exponent)}</text>")
    y_step = 1 if y_hi - y_lo <= 9 else 2
    for exponent in range(y_lo, y_hi + 1):
        y = sy(10.0 ** exponent)
        parts.append(f"<line x1='{pad_l}' y1='{y:.1f}' x2='{pad_l + plot_w}' y2='{y:.1f}' "
                     "stroke='#eaeef2'/>"
                     f"<line x1='{pad_l - 5}' y1='{y:.1f}' x2='{pad_l}' y2='{y:.1f}' "
                     "stroke='#57606a'/>")
        if (exponent - y_lo) % y_step == 0:
            parts.append(f"<text class='tick' x='{pad_l - 8}' y='{y + 4:.1f}' "
                         f"text-anchor='end'>{_si(10.0 ** exponent)}</text>")
    x_min, x_max = 10.0 ** x_lo, 10.0 ** x_hi
    y_min = 10.0 ** y_lo
    # One roof per (bandwidth, peak) pair: the slope up to the knee, then the flat peak.
    for s_index, (level, bandwidth) in enumerate(slopes.items()):
        dash = "" if s_index == len(slopes) - 1 else " stroke-dasharray='5 3'"
        for peak in ceilings.values():
            start = max(x_min, y_min / bandwidth)
            knee = peak / bandwidth
            parts.append(f"<polyline fill='none' stroke='#57606a'{dash} points='"
                         f"{sx(start):.1f},{sy(start * bandwidth):.1f} "
                         f"{sx(knee):.1f},{sy(peak):.1f} {sx(x_max):.1f},{sy(peak):.1f}'/>")
        # The slope's label sits along it, low on the chart where the slopes are apart.
        at = max(x_min * 1.5, y_min * 10 / bandwidth)
        angle = -math.degrees(math.atan2(sy(at) - sy(at * 10), sx(at * 10) - sx(at)))
        angle = -abs(angle)
        lx, ly = sx(at), sy(at * bandwidth) - 5
        parts.append(f"<text x='{lx:.1f}' y='{ly:.1f}' transform='rotate({angle:.1f} "
                     f"{lx:.1f} {ly:.1f})'>{escape(level)} {_rate(bandwidth, 'B/s')}</text>")
    by_peak: dict[float, list[str]] = defaultdict(list)
    for dtype, peak in ceilings.items():
        by_peak[peak].append(dtype)
    for peak, dtypes in sorted(by_peak.items()):
        parts.append(f"<text x='{pad_l + plot_w - 4}' y='{sy(peak) - 4:.1f}' text-anchor='end'>"
                     f"{escape('/'.join(sorted(dtypes)))} peak {_rate(peak, 'FLOP/s')}</text>")
    colors: dict[str, str] = {}
    for point in points:
        color = colors.setdefault(point["op"], _PALETTE[len(colors) % len(_PALETTE)])
        x, y = sx(point["intensity"]), sy(point["attained"])
        shape = (f"<rect x='{x - 3:.1f}' y='{y - 3:.1f}' width='6' height='6'"
                 if point["tiled"] else f"<circle cx='{x:.1f}' cy='{y:.1f}' r='3'")
        parts.append(f"{shape} class='point' fill='{color}' fill-opacity='0.75'>"
                     f"<title>{escape(point['node'])} ({escape(point['op'])}, "
                     f"{escape(point['dtype'])}): {point['intensity']:.3g} FLOP/byte, "
                     f"{_rate(point['attained'], 'FLOP/s')}</title>"
                     + ("</rect>" if point["tiled"] else "</circle>"))
    parts.append(f"<text class='axis' x='{pad_l + plot_w / 2}' y='{height - 8}' "
                 "text-anchor='middle'>arithmetic intensity (FLOP/byte, log scale)</text>"
                 f"<text class='axis' x='14' y='{pad_t + plot_h / 2}' "
                 f"transform='rotate(-90 14 {pad_t + plot_h / 2})' text-anchor='middle'>"
                 "attained performance (FLOP/s, log scale)</text>")
    parts.append("</svg>")
    legend = " ".join(f"<span style='color:{color}'>&#9679;</span>&nbsp;{escape(op)}"
                      for op, color in colors.items())
    return "".join(parts) + f"<p class='muted'>{legend}</p>"


def _roofline_intro(plan: dict[str, Any]) -> str:
    _, slopes = roofline_roofs(plan)
    if not slopes:
        return ""
    levels = list(slopes)
    onchip = (f" The dashed slope is the {escape(levels[0])} bandwidth; the solid one, "
              f"{escape(levels[-1])}, bounds the operators whose bytes the memory plan keeps "
              "on chip, which is why they can sit above the main-memory slope."
              if len(levels) > 1 else "")
    return (f"<p class='muted'>One mark per operator with FLOPs (squares: tiled kernels, at "
            "their kernel's dtype and main-memory bytes); roofs for the dtypes the operators "
            f"ran at and for the memory that served their bytes.{onchip} The per-op overhead "
            "keeps small operators well below their roof.</p>")


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
        "each op at max(FLOPs / peak, bytes / bandwidth) plus the per-op overhead, run one "
        "after another; the bytes a memory plan keeps on chip go at that level's bandwidth, "
        "and a tiled GEMM takes its kernel's modeled time."
        + (" Ops onnxruntime fuses into one kernel on this CPU run as one: the group's time "
           "is on its first op, the others show 0 (bound 'fused')."
           if any("fused_into" in op for op in ops) else "") + "</p>"
        + _bar_chart(shown, total, "s")
        + "<h2>Roofline</h2>" + _roofline_intro(plan) + _roofline(plan)
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
    simplify_section,
    compression_section,
    moe_section,
    kernels_section,
    memory_section,
    arena_section,
    _estimate_section,
)


def _dtype_names(plan: dict[str, Any]) -> list[str]:
    ops = (plan.get("estimate") or {}).get("ops", [])
    return sorted({op["dtype"] for op in ops if op.get("bound") != "none"})


def _setup_rows(plan: dict[str, Any]) -> list[tuple[str, str]]:
    """What this plan was compiled from and with, as far as plan.json records it."""
    model, hardware = plan["model"], plan["hardware"]
    rows = [("model", f"{model['path']} (sha256 {model['sha256'][:16]}…)"),
            ("inputs", ", ".join(f"{k}: {'x'.join(map(str, v))}"
                                 for k, v in model["input_shapes"].items()) or "none")]
    precision = model.get("precision", "model")
    dtypes = _dtype_names(plan)
    rows.append(("precision", f"--precision {precision}"
                 + (" (the graph's own dtypes)" if precision == "model" else "")
                 + (f"; operators priced at {', '.join(dtypes)}" if dtypes else "")))
    rows.append(("hardware", f"--hw {hardware.get('name', '?')}"
                 + (f": {hardware['description']}" if hardware.get("description") else "")))
    ran = [p["name"] for p in plan["passes"] if p["status"] != "skipped"]
    skipped = [p for p in plan["passes"] if p["status"] == "skipped"]
    rows.append(("passes", "ran " + (", ".join(ran) or "none")
                 + ("; skipped " + ", ".join(
                     f"{p['name']} ({p['notes'][0]})" if p["notes"] else p["name"]
                     for p in skipped) if skipped else "")))
    solvers = [p for p in plan["passes"] if p.get("solver")]
    seeds = sorted({p["solver"]["seed"] for p in solvers if p["solver"].get("seed") is not None})
    fallback = [p["name"] for p in plan["passes"] if p["status"] == "fallback"]
    failed = [p["name"] for p in plan["passes"] if p["status"] == "failed"]
    verdict = ("every solver finished within its time limit" if not fallback
               else f"{', '.join(fallback)} ran out of time and fell back to a heuristic")
    if failed:
        verdict += f"; {', '.join(failed)} failed"
    if seeds:
        rows.append(("solvers", f"--seed {', '.join(map(str, seeds))}; {verdict}"))
    memory = plan.get("memory")
    if memory:
        rows.append(("scratchpad", f"{memory['level']} managed by the memory pass, "
                     f"{format_size(memory['capacity'])} (--scratchpad sets it)"))
    compression = plan.get("compression")
    if compression:
        weights = compression.get("weights") or []
        bits = sorted({w["bits"] for w in weights if w.get("bits") is not None})
        groups = sorted({w["group_size"] for w in weights if w.get("group_size")})
        rows.append(("compression", f"--compress {compression['method']}"
                     + (f" --bits {'/'.join(f'{b:g}' for b in bits)}" if bits else "")
                     + (f" --group-size {'/'.join(map(str, groups))}" if groups else "")
                     + f": {compression['bits_per_weight']:.3f} bits per weight over "
                     f"{len(weights)} weights"))
    else:
        rows.append(("compression", "none (weights stored as they are)"))
    moe = plan.get("moe") or {}
    if moe.get("num_devices"):
        rows.append(("devices", f"--devices {moe['num_devices']} "
                                f"({moe.get('devices_per_node', '?')} per node)"))
    if plan.get("budgets"):
        rows.append(("budgets", f"{len(plan['budgets'])} checked"))
    return rows


def suggestions(plan: dict[str, Any]) -> list[str]:
    """What to try next, each naming the flag, only where this plan shows a reason to. HTML
    (escaped text with <code> flags)."""
    estimate = plan.get("estimate") or {}
    hardware = plan["hardware"]
    peaks = hardware.get("compute", {}).get("peak_ops", {})
    precision = plan["model"].get("precision", "model")
    dtypes = _dtype_names(plan)
    wide = precision in ("model", "fp32") and "fp32" in dtypes
    half = next((d for d in ("fp16", "bf16") if peaks.get(d)), None)
    compressed = bool(plan.get("compression"))
    out: list[str] = []

    def code(flag: str) -> str:
        return f"<code>{escape(flag)}</code>"

    for row in estimate.get("memory_fit") or []:
        if row["fits"]:
            continue
        need, have = row["bytes"], row["capacity"]
        ways = []
        if (plan.get("memory") or {}).get("level") == row["memory"]:
            size = 1 << max(10, math.ceil(math.log2(need)))
            ways.append(f"{code('--scratchpad ' + _size_flag(size))} where the device's "
                        f"{escape(row['memory'])} has that much (the memory pass plans this "
                        "level at the --scratchpad size)")
        if wide and half:
            ways.append(f"{code('--precision ' + half)} (float weights and activations at "
                        "half the bytes)")
        if not compressed and "weights" in row["holds"]:
            ways.append(f"{code('--compress rtn --bits 4')} (MatMul/Gemm weights at about 4 "
                        "to 5 bits each)")
        ways.append(f"a device with at least {escape(format_size(need))} of "
                    f"{escape(row['memory'])} ({code('mapper compare MODEL --hw A,B,C')} "
                    "lists candidates side by side)")
        out.append(f"It does not fit: {escape(' + '.join(row['holds']))} need "
                   f"{escape(format_size(need))}, the {escape(row['memory'])} holds "
                   f"{escape(format_size(have))}. Try " + "; or ".join(ways) + ".")
    ops = estimate.get("ops") or []
    total = sum(op["time_s"] for op in ops)
    memory_time = sum(op["time_s"] for op in ops if op["bound"] == "memory")
    if total and memory_time / total > 0.5:
        ways = []
        if wide and half:
            ways.append(f"{code('--precision ' + half)} halves the bytes of float tensors")
        weights = estimate.get("weight_bytes", 0)
        if not compressed and weights > 0.25 * max(1, estimate.get("offchip_bytes", 0)):
            ways.append(f"{code('--compress rtn --bits 4')} shrinks the weights, "
                        f"{escape(format_size(weights))} of the "
                        f"{escape(format_size(estimate.get('offchip_bytes', 0)))} moved off "
                        "chip")
        if ways:
            out.append(f"{100 * memory_time / total:.0f}% of the estimated time is in "
                       "memory-bound operators: " + "; ".join(ways) + ".")
    memory = plan.get("memory")
    if memory:
        traffic = memory["traffic"]
        extra = traffic.get("non_compulsory", traffic["total"] - traffic["compulsory"])
        if extra > 0.05 * max(1, traffic["total"]):
            bigger = 2 * memory["capacity"]
            sweep = ",".join(_size_flag(memory["capacity"] * f) for f in (2, 4, 8))
            study = (f"mapper study MODEL --hw {hardware.get('name', 'HW')} "
                     f"--sweep scratchpad={sweep}")
            out.append(
                f"{escape(format_size(extra))} of the {escape(format_size(traffic['total']))}"
                f" off-chip traffic is non-compulsory (spills and reloads around the "
                f"{escape(format_size(memory['capacity']))} {escape(memory['level'])}): a "
                f"larger managed level saves up to that much; try "
                f"{code(f'--scratchpad {_size_flag(bigger)}')}, or sweep it with "
                f"{code(study)}.")
    fallbacks = sorted({(k["fallback"]["requested_dtype"], k["dtype"])
                        for k in plan.get("kernels") or [] if k.get("fallback")})
    for requested, actual in fallbacks:
        if actual in ("fp16", "bf16", "fp32", "tf32", "fp8", "int8"):
            out.append(f"{escape(str(hardware.get('name')))} has no {escape(requested)} GEMM "
                       f"support, so GEMMs were tiled at {escape(actual)} while the rest of "
                       f"the plan prices {escape(requested)} bytes: "
                       f"{code('--precision ' + actual)} plans every pass at the dtype the "
                       "device computes in.")
    slow = [p["name"] for p in plan["passes"] if p["status"] == "fallback"]
    if slow:
        out.append(f"{escape(', '.join(slow))} fell back to a heuristic when its solver ran "
                   f"out of time: a larger {code('--time-limit')} (seconds per pass, e.g. "
                   f"{code('--time-limit 120')}) may find a better plan.")
    return out


def _size_flag(size: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale and size % scale == 0:
            return f"{int(size // scale)}{unit}"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.3g}{unit}"
    return f"{int(size)}B"


def _next_section(plan: dict[str, Any]) -> str:
    items = suggestions(plan)
    if not items:
        return ("<h2>What to try next</h2><p class='muted'>Nothing in this plan points to a "
                "change: it fits, no solver ran out of time, and no level moves bytes it "
                "could keep. <code>mapper study</code> compares devices and settings.</p>")
    return ("<h2>What to try next</h2><ul class='next'>"
            + "".join(f"<li>{item}</li>" for item in items) + "</ul>")


def render_report(plan: dict[str, Any]) -> str:
    """The whole report.html for a plan."""
    estimate = plan.get("estimate") or {}
    cards = [("nodes", str(len(plan["schedule"]["order"])))]
    if estimate:
        cards += [("estimated latency", format_time(estimate["latency_s"])),
                  ("peak device memory", format_size(estimate["peak_device_bytes"])),
                  ("off-chip traffic", format_size(estimate["offchip_bytes"])),
                  ("fits the device", "yes" if estimate["fits"] else "NO")]
    card_html = "".join(f"<div class='card'><span class='muted'>{escape(k)}</span>"
                        f"<b>{escape(v)}</b></div>" for k, v in cards)
    setup = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>"
                    for k, v in _setup_rows(plan))
    pass_rows = [[p["name"], p["status"], f"{p['seconds']:.3f} s",
                  (f"{p['solver']['name']} {p['solver']['status']}"
                   + (f" ({p['solver']['scope']})" if p["solver"].get("scope") else "")
                   if p["solver"] else "-"),
                  "; ".join(p["notes"]) or "-"] for p in plan["passes"]]
    notes = plan["model"].get("load_notes") or []
    notes_html = ("<ul>" + "".join(f"<li>{escape(n)}</li>" for n in notes) + "</ul>"
                  if notes else "<p class='muted'>The model needed no repair.</p>")
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>mapper report: {escape(plan['model']['path'])}</title>"
        f"<style>{_STYLE}{LAYOUT_STYLE}</style></head><body>"
        f"<h1>mapper report: {escape(plan['model']['path'])}</h1>"
        f"<p class='muted'>mapper {escape(plan['mapper_version'])}; what it was compiled "
        "with, as plan.json records it (the time limit is not recorded):</p>"
        f"<div class='scroll'><table class='setup'>{setup}</table></div>"
        f"<div class='cards'>{card_html}</div>"
        + _next_section(plan)
        + _fit_and_budgets(plan)
        + "<h2>Passes</h2>"
        + html_table(["pass", "status", "time", "solver", "notes"], pass_rows, set())
        + "<h2>Loading</h2>" + notes_html
        + "".join(render(plan) for render in SECTION_RENDERERS)
        + "</body></html>\n")
