"""The Triton-compatible form of a GPU tile: the meta-parameters of Triton's tutorial matmul.

`triton.Config({"BLOCK_SIZE_M": .., "BLOCK_SIZE_N": .., "BLOCK_SIZE_K": .., "GROUP_SIZE_M": ..},
num_warps=.., num_stages=..)` runs the tile with the tutorial kernel (03-matrix-multiplication)
exactly when it uses neither split-K nor a persistent schedule, which that kernel lacks;
`exact` says which. GROUP_SIZE_M is the tutorial's grouped ordering (8 rows of tiles per
group, fewer when the problem has fewer), which is what keeps DRAM traffic near compulsory
in the cost model.
"""

from __future__ import annotations

import math
from typing import Any

from mapper.passes.tiling.gpu import GpuTile
from mapper.passes.tiling.problems import GemmProblem

GROUP_SIZE_M = 8


def triton_config(tile: GpuTile, problem: GemmProblem) -> dict[str, Any]:
    """The tutorial kernel's meta-parameters for `tile`, and whether they are exact."""
    rows_of_tiles = math.ceil(problem.m / tile.bm)
    return {"BLOCK_SIZE_M": tile.bm, "BLOCK_SIZE_N": tile.bn, "BLOCK_SIZE_K": tile.bk,
            "GROUP_SIZE_M": max(1, min(GROUP_SIZE_M, rows_of_tiles)),
            "num_warps": tile.warps, "num_stages": tile.stages,
            "exact": tile.split_k == 1 and not tile.persistent}
