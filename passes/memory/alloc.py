"""Offsets for residencies whose steps are already chosen: fast greedy packings first, then
CP-SAT (NoOverlap2D over fixed time intervals) when none of them fits.

Units are 64-byte (alignment) blocks; a box occupies [offset, offset + units) in units.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ortools.sat.python import cp_model

from mapper.passes.memory.candidates import Candidate
from mapper.passes.memory.solver import Budget, run, solver_for


@dataclass(frozen=True)
class Box:
    """A residency already placed (from an earlier window): steps and units it occupies."""

    start: int
    end: int
    offset: int
    units: int


def _lowest_gap(taken: list[tuple[int, int]], units: int, limit: int) -> int | None:
    cursor = 0
    for low, high in sorted(taken):
        if cursor + units <= low:
            break
        cursor = max(cursor, high)
    return cursor if cursor <= limit else None


_ORDERS: tuple[Callable[[Candidate], tuple], ...] = (
    lambda c: (-c.units, -(c.end - c.start), c.start, c.tensor),
    lambda c: (c.start, -c.units, c.tensor),
    lambda c: (-(c.end - c.start), -c.units, c.start, c.tensor),
    lambda c: (-c.units * (c.end - c.start + 1), c.start, c.tensor),
)


def greedy_offsets(items: Sequence[Candidate], fixed: Sequence[Box] = ()
                   ) -> dict[Candidate, int] | None:
    """Offsets (units) placing every item lowest-first in one of a few orders, or None."""
    for key in _ORDERS:
        placed: list[tuple[int, int, int, int]] = [(b.start, b.end, b.offset, b.units)
                                                   for b in fixed]
        offsets: dict[Candidate, int] = {}
        for item in sorted(items, key=key):
            taken = [(o, o + u) for s, e, o, u in placed if s <= item.end and item.start <= e]
            offset = _lowest_gap(taken, item.units, item.max_offset)
            if offset is None:
                break
            offsets[item] = offset
            placed.append((item.start, item.end, offset, item.units))
        else:
            return offsets
    return None


def add_fixed_boxes(model: cp_model.CpModel, fixed: Sequence[Box],
                    xs: list[cp_model.IntervalVar], ys: list[cp_model.IntervalVar]) -> None:
    """Append the time and address intervals of boxes placed earlier (for NoOverlap2D)."""
    for index, box in enumerate(fixed):
        xs.append(model.new_fixed_size_interval_var(box.start, box.end - box.start + 1,
                                                    f"fx{index}"))
        ys.append(model.new_fixed_size_interval_var(box.offset, box.units, f"fy{index}"))


def cpsat_offsets(items: Sequence[Candidate], fixed: Sequence[Box], budget: Budget,
                  seed: int) -> dict[Candidate, int] | None:
    """Offsets for every item by CP-SAT (a feasibility search), or None if none was found."""
    model = cp_model.CpModel()
    xs, ys, offsets = [], [], {}
    for index, item in enumerate(items):
        offset = model.new_int_var(0, item.max_offset, f"o{index}")
        offsets[item] = offset
        xs.append(model.new_fixed_size_interval_var(item.start, item.end - item.start + 1,
                                                    f"x{index}"))
        ys.append(model.new_fixed_size_interval_var(offset, item.units, f"y{index}"))
    add_fixed_boxes(model, fixed, xs, ys)
    model.add_no_overlap_2d(xs, ys)
    solver = solver_for(budget, seed)
    status = run(solver, model)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None
    return {item: int(solver.value(var)) for item, var in offsets.items()}


def lowest_footprint(items: Sequence[Candidate], hint: dict[Candidate, int], budget: Budget,
                     seed: int) -> dict[Candidate, int]:
    """Offsets for `items` with the lowest top address found (hint: a feasible packing)."""
    if not items:
        return {}
    model = cp_model.CpModel()
    xs, ys, offsets = [], [], {}
    top = model.new_int_var(0, max(i.max_offset + i.units for i in items), "top")
    for index, item in enumerate(items):
        offset = model.new_int_var(0, item.max_offset, f"o{index}")
        offsets[item] = offset
        xs.append(model.new_fixed_size_interval_var(item.start, item.end - item.start + 1,
                                                    f"x{index}"))
        ys.append(model.new_fixed_size_interval_var(offset, item.units, f"y{index}"))
        model.add(offset + item.units <= top)
        model.add_hint(offset, hint[item])
    model.add_no_overlap_2d(xs, ys)
    model.minimize(top)
    solver = solver_for(budget, seed)
    status = run(solver, model)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return dict(hint)
    found = {item: int(solver.value(var)) for item, var in offsets.items()}
    height = max(hint[i] + i.units for i in items)
    return found if max(found[i] + i.units for i in items) <= height else dict(hint)
