"""A MiniMalloc-class exact search for placing buffers within a fixed capacity.

Moffitt's MiniMalloc (ASPLOS 2023) searches only *canonical* solutions: buffers are placed
in non-decreasing order of offset (ties by a static preorder), and each one sits exactly on
top of the highest already-placed buffer it overlaps in time (its "minimum offset"). Every
feasible problem has such a solution, so the search stays complete while skipping the
permutations a naive branch and bound would revisit. The same structure gives strong pruning:

- section inference: time is cut into sections (the maximal sets of buffers live together);
  in each section the unplaced bytes must fit above the section's floor, and that floor is
  at least the current offset (placement is monotonic), the top of the last buffer placed in
  the section, and the smallest minimum offset of its unplaced buffers;
- dominance: a buffer whose minimum offset is at or above the lowest top any unplaced buffer
  could reach would leave a gap that buffer could fill, so it is never tried there;
- dynamic decomposition: once no unplaced buffer spans a boundary between two sections, the
  two sides no longer interact and are solved as independent subproblems;
- a round robin over three static preorders (width/area/total and permutations) with a node
  limit that doubles each round, so one unlucky order cannot stall the search.

The per-node bookkeeping is vectorized with numpy (section floors, totals and minimum offsets
are arrays copied per node instead of undo logs).
"""

from __future__ import annotations

import hashlib
import itertools
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from mapper.passes.arena.problem import Buffer, lower_bound

SearchStatus = Literal["solved", "infeasible", "timeout"]
# Static preorders tried in turn (MiniMalloc's defaults): W = lifetime width, A = area
# (size x width), T = the largest unplaced total of the sections the buffer spans.
HEURISTICS = ("WAT", "TAW", "TWA")

_OK, _NOT_FOUND, _TIMEOUT, _ABORTED = 0, 1, 2, 3
_BIG = np.iinfo(np.int64).max // 4
# Memo sizes: a failed search state takes ~100 bytes, a solved part its offsets.
_MAX_FAILED_STATES = 1_000_000
_MAX_SOLVED_PARTS = 20_000


@dataclass(frozen=True)
class SearchResult:
    """The outcome of one fixed-capacity search: offsets when solved, and effort spent."""

    status: SearchStatus
    offsets: tuple[int, ...] | None
    nodes: int
    seconds: float
    heuristic: str | None = None


@dataclass(frozen=True)
class _Sweep:
    """Sections (maximal cliques of the interval graph) and each buffer's span over them."""

    first: np.ndarray      # buffer -> first section it is live in
    last: np.ndarray       # buffer -> one past the last section it is live in
    members: np.ndarray    # buffers of every section, concatenated in section order
    starts: np.ndarray     # section -> where its buffers begin in `members`
    cuts: np.ndarray       # boundary s|s+1 -> number of buffers live on both sides

    @property
    def sections(self) -> int:
        """How many sections there are."""
        return len(self.starts)


def _sweep(lower: np.ndarray, upper: np.ndarray) -> _Sweep:
    times = np.unique(np.concatenate([lower, upper]))
    low_index = np.searchsorted(times, lower)
    up_index = np.searchsorted(times, upper)
    starts_here = np.zeros(len(times), dtype=bool)
    starts_here[low_index] = True
    ends_here = np.zeros(len(times), dtype=bool)
    ends_here[up_index] = True
    # An elementary interval [t_k, t_k+1) is a maximal clique when something starts at its
    # left end and something ends at its right end; every buffer spans at least one.
    sections = np.nonzero(starts_here[:-1] & ends_here[1:])[0]
    first = np.searchsorted(sections, low_index, side="left")
    last = np.searchsorted(sections, up_index, side="left")
    spans = last - first
    members_by_section = np.repeat(np.arange(len(lower)), spans)
    section_of = np.concatenate([np.arange(f, t) for f, t in zip(first, last, strict=True)]) \
        if len(lower) else np.zeros(0, dtype=np.int64)
    order = np.argsort(section_of, kind="stable")
    members = members_by_section[order]
    starts = np.searchsorted(section_of[order], np.arange(len(sections)))
    crossing = np.zeros(max(len(sections), 1) + 1, dtype=np.int64)
    np.add.at(crossing, first, 1)
    np.add.at(crossing, np.maximum(last - 1, first), -1)
    cuts = np.cumsum(crossing)[: max(len(sections) - 1, 0)]
    return _Sweep(first=first, last=last, members=members, starts=starts, cuts=cuts)


