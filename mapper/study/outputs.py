"""A study's tables: results.jsonl / results.csv (one row per job), the Pareto front, and the
winner with its margin."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mapper.units import format_size, format_time

METRIC_COLUMNS = ("latency_s", "offchip_bytes", "peak_device_bytes", "device_memory_bytes",
                  "fits", "quality", "quality_metric", "bits_per_weight", "scratchpad_bytes")
TAIL_COLUMNS = ("status", "exit_code", "error", "cache_hit", "seconds", "key")


def sweep_paths(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The swept fields, in the order they were given."""
    return list(dict.fromkeys(path for row in rows for path in row["settings"]))


def label(row: dict[str, Any], with_model: bool) -> str:
    """A short name of a job for tables and plots: model (when several), hardware, values."""
    parts = [Path(row["model"]).stem] if with_model else []
    parts.append(row.get("hardware") or row["hardware_spec"])
    parts += [f"{path}={value}" for path, value in row["settings"].items()]
    return " ".join(parts)


def results_jsonl(rows: Sequence[dict[str, Any]]) -> str:
    """One JSON object per job."""
    return "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)


def results_csv(rows: Sequence[dict[str, Any]]) -> str:
    """One CSV row per job: its inputs, its figures, its status and whether it was cached."""
    paths = sweep_paths(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model", "hardware", *paths, *METRIC_COLUMNS, *TAIL_COLUMNS])
    for row in rows:
        writer.writerow([row["model"], row.get("hardware") or row["hardware_spec"],
                         *(row["settings"].get(p, "") for p in paths),
                         *(_cell(row.get(c)) for c in METRIC_COLUMNS),
                         *(_cell(row.get(c)) for c in TAIL_COLUMNS)])
    return buffer.getvalue()


def _cell(value: Any) -> Any:
    return "" if value is None else value


def _objectives(rows: Sequence[dict[str, Any]]) -> list[tuple[str, int]]:
    """(column, sign) pairs to minimize: latency, peak memory, and quality where measured."""
    objectives = [("latency_s", 1), ("peak_device_bytes", 1)]
    if any(row.get("quality") is not None for row in rows):
        metric = next(row["quality_metric"] for row in rows if row.get("quality") is not None)
        objectives.append(("quality", 1 if metric == "perplexity" else -1))
    return objectives


def pareto(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The jobs no other job beats on every objective (latency, peak memory, quality)."""
    done = [row for row in rows if row["status"] == "ok"
            and all(row.get(c) is not None for c, _ in _objectives(rows))]
    objectives = _objectives(done)

    def costs(row: dict[str, Any]) -> tuple[float, ...]:
        return tuple(sign * float(row[column]) for column, sign in objectives)

    front = []
    for row in done:
        mine = costs(row)
        beaten = any(all(o <= m for o, m in zip(costs(other), mine, strict=True))
                     and costs(other) != mine for other in done)
        if not beaten:
            front.append(row)
    return front


def winner(rows: Sequence[dict[str, Any]]) -> tuple[dict[str, Any] | None, str]:
    """The fastest job that fits its device (the fastest of all if none fits), and a sentence
    saying by how much it wins."""
    done = [row for row in rows if row["status"] == "ok" and row.get("latency_s")]
    if not done:
        return None, "no job produced a plan"
    fitting = [row for row in done if row.get("fits")]
    pool = fitting or done
    ranked = sorted(pool, key=lambda row: (row["latency_s"], row["index"]))
    best = ranked[0]
    many_models = len({row["model"] for row in rows}) > 1
    text = f"{label(best, many_models)} is fastest: {format_time(best['latency_s'])}"
    if len(ranked) > 1:
        second, slowest = ranked[1], ranked[-1]
        ahead = 100 * (second["latency_s"] / best["latency_s"] - 1)
        speedup = slowest["latency_s"] / best["latency_s"]
        text += (f", {ahead:.1f}% ahead of {label(second, many_models)} and {speedup:.2f}x "
                 f"the speed of {label(slowest, many_models)}")
    text += f"; peak memory {format_size(best['peak_device_bytes'])}"
    if not fitting:
        text += " (no configuration fits its device)"
    elif len(fitting) < len(done):
        text += f" ({len(done) - len(fitting)} configuration(s) that do not fit left out)"
    return best, text
