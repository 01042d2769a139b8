"""CP-SAT settings shared by every model of the pass: deterministic limits with a wall cap.

Each solve gets a slice of deterministic time fixed by the configured time limit (never by
the clock, so the same input and seed give the same plan) and a wall-clock cap, a share of
the time left, which only a machine much slower than expected reaches first. One worker
interleaving CP-SAT's whole portfolio (LP, core, pseudo-cost, LNS subsolvers) in a fixed
schedule: deterministic, single-threaded, and far stronger on these models than the single
default search.
"""

from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass

from ortools.sat.python import cp_model

# One unit of CP-SAT's deterministic time took 3 to 6.5 wall-clock seconds on these models on
# the loaded 2-core machine: this share of a wall budget keeps the deterministic limit
# binding, and the wall-clock deadline a safety net that a normal run does not reach.
DETERMINISTIC_PER_SECOND = 0.15


# Solves stopped by the wall-clock cap rather than by their deterministic limit, and work
# skipped at the deadline, counted so
# the pass can say when a plan may differ between machines.
_WALL_CAPS: contextvars.ContextVar[list[int]] = contextvars.ContextVar("wall_caps")


@dataclass(frozen=True)
class Budget:
    """Deterministic seconds for a piece of work and its wall-clock deadline."""

    deterministic_s: float
    deadline: float

    @classmethod
    def starting_now(cls, seconds: float) -> Budget:
        """A budget for `seconds` of wall time from now."""
        return cls(seconds * DETERMINISTIC_PER_SECOND, time.perf_counter() + seconds)

    def part(self, fraction: float) -> Budget:
        """`fraction` of the deterministic time, with the same wall-clock deadline (so only
        the whole pass's deadline, never a share of it, can change what a solve returns)."""
        return Budget(self.deterministic_s * fraction, self.deadline)

    def wall_left(self) -> float:
        """Seconds until the deadline (never negative)."""
        return max(0.0, self.deadline - time.perf_counter())

    def expired(self) -> bool:
        """True once the deadline has passed (counted: the plan may then vary by machine)."""
        if self.wall_left() > 0.0:
            return False
        counter = _WALL_CAPS.get(None)
        if counter is not None:
            counter[0] += 1
        return True


def solver_for(budget: Budget, seed: int, absolute_gap: float = 0.0, interleave: bool = True
               ) -> cp_model.CpSolver:
    """A single-threaded, deterministic, seeded CP-SAT solver limited by `budget`.

    `absolute_gap`: stop once the objective is proven within this many units of optimal
    (CP-SAT then says OPTIMAL; callers compare objective and bound themselves).
    `interleave=False`: the plain single search, quicker on easy models.
    """
    solver = cp_model.CpSolver()
    params = solver.parameters
    params.num_workers = 1
    params.interleave_search = interleave
    params.random_seed = seed
    params.max_deterministic_time = max(0.01, budget.deterministic_s)
    params.max_time_in_seconds = max(0.05, budget.wall_left())
    params.log_search_progress = False
    if absolute_gap > 0:
        params.absolute_gap_limit = absolute_gap
    return solver


def ladder(total: float, first: float) -> list[float]:
    """Budgets of the rungs a run of `total` deterministic seconds climbs: `first`, then
    doubling, as many as fit within `total` (one rung of `total` when even `first` does not).

    A rung's budget never depends on `total`, so a larger total runs the same rungs and
    more: keeping the best result over the rungs makes a longer time limit never worse.
    """
    if total < first:
        return [total]
    rungs, size = [], first
    while sum(rungs) + size <= total * (1 + 1e-9):
        rungs.append(size)
        size *= 2
    return rungs


STATUS_NAMES = {cp_model.OPTIMAL: "OPTIMAL", cp_model.FEASIBLE: "FEASIBLE",
                cp_model.INFEASIBLE: "INFEASIBLE", cp_model.MODEL_INVALID: "MODEL_INVALID",
                cp_model.UNKNOWN: "UNKNOWN"}




def track_wall_caps() -> list[int]:
    """Start counting wall-capped solves in this context; returns the counter."""
    counter = [0]
    _WALL_CAPS.set(counter)
    return counter


def run(solver: cp_model.CpSolver, model: cp_model.CpModel) -> int:
    """`solver.solve(model)`, noting when the wall-clock cap (not the deterministic limit)
    ended an unfinished search."""
    status = solver.solve(model)
    params = solver.parameters
    capped = (status not in (cp_model.OPTIMAL, cp_model.INFEASIBLE)
              and solver.wall_time >= 0.95 * params.max_time_in_seconds
              and solver.deterministic_time < 0.95 * params.max_deterministic_time)
    counter = _WALL_CAPS.get(None)
    if capped and counter is not None:
        counter[0] += 1
    return status
