"""The tiling pass and the one-problem solver behind it and `mapper tile`.

Each GEMM-shaped node becomes a `GemmProblem`; identical problems are solved once per compile
(a cache keyed on the problem); each unique problem goes to the GPU model (`gpu.py`) or the
accelerator loop-tiling model (`accel.py`), CP-SAT hinted with the heuristic's answer.
The result is one record per node (CONTRACTS.md section 6) in `plan.kernels`, whose
`est_time_s` the estimate pass uses for that node.

`solve_s` in a record is CP-SAT's deterministic time (a work measure in seconds), not the
wall clock, so that the same model and seed give a byte-identical plan; repeated shapes
show 0 and `cached: true`. The pass's wall time is `passes[].seconds`.

Fallbacks, recorded in the plan, never a crash:
- a dtype the hardware lacks: tiled in the nearest dtype it has (problems.FALLBACK_CHAIN),
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
from mapper.passes.tiling.problems import (
    CONV_OPS,
    MATMUL_OPS,
    GemmProblem,
    KernelSite,
    extract_problems,
    resolve_dtype,
)
from mapper.passes.tiling.triton import triton_config
from mapper.pipeline import Pass, PassContext, PassResult, SolverRecord

_MIN_SOLVE_S = 0.05


@dataclass(frozen=True)
class _Solved:
    """One unique problem's answer: the record fields shared by every node with it."""

    fields: dict[str, Any]
    status: str
    objective_s: float
    bound_s: float
    used_heuristic: bool


@dataclass
class TileSolver:
    """Solves GEMM problems on one hardware model; identical problems are solved once."""

    hardware: Hardware
    config: TilingConfig
    seed: int = 0
    budget_s: float = 30.0
    started: float = field(default_factory=time.perf_counter)
    cache: dict[GemmProblem, _Solved] = field(default_factory=dict)

    def _limits(self, pending: int) -> SolveLimits:
        left = self.budget_s - (time.perf_counter() - self.started)
        wall = min(self.config.problem_time_limit_s, max(_MIN_SOLVE_S, left / max(1, pending)))
        return SolveLimits(seed=self.seed, wall_s=wall,
                           deterministic_s=self.config.problem_deterministic_s)

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
        tile = tile or hint
        described = gpu.describe(problem, target, space, tile)
        fields = {"tile": tile.to_dict(), **_resources(described),
                  "target": "gpu", "triton": triton_config(tile, problem)}
        return self._finish(problem, fields, described, outcome, used_heuristic,
                            gpu.OBJECTIVE_WEIGHT, target.clock_hz)

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
        tile = tile or hint
        described = accel.describe(problem, target, tile)
        fields = {"tile": tile.to_dict(target), **_resources(described),
                  "target": "accelerator"}
        return self._finish(problem, fields, described, outcome, used_heuristic,
                            accel.OBJECTIVE_WEIGHT, target.clock_hz)

    def _finish(self, problem: GemmProblem, fields: dict[str, Any], described: dict[str, Any],
                outcome: SolveOutcome, used_heuristic: bool, weight: int, clock: float
                ) -> _Solved:
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
        return _Solved(fields, status, described["est_time_s"], bound_s, used_heuristic)


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


class TilingPass(Pass):
    """Kernel tile sizes per GEMM-shaped operator (CONTRACTS.md section 6)."""

    name = "tiling"
    description = ("tile sizes, warps, stages and split-K per GEMM/conv (GPU) or loop tiling "
                   "into the scratchpad (TPU/NPU): CP-SAT optimum of a cost model under the "
                   "hardware's limits")
    writes = ("kernels",)

    def skip_reason(self, context: PassContext) -> str | None:
        """None when the model has GEMM-shaped nodes and the hardware can be modeled."""
        ops = MATMUL_OPS + CONV_OPS
        if not any(node.op_type in ops for node in context.view.nodes.values()):
            return "no GEMM-shaped operator (MatMul, Gemm, Conv) in the model"
        if context.hardware.kind == "gpu" and context.hardware.kernel_limits is None:
            return (f"{context.hardware.name} has no kernel_limits; GPU tiles need them "
                    "(see hwmodels/a100-80gb.yaml)")
        return None

    def run(self, context: PassContext) -> PassResult:
        """Tile every GEMM-shaped node; identical problems are solved once."""
        options = context.options
        config = options.tiling
        precision = config.precision or options.estimate.precision
        sites, skipped = extract_problems(context.model, context.view, context.order,
                                          precision, context.plan.get("compression"))
        solver = TileSolver(context.hardware, config, seed=options.seed,
                            budget_s=options.time_limit_s)
        notes: list[str] = list(skipped)
        records: list[dict[str, Any]] = []
        resolved_sites = self._resolve(context.hardware, sites, config, notes)
        unique = list(dict.fromkeys(problem for _, problem, _ in resolved_sites))
        solved_count = 0
        statuses: list[str] = []
        objective = bound = 0.0
        for site, problem, fallback in resolved_sites:
            try:
                pending = len(unique) - solved_count
                solved, cached = solver.solve(problem, pending)
            except InfeasibleError as error:
                notes.append(f"{site.node}: {error}; priced by the roofline instead")
                solver.cache.pop(problem, None)
                continue
            if not cached:
                solved_count += 1
                statuses.append(solved.status)
            objective += solved.objective_s
            bound += solved.bound_s
            records.append(kernel_record(site.node, site.op, problem, solved, cached, fallback))
        if not records:
            notes.append("no GEMM-shaped node could be tiled")
        notes.extend(sorted({r["fallback"]["reason"] for r in records if r["fallback"]}))
        heuristic = "fallback" in statuses
        status = ("OPTIMAL" if statuses and all(s == "OPTIMAL" for s in statuses)
                  else "UNKNOWN" if heuristic else "FEASIBLE")
        fallbacks = sum(1 for r in records if r["fallback"])
        notes.insert(0, f"{len(records)} kernels, {len(solver.cache)} unique problems solved, "
                     f"{status}" + (f"; {fallbacks} in a substitute dtype" if fallbacks else ""))
        return PassResult(
            status="fallback" if heuristic else "ok", sections={"kernels": records},
            solver=SolverRecord("cp-sat", status, objective, bound, options.seed),
            notes=tuple(notes))

    @staticmethod
    def _resolve(hardware: Hardware, sites: list[KernelSite], config: TilingConfig,
                 notes: list[str]) -> list[tuple[KernelSite, GemmProblem, dict[str, str] | None]]:
        resolved = []
        for site in sites:
            try:
                problem, note = resolve_dtype(hardware, site.problem, config.dtype_fallback)
            except InfeasibleError as error:
                if not config.dtype_fallback:
                    raise InfeasibleError(f"node {site.node}: {error}") from error
                notes.append(f"{site.node}: {error}; priced by the roofline instead")
                continue
            fallback = ({"requested_dtype": site.problem.dtype, "reason": note}
                        if note else None)
            resolved.append((site, problem, fallback))
        return resolved
