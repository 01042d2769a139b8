"""A study's pictures (PNG, matplotlib): each metric against each swept field per device,
latency by device where nothing is swept, and the Pareto fronts."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mapper.study.outputs import label, pareto, sweep_paths

# (column, axis label with its unit, scale to that unit)
_METRICS = (("latency_s", "latency (ms)", 1e3), ("offchip_bytes", "off-chip traffic (MiB)",
                                                 1 / 2**20),
            ("peak_device_bytes", "peak device memory (MiB)", 1 / 2**20),
            ("quality", "quality", 1.0))


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def _metrics(rows: Sequence[dict[str, Any]]) -> list[tuple[str, str, float]]:
    return [m for m in _METRICS if any(r.get(m[0]) is not None for r in rows)]


def _series_name(row: dict[str, Any], path: str, many_models: bool) -> str:
    others = {p: v for p, v in row["settings"].items() if p != path}
    parts = [Path(row["model"]).stem] if many_models else []
    parts.append(row.get("hardware") or row["hardware_spec"])
    parts += [f"{p}={v}" for p, v in others.items()]
    return " ".join(parts)


def plot_sweep(rows: Sequence[dict[str, Any]], path: str, out: Path) -> None:
    """One panel per metric: the metric against the values of `path`, a line per device."""
    plt = _pyplot()
    done = [r for r in rows if r["status"] == "ok"]
    metrics = _metrics(done)
    values = list(dict.fromkeys(r["settings"][path] for r in rows))
    many_models = len({r["model"] for r in rows}) > 1
    series: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for row in done:
        series[_series_name(row, path, many_models)][row["settings"][path]] = row
    figure, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 4.0),
                                squeeze=False)
    for axis, (column, axis_label, scale) in zip(axes[0], metrics, strict=True):
        for name, points in series.items():
            xs = [i for i, v in enumerate(values) if v in points
                  and points[v].get(column) is not None]
            ys = [points[values[i]][column] * scale for i in xs]
            axis.plot(xs, ys, marker="o", label=name)
        shown = [r[column] for r in done if r.get(column) is not None and r[column] > 0]
        if shown and max(shown) > 10 * min(shown):
            axis.set_yscale("log")  # devices an order of magnitude apart stay readable
        axis.set_xticks(range(len(values)), values, rotation=30 if len(values) > 4 else 0)
        axis.set_xlabel(path)
        axis.set_ylabel(axis_label)
        axis.set_title(axis_label.split(" (")[0])
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    figure.suptitle(f"{path}: lower is better (quality: higher)")
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)


def plot_devices(rows: Sequence[dict[str, Any]], out: Path) -> None:
    """Latency per device (and model) as bars, the fastest marked: for studies with no sweep."""
    plt = _pyplot()
    done = [r for r in rows if r["status"] == "ok" and r.get("latency_s") is not None]
    many_models = len({r["model"] for r in rows}) > 1
    names = [label(r, many_models) for r in done]
    latencies = [r["latency_s"] * 1e3 for r in done]
    figure, axis = plt.subplots(figsize=(max(5.0, 1.0 + 0.9 * len(done)), 4.0))
    best = min(range(len(done)), key=lambda i: latencies[i]) if done else None
    colors = ["#1a7f37" if i == best else "#0969da" for i in range(len(done))]
    axis.bar(range(len(done)), latencies, color=colors)
    axis.set_xticks(range(len(done)), names, rotation=30, ha="right")
    axis.set_ylabel("latency (ms)")
    axis.set_xlabel("device")
    axis.set_title("estimated latency (green: fastest)")
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)


def plot_pareto(rows: Sequence[dict[str, Any]], column: str, axis_label: str, scale: float,
                out: Path) -> None:
    """Latency against `column` for every job, coloured by device, the Pareto front joined."""
    plt = _pyplot()
    done = [r for r in rows if r["status"] == "ok" and r.get(column) is not None
            and r.get("latency_s") is not None]
    front_keys = {r["key"] for r in pareto(rows)}
    figure, axis = plt.subplots(figsize=(6.4, 4.6))
    for device in dict.fromkeys(r.get("hardware") or r["hardware_spec"] for r in done):
        mine = [r for r in done if (r.get("hardware") or r["hardware_spec"]) == device]
        axis.scatter([r[column] * scale for r in mine], [r["latency_s"] * 1e3 for r in mine],
                     label=device, s=36)
    front = sorted((r for r in done if r["key"] in front_keys), key=lambda r: r[column])
    if front:
        axis.plot([r[column] * scale for r in front], [r["latency_s"] * 1e3 for r in front],
                  color="black", linewidth=1, linestyle="--", label="Pareto front")
    axis.set_xlabel(axis_label)
    axis.set_ylabel("latency (ms)")
    axis.set_title(f"latency vs {axis_label.split(' (')[0]}")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)


def write_plots(rows: Sequence[dict[str, Any]], directory: Path) -> list[str]:
    """Every plot of the study into `directory`; their file names."""
    names = []
    paths = sweep_paths(rows)
    if not any(r["status"] == "ok" for r in rows):
        return names
    for path in paths:
        name = f"sweep-{path.replace('.', '_')}.png"
        plot_sweep(rows, path, directory / name)
        names.append(name)
    if not paths:
        plot_devices(rows, directory / "latency-by-device.png")
        names.append("latency-by-device.png")
    plot_pareto(rows, "peak_device_bytes", "peak device memory (MiB)", 1 / 2**20,
                directory / "pareto-latency-memory.png")
    names.append("pareto-latency-memory.png")
    if any(r.get("quality") is not None for r in rows):
        plot_pareto(rows, "quality", "quality", 1.0, directory / "pareto-latency-quality.png")
        names.append("pareto-latency-quality.png")
    return names
