"""Candidate residency intervals of the CP-SAT model, and what each one saves.

A residency only pays off between touches of its tensor, so a candidate starts at the
producing step or at a use and ends at a use (a dead output: at its producing step). Its
saving, against streaming the tensor, follows the contract's rules:

* started at the producing step (produced on-chip): every use it covers is no streamed read,
  and the streamed write is replaced by a write-back unless the tensor is not needed after
  the residency (no later use, not a graph output): saves size x uses (+ size then);
* any other start is a load of `size`: saves size x (uses covered - 1).

Residencies of one tensor must not overlap, so the savings of chosen candidates add up
exactly: traffic = stream_all - sum of savings.

When operands must be resident (`Problem.resident_operands`), every use and the producing
step also get a one-step candidate, and candidates that save nothing are kept: they are how
a tensor read once is brought in at all.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from mapper.passes.memory.problem import Problem, TensorUse


@dataclass(frozen=True, order=True)
class Candidate:
    """One possible residency of `tensor` over steps start..end (64-byte units for geometry)."""

    start: int
    end: int
    tensor: str
    size: int
    units: int
    # Highest offset, in units, at which the tensor still ends inside the capacity.
    max_offset: int
    saving: int


def saving_of(tensor: TensorUse, start: int, end: int) -> int:
    """Bytes saved against streaming by holding `tensor` over start..end (see module doc)."""
    covered = sum(1 for use in tensor.uses if start <= use <= end)
    if tensor.produced and start == tensor.producer:
        needed_after = tensor.next_use(end) is not None or tensor.is_output
        return tensor.size * covered + (0 if needed_after else tensor.size)
    return tensor.size * (covered - 1)


def _spans(tensor: TensorUse, span_limit: int) -> Iterable[tuple[int, int]]:
    uses = tensor.uses
    if tensor.produced:
        assert tensor.producer is not None
        if not uses and not tensor.is_output:
            yield tensor.producer, tensor.producer
        for use in uses:
            yield tensor.producer, use
    last = len(uses) - 1
    for i in range(len(uses)):
        # Every end within `span_limit` uses, plus the last use: long-lived tensors read
        # many times keep a bounded number of candidates.
        for j in sorted({*range(i + 1, min(i + span_limit, last) + 1), last}):
            if j > i:
                yield uses[i], uses[j]


def build_candidates(problem: Problem, capacity: int, alignment: int,
                     extra: Iterable[tuple[str, int, int]] = (), span_limit: int = 32,
                     min_start: int = 0, max_start: int | None = None) -> list[Candidate]:
    """Candidates with a positive saving for every tensor that fits, starts in a step range.

    `extra` adds given (tensor, start, end) spans, e.g. the baseline plan's, so it is always
    expressible as a selection (the hint that keeps the result at or below it).
    """
    max_start = problem.steps - 1 if max_start is None else max_start
    spans: dict[str, set[tuple[int, int]]] = {}
    for tensor in problem.tensors.values():
        if 0 < tensor.size <= capacity:
            spans[tensor.name] = set(_spans(tensor, span_limit))
            if problem.resident_operands:
                touches = (*tensor.uses, *(() if tensor.producer is None else
                                           (tensor.producer,)))
                spans[tensor.name].update((step, step) for step in touches)
    for name, start, end in extra:
        if name in spans:
            spans[name].add((start, end))
    found: list[Candidate] = []
    for name, pairs in spans.items():
        tensor = problem.tensors[name]
        units = -(-tensor.size // alignment)
        max_offset = (capacity - tensor.size) // alignment
        for start, end in pairs:
            if not min_start <= start <= max_start:
                continue
            saving = saving_of(tensor, start, end)
            if saving > 0 or (problem.resident_operands and saving == 0):
                found.append(Candidate(start, end, name, tensor.size, units, max_offset, saving))
    return sorted(found)
