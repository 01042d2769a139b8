"""CP-SAT model of the arena problem: rectangles (time x address) under NoOverlap2D.

Used by the portfolio when the canonical search runs out of budget, and as the comparison
the benchmark reports. Sizes are divided by their greatest common divisor first: in a
bottom-left-justified solution every offset is a sum of sizes, so restricting offsets to
multiples of the divisor loses nothing and shrinks every domain.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from ortools.sat.python import cp_model

from mapper.passes.arena.problem import Buffer

CpStatus = Literal["optimal", "feasible", "infeasible", "unknown"]


@dataclass(frozen=True)
class CpResult:
    """What CP-SAT returned: offsets when it found any, its status, objective and bound."""

    status: CpStatus
    offsets: tuple[int, ...] | None
    objective: int | None
    bound: int | None
    seconds: float
    solver_status: str


def _granule(buffers: Sequence[Buffer]) -> int:
    granule = 0
    for buffer in buffers:
        # Bottom-left offsets are sums of sizes rounded up to alignments: multiples of this.
        granule = math.gcd(granule, buffer.size, buffer.alignment if buffer.alignment > 1 else 0)
    return max(granule, 1)


def solve_cpsat(buffers: Sequence[Buffer], time_limit_s: float, seed: int = 0,
                capacity: int | None = None, hint: Sequence[int] | None = None,
                lower: int = 0, deterministic_s: float | None = None) -> CpResult:
    """Fit `capacity` (decision) or minimize the arena peak (capacity None), hinted.

    `lower` is a known lower bound on the peak (it tightens the objective's domain).
    `deterministic_s`: CP-SAT's deterministic limit (default: `time_limit_s`, which is then
    also the wall-clock cap).
    """
    started = time.perf_counter()
    granule = _granule(buffers)
    upper_peak = capacity if capacity is not None else \
        sum(b.size for b in buffers) + max((b.alignment for b in buffers), default=1)
    top = upper_peak // granule
    model = cp_model.CpModel()
    offsets = []
    x_intervals, y_intervals = [], []
    # Minimizing needs a peak variable; a decision model is only the rectangles (the extra
    # constraints slow CP-SAT's no-overlap propagation down markedly on tight packings).
    peak = model.new_int_var(-(-lower // granule), top, "peak") if capacity is None else None
    for index, buffer in enumerate(buffers):
        units = buffer.size // granule
        offset = model.new_int_var(0, max(top - units, 0), f"o{index}")
        step = buffer.alignment // granule
        if step > 1:
            model.add_modulo_equality(0, offset, step)
        offsets.append(offset)
        if units == 0:
            continue
        x_intervals.append(model.new_fixed_size_interval_var(
            buffer.lower, buffer.upper - buffer.lower, f"t{index}"))
        y_intervals.append(model.new_fixed_size_interval_var(offset, units, f"a{index}"))
        if peak is not None:
            model.add(offset + units <= peak)
    model.add_no_overlap_2d(x_intervals, y_intervals)
    if peak is not None:
        model.minimize(peak)
    if hint is not None:
        for variable, value in zip(offsets, hint, strict=True):
            model.add_hint(variable, value // granule)
    solver = cp_model.CpSolver()
    # One worker: the same input and seed give the same answer; the deterministic limit
    # binds first on any machine near this one's speed, the wall clock caps the rest.
    solver.parameters.num_workers = 1
    solver.parameters.random_seed = seed
    solver.parameters.max_time_in_seconds = max(time_limit_s, 0.01)
    solver.parameters.max_deterministic_time = max(
        time_limit_s if deterministic_s is None else deterministic_s, 0.01)
    code = solver.solve(model)
    seconds = time.perf_counter() - started
    name = solver.status_name(code)
    if code in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        found = tuple(int(solver.value(v)) * granule for v in offsets)
        objective = max((o + b.size for o, b in zip(found, buffers, strict=True)), default=0)
        bound = int(solver.best_objective_bound) * granule if capacity is None else None
        status: CpStatus = "optimal" if code == cp_model.OPTIMAL else "feasible"
        return CpResult(status, found, objective, bound, seconds, name)
    if code == cp_model.INFEASIBLE:
        return CpResult("infeasible", None, None, None, seconds, name)
    return CpResult("unknown", None, None, None, seconds, name)
