"""One fixed order in, a checked scratchpad plan out: baseline, candidates, CP-SAT, pricing.

Whatever the solver returns is checked against the contract's validity rules and priced by
`traffic.traffic_of`; the `belady` plan is kept instead whenever it is not worse, so the
result is never above that baseline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mapper.passes.memory.alloc import greedy_offsets
from mapper.passes.memory.belady import belady
from mapper.passes.memory.candidates import Candidate, build_candidates, saving_of
from mapper.passes.memory.cosma import solve_fixed_order
from mapper.passes.memory.problem import Problem, zero_traffic_peak
from mapper.passes.memory.solver import Budget
from mapper.passes.memory.traffic import Residency, Traffic, check_plan, traffic_of


@dataclass(frozen=True)
class Plan:
    """A checked plan for one order, with what the solver proved about it."""

    problem: Problem
    residencies: tuple[Residency, ...]
    traffic: Traffic
    # Proven lower bound on the total traffic of any plan for this order (None: unknown).
    bound: int | None
    status: str
    stage: str
    windows: int = 1

    @property
    def gap(self) -> float | None:
        """Relative distance to the bound: (total - bound) / total."""
        if self.bound is None:
            return None
        total = self.traffic.total
        return 0.0 if total <= self.bound else (total - self.bound) / total


def as_hint(candidates: Sequence[Candidate], residencies: Sequence[Residency], alignment: int
            ) -> dict[Candidate, int]:
    """A plan as a choice of candidates (offset units); residencies that save nothing drop."""
    index = {(c.tensor, c.start, c.end): c for c in candidates}
    hint = {}
    for r in residencies:
        candidate = index.get((r.tensor, r.start, r.end))
        if candidate is not None:
            hint[candidate] = r.offset // alignment
    return hint


def to_residencies(offsets: Mapping[Candidate, int], alignment: int) -> tuple[Residency, ...]:
    """Chosen candidates as plan residencies (offsets in bytes), sorted."""
    return tuple(sorted(Residency(c.start, c.end, c.tensor, offset * alignment)
                        for c, offset in offsets.items()))


def checked(problem: Problem, residencies: Sequence[Residency], capacity: int,
            alignment: int) -> Traffic:
    """The traffic of a plan after checking every validity rule (raises if broken)."""
    check_plan(problem, residencies, capacity, alignment)
    return traffic_of(problem, residencies)


def baseline_plan(problem: Problem, capacity: int, alignment: int) -> Plan:
    """The `belady` baseline as a Plan (no bound)."""
    residencies = tuple(belady(problem, capacity, alignment))
    return Plan(problem, residencies, checked(problem, residencies, capacity, alignment),
                None, "BASELINE", "belady")


# The greedy packing below compares every pair of items: past this many it is not tried.
MAX_WHOLE_LIFE_ITEMS = 4000
WHOLE_LIFE = "whole lives+greedy offsets"


def whole_life_plan(problem: Problem, capacity: int, alignment: int) -> Plan | None:
    """Every tensor held from its first to its last need, packed by the greedy orders: when
    that fits, only compulsory bytes move and the plan is optimal for the order without a
    solver (the capacity model can time out on graphs whose live set nearly fills the level).
    None when it does not fit (or on a level operators cannot bypass)."""
    if problem.resident_operands or zero_traffic_peak(problem) > capacity:
        return None
    items = []
    for tensor in problem.tensors.values():
        if tensor.size <= 0:
            continue
        if tensor.produced:
            assert tensor.producer is not None
            start, end = tensor.producer, tensor.last_need()
        elif len(tensor.uses) >= 2:
            start, end = tensor.uses[0], tensor.uses[-1]
        else:
            continue
        saving = saving_of(tensor, start, end)
        if saving > 0:
            items.append(Candidate(start, end, tensor.name, tensor.size,
                                   -(-tensor.size // alignment),
                                   (capacity - tensor.size) // alignment, saving))
    if len(items) > MAX_WHOLE_LIFE_ITEMS:
        return None
    placed = greedy_offsets(sorted(items))
    if placed is None:
        return None
    residencies = to_residencies(placed, alignment)
    traffic = checked(problem, residencies, capacity, alignment)
    floor = problem.floor()
    if traffic.total > floor:
        return None
    return Plan(problem, residencies, traffic, floor, "OPTIMAL", WHOLE_LIFE)


def solve_order(problem: Problem, capacity: int, alignment: int, budget: Budget, seed: int,
                span_limit: int = 32, relative_gap: float = 1e-4) -> Plan:
    """The CP-SAT plan of one whole order (no windows), never worse than `belady`.

    The solves stop once proven within `relative_gap` of the traffic (measured against the
    floor bytes, which no plan goes below).
    """
    base = baseline_plan(problem, capacity, alignment)
    extra = [(r.tensor, r.start, r.end) for r in base.residencies]
    candidates = build_candidates(problem, capacity, alignment, extra, span_limit)
    hint = as_hint(candidates, base.residencies, alignment)
    choice = solve_fixed_order(candidates, capacity, alignment, budget, seed, hint,
                               gap_bytes=relative_gap * problem.floor(),
                               required=problem.required())
    residencies = to_residencies(choice.offsets, alignment)
    traffic = checked(problem, residencies, capacity, alignment)
    stream = traffic_of(problem, []).total
    # No plan moves less than the floor bytes, so they bound the traffic as well.
    bound = max(stream - choice.saving_bound, problem.floor())
    if traffic.total != stream - choice.saving:
        raise AssertionError(f"memory pass bookkeeping: the model says {stream - choice.saving} "
                             f"bytes, the contract's rules {traffic.total}")
    if base.traffic.total <= traffic.total:
        status = "OPTIMAL" if base.traffic.total <= bound else choice.status
        return Plan(problem, base.residencies, base.traffic, bound, status, "belady")
    status = "OPTIMAL" if traffic.total <= bound else choice.status
    return Plan(problem, residencies, traffic, bound, status, choice.stage)
