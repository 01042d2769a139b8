"""The one-problem solver behind the tiling pass and `mapper tile`.

Each GEMM-shaped node becomes a `GemmProblem`; identical problems are solved once per compile
(a cache keyed on the problem); each unique problem goes to the GPU model (`gpu.py`) or the
accelerator loop-tiling model (`accel.py`), CP-SAT hinted with the heuristic's answer.
The result is one record per node (CONTRACTS.md section 6) in `plan.kernels`, whose
`est_time_s` the estimate pass uses for that node.

`solve_s` in a record is CP-SAT's deterministic time (a work measure in seconds), not the
wall clock, so that the same model and seed give a byte-identical plan; repeated shapes
show 0 and `cached: true`. The pass's wall time is `passes[].seconds`.

Fallbacks, recorded in the plan, never a crash:
- a dtype the hardware lacks: tiled in the nearest dtype it has (mapper.costs.FALLBACK_CHAIN),
  with `fallback: {requested_dtype, reason}` on the record and a pass note
  (`tiling.dtype_fallback=False` makes it exit 3 instead);
- a problem no tile fits (even the smallest tile exceeds the on-chip memory): no record,
  a pass note with the violated constraint, and the estimate keeps its roofline time;
- CP-SAT out of time without an answer: the heuristic's tile, pass status `fallback`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from mapper.errors import InfeasibleError
from mapper.hwmodels.schema import Hardware
from mapper.options import TilingConfig
from mapper.passes.tiling import accel, gpu
from mapper.passes.tiling.cpsat import SolveLimits, SolveOutcome
from mapper.passes.tiling.problems import GemmProblem, resolve_dtype
from mapper.passes.tiling.triton import triton_config

_MIN_SOLVE_S = 0.05
# Deterministic seconds of CP-SAT per second of time limit (shared by the unique problems),
# the least one problem gets, and the wall-clock cap as a multiple of it.
_DET_PER_S, _MIN_DET_S, _WALL_PER_DET = 0.2, 0.05, 10.0


@dataclass(frozen=True)
class _Solved:
    """One unique problem's answer: the record fields shared by every node with it."""

    fields: dict[str, Any]
    status: str
    objective_s: float
    bound_s: float
    used_heuristic: bool
    # The wall-clock cap, not the deterministic limit, ended an unproven solve: the answer
    # may then depend on the machine's speed and the time limit.
    wall_capped: bool = False


