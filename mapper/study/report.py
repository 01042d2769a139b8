"""The study's output directory: results, the Pareto front, plots, and report.html tying
them together with the winner and by how much it wins."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

from mapper.report_parts import LAYOUT_STYLE, html_table
from mapper.study import StudyResult
from mapper.study.outputs import label, pareto, results_csv, results_jsonl, sweep_paths, winner
from mapper.study.plots import write_plots
from mapper.units import format_size, format_time

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1100px;
color:#1d2329;padding:0 1rem}h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;
border-bottom:1px solid #d0d7de;padding-bottom:.3rem}table{border-collapse:collapse;
font-size:.85rem}td,th{border:1px solid #d0d7de;
padding:.25rem .5rem;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}
th{background:#f6f8fa}img{max-width:100%;height:auto;border:1px solid #d0d7de}
.win{border-left:4px solid #1a7f37;padding:.4rem .8rem;background:#f0fff4}.muted{color:#57606a}
"""


def _rows_table(rows: Sequence[dict[str, Any]]) -> str:
    many_models = len({r["model"] for r in rows}) > 1
    body = [[label(r, many_models), r["status"] if r["status"] == "ok"
             else f"failed (exit {r['exit_code']})",
             format_time(r["latency_s"]) if r.get("latency_s") is not None else "-",
             format_size(r["peak_device_bytes"]) if r.get("peak_device_bytes") is not None
             else "-",
             format_size(r["offchip_bytes"]) if r.get("offchip_bytes") is not None else "-",
             {True: "yes", False: "NO"}.get(r.get("fits"), "-"),
             f"{r['quality']:.4g}" if r.get("quality") is not None else "-",
             "cached" if r.get("cache_hit") else "ran"] for r in rows]
    return html_table(["job", "status", "latency", "peak memory", "off-chip", "fits",
                       "quality", "cache"], body, {2, 3, 4, 6})


def render_study_report(result: StudyResult, plots: Sequence[str]) -> str:
    """report.html of a study."""
    rows = result.rows
    _, verdict = winner(rows)
    front = pareto(rows)
    many_models = len({r["model"] for r in rows}) > 1
    failures = [r for r in rows if r["status"] == "failed"]
    failed_html = ("<h2>Failed jobs</h2><ul>" + "".join(
        f"<li>{escape(label(r, many_models))}: exit {r['exit_code']}: {escape(r['error'] or '')}"
        "</li>" for r in failures) + "</ul>") if failures else ""
    swept = ", ".join(sweep_paths(rows)) or "none (devices compared as they are)"
    images = "".join(f"<h3>{escape(name.removesuffix('.png'))}</h3>"
                     f"<img src='{escape(name)}' alt='{escape(name)}'>" for name in plots)
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>mapper study</title><style>{_STYLE}{LAYOUT_STYLE}</style></head><body>"
        "<h1>mapper study</h1>"
        f"<p class='muted'>{len(rows)} jobs: {result.ran} ran, {result.cached} from the cache, "
        f"{result.failed} failed; swept: {escape(swept)}</p>"
        f"<p class='win'><b>Winner.</b> {escape(verdict)}.</p>"
        "<h2>Plots</h2>" + images
        + f"<h2>Pareto front ({len(front)} of {len(rows)})</h2>"
        "<p class='muted'>No other job is both faster and smaller (and better in quality, "
        "where measured).</p>" + _rows_table(front)
        + "<h2>Every job</h2>" + _rows_table(rows) + failed_html
        + "</body></html>\n")


def write_study_dir(result: StudyResult, directory: Path) -> list[str]:
    """results.jsonl, results.csv, pareto.csv, the plots and report.html into `directory`."""
    (directory / "results.jsonl").write_text(results_jsonl(result.rows))
    (directory / "results.csv").write_text(results_csv(result.rows))
    (directory / "pareto.csv").write_text(results_csv(pareto(result.rows)))
    plots = write_plots(result.rows, directory)
    (directory / "report.html").write_text(render_study_report(result, plots))
    return ["results.jsonl", "results.csv", "pareto.csv", *plots, "report.html"]
