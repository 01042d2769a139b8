"""Exhaustive enumeration under the same cost model: the reference the CP-SAT answer is
checked against.

It evaluates `gpu.evaluate` / `accel.evaluate` (the very functions the plan's numbers come
from) on every configuration of the same candidate space, vectorized with numpy, and takes
the least objective among the feasible ones. CP-SAT must reach the same objective value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mapper.passes.tiling import accel, gpu
from mapper.passes.tiling.problems import GemmProblem


@dataclass(frozen=True)
class Exhaustive:
    """The enumeration's answer: the optimum (None if nothing is feasible) and the counts."""

    objective: int | None
    candidates: int
    feasible: int
    tile: gpu.GpuTile | accel.AccelTile | None


def exhaustive_gpu(problem: GemmProblem, target: gpu.GpuTarget, space: gpu.GpuSpace
                   ) -> Exhaustive:
    """The least objective over every GPU configuration of `space`."""
    cols, result = gpu.enumerate_space(problem, target, space)
    feasible = np.flatnonzero(result["ok"])
    if not feasible.size:
        return Exhaustive(None, len(result["ok"]), 0, None)
    best = gpu.best_index(result, feasible)
    tile = gpu.make_tile(target, *(int(cols[k][best]) for k in
                                   ("bm", "bn", "bk", "gm", "gn", "st", "sk", "ps")))
    return Exhaustive(int(result["objective"][best]), len(result["ok"]), int(feasible.size),
                      tile)


def exhaustive_accel(problem: GemmProblem, target: accel.AccelTarget, space: accel.AccelSpace
                     ) -> Exhaustive:
    """The least objective over every accelerator tiling of `space`."""
    cols, result = accel.enumerate_space(problem, target, space)
    feasible = np.flatnonzero(result["ok"])
    if not feasible.size:
        return Exhaustive(None, len(result["ok"]), 0, None)
    best = int(feasible[np.argmin(result["objective"][feasible])])
    tile = accel.AccelTile(int(cols["tm"][best]), int(cols["tn"][best]), int(cols["tk"][best]),
                           accel.STATIONARY[int(cols["st"][best])])
    return Exhaustive(int(result["objective"][best]), len(result["ok"]), int(feasible.size),
                      tile)
