"""Tiling pass: the CP-SAT answer equals exhaustive enumeration under the same cost model."""

from __future__ import annotations

import pytest

from benchmarks.tiling_optimality import cases, check_case
from mapper.hwmodels.loader import load_hardware
from mapper.passes.tiling import accel, gpu
from mapper.passes.tiling.cpsat import SolveLimits
from mapper.passes.tiling.enumerate import exhaustive_accel, exhaustive_gpu
from mapper.passes.tiling.problems import GemmProblem

# A seeded sample across all 15 hardware models (the benchmark runs 240 of these).
_CASES = cases(seed=7, count=45)


@pytest.mark.parametrize("case", _CASES, ids=lambda c: f"{c.hardware.name}-{c.problem.dtype}-"
                         f"{c.problem.batch}x{c.problem.m}x{c.problem.n}x{c.problem.k}")
def test_cpsat_equals_exhaustive_on_random_shapes(case):
    row = check_case(case)
    assert row["status"] == "OPTIMAL"
    assert row["cpsat"] == row["exhaustive"] == row["recomputed"], row
    # The optimum is never worse than ConstrINT's first feasible answer or the heuristic.
    for other in ("first_feasible", "heuristic"):
        assert row[other] is None or row[other] >= row["exhaustive"]


@pytest.mark.parametrize("hw_name, dtype, shape", [
    ("a100", "fp16", (1, 4096, 4096, 4096)),
    ("h100", "bf16", (1, 1, 8192, 8192)),
    ("mi300x", "fp16", (12, 128, 128, 64)),
    ("t4", "int8", (1, 3136, 64, 576)),
    ("l4", "fp8", (1, 77, 3000, 1000)),
    ("v100", "fp32", (1, 512, 512, 512)),
])
def test_gpu_cpsat_equals_exhaustive(hw_name, dtype, shape):
    hw = load_hardware(hw_name)
    batch, m, n, k = shape
    problem = GemmProblem.dense(m, n, k, dtype, batch=batch)
    target = gpu.gpu_target(hw, dtype)
    space = gpu.gpu_space(problem, target, gpu.GpuOptions())
    tile, outcome = gpu.solve_cpsat(problem, target, space, gpu.heuristic(problem, target, space),
                                    SolveLimits(seed=0, wall_s=30, deterministic_s=30))
    reference = exhaustive_gpu(problem, target, space)
    assert outcome.status == "OPTIMAL" and tile is not None
    assert outcome.objective == reference.objective
    assert gpu.evaluate_tile(problem, target, space, tile)["objective"] == reference.objective
    assert reference.feasible < reference.candidates  # the constraints do cut the space


@pytest.mark.parametrize("hw_name, dtype, shape", [
    ("tpu-v4", "bf16", (1, 12544, 64, 147)),
    ("tpu-v5e", "int8", (1, 196, 1000, 2304)),
    ("edge-npu", "fp16", (1, 3136, 256, 576)),
    ("eyeriss", "int16", (1, 3025, 96, 363)),
    ("ethos-u55", "int8", (1, 1, 1000, 1024)),
])
def test_accel_cpsat_equals_exhaustive(hw_name, dtype, shape):
    hw = load_hardware(hw_name)
    batch, m, n, k = shape
    problem = GemmProblem.dense(m, n, k, dtype, batch=batch)
    target = accel.accel_target(hw, dtype)
    space = accel.accel_space(problem, target)
    tile, outcome = accel.solve_cpsat(problem, target, space,
                                      accel.heuristic(problem, target, space),
                                      SolveLimits(seed=0, wall_s=30, deterministic_s=30))
    reference = exhaustive_accel(problem, target, space)
    assert outcome.status == "OPTIMAL" and tile is not None
    assert outcome.objective == reference.objective
    assert accel.evaluate_tile(problem, target, tile)["objective"] == reference.objective
