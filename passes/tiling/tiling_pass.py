"""The tiling pass: every GEMM-shaped node's tile configuration, into `plan.kernels`.

Weights are read at the bytes the graph view says they are stored in (packed where a
compression pass or the incoming model quantized them); a kernel that decodes packed weights
also pays their dequantization work (mapper.costs).
"""

from __future__ import annotations

from typing import Any

from mapper.costs import dequant_ops, peak_for
from mapper.errors import InfeasibleError
from mapper.facts import Facts, KernelTimes
from mapper.hwmodels.schema import Hardware
from mapper.options import TilingConfig
from mapper.passes.tiling.core import TileSolver, kernel_record
from mapper.passes.tiling.problems import (
    CONV_OPS,
    MATMUL_OPS,
    GemmProblem,
    KernelSite,
    extract_problems,
    resolve_dtype,
)
from mapper.pipeline import Pass, PassContext, PassResult, SolverRecord

# What the status and bound are proven for: each unique problem's tile against its own cost
# model (the objective and bound are the sums over the kernels).
SCOPE = "each problem alone"


class TilingPass(Pass):
    """Kernel tile sizes per GEMM-shaped operator (CONTRACTS.md section 6)."""

    name = "tiling"
    description = ("tile sizes, warps, stages and split-K per GEMM/conv (GPU) or loop tiling "
                   "into the scratchpad (TPU/NPU): CP-SAT optimum of a cost model under the "
                   "hardware's limits")
    writes = ("kernels",)
    provides = ("kernels",)
    config_field = "tiling"

    def skip_reason(self, context: PassContext) -> str | None:
        """None when the model has GEMM-shaped nodes and the hardware can be modeled."""
        ops = MATMUL_OPS + CONV_OPS
        if not any(node.op_type in ops for node in context.view.nodes.values()):
            return "no GEMM-shaped operator (MatMul, Gemm, Conv) in the model"
        if context.hardware.kind == "cpu":
            return (f"{context.hardware.name} is a CPU: onnxruntime's MLAS kernels choose "
                    "their own blocking, so there are no tiles to pick")
        if context.hardware.kind == "gpu" and context.hardware.kernel_limits is None:
            return (f"{context.hardware.name} has no kernel_limits; GPU tiles need them "
                    "(see hwmodels/a100-80gb.yaml)")
        return None

    def run(self, context: PassContext) -> PassResult:
        """Tile every GEMM-shaped node; identical problems are solved once."""
        options = context.options
        config = options.tiling
        sites, skipped = extract_problems(context.model, context.view, context.order)
        solver = TileSolver(context.hardware, config, seed=options.seed,
                            budget_s=options.time_limit_s)
        notes: list[str] = list(skipped)
        records: list[dict[str, Any]] = []
        resolved_sites = self._resolve(context.hardware, sites, config, notes)
        unique = list(dict.fromkeys(problem for _, problem, _ in resolved_sites))
        solver.problems = len(unique)
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
            record = kernel_record(site.node, site.op, problem, solved, cached, fallback)
            _add_dequant(record, context, site, problem)
            records.append(record)
        if not records:
            notes.append("no GEMM-shaped node could be tiled")
        notes.extend(sorted({r["fallback"]["reason"] for r in records if r["fallback"]}))
        heuristic = "fallback" in statuses
        status = ("OPTIMAL" if statuses and all(s == "OPTIMAL" for s in statuses)
                  else "UNKNOWN" if heuristic else "FEASIBLE")
        fallbacks = sum(1 for r in records if r["fallback"])
        notes.insert(0, f"{len(records)} kernels, {len(solver.cache)} unique problems solved, "
                     f"{status} for {SCOPE}"
                     + (f"; {fallbacks} in a substitute dtype" if fallbacks else ""))
        capped = sum(1 for solved in solver.cache.values() if solved.wall_capped)
        if capped:
            notes.append(f"{capped} problem(s) stopped at the wall-clock cap before CP-SAT's "
                         "deterministic limit (a short --time-limit or a slow machine): their "
                         "tiles may differ between machines and time limits")
        times = KernelTimes({r["node"]: float(r["est_time_s"]) for r in records})
        return PassResult(
            status="fallback" if heuristic else "ok", sections={"kernels": records},
            solver=SolverRecord("cp-sat", status, objective, bound, options.seed, scope=SCOPE),
            notes=tuple(notes), facts=Facts(kernels=times))

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


def _add_dequant(record: dict[str, Any], context: PassContext, site: KernelSite,
                 problem: GemmProblem) -> None:
    """A kernel reading packed weights decodes them on its vector units: add that time."""
    node = context.view.nodes[site.node]
    ops = sum(dequant_ops(context.view.formats[name], problem.m * problem.batch)
              for name in node.weights if context.view.formats[name].quantized)
    if not ops:
        return
    peak, _ = peak_for(context.hardware, problem.dtype, matrix=False)
    record["dequant_s"] = ops / peak
    record["est_time_s"] = record["est_time_s"] + ops / peak
