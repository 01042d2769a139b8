"""Study throughput: a 102-job sweep of a small model on 1 and on 2 local workers (no cache),
then the same study rerun against its cache.

The jobs: resnet_small on edge-npu, a100 and h100 x 34 scratchpad sizes (102 jobs), the
default pipeline. The target is a speed-up of at least 1.7x from 2 workers on this
2-core machine; each configuration is run once (the sweep itself is the repetition) and the
per-job medians are reported beside the wall times.

    .venv/bin/python -m benchmarks.study_scale
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import models
from benchmarks.results import update_section
from mapper.study import Cache, parse_sweep, run_local, run_study

TARGET = 1.7


def _sizes() -> str:
    return ",".join(f"{64 + 32 * i}KiB" for i in range(34))


def _run(model: str, workers: int, cache: Cache | None) -> tuple[float, list[float], int]:
    started = time.perf_counter()
    result = run_study([model], ["edge-npu", "a100", "h100"],
                       [parse_sweep(f"scratchpad={_sizes()}")], runner=run_local(workers),
                       cache=cache)
    wall = time.perf_counter() - started
    rows = result.rows
    assert all(row["status"] == "ok" for row in rows), [r["error"] for r in rows]
    return wall, [row["seconds"] for row in rows if not row["cache_hit"]], result.cached


def main() -> None:
    """Time the sweep on 1 and 2 workers and from the cache; write the RESULTS.md section."""
    model = str(models.build("resnet_small"))
    one, one_jobs, _ = _run(model, 1, None)
    two, two_jobs, _ = _run(model, 2, None)
    with tempfile.TemporaryDirectory() as folder:
        cache = Cache(Path(folder))
        _run(model, 2, cache)
        cached, _, hits = _run(model, 2, cache)
    speedup = one / two
    body = (
        "A sweep of resnet_small over edge-npu, a100 and h100 x 34 scratchpad sizes (102 "
        "jobs), default pipeline, no cache; then the same study from its cache. "
        "`.venv/bin/python -m benchmarks.study_scale`\n\n"
        "| run | wall | per-job median | \n|---|---:|---:|\n"
        f"| 1 worker (in process) | {one:.1f} s | {statistics.median(one_jobs):.3f} s |\n"
        f"| 2 workers (spawned pool) | {two:.1f} s | {statistics.median(two_jobs):.3f} s |\n"
        f"| rerun from the cache ({hits} hits) | {cached:.2f} s | - |\n\n"
        f"Speed-up from 2 workers: **{speedup:.2f}x** (target {TARGET}x: "
        f"{'met' if speedup >= TARGET else 'NOT met'}). The pool pays a spawn and an import "
        "of onnx, onnxruntime and OR-Tools per worker once, and each worker loads the model "
        "once.")
    update_section("study-scale", "Study throughput: 1 vs 2 workers, and the cache", body)
    print(body)


if __name__ == "__main__":
    main()
