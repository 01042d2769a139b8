"""The arena pass: device-memory offsets for every activation (CONTRACTS.md section 4)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mapper.facts import ArenaSize, Facts
from mapper.graph import GraphView
from mapper.passes.arena.problem import Buffer
from mapper.passes.arena.solve import ArenaResult, minimize_arena
from mapper.pipeline import Pass, PassContext, PassResult, SolverRecord
from mapper.units import format_size

# What the arena's status and bound are proven for: the buffers' lifetimes on the schedule
# the pass receives (another order has other lifetimes).
SCOPE = "the fixed order"


def activation_buffers(view: GraphView, order: Sequence[str]) -> list[Buffer]:
    """One buffer per produced tensor with bytes, live [producing step, last use + 1).

    Graph outputs live to the last step. Buffers come in schedule order (producing step,
    then output position), which is also greedy-by-size's final tie-break.
    """
    lifetimes = view.activation_lifetimes(order)
    buffers = []
    for name in order:
        for tensor in view.nodes[name].outputs:
            if tensor in lifetimes:
                start, end = lifetimes[tensor]
                buffers.append(Buffer(tensor, start, end + 1, view.tensors[tensor].size))
    return buffers


def arena_section(buffers: Sequence[Buffer], result: ArenaResult) -> dict[str, Any]:
    """The plan.json `arena` object."""
    return {"size": result.size, "lower_bound": result.lower_bound,
            "greedy_by_size": result.greedy_by_size,
            "buffers": [{"tensor": b.id, "offset": offset}
                        for b, offset in zip(buffers, result.offsets, strict=True)]}


class ArenaPass(Pass):
    """Offsets for all activations in one device arena, as small as the search can prove."""

    name = "arena"
    description = ("device-memory offsets for every activation: MiniMalloc-class search, "
                   "CP-SAT fallback, against the lower bound and greedy-by-size")
    writes = ("arena",)
    provides = ("arena",)
    config_field = "arena"

    def skip_reason(self, context: PassContext) -> str | None:
        """Nothing to place when no node produces a tensor with bytes."""
        if not context.view.activation_lifetimes(context.order):
            return "no node produces a tensor with a static, non-zero size"
        return None

    def run(self, context: PassContext) -> PassResult:
        """Minimize the arena on the current schedule; greedy-by-size if time runs out."""
        config = context.options.arena
        seed = context.options.seed
        buffers = activation_buffers(context.view, context.order)
        limit = config.time_limit_s or context.options.time_limit_s
        result = minimize_arena(buffers, limit, seed, config.method)
        gap = result.size / result.lower_bound - 1 if result.lower_bound else 0.0
        proof = "OPTIMAL" if result.optimal else "FEASIBLE"
        notes = [f"{format_size(result.size)} for {len(buffers)} activations, {gap:.2%} over "
                 f"the lower bound (greedy-by-size {format_size(result.greedy_by_size)}); "
                 f"{proof} for {SCOPE}",
                 f"arena {result.size} bytes for {len(buffers)} activations: "
                 f"{gap:.2%} over the lower bound {result.lower_bound}, greedy-by-size "
                 f"{result.greedy_by_size} ({result.method}, {result.nodes} search nodes, "
                 f"{result.rungs} rung(s) of doubling budget, best arena kept)"]
        if result.timed_out:
            notes.append(f"the time limit ({limit:g} s) ended the search before optimality "
                         f"was proven (best bound {result.bound})")
        solver = SolverRecord(result.method, "OPTIMAL" if result.optimal else "FEASIBLE",
                              result.size, result.bound, seed, scope=SCOPE)
        status = "fallback" if result.timed_out and not result.improved else "ok"
        return PassResult(status=status, sections={"arena": arena_section(buffers, result)},
                          solver=solver, notes=tuple(notes),
                          facts=Facts(arena=ArenaSize(bytes=int(result.size))))
