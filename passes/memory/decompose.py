"""Divide and conquer for graphs too big for one model (COSMA's heuristic, rolling horizon).

The order is cut into windows of `window` steps. Window k chooses among the candidates that
start inside it or in the next `lookahead` steps (so it does not grab room the next steps
need), then commits only those starting inside it, with their offsets. Committed residencies
are the state carried across the cut: later windows see them as fixed boxes that take
capacity and addresses, and never choose an overlapping residency of the same tensor.
"""

from __future__ import annotations

from mapper.passes.memory.alloc import Box
from mapper.passes.memory.candidates import Candidate, build_candidates
from mapper.passes.memory.cosma import capacity_bound, solve_fixed_order
from mapper.passes.memory.planner import Plan, as_hint, baseline_plan, checked, to_residencies
from mapper.passes.memory.problem import Problem
from mapper.passes.memory.solver import Budget
from mapper.passes.memory.traffic import traffic_of, uncovered

# Share of the budget spent on a whole-graph capacity relaxation, for the reported bound.
_BOUND_SHARE = 0.15


def _overlaps(candidate: Candidate, committed: list[Candidate]) -> bool:
    return any(c.start <= candidate.end and candidate.start <= c.end for c in committed)


def _compatible(choice: dict[Candidate, int], local: set[Candidate], boxes: list[Box]
                ) -> dict[Candidate, int]:
    """The part of the baseline's choice this window can still take: its candidates that
    clash with no box carried over from earlier windows (a feasible hint and floor)."""
    kept = {}
    for c, offset in choice.items():
        if c in local and not any(
                b.start <= c.end and c.start <= b.end
                and b.offset < offset + c.units and offset < b.offset + b.units for b in boxes):
            kept[c] = offset
    return kept


def solve_windows(problem: Problem, capacity: int, alignment: int, budget: Budget, seed: int,
                  window: int, lookahead: int, span_limit: int = 32,
                  relative_gap: float = 1e-4) -> Plan:
    """A plan built window by window, never worse than `belady`; bound from the relaxation."""
    base = baseline_plan(problem, capacity, alignment)
    extra = [(r.tensor, r.start, r.end) for r in base.residencies]
    candidates = build_candidates(problem, capacity, alignment, extra, span_limit)
    baseline_choice = as_hint(candidates, base.residencies, alignment)
    count = -(-problem.steps // window)
    gap_bytes = relative_gap * problem.floor() / count
    committed: dict[Candidate, int] = {}
    by_tensor: dict[str, list[Candidate]] = {}
    required_all = problem.required()
    for index in range(count):
        low, high = index * window, min(problem.steps, (index + 1) * window)
        horizon = min(problem.steps, high + lookahead)
        local = [c for c in candidates if low <= c.start < horizon
                 and not _overlaps(c, by_tensor.get(c.tensor, []))]
        boxes = [Box(c.start, c.end, offset, c.units) for c, offset in committed.items()
                 if c.end >= low]
        hint = _compatible(baseline_choice, set(local), boxes)
        part = budget.part((1.0 - _BOUND_SHARE) / count)
        # Operands of this window's steps that no committed residency already holds.
        required = [(name, step) for name, step in required_all
                    if low <= step < horizon and not any(
                        c.start <= step <= c.end for c in by_tensor.get(name, ()))]
        choice = solve_fixed_order(local, capacity, alignment, part, seed, hint=hint,
                                   fixed=boxes, gap_bytes=gap_bytes, required=required)
        for c, offset in choice.offsets.items():
            if c.start < high:
                committed[c] = offset
                by_tensor.setdefault(c.tensor, []).append(c)
    residencies = to_residencies(committed, alignment)
    if uncovered(problem, residencies):
        # A window's floor clashed with what earlier windows committed, so some operand is
        # not held; the baseline holds every one (it is a valid plan by construction).
        return Plan(problem, base.residencies, base.traffic, None, "FEASIBLE", "belady",
                    windows=count)
    traffic = checked(problem, residencies, capacity, alignment)
    stream = traffic_of(problem, []).total
    saving_bound = capacity_bound(candidates, capacity, alignment,
                                  budget.part(_BOUND_SHARE), seed,
                                  relative_gap * problem.floor())
    bound = max(stream - saving_bound if saving_bound is not None else 0,
                problem.floor())
    if base.traffic.total <= traffic.total:
        status = "OPTIMAL" if base.traffic.total <= bound else "FEASIBLE"
        return Plan(problem, base.residencies, base.traffic, bound, status, "belady",
                    windows=count)
    status = "OPTIMAL" if traffic.total <= bound else "FEASIBLE"
    return Plan(problem, residencies, traffic, bound, status, "windows", windows=count)
