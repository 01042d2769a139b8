"""The memory pass: the scratchpad plan of CONTRACTS.md section 3 for the managed on-chip level.

Fixed order first (one CP-SAT model, or windows for big graphs), then an order search that
keeps a new order only if it moves strictly fewer off-chip bytes; optionally a last solve for
the lowest footprint. Every plan is checked against the contract's rules before it leaves.

Infeasibility: under the contract every tensor can stream (a read or write that is not
resident is priced, not forbidden), so on a level that can be bypassed no graph is
infeasible for any capacity; tensors larger than the scratchpad are simply streamed. Only a
level marked `streaming: false` (every operand resident while its node runs) makes an
operator whose inputs and outputs cannot fit together infeasible: exit 3, naming it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from mapper.errors import InfeasibleError
from mapper.facts import Facts, OffchipTraffic
from mapper.passes.memory.alloc import lowest_footprint
from mapper.passes.memory.candidates import Candidate, saving_of
from mapper.passes.memory.decompose import solve_windows
from mapper.passes.memory.order import search_order
from mapper.passes.memory.planner import (
    Plan,
    baseline_plan,
    checked,
    solve_order,
    to_residencies,
    whole_life_plan,
)
from mapper.passes.memory.problem import Problem, build_problem
from mapper.passes.memory.solver import Budget, ladder, track_wall_caps
from mapper.passes.memory.traffic import footprint, traffic_of
from mapper.pipeline import Pass, PassContext, PassResult, SolverRecord
from mapper.units import format_size

# Shares of the pass's deterministic budget (fixed order and order search within each rung).
_FIXED_SHARE, _ORDER_SHARE, _PEAK_SHARE = 0.5, 0.4, 0.1
# Deterministic seconds of the first rung (about what a 0.4 s time limit buys); each next
# rung doubles it.
_FIRST_RUNG = 0.05


def _key(plan: Plan) -> tuple[int, int]:
    return plan.traffic.total, footprint(plan.problem, plan.residencies)


def _status(total: int, bound: int | None) -> str:
    return "OPTIMAL" if bound is not None and total <= bound else "FEASIBLE"


def _merged(kept: Plan | None, found: Plan) -> Plan:
    """The better of two plans of the same order, with the larger of their proven bounds."""
    if kept is None:
        return found
    bounds = [b for b in (kept.bound, found.bound) if b is not None]
    best = found if _key(found) < _key(kept) else kept
    bound = max(bounds) if bounds else None
    return replace(best, bound=bound, status=_status(best.traffic.total, bound))


def _scope(plan: Plan, searched: bool, moved: bool, orders: int) -> str:
    """What the plan's status and bound are proven for."""
    if plan.traffic.non_compulsory == 0:
        return "every order (only compulsory bytes move)"
    if not searched:
        return "the fixed order"
    if moved:
        return f"the searched order (best of {orders} orders tried)"
    if orders <= 1:
        return "the fixed order (the order search found no other order to try)"
    return f"the fixed order (best of {orders} orders tried)"


def plan_order(problem: Problem, capacity: int, alignment: int, budget: Budget, seed: int,
               window: int, lookahead: int, span_limit: int, relative_gap: float) -> Plan:
    """The plan of one order: every tensor held whole when that packs, else one model, or
    windows when it has more than `window` steps."""
    whole = whole_life_plan(problem, capacity, alignment)
    if whole is not None:
        return whole
    if problem.steps > window:
        return solve_windows(problem, capacity, alignment, budget, seed, window, lookahead,
                             span_limit, relative_gap)
    return solve_order(problem, capacity, alignment, budget, seed, span_limit, relative_gap)


