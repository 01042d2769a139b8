"""Arena solving entry points: fit a fixed capacity (the CLI) or minimize the peak (the pass).

Both run a small portfolio: greedy-by-size first (often already optimal), then the
MiniMalloc-class canonical search, then CP-SAT's NoOverlap2D model for what budget is left.
Budgets are deterministic (search nodes, CP-SAT deterministic time) with the wall clock as
a cap, so the same input and seed give the same offsets.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from mapper.errors import InfeasibleError, TimeLimitError, UserError
from mapper.passes.arena.greedy import greedy_by_size
from mapper.passes.arena.problem import Buffer, Solution, lower_bound, validate_buffers
from mapper.passes.arena.search import search_capacity

Method = Literal["auto", "search", "cp-sat", "greedy"]
# Search nodes granted per second of time limit: a deterministic budget that a machine a
# few times slower than this one's ~10k nodes/s still finishes within the wall clock.
NODES_PER_SECOND = 4000
# Share of a fixed-capacity budget the search gets before CP-SAT takes over.
_SEARCH_SHARE = 0.75


@dataclass(frozen=True)
class FitResult:
    """A placement within a capacity and how it was found."""

    offsets: tuple[int, ...]
    peak: int
    method: str
    nodes: int
    seconds: float


@dataclass(frozen=True)
class ArenaResult:
    """The smallest arena found: offsets, its size, the baselines and the proven bound."""

    offsets: tuple[int, ...]
    size: int
    lower_bound: int
    greedy_by_size: int
    bound: int
    method: str
    improved: bool
    timed_out: bool
    nodes: int
    seconds: float
    rungs: int = 0

    @property
    def optimal(self) -> bool:
        """True when the size is proven minimal (it meets the best lower bound)."""
        return self.size <= self.bound


def _infeasible_reason(buffers: Sequence[Buffer], capacity: int) -> str | None:
    """A one-line reason no placement fits, when a bound shows it without search."""
    too_big = [b for b in buffers if b.size > capacity]
    if too_big:
        biggest = max(too_big, key=lambda b: b.size)
        return f"buffer {biggest.id!r} alone needs {biggest.size} bytes"
    peak = lower_bound(buffers)
    if peak > capacity:
        return f"{peak} bytes are live at the same time (the lower bound)"
    return None


def fit_capacity(buffers: Sequence[Buffer], capacity: int, time_limit_s: float,
                 seed: int = 0, method: Method = "auto") -> FitResult:
    """Offsets that keep every buffer within `capacity`.

    Raises InfeasibleError when no placement can fit (with the reason) and TimeLimitError
    when the budget ran out before a placement was found or ruled out.
    """
    validate_buffers(buffers)
    started = time.perf_counter()
    reason = _infeasible_reason(buffers, capacity)
    if reason is not None:
        raise InfeasibleError(f"no placement of the {len(buffers)} buffers fits in {capacity} "
                              f"bytes: {reason}")
    greedy = greedy_by_size(buffers)
    if greedy.peak(buffers) > capacity and method == "greedy":
        raise UserError(f"greedy-by-size needs {greedy.peak(buffers)} bytes, more than the "
                        f"capacity {capacity}, and method 'greedy' does not search: use "
                        "method 'auto' to search for a placement")
    if greedy.peak(buffers) <= capacity:
        return FitResult(greedy.offsets, greedy.peak(buffers), "greedy-by-size", 0,
                         time.perf_counter() - started)
    nodes = 0
    if method in ("auto", "search"):
        share = time_limit_s * (_SEARCH_SHARE if method == "auto" else 1.0)
        found = search_capacity(buffers, capacity, share, int(share * NODES_PER_SECOND))
        nodes = found.nodes
        if found.status == "solved" and found.offsets is not None:
            solution = Solution(found.offsets)
            return FitResult(found.offsets, solution.peak(buffers), "minimalloc-search",
                             nodes, time.perf_counter() - started)
        if found.status == "infeasible":
            raise InfeasibleError(
                f"no placement of the {len(buffers)} buffers fits in {capacity} bytes: the "
                f"exhaustive canonical search ruled out every placement ({nodes} nodes)")
    remaining = time_limit_s - (time.perf_counter() - started)
    if method in ("auto", "cp-sat") and remaining > 0.05:
        from mapper.passes.arena.cpsat import solve_cpsat  # ortools loads in ~0.5 s: lazily
        result = solve_cpsat(buffers, remaining, seed, capacity=capacity)
        if result.offsets is not None:
            return FitResult(result.offsets, result.objective or 0, "cp-sat", nodes,
                             time.perf_counter() - started)
        if result.status == "infeasible":
            raise InfeasibleError(f"no placement of the {len(buffers)} buffers fits in "
                                  f"{capacity} bytes: CP-SAT proved it infeasible")
    raise TimeLimitError(f"the time limit ({time_limit_s:g} s) ran out before the "
                         f"{len(buffers)} buffers were placed within {capacity} bytes or shown "
                         f"not to fit (greedy-by-size needs {greedy.peak(buffers)}); raise "
                         "--time-limit")


@dataclass(frozen=True)
class _Best:
    """What the rungs carry over: the best offsets found, their peak and method, and the
    best proven lower bound."""

    offsets: tuple[int, ...]
    peak: int
    method: str
    bound: int


def _ladder(total: float, first: float) -> list[float]:
    """Rung time limits: `first`, then doubling, as many as fit in `total` (one rung of
    `total` when even `first` does not); they never depend on `total`, only their count."""
    if total < first:
        return [total]
    rungs, size = [], first
    while sum(rungs) + size <= total * (1 + 1e-9):
        rungs.append(size)
        size *= 2
    return rungs


def _rung(buffers: Sequence[Buffer], seconds: float, seed: int, method: Method, best: _Best,
          deadline: float) -> tuple[_Best, bool, int]:
    """One rung of `seconds`, starting from what earlier rungs found: the canonical search
    probes capacities below the best arena (node budget from `seconds`), then CP-SAT (a
    deterministic limit from `seconds`) when the search stalls. Returns the new best, whether
    the budget (not a proof) ended it, and the search nodes spent."""
    started = time.perf_counter()
    offsets, best_peak, best_method, bound = best.offsets, best.peak, best.method, best.bound
    nodes, timed_out = 0, False
    # In "auto" the search leaves a quarter of the budget to CP-SAT, for when it stalls.
    search_s = seconds * (_SEARCH_SHARE if method == "auto" else 1.0)
    node_budget = int(search_s * NODES_PER_SECOND)
    if method in ("auto", "search"):
        # Probe capacities in [lowest, best_peak - 1]: the first probe at the bound (real
        # arenas usually meet it) with half the budget; then binary search.
        lowest, probe, probes = bound, bound, 0
        while lowest < best_peak:
            left_s = min(started + search_s, deadline) - time.perf_counter()
            left_nodes = node_budget - nodes
            if left_s <= 0.01 or left_nodes <= 0:
                timed_out = True
                break
            # The probe at the bound gets half the budget, later ones a third of the rest,
            # the last possible probe all of it.
            share = 0.5 if probes == 0 else (1.0 if lowest == best_peak - 1 else 1 / 3)
            found = search_capacity(buffers, probe, left_s * share,
                                    max(int(left_nodes * share), 1))
            nodes += found.nodes
            probes += 1
            if found.status == "solved" and found.offsets is not None:
                offsets, best_method = tuple(found.offsets), "minimalloc-search"
                best_peak = Solution(offsets).peak(buffers)
            elif found.status == "infeasible":
                bound = lowest = probe + 1
            else:
                timed_out = True
                lowest = probe + 1  # unknown at or below: try larger capacities with the rest
            probe = (lowest + best_peak - 1) // 2
    if (method == "cp-sat" or (method == "auto" and timed_out)) and bound < best_peak:
        left_s = min(started + seconds, deadline) - time.perf_counter()
        if left_s > 0.05:
            from mapper.passes.arena.cpsat import solve_cpsat
            # A deterministic limit fixed by the rung (the wall clock only caps it).
            result = solve_cpsat(buffers, left_s, seed, hint=offsets, lower=bound,
                                 deterministic_s=seconds * (1.0 - _SEARCH_SHARE
                                                            if method == "auto" else 1.0))
            if result.offsets is not None and (result.objective or 0) < best_peak:
                offsets, best_peak, best_method = (tuple(result.offsets),
                                                   result.objective or 0, "cp-sat")
            if result.bound is not None:
                bound = max(bound, result.bound)
            timed_out = result.status != "optimal"
    return _Best(offsets, best_peak, best_method, min(bound, best_peak)), timed_out, nodes


# Time limit of the first rung, seconds; each next rung doubles it.
_FIRST_RUNG_S = 0.25


def minimize_arena(buffers: Sequence[Buffer], time_limit_s: float, seed: int = 0,
                   method: Method = "auto") -> ArenaResult:
    """The smallest arena the portfolio finds within the budget; greedy-by-size at worst.

    Rungs of doubling budget (`_ladder`), each continuing from the best arena and bound the
    earlier ones found: the search probes capacities from the lower bound up (binary search
    between the best proven bound and the best arena found): a solved probe lowers the arena,
    an exhausted one raises the bound, a probe out of budget ends the rung. A rung's budget
    never depends on the time limit, so a longer limit repeats the shorter one's rungs and
    adds more: it never returns a larger arena.
    """
    validate_buffers(buffers)
    started = time.perf_counter()
    deadline = started + time_limit_s
    bound = max(lower_bound(buffers), max((b.size for b in buffers), default=0))
    greedy = greedy_by_size(buffers)
    greedy_peak = greedy.peak(buffers)
    best = _Best(tuple(greedy.offsets), greedy_peak, "greedy-by-size", min(bound, greedy_peak))
    nodes, timed_out, rungs = 0, False, 0
    if method != "greedy":
        for seconds in _ladder(time_limit_s, _FIRST_RUNG_S):
            if best.peak <= best.bound or (rungs and time.perf_counter() >= deadline):
                break
            best, timed_out, spent = _rung(buffers, seconds, seed, method, best, deadline)
            nodes += spent
            rungs += 1
    return ArenaResult(offsets=best.offsets, size=best.peak, lower_bound=lower_bound(buffers),
                       greedy_by_size=greedy_peak, bound=best.bound,
                       method=best.method, improved=best.peak < greedy_peak,
                       timed_out=timed_out and best.bound < best.peak, nodes=nodes,
                       seconds=time.perf_counter() - started, rungs=rungs)
