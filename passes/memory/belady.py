"""The `belady` baseline of CONTRACTS.md section 3, and `stream_all`.

Belady, as this project defines it: walk the model's own order; at each step every tensor the
node reads and then every tensor it writes is made resident (a read that is not resident is
loaded) at the lowest 64-byte-aligned offset where it fits (first fit). When it does not fit,
resident tensors the step does not touch are evicted, the one whose next use is furthest
first (never used again counts as furthest; ties: larger first, then by name), until it
fits; a tensor that still cannot fit is streamed. A tensor leaves right after its last use.
On a level operators cannot bypass (`resident_operands`) nothing may stream: when the step's
own tensors block each other, they are all taken out and placed again from offset 0 (those
held from earlier steps end at their last use and are reloaded), which always fits once the
pass has checked that every step's operands fit together.
Evicting ends the residency at its last use before the eviction; the contract then prices
the write-back and any reload.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mapper.passes.memory.problem import Problem
from mapper.passes.memory.traffic import Residency

_NEVER = 1 << 62


def align_up(value: int, alignment: int) -> int:
    """`value` rounded up to a multiple of `alignment`."""
    return -(-value // alignment) * alignment


@dataclass
class _Block:
    tensor: str
    offset: int
    size: int
    start: int


def first_fit(blocks: list[_Block], size: int, capacity: int, alignment: int) -> int | None:
    """The lowest aligned offset where `size` bytes fit between `blocks`, or None."""
    cursor = 0
    for block in sorted(blocks, key=lambda b: b.offset):
        if cursor + size <= block.offset:
            return cursor
        cursor = max(cursor, align_up(block.offset + block.size, alignment))
    return cursor if cursor + size <= capacity else None


def _last_use_before(problem: Problem, name: str, start: int, step: int) -> int:
    """The residency of `name` that started at `start` and is evicted at `step` ends here."""
    tensor = problem.tensors[name]
    covered = [u for u in tensor.uses if start <= u < step]
    return covered[-1] if covered else start


def _furthest(problem: Problem, name: str, step: int) -> tuple[int, int, str]:
    """Eviction rank: next use (never = furthest), then size, then name; the largest goes."""
    upcoming = problem.tensors[name].next_use(step - 1)
    return (upcoming if upcoming is not None else _NEVER, problem.tensors[name].size, name)


def _compact(problem: Problem, step: int, resident: dict[str, _Block],
             close: Callable[[str, int], None], capacity: int, alignment: int) -> None:
    """Re-place every operand of `step` from offset 0 (only they are resident now)."""
    names = [n for n in dict.fromkeys((*problem.reads[step], *problem.writes[step]))
             if problem.tensors[n].size > 0]
    for name in names:
        block = resident.get(name)
        if block is None:
            continue
        if block.start == step:
            del resident[name]  # placed at this very step: just place it again
        else:
            close(name, _last_use_before(problem, name, block.start, step))
    for name in names:
        offset = first_fit(list(resident.values()), problem.tensors[name].size, capacity,
                           alignment)
        if offset is None:
            raise AssertionError(f"step {step}: its operands do not fit {capacity} bytes "
                                 "together; the pass checks this before planning")
        resident[name] = _Block(name, offset, problem.tensors[name].size, step)


def belady(problem: Problem, capacity: int, alignment: int) -> list[Residency]:
    """The baseline plan: model order given by `problem`, first fit, furthest-next-use eviction."""
    resident: dict[str, _Block] = {}
    plan: list[Residency] = []

    def close(name: str, end: int) -> None:
        block = resident.pop(name)
        plan.append(Residency(start=block.start, end=end, tensor=name, offset=block.offset))

    for step in range(problem.steps):
        pinned = set(problem.reads[step]) | set(problem.writes[step])
        for name in [*problem.reads[step], *problem.writes[step]]:
            tensor = problem.tensors[name]
            if name in resident or tensor.size == 0 or tensor.size > capacity:
                continue
            while True:
                offset = first_fit(list(resident.values()), tensor.size, capacity, alignment)
                if offset is not None:
                    resident[name] = _Block(name, offset, tensor.size, step)
                    break
                victims = [v for v in resident if v not in pinned]
                if not victims:
                    if problem.resident_operands:
                        _compact(problem, step, resident, close, capacity, alignment)
                    break  # streamed: the step's own tensors fill the scratchpad

                victim = max(victims, key=lambda v, now=step: _furthest(problem, v, now))
                close(victim, _last_use_before(problem, victim, resident[victim].start, step))
        for name in sorted(resident):
            if problem.tensors[name].next_use(step) is None:
                close(name, step)
    return sorted(plan)


def stream_all() -> list[Residency]:
    """The other baseline: nothing is ever resident."""
    return []