def _items(plan: Plan, capacity: int, alignment: int) -> dict[Candidate, int]:
    """A plan's residencies as candidates (offset units), for re-packing."""
    items = {}
    for r in plan.residencies:
        tensor = plan.problem.tensors[r.tensor]
        item = Candidate(r.start, r.end, r.tensor, tensor.size, -(-tensor.size // alignment),
                         (capacity - tensor.size) // alignment,
                         saving_of(tensor, r.start, r.end))
        items[item] = r.offset // alignment
    return items


def lowest_peak(plan: Plan, capacity: int, alignment: int, budget: Budget, seed: int) -> Plan:
    """The same residencies re-packed for the lowest top address (objective 'peak')."""
    items = _items(plan, capacity, alignment)
    offsets = lowest_footprint(list(items), items, budget, seed)
    residencies = to_residencies(offsets, alignment)
    traffic = checked(plan.problem, residencies, capacity, alignment)
    return Plan(plan.problem, residencies, traffic, plan.bound, plan.status, plan.stage,
                plan.windows)


def memory_section(plan: Plan, level: str, capacity: int, alignment: int, objective: str,
                   baseline: Plan) -> dict[str, Any]:
    """`plan.memory` in the contract's form (plus `objective`, `peak` and `step_offchip`, the
    off-chip bytes of each step, which the estimate prices at main-memory bandwidth)."""
    traffic = plan.traffic
    return {
        "level": level,
        "capacity": capacity,
        "alignment": alignment,
        "objective": objective,
        "streaming": not plan.problem.resident_operands,
        "peak": footprint(plan.problem, plan.residencies),
        "tensors": plan.problem.sizes(),
        "residency": [r.to_dict() for r in plan.residencies],
        "traffic": {"total": traffic.total, "compulsory": traffic.compulsory,
                    "non_compulsory": traffic.non_compulsory,
                    "baselines": {"stream_all": traffic_of(baseline.problem, []).total,
                                  "belady": baseline.traffic.total}},
        "step_offchip": list(traffic.by_step),
    }


def _check_operands_fit(problem: Problem, context: PassContext, level: str, capacity: int,
                        alignment: int) -> None:
    """On a level compute cannot bypass, an operator whose operands exceed it cannot run."""
    need, step = max((problem.operand_bytes(s, alignment), s) for s in range(problem.steps))
    if need <= capacity:
        return
    node = context.view.nodes[problem.order[step]]
    raise InfeasibleError(
        f"operator {node.name!r} ({node.op_type}) needs {need} bytes of {level} for its inputs "
        f"and outputs at once ({format_size(need)}); the {level} holds {capacity} bytes "
        f"({format_size(capacity)}) and {context.hardware.name}'s compute cannot bypass it "
        f"(memory.{level}.streaming: false). Give it at least --scratchpad "
        f"{-(-need // 1024)}KiB, or --set memory.{level}.streaming=true if the device can "
        "stream")


class MemoryPass(Pass):
    """Scratchpad schedule, allocation and tensor replacement (COSMA) into `plan.memory`."""

    name = "memory"
    description = ("on-chip scratchpad plan: which tensors are resident when, at which "
                   "offset, and the operator order, minimizing off-chip bytes (CP-SAT)")
    writes = ("memory",)
    provides = ("traffic",)
    config_field = "memory"

    def skip_reason(self, context: PassContext) -> str | None:
        """Skipped on hardware without a managed on-chip level."""
        if context.hardware.managed_level is None:
            return (f"hardware {context.hardware.name} has no managed on-chip level "
                    "(mark one `managed: true`)")
        return None

    def run(self, context: PassContext) -> PassResult:
        """Plan the incoming order, search others, check, and write `plan.memory`."""
        config = context.options.memory
        managed = context.hardware.managed_level
        assert managed is not None
        level, capacity = managed[0], managed[1].size
        alignment, seed = config.alignment, context.options.seed
        budget = Budget.starting_now(context.options.time_limit_s)
        capped = track_wall_caps()
        problem = build_problem(context.view, context.order,
                                resident_operands=not managed[1].streaming)
        if problem.resident_operands:
            _check_operands_fit(problem, context, level, capacity, alignment)
        baseline = baseline_plan(problem, capacity, alignment)

        searched = config.search_order and problem.steps <= config.window
        memo: dict[tuple[str, ...], Plan] = {}
        fresh: list[int] = [0]
        orders: set[tuple[str, ...]] = set()

        def solve(candidate: Problem, part: Budget) -> Plan:
            # A plan proven optimal for its order is kept, not solved again by a later rung.
            orders.add(candidate.order)
            known = memo.get(candidate.order)
            if known is not None:
                return known
            fresh[0] += 1
            found = plan_order(candidate, capacity, alignment, part, seed, config.window,
                               config.lookahead, config.span_limit, config.relative_gap)
            if found.status == "OPTIMAL":
                memo[candidate.order] = found
            return found

        # Rungs of doubling deterministic budget, each the same fixed-order solve and order
        # search whatever the time limit; the best plan over the rungs is kept, so a longer
        # time limit runs the shorter one's rungs and more, and is never worse.
        fixed_share = _FIXED_SHARE / (_FIXED_SHARE + _ORDER_SHARE) if searched else 1.0
        total = budget.deterministic_s * (_FIXED_SHARE + _ORDER_SHARE)
        fixed: Plan | None = None
        plan: Plan | None = None
        rungs: list[float] = []
        for size in ladder(total, _FIRST_RUNG):
            if rungs and budget.expired():
                break
            rungs.append(size)
            fresh[0] = 0
            rung = Budget(size, budget.deadline)
            fixed_rung = solve(problem, rung.part(fixed_share))
            fixed = _merged(fixed, fixed_rung)
            found = fixed_rung
            if searched:
                found = search_order(fixed_rung, solve, rung.part(1.0 - fixed_share),
                                     config.order_evaluations)
            plan = found if plan is None or _key(found) < _key(plan) else plan
            if plan.traffic.non_compulsory == 0 or fresh[0] == 0 \
                    or (not searched and fixed.status == "OPTIMAL"):
                break  # nothing to gain, or every later rung repeats this one
        assert fixed is not None and plan is not None
        if plan.problem.order == problem.order:
            plan = fixed  # the best plan of the incoming order, with its best proven bound
        if config.objective == "peak" and not budget.expired():
            plan = lowest_peak(plan, capacity, alignment, budget.part(_PEAK_SHARE),
                              seed)
        new_order = plan.problem.order if plan.problem.order != problem.order else None
        scope = _scope(plan, searched, new_order is not None, len(orders))
        notes = [f"off-chip {format_size(plan.traffic.total)} with a {format_size(capacity)} "
                 f"{level} (belady {format_size(baseline.traffic.total)}, stream-all "
                 f"{format_size(traffic_of(problem, []).total)}); {plan.status} for "
                 f"{scope}",
                 f"fixed order: {fixed.status} via {fixed.stage}"
                 + (f" in {fixed.windows} windows" if fixed.windows > 1 else "")
                 + f", {fixed.traffic.total} B off-chip (belady {baseline.traffic.total} B)"
                 + (f", proven lower bound {fixed.bound} B" if fixed.bound is not None else ""),
                 f"{len(rungs)} rung(s) of doubling deterministic budget (largest "
                 f"{max(rungs):.3g} s of {total:.3g} s), best plan kept"]
        if searched and fixed.traffic.non_compulsory == 0:
            notes.append("order search: not needed (no non-compulsory bytes)")
        elif searched:
            notes.append(f"order search over {len(orders)} orders: " + (
                f"a new order moves {fixed.traffic.total - plan.traffic.total} B less; its "
                f"{plan.status} and bound hold for that order only"
                if new_order else "kept the incoming order; no proof covers other orders"))
        too_big = sorted((t for t in problem.tensors.values() if t.size > capacity),
                         key=lambda t: (-t.size, t.name))
        if too_big:
            notes.append(f"{len(too_big)} tensor(s) larger than the {capacity} B {level} are "
                         f"streamed (largest: {too_big[0].name}, {too_big[0].size} B)")
        if capped[0]:
            notes.append(f"{capped[0]} solve(s) stopped at the wall-clock cap before their "
                         "deterministic limit (a slow or busy machine): the plan may differ "
                         "between machines")
        status = "fallback" if plan.stage == "belady" and plan.status != "OPTIMAL" else "ok"
        solver = SolverRecord("cp-sat", plan.status, float(plan.traffic.total),
                              float(plan.bound) if plan.bound is not None else None, seed,
                              scope=scope)
        section = memory_section(plan, level, capacity, alignment, config.objective, baseline)
        traffic = OffchipTraffic(order=plan.problem.order,
                                 per_step=tuple(int(b) for b in plan.traffic.by_step),
                                 total=int(plan.traffic.total), onchip_level=level)
        return PassResult(status=status, sections={"memory": section}, order=new_order,
                          solver=solver, notes=tuple(notes), facts=Facts(traffic=traffic))
