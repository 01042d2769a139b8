"""Running a study's jobs: one job's result row, the content-addressed cache, the executors.

`run_job` is a pure function of its Job (same inputs, same row, timings aside), so any
executor may run it anywhere: in this process, in a local process pool (the default), or on
a Ray cluster. A failing job becomes a row with its exit code and message; the others go on.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mapper.errors import MapperError, UserError
from mapper.study.jobs import Job

# Exit codes whose result depends only on the job's inputs: those rows are cached. An
# internal error (1) or a time limit (5) may not repeat, so those jobs run again next time.
_CACHEABLE = (0, 2, 3, 4)


@functools.lru_cache(maxsize=4)
def _loaded(model: str, sha256: str, shape_key: str) -> Any:
    """The model loaded once per worker and shape settings (jobs of one model share it)."""
    from mapper.driver import load_for
    from mapper.options import CompileOptions

    del sha256  # part of the cache key only: a changed file is loaded again
    return load_for(model, CompileOptions.model_validate(json.loads(shape_key)))


def _row_from_plan(plan: dict[str, Any]) -> dict[str, Any]:
    estimate = plan.get("estimate") or {}
    compression = plan.get("compression") or {}
    quality = compression.get("quality") or {}
    memory = plan.get("memory") or {}
    return {
        "hardware": plan["hardware"]["name"],
        "latency_s": estimate.get("latency_s"),
        "offchip_bytes": estimate.get("offchip_bytes"),
        "peak_device_bytes": estimate.get("peak_device_bytes"),
        "device_memory_bytes": estimate.get("device_memory_bytes"),
        "fits": estimate.get("fits"),
        "weight_bytes": estimate.get("weight_bytes"),
        "quality": quality.get("mean"),
        "quality_metric": quality.get("metric"),
        "bits_per_weight": compression.get("bits_per_weight"),
        "scratchpad_bytes": memory.get("capacity"),
        "budgets_ok": all(b["ok"] for b in plan.get("budgets", [])),
        "passes": {p["name"]: p["status"] for p in plan["passes"]},
    }


def run_job(job: Job) -> dict[str, Any]:
    """Plan one job; its result row (status ok, or failed with the exit code and message)."""
    from mapper.driver import plan_loaded, resolve_hardware

    started = time.perf_counter()
    row: dict[str, Any] = {"key": job.key, "index": job.index, "model": job.model,
                           "model_sha256": job.model_sha256, "hardware_spec": job.hardware,
                           "settings": dict(job.settings)}
    shape_key = json.dumps(job.options.model_dump(
        mode="json", include={"input_shapes", "dims", "calib"}), sort_keys=True)
    try:
        loaded = _loaded(job.model_path, job.model_sha256, shape_key)
        hardware = resolve_hardware(job.hardware, job.options)
        plan, _ = plan_loaded(loaded, hardware, job.options, job.model)
        row.update(_row_from_plan(plan), status="ok", exit_code=0, error=None)
    except MapperError as error:
        row.update(status="failed", exit_code=error.exit_code, error=str(error))
    except Exception as error:  # a bug: recorded, never cached, and the study goes on
        row.update(status="failed", exit_code=1, error=f"internal error: "
                   f"{type(error).__name__}: {error}")
    row["seconds"] = round(time.perf_counter() - started, 4)
    return row


@dataclass(frozen=True)
class Cache:
    """Result rows by job key, one JSON file each, written atomically as jobs finish (so a
    killed study resumes where it stopped)."""

    root: Path

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The cached row of `key`, if any (an unreadable entry counts as missing)."""
        try:
            row = json.loads(self._path(key).read_text())
        except (OSError, ValueError):
            return None
        return row if isinstance(row, dict) and row.get("key") == key else None

    def put(self, row: dict[str, Any]) -> None:
        """Keep `row` if its result is reproducible (see _CACHEABLE)."""
        if row["exit_code"] not in _CACHEABLE:
            return
        path = self._path(row["key"])
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(f".{os.getpid()}.tmp")
            temporary.write_text(json.dumps(row, sort_keys=True))
            temporary.replace(path)
        except OSError as error:
            raise UserError(f"cannot write the study cache {str(self.root)!r}: "
                            f"{error.strerror or error}; give --cache DIR or --no-cache",
                            subject={"flag": "--cache"}) from None


def default_cache_dir() -> Path:
    """The user cache directory's mapper/study (XDG_CACHE_HOME, else ~/.cache)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mapper" / "study"


Runner = Callable[[Sequence[Job]], Iterator[dict[str, Any]]]


def _one_thread_each() -> None:
    """A pool worker's native libraries (BLAS, OpenMP) use one thread: the pool is the
    parallelism, and more threads per worker only contend for the same cores."""
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = "1"


def run_local(jobs: int) -> Runner:
    """Jobs on a local process pool of `jobs` workers (in this process when 1), yielded as
    they finish."""

    def run(pending: Sequence[Job]) -> Iterator[dict[str, Any]]:
        if jobs <= 1 or len(pending) <= 1:
            for job in pending:
                yield run_job(job)
            return
        import multiprocessing

        # spawn: onnxruntime and OR-Tools hold threads that fork would copy half-way.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context,
                                 initializer=_one_thread_each) as pool:
            futures: set[Future[dict[str, Any]]] = {pool.submit(run_job, j) for j in pending}
            try:
                while futures:
                    done, futures = wait(futures, return_when=FIRST_COMPLETED)
                    for future in sorted(done, key=lambda f: f.result()["index"]):
                        yield future.result()
            finally:
                for future in futures:
                    future.cancel()

    return run


def run_ray(address: str | None) -> Runner:
    """Jobs as Ray tasks on the cluster at `address` (a local one when None), yielded as they
    finish; ray is the optional extra `mapper[ray]`."""

    def run(pending: Sequence[Job]) -> Iterator[dict[str, Any]]:
        try:
            import ray
        except ImportError:
            raise UserError("--executor ray needs Ray: pip install 'mapper[ray]'",
                            subject={"flag": "--executor"}) from None
        started_here = not ray.is_initialized()
        if started_here:
            # A cluster of one's own when no address is given; joining one takes it as it is.
            local = {} if address else {"include_dashboard": False}
            try:
                ray.init(address=address, log_to_driver=False, configure_logging=False,
                         **local)
            except (ConnectionError, RuntimeError, ValueError) as error:
                raise UserError(f"--address {address}: cannot join the Ray cluster ({error})",
                                subject={"flag": "--address"}) from None
        try:
            remote = ray.remote(run_job)
            waiting = [remote.remote(job) for job in pending]
            while waiting:
                done, waiting = ray.wait(waiting, num_returns=1)
                yield from ray.get(done)
        finally:
            if started_here:
                ray.shutdown()

    return run
