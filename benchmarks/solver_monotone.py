"""Solver passes at several time limits: a longer limit must never give a worse objective.

On the memory benchmark's models (benchmarks/memory_scratchpad.py: the reference models and
the corpus CNNs; SmolLM2-135M left out, it takes minutes to build), each solver pass is run
on the same input and seed at two or three time limits and its objective tabled:
- memory: edge-npu with a 512 KiB scratchpad and with M_R (the largest operator's inputs +
  outputs), off-chip bytes;
- arena: the activation arena on the model's order, bytes;
- tiling: every GEMM-shaped node on h100, the summed modeled kernel time;
- moe: the placement objective (weighted transitions) on synthetic routing traces (the
  models' one MoE model has 8 experts; a MoETuner-size staged case is added), because the
  pass itself needs a trace, not a model.
A row is flagged `WORSE` when a longer limit gives a larger objective than a shorter one.
The status and scope columns are those of the longest limit.

    .venv/bin/python -m benchmarks.solver_monotone [--models a,b] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.results import update_section  # noqa: E402
from mapper.hwmodels.loader import load_hardware, set_managed_capacity  # noqa: E402
from mapper.options import CompileOptions  # noqa: E402
from mapper.pipeline import PassContext  # noqa: E402

KIB = 1024
LIMITS = {"memory": (1.0, 3.0, 10.0), "arena": (0.25, 1.0, 4.0), "tiling": (0.05, 0.5, 5.0),
          "moe": (1.0, 4.0, 16.0)}


def _row(model: str, name: str, case: str, runs: list[tuple[float, float, str, str, float]]
         ) -> tuple[str, bool]:
    values = [objective for _, objective, _, _, _ in runs]
    worse = any(later > earlier * (1 + 1e-12) for i, earlier in enumerate(values)
                for later in values[i + 1:])
    cells = " | ".join(f"{objective:.6g} ({seconds:.1f} s)" for _, objective, _, _, seconds
                       in runs)
    _, _, status, scope, _ = runs[-1]
    limits = " / ".join(f"{limit:g}" for limit, *_ in runs)
    return (f"| {model} | {name} | {case} | {limits} | {cells} | {status} | {scope} | "
            f"{'WORSE' if worse else 'ok'} |", worse)


def _pass_runs(pass_, context: PassContext, limits) -> list[tuple[float, float, str, str, float]]:
    from dataclasses import replace

    runs = []
    for limit in limits:
        options = context.options.model_copy(update={"time_limit_s": limit})
        started = time.perf_counter()
        result = pass_(replace(context, options=options))
        seconds = time.perf_counter() - started
        solver = result.solver
        assert solver is not None
        runs.append((limit, float(solver.objective or 0.0), solver.status, solver.scope or "-",
                     seconds))
    return runs


def model_rows(name: str, limits: dict[str, tuple[float, ...]]) -> list[tuple[str, bool]]:
    """Memory, arena and tiling on one model at each limit."""
    from benchmarks.memory_scratchpad import load
    from mapper.passes.arena import ArenaPass
    from mapper.passes.memory import MemoryPass
    from mapper.passes.memory.problem import build_problem, largest_operator_bytes
    from mapper.passes.tiling import TilingPass

    model, view = load(name)
    rows = []

    def context(hardware) -> PassContext:
        return PassContext(model=model, view=view, hardware=hardware,
                           options=CompileOptions(), order=view.model_order)

    m_r = largest_operator_bytes(build_problem(view, view.model_order))
    for label, capacity in (("512 KiB", 512 * KIB), ("M_R", m_r)):
        hardware = set_managed_capacity(load_hardware("edge-npu"), capacity)
        rows.append(_row(name, "memory", f"edge-npu {label}",
                         _pass_runs(MemoryPass(), context(hardware), limits["memory"])))
        print(rows[-1][0], flush=True)
    arena = ArenaPass()
    if arena.skip_reason(context(load_hardware("a100"))) is None:
        rows.append(_row(name, "arena", "activations",
                         _pass_runs(arena, context(load_hardware("a100")), limits["arena"])))
        print(rows[-1][0], flush=True)
    tiling = TilingPass()
    if tiling.skip_reason(context(load_hardware("h100"))) is None:
        rows.append(_row(name, "tiling", "h100 (s)",
                         _pass_runs(tiling, context(load_hardware("h100")), limits["tiling"])))
        print(rows[-1][0], flush=True)
    return rows


MOE_CASES = {
    # The moe_transformer reference model's shape: 8 experts, top-2, on 4 devices.
    "moe_transformer-like": ("2 x 8 x 4", dict(layers=2, experts=8, top_k=2, tokens=2048,
                                              skew=0.3, affinity=0.8, communities=4, seed=0),
                             4, 4),
    "joint 32 x 8 x 4": ("32 x 8 x 4", dict(layers=32, experts=8, top_k=2, tokens=4096,
                                           skew=0.3, affinity=0.85, communities=4, seed=0),
                         4, 8),
    "staged 24 x 64 x 8": ("24 x 64 x 8 (2 nodes)", dict(layers=24, experts=64, top_k=4,
                                                         tokens=4096, skew=0.5, affinity=0.85,
                                                         communities=8, seed=0), 8, 4),
}


def moe_rows(limits: tuple[float, ...]) -> list[tuple[str, bool]]:
    """The placement search on synthetic traces at each limit."""
    from mapper.passes.moe.cost import Topology
    from mapper.passes.moe.metrics import check_placement, trace_stats
    from mapper.passes.moe.place import PlacementProblem, PlaceOptions, place_experts
    from mapper.passes.moe.synth import SynthSpec, synthesize

    rows = []
    for label, (shape, spec_args, devices, per_node) in MOE_CASES.items():
        spec = SynthSpec(**spec_args)
        stats = trace_stats(synthesize(spec).routes, spec.experts)
        topology = Topology(devices, per_node)
        problem = PlacementProblem(stats, topology, 10, 90 if devices > per_node else 10)
        runs = []
        for limit in limits:
            started = time.perf_counter()
            result = place_experts(problem, PlaceOptions(time_limit_s=limit, seed=0))
            seconds = time.perf_counter() - started
            check_placement(result.placement, spec.experts, devices)
            runs.append((limit, float(result.objective), result.solver_status, result.scope,
                         seconds))
        rows.append(_row(f"synthetic {label}", "moe", shape, runs))
        print(rows[-1][0], flush=True)
    return rows


def main() -> None:
    """Run every pass at every limit, print the table, write the RESULTS.md section."""
    import models
    from benchmarks.memory_scratchpad import CNNS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = [n for n in (*models.REFERENCE_MODELS, *CNNS) if n != "smollm2_135m"]
    parser.add_argument("--models", default=",".join(names))
    parser.add_argument("--quick", action="store_true",
                        help="two limits per pass (the shortest and the middle one)")
    args = parser.parse_args()
    limits = {key: values[:2] if args.quick else values for key, values in LIMITS.items()}
    started = time.perf_counter()
    rows: list[tuple[str, bool]] = []
    for name in args.models.split(","):
        rows += model_rows(name, limits)
    rows += moe_rows(limits["moe"])
    worse = [line for line, flag in rows if flag]
    head = ("| model | pass | case | limits s | objective at each limit (wall s) | status "
            "(longest) | scope (longest) | longer never worse |\n"
            "|---|---|---|---|---|---|---|---|\n")
    body = "\n".join([
        "Command: `.venv/bin/python -m benchmarks.solver_monotone`"
        + (" --quick" if args.quick else "") + ". Same input and seed 0 at each time limit; "
        "objectives: memory off-chip bytes, arena bytes, tiling summed modeled kernel seconds, "
        "moe weighted transitions. Models: the memory benchmark's (reference models and "
        "corpus CNNs) without SmolLM2-135M (minutes to build); MoE on synthetic traces (the "
        "pass needs a trace; the one MoE reference model has 8 experts). Memory, arena and "
        "MoE climb rungs of doubling budget that do not depend on the limit and keep the best "
        "result, so a longer limit repeats the shorter one's work; a `WORSE` row could only "
        "come from a solve cut short by the wall clock (the pass then says so in a note).",
        "", head + "\n".join(line for line, _ in rows), "",
        f"Rows: {len(rows)}; a longer limit worse: {len(worse)}"
        + (" (" + "; ".join(line.split(' | ')[0].strip('| ') for line in worse) + ")"
           if worse else "") + f". Total time {time.perf_counter() - started:.0f} s."])
    print(body)
    update_section("solver_monotone", "Solver passes: a longer time limit is never worse",
                   body)


if __name__ == "__main__":
    main()
