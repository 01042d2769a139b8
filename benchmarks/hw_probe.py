"""`mapper hw probe` twice in a row: do two probes agree, and how long does one take?

Runs the command as a user would (a subprocess, default `--seconds`), twice, and tabulates
every measured field of both runs with their relative difference (max/min - 1; the target
is within 10%) and each probe's wall time (the target is under 60 s).

    .venv/bin/python -m benchmarks.hw_probe
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.results import update_section

AGREEMENT_TARGET = 0.10
WALL_TARGET_S = 60.0
FIELDS = (("fp32_gemm", "fp32 GEMM, all cores", 1e9, "GFLOP/s"),
          ("fp32_gemm_1t", "fp32 GEMM, 1 thread", 1e9, "GFLOP/s"),
          ("int8_gemm", "int8 GEMM, all cores", 1e9, "GOP/s"),
          ("bandwidth", "streaming bandwidth", 1e9, "GB/s"),
          ("op_overhead", "per-op overhead", 1e-6, "us"),
          ("run_overhead", "per-run overhead (session.run)", 1e-6, "us"))


def _probe(path: Path) -> tuple[dict, float]:
    mapper = Path(sys.executable).with_name("mapper")
    started = time.perf_counter()
    completed = subprocess.run([str(mapper), "hw", "probe", "-o", str(path), "--json"],
                               capture_output=True, text=True, check=True)
    return json.loads(completed.stdout), time.perf_counter() - started


def main() -> None:
    """Probe twice and write the RESULTS.md section."""
    with tempfile.TemporaryDirectory() as tmp:
        runs = [_probe(Path(tmp) / f"host{i}.yaml") for i in (1, 2)]
    (first, wall1), (second, wall2) = runs
    rows = []
    worst = 0.0
    for key, title, scale, unit in FIELDS:
        a = first["measurements"].get(key)
        b = second["measurements"].get(key)
        if a is None or b is None:
            rows.append(f"| {title} | - | - | - | not measured |")
            continue
        low, high = sorted((a["value"], b["value"]))
        diff = high / low - 1
        worst = max(worst, diff)
        rows.append(f"| {title} ({unit}) | {a['value'] / scale:.4g} | {b['value'] / scale:.4g} "
                    f"| {diff:.1%} | {'yes' if diff <= AGREEMENT_TARGET else 'no'} |")
        print(rows[-1], flush=True)
    methods = [f"- {key}: {first['measurements'][key]['method']}" for key, *_ in FIELDS
               if key in first["measurements"]]
    cpu = first["facts"]["cpu"]["value"]
    cores = first["facts"]["cores"]["value"]
    body = "\n".join([
        "Rerun: `.venv/bin/python -m benchmarks.hw_probe`. `mapper hw probe -o host.yaml` "
        "(default `--seconds 20`) twice in a row as a subprocess; every measured field of "
        "both runs and their difference (max/min - 1). Targets: two probes within 10% on "
        "every field, one probe under 60 s.", "",
        f"Host: {cpu}, {cores} logical CPUs, onnxruntime {first['onnxruntime']}.", "",
        "| field | run 1 | run 2 | difference | within 10% |", "|---|---|---|---|---|", *rows,
        "", f"Worst difference {worst:.1%}. Wall time per probe: {wall1:.1f} s and {wall2:.1f} s "
        f"(the probe's own timer: {first['seconds']:.1f} s and {second['seconds']:.1f} s); "
        f"under {WALL_TARGET_S:.0f} s: {'yes' if max(wall1, wall2) < WALL_TARGET_S else 'no'}.",
        "", "How each field is measured (median of the runs after a warm-up):", *methods])
    print(f"worst difference {worst:.1%}; wall {wall1:.1f} s, {wall2:.1f} s", flush=True)
    update_section("hw-probe", "Host probe: two runs in a row", body)


if __name__ == "__main__":
    main()
