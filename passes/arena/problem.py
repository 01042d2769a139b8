"""The arena problem: buffers with half-open lifetimes and sizes, and solutions as offsets.

One representation serves the pass (tensors live over schedule steps) and MiniMalloc's CSV
format (`id,lower,upper,size`): buffer `i` occupies `[offset, offset + size)` during the
half-open time interval `[lower, upper)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mapper.errors import UserError


@dataclass(frozen=True)
class Buffer:
    """One allocation request: live during `[lower, upper)`, `size` bytes, offset % alignment."""

    id: str
    lower: int
    upper: int
    size: int
    alignment: int = 1


@dataclass(frozen=True)
class Solution:
    """Offsets for every buffer of a problem, in the problem's buffer order."""

    offsets: tuple[int, ...]

    def peak(self, buffers: Sequence[Buffer]) -> int:
        """The arena size this solution needs: max(offset + size), 0 when empty."""
        return max((o + b.size for o, b in zip(self.offsets, buffers, strict=True)), default=0)


def validate_buffers(buffers: Sequence[Buffer], what: str = "buffer") -> None:
    """Raise UserError naming the first malformed buffer (negative size, empty life, dup id)."""
    seen: set[str] = set()
    for buffer in buffers:
        name = f"{what} {buffer.id!r}"
        if buffer.id in seen:
            raise UserError(f"{name} appears twice: every id must be unique")
        seen.add(buffer.id)
        if buffer.size < 0:
            raise UserError(f"{name} has a negative size ({buffer.size}): sizes are bytes >= 0")
        if buffer.lower >= buffer.upper:
            raise UserError(f"{name} has lower={buffer.lower} >= upper={buffer.upper}: a "
                            "lifetime is the half-open interval [lower, upper) and must be "
                            "non-empty")
        if buffer.alignment < 1:
            raise UserError(f"{name} has alignment {buffer.alignment}: it must be >= 1")


def align_up(value: int, alignment: int) -> int:
    """The smallest multiple of `alignment` that is >= `value`."""
    return -(-value // alignment) * alignment


def lower_bound(buffers: Sequence[Buffer]) -> int:
    """Max over time of the bytes live at once: no arena can be smaller (CONTRACTS.md 4)."""
    events: dict[int, int] = {}
    for buffer in buffers:
        events[buffer.lower] = events.get(buffer.lower, 0) + buffer.size
        events[buffer.upper] = events.get(buffer.upper, 0) - buffer.size
    running = best = 0
    # Ends and starts at one time merge into one delta: intervals are half-open.
    for time in sorted(events):
        running += events[time]
        best = max(best, running)
    return best


def overlap_matrix(buffers: Sequence[Buffer]) -> np.ndarray:
    """Boolean n x n: True where two distinct buffers are live at a common time."""
    lower = np.fromiter((b.lower for b in buffers), dtype=np.int64, count=len(buffers))
    upper = np.fromiter((b.upper for b in buffers), dtype=np.int64, count=len(buffers))
    overlaps = (lower[:, None] < upper[None, :]) & (lower[None, :] < upper[:, None])
    np.fill_diagonal(overlaps, False)
    return overlaps


def find_conflicts(buffers: Sequence[Buffer], offsets: Sequence[int],
                   capacity: int | None = None, limit: int = 20) -> list[str]:
    """Why `offsets` is not a valid placement (empty when it is), at most `limit` reasons."""
    problems: list[str] = []
    if len(offsets) != len(buffers):
        return [f"{len(offsets)} offsets for {len(buffers)} buffers"]
    for buffer, offset in zip(buffers, offsets, strict=True):
        if offset < 0 or offset % buffer.alignment:
            problems.append(f"buffer {buffer.id!r}: offset {offset} is negative or not a "
                            f"multiple of {buffer.alignment}")
        elif capacity is not None and offset + buffer.size > capacity:
            problems.append(f"buffer {buffer.id!r}: ends at {offset + buffer.size} > capacity "
                            f"{capacity}")
    overlaps = overlap_matrix(buffers)
    start = np.asarray(offsets, dtype=np.int64)
    end = start + np.fromiter((b.size for b in buffers), dtype=np.int64, count=len(buffers))
    clash = overlaps & (start[:, None] < end[None, :]) & (start[None, :] < end[:, None])
    clash &= (end > start)[:, None] & (end > start)[None, :]
    for i, j in zip(*np.nonzero(np.triu(clash)), strict=True):
        problems.append(f"buffers {buffers[i].id!r} and {buffers[j].id!r} are live at the same "
                        f"time and overlap in memory")
        if len(problems) >= limit:
            break
    return problems[:limit]
