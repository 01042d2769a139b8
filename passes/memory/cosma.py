"""The COSMA-style CP-SAT model for a fixed order: which candidate residencies to keep and where.

Solved in stages (the formulation ../shared/DESIGN.md's "Facts checked" section describes):

1. **capacity**: choose candidates under per-step capacity sums only (no offsets). A
   relaxation of the real problem, so its optimum bounds the traffic from below.
2. **offsets** for that choice: greedy packings, then a CP-SAT NoOverlap2D search. If they
   fit, the plan is as good as the bound: proven optimal when stage 1 was.
3. **full**: otherwise one model with the choice and the offsets (`AddNoOverlap2D` over
   optional intervals), hinted with a complete feasible plan and bounded by stage 1.

`fixed` boxes are residencies decided earlier (an earlier window of the divide and conquer):
they take capacity and addresses but are not decided here. `required` (tensor, step) pairs
must each be covered by a chosen candidate (a level operators cannot bypass).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ortools.sat.python import cp_model

from mapper.passes.memory.alloc import Box, add_fixed_boxes, cpsat_offsets, greedy_offsets
from mapper.passes.memory.candidates import Candidate
from mapper.passes.memory.solver import STATUS_NAMES, Budget, run, solver_for

# Shares of a solve's deterministic budget per stage.
_CAPACITY_SHARE, _OFFSETS_SHARE, _SHRINK_SHARE, _FULL_SHARE = 0.3, 0.1, 0.2, 0.4
# Share of the capacity stage given to the plain search before the portfolio.
_QUICK_SHARE = 0.15
# Capacities tried, as shares of the real one, when the relaxation's choice does not pack.
_SHRINKS = (0.99, 0.97, 0.94, 0.9, 0.8)


@dataclass(frozen=True)
class Choice:
    """Chosen candidates with their offsets (64-byte units), and what the solve proved."""

    offsets: Mapping[Candidate, int]
    saving: int
    # Proven upper bound on the saving any plan can reach (lower bound on traffic).
    saving_bound: int
    status: str
    stage: str


def _check_steps(candidates: Sequence[Candidate], fixed: Sequence[Box]) -> list[int]:
    return sorted({c.start for c in candidates} | {b.start for b in fixed})


def _covering(candidates: Sequence[Candidate], steps: list[int]) -> dict[int, list[int]]:
    """Check step -> indices of candidates alive at it."""
    alive: dict[int, list[int]] = {s: [] for s in steps}
    for index, c in enumerate(candidates):
        first = bisect.bisect_left(steps, c.start)
        last = bisect.bisect_right(steps, c.end)
        for s in steps[first:last]:
            alive[s].append(index)
    return alive


def _fixed_load(fixed: Sequence[Box], steps: list[int]) -> dict[int, int]:
    load = dict.fromkeys(steps, 0)
    for box in fixed:
        first = bisect.bisect_left(steps, box.start)
        last = bisect.bisect_right(steps, box.end)
        for s in steps[first:last]:
            load[s] += box.units
    return load


def _add_selection(model: cp_model.CpModel, candidates: Sequence[Candidate],
                   fixed: Sequence[Box], capacity_units: int,
                   required: Sequence[tuple[str, int]] = ()) -> list[cp_model.IntVar]:
    """Choice variables, one residency at a time per tensor, the capacity sums, and one
    chosen residency over every required (tensor, step)."""
    chosen = [model.new_bool_var(f"c{i}") for i in range(len(candidates))]
    by_tensor: dict[str, list[int]] = {}
    for index, c in enumerate(candidates):
        by_tensor.setdefault(c.tensor, []).append(index)
    for name, step in required:
        covering = [chosen[i] for i in by_tensor.get(name, ())
                    if candidates[i].start <= step <= candidates[i].end]
        model.add_bool_or(covering)  # empty: no candidate can cover it, so infeasible
    for indices in by_tensor.values():
        # Two residencies of a tensor that overlap both hold the later one's start step.
        for point in sorted({candidates[i].start for i in indices}):
            alive = [chosen[i] for i in indices
                     if candidates[i].start <= point <= candidates[i].end]
            if len(alive) > 1:
                model.add_at_most_one(alive)
    steps = _check_steps(candidates, fixed)
    load = _fixed_load(fixed, steps)
    for step, indices in _covering(candidates, steps).items():
        room = capacity_units - load[step]
        if sum(candidates[i].units for i in indices) > room:
            model.add(sum(candidates[i].units * chosen[i] for i in indices) <= room)
    return chosen


def _objective(chosen: Sequence[cp_model.IntVar], candidates: Sequence[Candidate]
               ) -> cp_model.LinearExpr:
    return cp_model.LinearExpr.weighted_sum(list(chosen), [c.saving for c in candidates])


def _solve_capacity(candidates: Sequence[Candidate], fixed: Sequence[Box], capacity_units: int,
                    hint: Mapping[Candidate, int], budget: Budget, seed: int, gap: float,
                    required: Sequence[tuple[str, int]] = ()
                    ) -> tuple[list[Candidate] | None, int, str]:
    """Stage 1: the best choice under capacity sums, its proven saving bound, the status.

    A short plain search first (most real graphs are proven in milliseconds), then the
    interleaved portfolio from its best choice when that did not prove optimality.
    """
    model = cp_model.CpModel()
    chosen = _add_selection(model, candidates, fixed, capacity_units, required)
    model.maximize(_objective(chosen, candidates))
    selected = {c for c in candidates if c in hint}
    status, bound = cp_model.UNKNOWN, sum(c.saving for c in candidates)
    for part, interleave in ((budget.part(_QUICK_SHARE), False),
                             (budget.part(1 - _QUICK_SHARE), True)):
        model.clear_hints()
        for var, c in zip(chosen, candidates, strict=True):
            model.add_hint(var, c in selected)
        solver = solver_for(part, seed, gap, interleave=interleave)
        status = run(solver, model)
        if status == cp_model.INFEASIBLE:
            return None, 0, STATUS_NAMES[status]
        if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            bound = min(bound, int(solver.best_objective_bound + 1e-6))
            selected = {c for var, c in zip(chosen, candidates, strict=True)
                        if solver.value(var)}
        if status == cp_model.OPTIMAL or part.expired():
            break
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None, bound, STATUS_NAMES[status]
    return [c for c in candidates if c in selected], bound, STATUS_NAMES[status]


def _solve_full(candidates: Sequence[Candidate], fixed: Sequence[Box], capacity_units: int,
                hint: Mapping[Candidate, int], saving_bound: int, budget: Budget, seed: int,
                gap: float, required: Sequence[tuple[str, int]] = ()
                ) -> tuple[dict[Candidate, int] | None, int, str]:
    """Stage 3: choice and offsets together; NoOverlap2D over optional intervals."""
    model = cp_model.CpModel()
    chosen = _add_selection(model, candidates, fixed, capacity_units, required)
    xs, ys, offsets = [], [], []
    for index, (var, c) in enumerate(zip(chosen, candidates, strict=True)):
        offset = model.new_int_var(0, c.max_offset, f"o{index}")
        offsets.append(offset)
        xs.append(model.new_optional_fixed_size_interval_var(
            c.start, c.end - c.start + 1, var, f"x{index}"))
        ys.append(model.new_optional_fixed_size_interval_var(offset, c.units, var, f"y{index}"))
        model.add_hint(var, c in hint)
        model.add_hint(offset, hint.get(c, 0))
    add_fixed_boxes(model, fixed, xs, ys)
    model.add_no_overlap_2d(xs, ys)
    objective = _objective(chosen, candidates)
    model.add(objective <= saving_bound)
    model.maximize(objective)
    solver = solver_for(budget, seed, gap)
    status = run(solver, model)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None, saving_bound, STATUS_NAMES[status]
    picked = {c: int(solver.value(o))
              for var, o, c in zip(chosen, offsets, candidates, strict=True)
              if solver.value(var)}
    bound = min(saving_bound, int(solver.best_objective_bound + 1e-6))
    return picked, bound, STATUS_NAMES[status]


def _saving(offsets: Mapping[Candidate, int]) -> int:
    return sum(c.saving for c in offsets)


def _pack(picked: Sequence[Candidate], fixed: Sequence[Box], budget: Budget, seed: int
          ) -> tuple[dict[Candidate, int] | None, str]:
    placed = greedy_offsets(picked, fixed)
    if placed is not None:
        return placed, "greedy offsets"
    if budget.expired():
        return None, ""
    placed = cpsat_offsets(picked, fixed, budget, seed)
    return placed, "cp-sat offsets"


def solve_fixed_order(candidates: Sequence[Candidate], capacity: int, alignment: int,
                      budget: Budget, seed: int, hint: Mapping[Candidate, int] | None = None,
                      fixed: Sequence[Box] = (), gap_bytes: float = 0.0,
                      required: Sequence[tuple[str, int]] = ()) -> Choice:
    """The best choice of candidates and offsets found within `budget` (see module doc).

    `hint` is a complete feasible choice (candidate -> offset units) the result never falls
    below; without one, streaming everything (the empty choice) is the floor (with `required`
    pairs the hint must cover them: the result is only as valid as its floor). The solves
    stop once proven within `gap_bytes` of the optimum; "OPTIMAL" is only said when the
    saving meets the proven bound exactly.
    """
    best: dict[Candidate, int] = dict(hint or {})
    stage = "hint"
    capacity_units = -(-capacity // alignment)
    if not candidates:
        return Choice({}, 0, 0, "OPTIMAL", "empty")
    picked, bound, _ = _solve_capacity(candidates, fixed, capacity_units, best,
                                       budget.part(_CAPACITY_SHARE), seed, gap_bytes, required)
    if picked is not None:
        bound = max(bound, _saving(picked))
    if picked is not None and _saving(picked) > _saving(best):
        placed, how = _pack(picked, fixed, budget.part(_OFFSETS_SHARE), seed)
        if placed is not None:
            proven = _saving(placed) >= bound
            return Choice(placed, _saving(placed), bound, "OPTIMAL" if proven else "FEASIBLE",
                          f"capacity+{how}")
        # Fragmentation: the relaxation's choice does not pack. Choices made for a little
        # less capacity usually do, and give the full model a good incumbent.
        shrinking = budget.part(_SHRINK_SHARE)
        for shrink in _SHRINKS:
            if shrinking.expired():
                break
            attempt = shrinking.part(1 / len(_SHRINKS))
            smaller, _, _ = _solve_capacity(candidates, fixed, int(capacity_units * shrink),
                                            best, attempt.part(0.6), seed, gap_bytes,
                                            required)
            if smaller is None or _saving(smaller) <= _saving(best):
                continue
            placed, how = _pack(smaller, fixed, attempt.part(0.4), seed)
            if placed is not None:
                best, stage = placed, f"capacity x{shrink}+{how}"
                break
    if _saving(best) >= bound:
        return Choice(best, _saving(best), bound, "OPTIMAL", stage)
    if budget.expired() or bound - _saving(best) <= gap_bytes:
        return Choice(best, _saving(best), bound, "FEASIBLE", stage)
    offsets, full_bound, _ = _solve_full(candidates, fixed, capacity_units, best, bound,
                                         budget.part(_FULL_SHARE), seed, gap_bytes, required)
    if offsets is not None and _saving(offsets) >= _saving(best):
        saving = _saving(offsets)
        proven = saving >= full_bound
        return Choice(offsets, saving, full_bound, "OPTIMAL" if proven else "FEASIBLE",
                      "full model")
    return Choice(best, _saving(best), full_bound, "FEASIBLE", stage)


def capacity_bound(candidates: Sequence[Candidate], capacity: int, alignment: int,
                   budget: Budget, seed: int, gap_bytes: float = 0.0) -> int | None:
    """A proven upper bound on the saving of any plan (the relaxation's best bound)."""
    if not candidates:
        return 0
    model = cp_model.CpModel()
    chosen = _add_selection(model, candidates, (), -(-capacity // alignment))
    model.maximize(_objective(chosen, candidates))
    solver = solver_for(budget, seed, gap_bytes)
    status = run(solver, model)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None
    return int(solver.best_objective_bound + 1e-6)
