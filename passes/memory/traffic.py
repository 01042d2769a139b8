"""The contract's validity and traffic rules (CONTRACTS.md section 3) over a list of residencies.

The solver's own bookkeeping: every plan the pass returns is checked and priced here, and the
baselines are priced by the same function, so "same rules" holds by construction.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mapper.passes.memory.problem import Problem


@dataclass(frozen=True, order=True)
class Residency:
    """`tensor` held at bytes [offset, offset + size) during steps start..end inclusive."""

    start: int
    end: int
    tensor: str
    offset: int

    def to_dict(self) -> dict[str, int | str]:
        """The plan.json form."""
        return {"tensor": self.tensor, "start": self.start, "end": self.end,
                "offset": self.offset}


@dataclass(frozen=True)
class Traffic:
    """Off-chip bytes of a plan, by kind, as the contract counts them."""

    loads: int
    streamed_reads: int
    streamed_writes: int
    write_backs: int
    compulsory: int
    # Off-chip bytes attributed to each step: streamed reads and writes of its node, loads of
    # residencies starting there, write-backs of residencies ending there. Sums to `total`.
    by_step: tuple[int, ...] = ()

    @property
    def total(self) -> int:
        """All off-chip bytes."""
        return self.loads + self.streamed_reads + self.streamed_writes + self.write_backs

    @property
    def non_compulsory(self) -> int:
        """Bytes above the compulsory ones."""
        return self.total - self.compulsory


class InvalidPlanError(AssertionError):
    """A plan that breaks the contract's validity rules (a bug in whoever made it)."""


def _by_tensor(residencies: Iterable[Residency]) -> dict[str, list[Residency]]:
    grouped: dict[str, list[Residency]] = {}
    for residency in residencies:
        grouped.setdefault(residency.tensor, []).append(residency)
    for items in grouped.values():
        items.sort()
    return grouped


def problems_of(problem: Problem, residencies: Sequence[Residency], capacity: int,
                alignment: int) -> list[str]:
    """Every validity rule the plan breaks (empty when valid)."""
    found: list[str] = []
    for r in residencies:
        tensor = problem.tensors.get(r.tensor)
        if tensor is None:
            found.append(f"{r}: tensor is touched by no step")
            continue
        if not 0 <= r.start <= r.end < problem.steps:
            found.append(f"{r}: steps outside 0..{problem.steps - 1} or start > end")
        if r.offset < 0 or r.offset + tensor.size > capacity:
            found.append(f"{r}: bytes [{r.offset}, {r.offset + tensor.size}) outside the "
                         f"capacity {capacity}")
        if r.offset % alignment:
            found.append(f"{r}: offset not a multiple of {alignment}")
        if tensor.producer is not None and r.start < tensor.producer:
            found.append(f"{r}: starts before the producing step {tensor.producer}")
    for name, items in _by_tensor(residencies).items():
        for first, second in itertools.pairwise(items):
            if second.start <= first.end:
                found.append(f"{name}: residencies {first} and {second} overlap in time")
    # Sweep in start order; every active residency that overlaps in time must not share bytes.
    active: list[Residency] = []
    for r in sorted(residencies):
        if r.tensor not in problem.tensors:
            continue
        active = [a for a in active if a.end >= r.start]
        size = problem.tensors[r.tensor].size
        for other in active:
            other_size = problem.tensors[other.tensor].size
            if size and other_size and r.offset < other.offset + other_size \
                    and other.offset < r.offset + size:
                found.append(f"{r} and {other} overlap in time and address")
        active.append(r)
    found.extend(f"{name} is not resident at step {step}, which reads or writes it (the level "
                 "cannot be bypassed)" for name, step in uncovered(problem, residencies))
    return found


def uncovered(problem: Problem, residencies: Sequence[Residency]) -> list[tuple[str, int]]:
    """Required (tensor, step) pairs no residency covers (empty unless `resident_operands`)."""
    grouped = _by_tensor(residencies)
    return [(name, step) for name, step in problem.required()
            if not any(r.start <= step <= r.end for r in grouped.get(name, ()))]


def check_plan(problem: Problem, residencies: Sequence[Residency], capacity: int,
               alignment: int) -> None:
    """Raise InvalidPlanError listing the broken rules, if any."""
    found = problems_of(problem, residencies, capacity, alignment)
    if found:
        shown = "; ".join(found[:5]) + (f"; ... ({len(found)} in all)" if len(found) > 5 else "")
        raise InvalidPlanError(f"invalid memory plan: {shown}")


def traffic_of(problem: Problem, residencies: Sequence[Residency]) -> Traffic:
    """Off-chip bytes of a valid plan, walking the contract's four rules."""
    grouped = _by_tensor(residencies)
    loads = streamed_reads = streamed_writes = write_backs = 0
    by_step = [0] * problem.steps

    def resident(name: str, step: int) -> bool:
        return any(r.start <= step <= r.end for r in grouped.get(name, ()))

    for step in range(problem.steps):
        for name in problem.reads[step]:
            if not resident(name, step):
                streamed_reads += problem.tensors[name].size
                by_step[step] += problem.tensors[name].size
        for name in problem.writes[step]:
            if not resident(name, step):
                streamed_writes += problem.tensors[name].size
                by_step[step] += problem.tensors[name].size
    for name, items in grouped.items():
        tensor = problem.tensors[name]
        offchip_from = None if tensor.produced else -1  # step after which a copy exists
        if tensor.produced and not resident(name, tensor.producer):  # type: ignore[arg-type]
            offchip_from = tensor.producer
        for index, r in enumerate(items):
            if r.start == tensor.producer:
                # Produced on-chip: the first residency. Written back once if still needed.
                later_use = tensor.next_use(r.end) is not None
                if later_use or index + 1 < len(items) or tensor.is_output:
                    write_backs += tensor.size
                    by_step[r.end] += tensor.size
                    offchip_from = r.end
                continue
            if offchip_from is None or offchip_from >= r.start:
                raise InvalidPlanError(f"{r}: loads {name} before any off-chip copy exists")
            loads += tensor.size
            by_step[r.start] += tensor.size
    return Traffic(loads=loads, streamed_reads=streamed_reads, streamed_writes=streamed_writes,
                   write_backs=write_backs, compulsory=problem.compulsory(),
                   by_step=tuple(by_step))


def footprint(problem: Problem, residencies: Sequence[Residency]) -> int:
    """The highest byte any residency occupies (the scratchpad the plan really needs)."""
    return max((r.offset + problem.tensors[r.tensor].size for r in residencies), default=0)
