"""Order search around the fixed-order model: other topological orders, each solved in full.

Candidates are two whole-order list schedules (free the most bytes first; keep working on
the branch just produced) and then hill-climbing moves aimed at the plan's non-compulsory
traffic: the producer of a tensor that is written back or re-read is moved as late as its
consumers allow, and its consumers as early as their inputs allow. Every candidate order is
planned by the same CP-SAT pipeline and priced by the contract's rules; one is kept only if
it moves strictly less off-chip (then has the smaller footprint), so the search never makes
the fixed-order result worse.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from mapper.passes.memory.planner import Plan
from mapper.passes.memory.problem import Problem, predecessors, reorder
from mapper.passes.memory.solver import Budget
from mapper.passes.memory.traffic import footprint

Solve = Callable[[Problem, Budget], Plan]


def _key(plan: Plan) -> tuple[int, int]:
    return plan.traffic.total, footprint(plan.problem, plan.residencies)


def _successors(preds: dict[str, set[str]]) -> dict[str, set[str]]:
    succs: dict[str, set[str]] = {name: set() for name in preds}
    for name, before in preds.items():
        for pred in before:
            succs[pred].add(name)
    return succs


def list_schedule(problem: Problem, priority: str) -> tuple[str, ...]:
    """A topological order built greedily: `priority` "free" or "depth" (see module doc)."""
    preds = predecessors(problem)
    succs = _successors(preds)
    index = {name: step for step, name in enumerate(problem.order)}
    waiting = {name: len(before) for name, before in preds.items()}
    remaining_uses = {name: len(t.uses) for name, t in problem.tensors.items()}
    produced_at: dict[str, int] = {}

    def score(name: str, clock: int) -> tuple[int, int]:
        step = index[name]
        if priority == "free":
            freed = sum(problem.tensors[t].size for t in problem.reads[step]
                        if problem.tensors[t].produced and remaining_uses[t] == 1
                        and not problem.tensors[t].is_output)
            made = sum(problem.tensors[t].size for t in problem.writes[step])
            return made - freed, step
        # Depth: the node whose inputs were produced most recently goes first.
        latest = max((produced_at.get(t, -1) for t in problem.reads[step]), default=-1)
        return clock - latest, step

    ready = [name for name, count in waiting.items() if count == 0]
    order: list[str] = []
    while ready:
        clock = len(order)
        chosen = min(ready, key=lambda name: score(name, clock))
        ready.remove(chosen)
        order.append(chosen)
        step = index[chosen]
        for t in problem.reads[step]:
            remaining_uses[t] -= 1
        for t in problem.writes[step]:
            produced_at[t] = clock
        for nxt in sorted(succs[chosen], key=index.__getitem__):
            waiting[nxt] -= 1
            if waiting[nxt] == 0:
                ready.append(nxt)
    return tuple(order)


def _move(order: Sequence[str], node: str, target: int) -> tuple[str, ...]:
    rest = [name for name in order if name != node]
    rest.insert(target, node)
    return tuple(rest)


def _moves(plan: Plan, preds: dict[str, set[str]], succs: dict[str, set[str]]
           ) -> list[tuple[str, ...]]:
    """Orders that shorten the life of the tensors behind the plan's non-compulsory bytes."""
    problem = plan.problem
    order = problem.order
    position = {name: step for step, name in enumerate(order)}
    starts = {r.tensor: r for r in plan.residencies
              if r.start == problem.tensors[r.tensor].producer}
    costly = []
    for tensor in problem.tensors.values():
        if not tensor.produced or not tensor.uses:
            continue
        first = starts.get(tensor.name)
        if first is None or first.end < tensor.uses[-1]:
            costly.append((-tensor.size, tensor.name))
    found: list[tuple[str, ...]] = []
    seen: set[tuple[str, ...]] = {tuple(order)}
    for _, name in sorted(costly):
        tensor = problem.tensors[name]
        producer = order[tensor.producer]  # type: ignore[index]
        late = min(position[s] for s in succs[producer]) - 1 if succs[producer] else len(order) - 1
        tries = [_move(order, producer, late)]
        for use in tensor.uses:
            consumer = order[use]
            early = max((position[p] for p in preds[consumer]), default=-1) + 1
            tries.append(_move(order, consumer, early))
        for candidate in tries:
            if candidate not in seen:
                seen.add(candidate)
                found.append(candidate)
    return found


def search_order(plan: Plan, solve: Solve, budget: Budget, evaluations: int) -> Plan:
    """The best plan over the searched orders; `plan` itself unless one is strictly better."""
    if plan.traffic.non_compulsory == 0 or evaluations <= 0:
        return plan
    best = plan
    tried = {plan.problem.order}
    spent = 0
    base = plan.problem
    for priority in ("free", "depth"):
        order = list_schedule(base, priority)
        if order in tried or spent >= evaluations or budget.expired():
            continue
        tried.add(order)
        spent += 1
        candidate = solve(reorder(base, order), budget.part(1.0 / evaluations))
        if _key(candidate) < _key(best):
            best = candidate
    preds = predecessors(base)
    succs = _successors(preds)
    improved = True
    while improved and spent < evaluations and not budget.expired():
        improved = False
        for order in _moves(best, preds, succs):
            if spent >= evaluations or budget.expired():
                break
            if order in tried:
                continue
            tried.add(order)
            spent += 1
            candidate = solve(reorder(base, order), budget.part(1.0 / evaluations))
            if _key(candidate) < _key(best):
                best = candidate
                improved = True
                break
    return best
