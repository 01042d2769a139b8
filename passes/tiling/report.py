"""The report's kernels section: one row per tiled operator, time per op and what bounds it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from html import escape
from typing import Any

from mapper.report_parts import html_table
from mapper.units import format_size, format_time

_STYLE_NOTE = "class='muted'"


def _problem(record: dict[str, Any]) -> str:
    p = record["problem"]
    batch = f"{p['batch']}×" if p["batch"] > 1 else ""
    return f"{batch}{p['M']}×{p['N']}×{p['K']}"


def _tile(record: dict[str, Any]) -> str:
    tile = record["tile"]
    if "BM" in tile:
        extras = [f"{tile['warps']}w", f"{tile['stages']}st"]
        if tile["split_k"] > 1:
            extras.append(f"split-K {tile['split_k']}")
        if tile.get("persistent"):
            extras.append("persistent")
        return f"{tile['BM']}×{tile['BN']}×{tile['BK']} " + " ".join(extras)
    return f"{tile['Tm']}×{tile['Tn']}×{tile['Tk']} {tile['stationary']}-stationary"


def _rate(record: dict[str, Any]) -> str:
    seconds = record["est_time_s"]
    flops = record.get("flops") or 0
    return f"{flops / seconds / 1e12:.3g}" if seconds > 0 and flops else "-"


def kernels_section(plan: dict[str, Any]) -> str:
    """HTML for plan['kernels'] (empty when the tiling pass did not run)."""
    kernels = plan.get("kernels") or []
    if not kernels:
        return ""
    total = sum(k["est_time_s"] for k in kernels)
    bounds = Counter(k["bound"] for k in kernels)
    statuses = Counter(k.get("solver", {}).get("status", "?") for k in kernels if not k["cached"])
    fallbacks = [k for k in kernels if k.get("fallback")]
    unique = sum(1 for k in kernels if not k["cached"])
    gpu = "BM" in kernels[0]["tile"]
    # Ten columns that fit a page: the op joins its node, registers and blocks per unit share
    # one column, the share joins the time; long node names wrap.
    headers = ["node (op)", "dtype", "problem M×N×K", "tile", "smem" if gpu else "scratchpad",
               "regs · blocks/unit" if gpu else "regs · blocks", "time (share)", "TFLOP/s",
               "bound", "solver"]
    ranked = sorted(kernels, key=lambda k: (-k["est_time_s"], k["node"] or ""))

    def _occupancy(k: dict[str, Any]) -> str:
        regs, blocks = k["regs_per_thread"], k["blocks_per_unit"]
        if regs is None and blocks is None:
            return "-"
        return f"{regs if regs is not None else '-'} · {blocks if blocks is not None else '-'}"

    def rows(selection: Sequence[dict[str, Any]]) -> list[list[Any]]:
        return [[f"{k['node']} ({k['op']})", k["dtype"] + (" *" if k.get("fallback") else ""),
                 _problem(k), _tile(k), format_size(k["smem_bytes"]), _occupancy(k),
                 format_time(k["est_time_s"])
                 + (f" ({100 * k['est_time_s'] / total:.1f}%)" if total else ""),
                 _rate(k), k["bound"],
                 "cached" if k["cached"] else k.get("solver", {}).get("status", "?")]
                for k in selection]

    summary = (f"<p {_STYLE_NOTE}>{len(kernels)} GEMM-shaped operators, {unique} unique problems "
               f"solved with CP-SAT ({', '.join(f'{n} {s}' for s, n in sorted(statuses.items()))}"
               ", each status proven for its own problem's cost model)"
               f"; modeled kernel time {format_time(total)} "
               f"({', '.join(f'{n} {b}-bound' for b, n in sorted(bounds.items()))}). "
               "Times are the cost model's (launch overhead excluded; the estimate adds it).</p>")
    note = ""
    if fallbacks:
        reasons = sorted({k["fallback"]["reason"] for k in fallbacks})
        note = ("<p>* dtype fallback: " + "; ".join(escape(r) for r in reasons) + "</p>")
    numeric = {4, 5, 6, 7}
    return ("<h2>Kernels (tiling)</h2>" + summary + note
            + html_table(headers, rows(ranked[:25]), numeric)
            + f"<details><summary>All {len(kernels)} kernels in schedule order</summary>"
            + html_table(headers, rows(kernels), numeric) + "</details>")
