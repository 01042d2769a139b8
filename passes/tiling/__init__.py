"""Tiling pass: kernel tile configurations as an integer constraint problem (CP-SAT optimum).

FlashRNN's ConstrINT made optimal: the hardware's limits as integer constraints, a cost model
as the objective, CP-SAT proving the optimum, an exhaustive enumerator checking it.
"""

from mapper.passes.tiling.core import TileSolver, kernel_record, tile_problem
from mapper.passes.tiling.tiling_pass import TilingPass

__all__ = ["TileSolver", "TilingPass", "kernel_record", "tile_problem"]