class _Engine:
    """The depth-first search over canonical placements for one capacity."""

    def __init__(self, buffers: Sequence[Buffer], capacity: int, deadline: float,
                 max_nodes: int) -> None:
        count = len(buffers)
        self.capacity = capacity
        self.deadline = deadline
        self.max_nodes = max_nodes
        self.lower = np.fromiter((b.lower for b in buffers), dtype=np.int64, count=count)
        self.upper = np.fromiter((b.upper for b in buffers), dtype=np.int64, count=count)
        self.size = np.fromiter((b.size for b in buffers), dtype=np.int64, count=count)
        self.alignment = np.fromiter((b.alignment for b in buffers), dtype=np.int64,
                                     count=count)
        self.aligned = bool(np.any(self.alignment > 1))
        self.overlaps = (self.lower[:, None] < self.upper[None, :]) \
            & (self.lower[None, :] < self.upper[:, None])
        np.fill_diagonal(self.overlaps, False)
        self.sweep = _sweep(self.lower, self.upper)
        self.first = self.sweep.first.tolist()
        self.last = self.sweep.last.tolist()
        self.size_list = self.size.tolist()
        self.offsets = np.full(count, -1, dtype=np.int64)
        self.solution = np.full(count, -1, dtype=np.int64)
        self.nodes = 0
        self.nodes_left = 0
        self.heuristic = HEURISTICS[0]
        # Memos. A part's outcome depends only on its unplaced buffers and their minimum
        # offsets (section floors follow from those), so a part met again after backtracking
        # elsewhere is answered at once; a search state that failed fails again whatever
        # path reaches it (this also makes the round robin's restarts cheap).
        self.solved_parts: dict[bytes, np.ndarray | None] = {}
        self.failed_states: set[bytes] = set()

    # --- the search ----------------------------------------------------------------------

    def run(self, heuristics: Sequence[str]) -> int:
        """Round robin over preorders with a doubling node limit; a status code."""
        sweep = self.sweep
        total = np.zeros(sweep.sections, dtype=np.int64)
        np.add.at(total, np.repeat(np.arange(sweep.sections),
                                   np.diff(np.append(sweep.starts, len(sweep.members)))),
                  self.size[sweep.members])
        floor = np.zeros(sweep.sections, dtype=np.int64)
        minimum = np.zeros(len(self.size), dtype=np.int64)
        bounds = [0, *(np.nonzero(sweep.cuts == 0)[0] + 1).tolist(), sweep.sections]
        partitions = []
        for low, high in itertools.pairwise(bounds):
            inside = np.nonzero((sweep.first < high) & (sweep.last > low))[0]
            partitions.append((inside, low, high))
        limit = max(len(self.size), 1)
        while True:
            limit *= 2
            for heuristic in heuristics:
                self.heuristic = heuristic
                self.nodes_left = limit
                self.offsets[:] = -1
                code = _OK
                for inside, low, high in partitions:
                    code = self._subsolve(inside, low, high, minimum, floor, total,
                                          sweep.cuts)
                    if code != _OK:
                        break
                if code != _ABORTED:
                    return code

    def _subsolve(self, inside: np.ndarray, low: int, high: int, minimum: np.ndarray,
                  floor: np.ndarray, total: np.ndarray, cuts: np.ndarray) -> int:
        """Search one independent part (memoized): fresh preorder, offsets from 0."""
        members = np.sort(inside)
        key = _digest(b"part", low, high, members, minimum[members])
        if key in self.solved_parts:
            known = self.solved_parts[key]
            if known is None:
                return _NOT_FOUND
            self.solution[members] = known
            return _OK
        code = self._subsolve_fresh(inside, low, high, minimum, floor, total, cuts)
        if code in (_OK, _NOT_FOUND) and len(self.solved_parts) < _MAX_SOLVED_PARTS:
            self.solved_parts[key] = self.solution[members].copy() if code == _OK else None
        return code

    def _subsolve_fresh(self, inside: np.ndarray, low: int, high: int, minimum: np.ndarray,
                        floor: np.ndarray, total: np.ndarray, cuts: np.ndarray) -> int:
        first, last = self.sweep.first[inside], self.sweep.last[inside]
        # The largest unplaced total of any section each buffer spans (reduceat over spans).
        padded = np.append(total, 0)
        marks = np.stack([first, last], axis=1).ravel()
        busiest = np.maximum.reduceat(padded, marks)[::2]
        width = self.upper[inside] - self.lower[inside]
        keys = {"W": width, "A": width * self.size[inside], "T": busiest}
        # lexsort: last key is primary; all descending, ties by buffer index.
        order = np.lexsort([inside, *(-keys[c] for c in reversed(self.heuristic))])
        ranked = inside[order]
        rank = np.empty(len(self.size), dtype=np.int64)
        rank[ranked] = np.arange(len(ranked))
        return self._search(ranked, rank, low, high, minimum, floor, total, cuts, -1, -1)

    def _search(self, inside: np.ndarray, rank: np.ndarray, low: int, high: int,
                minimum: np.ndarray, floor: np.ndarray, total: np.ndarray, cuts: np.ndarray,
                last_offset: int, last_rank: int) -> int:
        open_ = inside[self.offsets[inside] < 0]
        if open_.size == 0:
            return _OK
        members = np.sort(open_)
        key = _digest(self.heuristic.encode(), low, high, last_offset, last_rank, members,
                      minimum[members], rank[members])
        if key in self.failed_states:
            return _NOT_FOUND
        if self.nodes_left <= 0:
            return _ABORTED
        self.nodes_left -= 1
        self.nodes += 1
        # The node budget is the deterministic limit; the wall clock only a safety cap.
        if self.nodes > self.max_nodes or \
                (not self.nodes & 63 and time.perf_counter() > self.deadline):
            return _TIMEOUT
        code = self._branch(open_, inside, rank, low, high, minimum, floor, total, cuts,
                            last_offset, last_rank)
        if code == _NOT_FOUND and len(self.failed_states) < _MAX_FAILED_STATES:
            self.failed_states.add(key)
        return code

    def _branch(self, open_: np.ndarray, inside: np.ndarray, rank: np.ndarray, low: int,
                high: int, minimum: np.ndarray, floor: np.ndarray, total: np.ndarray,
                cuts: np.ndarray, last_offset: int, last_rank: int) -> int:
        """Try each unplaced buffer at its minimum offset, in canonical order."""
        candidate_offsets = minimum[open_]
        order = np.lexsort((rank[open_], candidate_offsets))
        lowest_top = int((candidate_offsets + self.size[open_]).min())
        # Every section's unplaced bytes must fit above the offset (placement is monotonic):
        # one bound for all candidates, and they come sorted by offset.
        highest = min(lowest_top - 1, self.capacity - int(total[low:high].max()))
        for position in order.tolist():
            chosen = int(open_[position])
            offset = int(candidate_offsets[position])
            if offset > highest:
                break  # dominance (a gap below would take some unplaced buffer), or no room
            if offset < last_offset or (offset == last_offset and rank[chosen] < last_rank):
                continue  # canonical: offsets never decrease along a branch
            code = self._place(inside, rank, low, high, minimum, floor, total, cuts, chosen,
                               offset)
            if code != _NOT_FOUND:
                return code
        return _NOT_FOUND

    def _place(self, inside: np.ndarray, rank: np.ndarray, low: int, high: int,
               minimum: np.ndarray, floor: np.ndarray, total: np.ndarray, cuts: np.ndarray,
               chosen: int, offset: int) -> int:
        """Put `chosen` at `offset`, propagate, check, recurse; undo the assignment after."""
        top = offset + self.size_list[chosen]
        first, last = self.first[chosen], self.last[chosen]
        self.offsets[chosen] = offset
        self.solution[chosen] = offset
        open_all = self.offsets < 0
        pushed = self.overlaps[chosen] & open_all
        raised = np.where(pushed, top, 0)
        if self.aligned:
            raised = -(-raised // self.alignment) * self.alignment
        new_minimum = np.maximum(minimum, raised)
        new_floor = floor.copy()
        new_floor[first:last] = top
        new_total = total.copy()
        new_total[first:last] -= self.size_list[chosen]
        # Unallocated floor: no section's floor lies below its unplaced buffers' minimum offset.
        sweep = self.sweep
        values = np.where(open_all, new_minimum, _BIG)[sweep.members]
        lowest = np.minimum.reduceat(values, sweep.starts) if len(values) else values
        np.maximum(new_floor, np.where(lowest < _BIG, lowest, 0), out=new_floor)
        need = np.maximum(new_floor[low:high], offset) + new_total[low:high]
        code = _NOT_FOUND
        if int(need.max()) <= self.capacity:
            new_cuts = cuts.copy()
            if last - first > 1:
                new_cuts[first:last - 1] -= 1
            zero_from, zero_to = max(first, low), min(last - 1, high - 1)
            split = (np.nonzero(new_cuts[zero_from:zero_to] == 0)[0] + zero_from + 1) \
                if zero_to > zero_from else np.zeros(0, dtype=np.int64)
            if split.size == 0:
                code = self._search(inside, rank, low, high, new_minimum, new_floor, new_total,
                                    new_cuts, offset, int(rank[chosen]))
            else:
                code = self._decompose(inside, low, high, split.tolist(), new_minimum,
                                       new_floor, new_total, new_cuts)
        self.offsets[chosen] = -1
        return code

    def _decompose(self, inside: np.ndarray, low: int, high: int, split: list[int],
                   minimum: np.ndarray, floor: np.ndarray, total: np.ndarray,
                   cuts: np.ndarray) -> int:
        """Solve the independent parts left of each zero cut one after another."""
        open_ = inside[self.offsets[inside] < 0]
        first, last = self.sweep.first[open_], self.sweep.last[open_]
        bounds = [low, *split, high]
        placed: list[np.ndarray] = []
        code = _OK
        for part_low, part_high in itertools.pairwise(bounds):
            part = open_[(first < part_high) & (last > part_low)]
            if part.size == 0:
                continue
            code = self._subsolve(part, part_low, part_high, minimum, floor, total, cuts)
            if code != _OK:
                break
            # Keep the solved part placed while its siblings search (they never overlap it);
            # it is released below so the caller sees the state it passed in.
            self.offsets[part] = self.solution[part]
            placed.append(part)
        for part in placed:
            self.offsets[part] = -1
        return code


def _digest(*parts: bytes | int | np.ndarray) -> bytes:
    """A 16-byte fingerprint of a search state (collisions are ~2^-64 at our memo sizes)."""
    hasher = hashlib.blake2b(digest_size=16)
    for part in parts:
        if isinstance(part, np.ndarray):
            hasher.update(part.astype(np.int64, copy=False).tobytes())
        elif isinstance(part, int):
            hasher.update(part.to_bytes(8, "little", signed=True))
        else:
            hasher.update(part)
        hasher.update(b"|")
    return hasher.digest()


def search_capacity(buffers: Sequence[Buffer], capacity: int, time_limit_s: float,
                    max_nodes: int | None = None,
                    heuristics: Sequence[str] = HEURISTICS) -> SearchResult:
    """Place every buffer within `capacity`, or prove it impossible, within the limits.

    `max_nodes` bounds the search deterministically (same answer on any machine); the time
    limit is a wall-clock cap on top. Either running out gives status "timeout".
    """
    started = time.perf_counter()
    sized = [i for i, b in enumerate(buffers) if b.size > 0]
    if not sized:
        return SearchResult("solved", tuple(0 for _ in buffers), 0, 0.0)
    if lower_bound(buffers) > capacity or max(buffers[i].size for i in sized) > capacity:
        return SearchResult("infeasible", None, 0, time.perf_counter() - started)
    engine = _Engine([buffers[i] for i in sized], capacity, started + time_limit_s,
                     max_nodes if max_nodes is not None else _BIG)
    previous = sys.getrecursionlimit()
    # Depth is at most two frames per buffer plus one per decomposition level.
    sys.setrecursionlimit(max(previous, 4 * len(sized) + 1000))
    try:
        code = engine.run(heuristics)
    finally:
        sys.setrecursionlimit(previous)
    seconds = time.perf_counter() - started
    if code == _OK:
        offsets = [0] * len(buffers)
        for index, offset in zip(sized, engine.solution.tolist(), strict=True):
            offsets[index] = offset
        return SearchResult("solved", tuple(offsets), engine.nodes, seconds, engine.heuristic)
    status: SearchStatus = "infeasible" if code == _NOT_FOUND else "timeout"
    return SearchResult(status, None, engine.nodes, seconds, engine.heuristic)