@dataclass
class TileSolver:
    """Solves GEMM problems on one hardware model; identical problems are solved once."""

    hardware: Hardware
    config: TilingConfig
    seed: int = 0
    budget_s: float = 30.0
    # Unique problems the budget is shared by (the pass sets it before solving).
    problems: int = 1
    started: float = field(default_factory=time.perf_counter)
    cache: dict[GemmProblem, _Solved] = field(default_factory=dict)

    def _limits(self, pending: int) -> SolveLimits:
        # CP-SAT's deterministic limit, the same for every problem of a compile and growing
        # with the time limit (`problems`: the compile's unique problems), is what ends an
        # unproven solve; the wall-clock cap, a share of the time left but never below a few
        # times that work, only guards against a slow machine.
        share = _DET_PER_S * self.budget_s / max(1, self.problems)
        deterministic = min(self.config.problem_deterministic_s, max(_MIN_DET_S, share))
        left = self.budget_s - (time.perf_counter() - self.started)
        wall = min(self.config.problem_time_limit_s,
                   max(_MIN_SOLVE_S, left / max(1, pending), _WALL_PER_DET * deterministic))
        return SolveLimits(seed=self.seed, wall_s=wall, deterministic_s=deterministic)

    def solve(self, problem: GemmProblem, pending: int = 1) -> tuple[_Solved, bool]:
        """The tile for `problem` (already in a dtype the hardware runs) and whether it came
        from the cache. InfeasibleError when no tile fits."""
        if problem in self.cache:
            return self.cache[problem], True
        limits = self._limits(pending)
        if self.hardware.kind == "gpu":
            solved = self._solve_gpu(problem, limits)
        else:
            solved = self._solve_accel(problem, limits)
        self.cache[problem] = solved
        return solved, False

    def _solve_gpu(self, problem: GemmProblem, limits: SolveLimits) -> _Solved:
        target = gpu.gpu_target(self.hardware, problem.dtype)
        triton_only = self.config.triton_only
        options = gpu.GpuOptions(max_split_k=1 if triton_only else self.config.max_split_k,
                                 persistent=self.config.persistent and not triton_only)
        space = gpu.gpu_space(problem, target, options)
        hint = gpu.heuristic(problem, target, space)
        if hint is None:
            raise InfeasibleError(
                f"no {problem.dtype} tile fits {self.hardware.name} for the GEMM "
                f"{_shape(problem)}: {gpu.explain_infeasible(problem, target, space)}")
        tile, outcome = gpu.solve_cpsat(problem, target, space, hint, limits)
        used_heuristic = tile is None
        described = gpu.describe(problem, target, space, tile or hint)
        if tile is not None and outcome.status != "OPTIMAL":
            # An unproven answer (stopped early) never beats the heuristic it was hinted with.
            start = gpu.describe(problem, target, space, hint)
            if start["est_time_s"] < described["est_time_s"]:
                tile, described = hint, start
        tile = tile or hint
        fields = {"tile": tile.to_dict(), **_resources(described),
                  "target": "gpu", "triton": triton_config(tile, problem)}
        return self._finish(problem, fields, described, outcome, used_heuristic,
                            gpu.OBJECTIVE_WEIGHT, target.clock_hz, limits.wall_s)

    def _solve_accel(self, problem: GemmProblem, limits: SolveLimits) -> _Solved:
        target = accel.accel_target(self.hardware, problem.dtype)
        space = accel.accel_space(problem, target)
        hint = accel.heuristic(problem, target, space)
        if hint is None:
            raise InfeasibleError(
                f"no {problem.dtype} tiling fits {self.hardware.name} for the GEMM "
                f"{_shape(problem)}: {accel.explain_infeasible(problem, target, space)}")
        tile, outcome = accel.solve_cpsat(problem, target, space, hint, limits)
        used_heuristic = tile is None
        described = accel.describe(problem, target, tile or hint)
        if tile is not None and outcome.status != "OPTIMAL":
            start = accel.describe(problem, target, hint)
            if start["est_time_s"] < described["est_time_s"]:
                tile, described = hint, start
        tile = tile or hint
        fields = {"tile": tile.to_dict(target), **_resources(described),
                  "target": "accelerator"}
        return self._finish(problem, fields, described, outcome, used_heuristic,
                            accel.OBJECTIVE_WEIGHT, target.clock_hz, limits.wall_s)

    def _finish(self, problem: GemmProblem, fields: dict[str, Any], described: dict[str, Any],
                outcome: SolveOutcome, used_heuristic: bool, weight: int, clock: float,
                wall_cap: float) -> _Solved:
        status = "fallback" if used_heuristic else outcome.status
        bound_s = described["est_time_s"]
        if outcome.bound is not None and not used_heuristic:
            bound_s = (outcome.bound // weight) / clock
        fields.update({
            "element_bits": {"a": problem.a_bits, "b": problem.b_bits, "c": problem.c_bits},
            "flops": problem.flops,
            "solve_s": round(outcome.deterministic_s, 6),
            "solver": {"status": status, "objective_s": described["est_time_s"],
                       "bound_s": bound_s},
            "model": described["model"],
        })
        capped = outcome.status != "OPTIMAL" and outcome.wall_s >= 0.95 * wall_cap
        return _Solved(fields, status, described["est_time_s"], bound_s, used_heuristic,
                       capped)


def _shape(problem: GemmProblem) -> str:
    batch = f"{problem.batch} x " if problem.batch > 1 else ""
    return f"{batch}{problem.m}x{problem.n}x{problem.k}"


def _resources(described: dict[str, Any]) -> dict[str, Any]:
    keys = ("smem_bytes", "regs_per_thread", "blocks_per_unit", "est_time_s", "bound")
    return {key: described[key] for key in keys}


def kernel_record(node: str | None, op: str, problem: GemmProblem, solved: _Solved,
                  cached: bool, fallback: dict[str, str] | None) -> dict[str, Any]:
    """One `plan.kernels` entry: the contract's fields first, then the extras."""
    fields = solved.fields
    record: dict[str, Any] = {
        "node": node, "op": op, "dtype": problem.dtype, "problem": problem.to_dict(),
        "tile": fields["tile"], "smem_bytes": fields["smem_bytes"],
        "regs_per_thread": fields["regs_per_thread"],
        "blocks_per_unit": fields["blocks_per_unit"], "est_time_s": fields["est_time_s"],
        "bound": fields["bound"], "solve_s": 0.0 if cached else fields["solve_s"],
    }
    for key in ("target", "triton", "element_bits", "flops", "solver", "model"):
        if key in fields:
            record[key] = fields[key]
    record["cached"] = cached
    record["fallback"] = fallback
    return record


def tile_problem(hardware: Hardware, problem: GemmProblem, config: TilingConfig, seed: int = 0,
                 budget_s: float = 30.0, op: str = "MatMul") -> dict[str, Any]:
    """Solve one GEMM (what `mapper tile` prints). InfeasibleError (exit 3) when the hardware
    lacks the dtype (unless config.dtype_fallback) or no tile fits."""
    resolved, note = resolve_dtype(hardware, problem, config.dtype_fallback)
    solver = TileSolver(hardware, config, seed=seed, budget_s=budget_s)
    solved, _ = solver.solve(resolved)
    fallback = {"requested_dtype": problem.dtype, "reason": note} if note else None
    return kernel_record(None, op, resolved, solved, False, fallback)
