"""Greedy-by-size placement (the contract's `greedy_by_size` baseline and the search's fallback).

Buffers go largest first (ties: earlier `lower`, then earlier `upper`, then input order) to
the lowest offset where they fit beside every already placed buffer that is live at the same
time: the classic TFLite-style planner, first fit by address.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mapper.passes.arena.problem import Buffer, Solution, align_up


def greedy_order(buffers: Sequence[Buffer]) -> list[int]:
    """Indices in placement order: size descending, then lower, upper, input position."""
    return sorted(range(len(buffers)),
                  key=lambda i: (-buffers[i].size, buffers[i].lower, buffers[i].upper, i))


def greedy_by_size(buffers: Sequence[Buffer]) -> Solution:
    """Largest first, each at the lowest offset that fits among time-overlapping placed ones."""
    count = len(buffers)
    lower = np.fromiter((b.lower for b in buffers), dtype=np.int64, count=count)
    upper = np.fromiter((b.upper for b in buffers), dtype=np.int64, count=count)
    size = np.fromiter((b.size for b in buffers), dtype=np.int64, count=count)
    offsets = np.zeros(count, dtype=np.int64)
    placed = np.zeros(count, dtype=bool)
    for index in greedy_order(buffers):
        buffer = buffers[index]
        live = placed & (lower < buffer.upper) & (buffer.lower < upper) & (size > 0)
        candidate = 0
        if buffer.size > 0:
            neighbours = np.nonzero(live)[0]
            # Walk the neighbours by address; the first gap that holds the buffer wins.
            for other in neighbours[np.argsort(offsets[neighbours], kind="stable")]:
                if candidate + buffer.size <= offsets[other]:
                    break
                candidate = max(candidate, align_up(int(offsets[other] + size[other]),
                                                    buffer.alignment))
        offsets[index] = candidate
        placed[index] = True
    return Solution(tuple(int(o) for o in offsets))
