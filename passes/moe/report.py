"""The report's MoE section: metrics against the baselines and two heat maps as inline SVG.

Heat maps: layer x expert coloured by the device hosting it (one hue per device, nodes in
bands of lightness), and device x device transitions summed over layer pairs (red lines:
node boundaries). The section is a pure function of plan.json's `moe` object.
"""

from __future__ import annotations

from html import escape
from typing import Any

from mapper.report_parts import svg_open
from mapper.units import format_time

_METRICS = (("load_max_over_mean", "load max/mean", "{:.4f}"),
            ("cross_device_fraction", "cross-device", "{:.4f}"),
            ("cross_node_fraction", "cross-node", "{:.4f}"))


def _device_color(device: int, devices: int, per_node: int) -> str:
    hue = (360.0 * (device % per_node) / max(per_node, 1) + 25.0 * (device // per_node)) % 360
    light = 42 + 14 * ((device // per_node) % 3)
    return f"hsl({hue:.0f},60%,{light}%)"


def placement_heatmap(layers: list[dict[str, Any]], devices: int, per_node: int) -> str:
    """Layer x expert grid, each cell coloured by its device."""
    experts = len(layers[0]["placement"]) if layers else 0
    if not experts:
        return ""
    cell = max(3, min(16, 760 // experts))
    row = max(3, min(16, 900 // max(len(layers), 1)))
    label = 110
    # Wide enough for the grid, the title and the legend's first row of devices.
    width = label + max(experts * cell, 42 * min(devices, 16), 200) + 10
    height = 24 + len(layers) * row + 40 + 14 * ((devices - 1) // 16)
    parts = [svg_open(width, height, "expert placement: layer by expert, colour by device"),
             f"<text x='{label}' y='14'>expert 0 .. {experts - 1} (colour: device)</text>"]
    for index, layer in enumerate(layers):
        y = 20 + index * row
        if row >= 10 or index % max(1, 10 // row) == 0:
            parts.append(f"<text x='0' y='{y + min(row, 12) - 1}'>"
                         f"{escape(str(layer['name'])[:16])}</text>")
        for expert, device in enumerate(layer["placement"]):
            parts.append(f"<rect x='{label + expert * cell}' y='{y}' width='{cell}' "
                         f"height='{row}' fill='{_device_color(device, devices, per_node)}'>"
                         f"<title>{escape(str(layer['name']))} expert {expert}: device "
                         f"{device}</title></rect>")
    legend_y = 30 + len(layers) * row
    for device in range(devices):
        x = label + (device % 16) * 42
        y = legend_y + (device // 16) * 14
        parts.append(f"<rect x='{x}' y='{y - 9}' width='10' height='10' "
                     f"fill='{_device_color(device, devices, per_node)}'/>"
                     f"<text x='{x + 13}' y='{y}'>d{device}</text>")
    parts.append("</svg>")
    return "".join(parts)


def traffic_heatmap(traffic: list[list[int]], per_node: int) -> str:
    """Device x device transitions (row at layer l to column at layer l + 1); darker = more."""
    devices = len(traffic)
    if not devices:
        return ""
    cell = max(18, min(48, 480 // devices))
    pad = 60
    size = pad + devices * cell
    biggest = max((max(row) for row in traffic), default=0) or 1
    parts = [svg_open(size + 20, size + 20, "device-to-device transitions"),
             f"<text x='{pad}' y='12'>to device (layer l + 1)</text>",
             f"<text x='12' y='{pad + 40}' transform='rotate(-90 12 {pad + 40})'>from device"
             "</text>"]
    for src, row in enumerate(traffic):
        for dst, value in enumerate(row):
            shade = (value / biggest) ** 0.6
            light = 97 - 62 * shade
            x, y = pad + dst * cell, pad - 30 + 20 + src * cell
            parts.append(f"<rect x='{x}' y='{y}' width='{cell - 1}' height='{cell - 1}' "
                         f"fill='hsl(212,70%,{light:.0f}%)'><title>device {src} -> {dst}: "
                         f"{value} transitions</title></rect>")
            if cell >= 30:
                parts.append(f"<text x='{x + 3}' y='{y + cell / 2 + 4}' font-size='9'>"
                             f"{value if value < 10**5 else f'{value:.1e}'}</text>")
    for device in range(devices):
        parts.append(f"<text x='{pad + device * cell + 3}' y='{pad - 14}'>{device}</text>"
                     f"<text x='{pad - 24}' y='{pad - 10 + 20 + device * cell + cell / 2}'>"
                     f"{device}</text>")
    for boundary in range(per_node, devices, per_node):
        at = pad + boundary * cell - 0.5
        top = pad - 10
        parts.append(f"<line x1='{at}' y1='{top}' x2='{at}' y2='{top + devices * cell}' "
                     "stroke='#cf222e'/>"
                     f"<line x1='{pad}' y1='{top + boundary * cell}' x2='{pad + devices * cell}'"
                     f" y2='{top + boundary * cell}' stroke='#cf222e'/>")
    parts.append("</svg>")
    return "".join(parts)


def _row(name: str, metrics: dict[str, Any]) -> str:
    cells = "".join(f"<td class='n'>{fmt.format(metrics[key])}</td>" for key, _, fmt in _METRICS)
    return (f"<tr><td>{escape(name)}</td>{cells}"
            f"<td class='n'>{escape(format_time(metrics['alltoall_s']))}</td>"
            f"<td class='n'>{escape(format_time(metrics['expert_s']))}</td></tr>")


def moe_section(plan: dict[str, Any]) -> str:
    """The HTML of the MoE placement section (empty without plan.moe)."""
    moe = plan.get("moe")
    if not moe:
        return ""
    metrics = moe["metrics"]
    head = "".join(f"<th>{escape(title)}</th>" for _, title, _ in _METRICS)
    rows = _row("mapper (MoETuner, CP-SAT)", metrics) + "".join(
        _row(name.replace("_", "-"), values) for name, values in metrics["baselines"].items())
    solver = moe.get("solver", {})
    trace = moe.get("trace", {})
    notes = "".join(f"<li>{escape(n)}</li>" for n in solver.get("notes", []))
    return (
        "<h2>MoE expert placement</h2>"
        f"<p class='muted'>{moe['num_experts']} experts (top-{moe['top_k']}) x "
        f"{len(moe['layers'])} layers on {moe['num_devices']} devices, "
        f"{moe['devices_per_node']} per node; trace: {escape(str(trace.get('source', '?')))}, "
        f"{trace.get('tokens', '?')} tokens; method {escape(str(solver.get('method', '?')))}, "
        f"balance {escape(str(solver.get('balance', '?')))}"
        + (f"; {escape(str(solver['status']))} for {escape(str(solver['scope']))}"
           if solver.get("scope") else "")
        + (f"; objective {solver['objective']}, bound {solver['bound']:.0f}, gap "
           f"{100 * solver['gap']:.2f}%" if solver.get("gap") is not None else "")
        + ". Transitions are the k x k expert "
        "pairs of each token between consecutive MoE layers; times are per forward pass.</p>"
        f"<div class='scroll'><table><tr><th>placement</th>{head}<th>all-to-all</th>"
        "<th>expert compute</th></tr>"
        f"{rows}</table></div>" + (f"<ul>{notes}</ul>" if notes else "")
        + "<h3>Expert placement (layer x expert -> device)</h3>"
        + placement_heatmap(moe["layers"], moe["num_devices"], moe["devices_per_node"])
        + "<h3>Device-to-device transitions (summed over layer pairs)</h3>"
        + traffic_heatmap(metrics.get("device_traffic", []), moe["devices_per_node"]))
