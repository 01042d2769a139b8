"""What-if studies: models x hardware x sweeps, planned as cached jobs on a local pool or Ray.

`mapper study a.onnx b.onnx --hw a100,h100 --sweep memory.l2.size=20MiB,40MiB -o DIR` plans
every combination, reusing cached results (by content key) and running only the missing
jobs, and writes results.jsonl/csv, pareto.csv, plots and a report into DIR.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mapper.options import CompileOptions
from mapper.study.jobs import SCRATCHPAD_KEY, Job, Sweep, expand, parse_sweep
from mapper.study.run import Cache, Runner, default_cache_dir, run_job, run_local, run_ray

__all__ = ["SCRATCHPAD_KEY", "Cache", "Job", "StudyResult", "Sweep", "default_cache_dir",
           "parse_sweep", "run_job", "run_local", "run_ray", "run_study"]

Progress = Callable[[int, int, dict[str, Any]], None]


@dataclass(frozen=True)
class StudyResult:
    """Every job's row in study order (each with `cache_hit`), and the counters."""

    rows: tuple[dict[str, Any], ...]
    sweeps: tuple[Sweep, ...]
    ran: int
    cached: int
    failed: int
    stopped_early: bool = False
    seconds: float = 0.0
    not_run: tuple[int, ...] = field(default=())

    @property
    def first_failure(self) -> dict[str, Any] | None:
        """The first failed row in study order, if any."""
        return next((row for row in self.rows if row["status"] == "failed"), None)


def run_study(models: Sequence[str | Path], hardware_specs: Sequence[str],
              sweeps: Sequence[Sweep], options: CompileOptions | None = None, *,
              runner: Runner | None = None, cache: Cache | None = None,
              fail_fast: bool = False, progress: Progress | None = None) -> StudyResult:
    """Plan every job of the study (cached ones are read back, not run again)."""
    started = time.perf_counter()
    jobs = expand([str(m) for m in models], list(hardware_specs), list(sweeps),
                  options or CompileOptions())
    rows: dict[int, dict[str, Any]] = {}
    for job in jobs:
        hit = cache.get(job.key) if cache is not None else None
        if hit is not None:
            rows[job.index] = {**hit, "index": job.index, "model": job.model,
                               "hardware_spec": job.hardware, "cache_hit": True}
    cached = len(rows)
    pending = [job for job in jobs if job.index not in rows]
    done = 0
    for row in sorted(rows.values(), key=lambda r: r["index"]):
        done += 1
        if progress is not None:
            progress(done, len(jobs), row)
    stopped = False
    for row in (runner or run_local(1))(pending):
        row["cache_hit"] = False
        rows[row["index"]] = row
        if cache is not None:
            cache.put({key: value for key, value in row.items() if key != "cache_hit"})
        done += 1
        if progress is not None:
            progress(done, len(jobs), row)
        if fail_fast and row["status"] == "failed":
            stopped = True
            break
    ordered = tuple(rows[index] for index in sorted(rows))
    return StudyResult(rows=ordered, sweeps=tuple(sweeps), ran=len(rows) - cached,
                       cached=cached,
                       failed=sum(1 for row in ordered if row["status"] == "failed"),
                       stopped_early=stopped, seconds=time.perf_counter() - started,
                       not_run=tuple(job.index for job in jobs if job.index not in rows))


def progress_printer(stream: Any = None) -> tuple[Progress, Callable[[], None]]:
    """A live progress bar on a terminal, plain periodic lines elsewhere (CI logs); returns
    the callback and a function that closes it."""
    stream = stream or sys.stderr
    if stream.isatty():
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        bar = Progress("study", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                       "{task.description}", console=Console(file=stream), transient=True)
        task = bar.add_task("", total=None)
        bar.start()

        def live(done: int, total: int, row: dict[str, Any]) -> None:
            label = "cached" if row.get("cache_hit") else row["status"]
            bar.update(task, completed=done, total=total,
                       description=f"{row['hardware_spec']} {label}")

        return live, bar.stop
    last = [0.0]

    def lines(done: int, total: int, row: dict[str, Any]) -> None:
        now = time.monotonic()
        if done == total or now - last[0] >= 5.0 or row["status"] == "failed":
            last[0] = now
            note = f" (job {row['index']} failed: exit {row['exit_code']})" \
                if row["status"] == "failed" and not row.get("cache_hit") else ""
            print(f"mapper: study {done}/{total} jobs{note}", file=stream, flush=True)

    return lines, lambda: None
