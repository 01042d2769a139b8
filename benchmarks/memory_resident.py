"""What a level compute cannot bypass costs: the memory pass with `streaming: false` (every
operand resident while its node runs) against the same pass with streaming allowed.

Per model, capacities from the smallest that can run at all (M_R, the largest operator's
aligned inputs + outputs) up: off-chip MB of the resident plan, of its Belady baseline (which
compacts when the step's own tensors fragment the level) and of the streaming plan at the
same capacity, and what CP-SAT proved. Below M_R the pass exits 3 naming the operator.

    .venv/bin/python -m benchmarks.memory_resident [--time-limit 20]
"""

from __future__ import annotations

import argparse
import time

from benchmarks.memory_scratchpad import load_view
from benchmarks.results import update_section
from mapper.errors import InfeasibleError
from mapper.graph import GraphView
from mapper.hwmodels.loader import load_hardware, set_managed_capacity
from mapper.options import CompileOptions
from mapper.passes.memory import MemoryPass
from mapper.passes.memory.problem import build_problem, largest_operator_bytes
from mapper.passes.memory.traffic import Residency, uncovered
from mapper.pipeline import PassContext
from mapper.units import format_size

MODELS = ("resnet_small", "gpt_decoder", "moe_transformer", "zoo_light_squeezenet",
          "zoo_light_inception_v1", "zoo_light_resnet50", "mobilenet_v1")
MIB = 2**20
ALIGN = 64


def _plan(view: GraphView, capacity: int, streaming: bool, limit: float
          ) -> tuple[dict, str, float]:
    overrides = () if streaming else ("memory.scratchpad.streaming=false",)
    hardware = set_managed_capacity(load_hardware("edge-npu", overrides), capacity)
    context = PassContext(model=None, view=view, hardware=hardware,  # type: ignore[arg-type]
                          options=CompileOptions(time_limit_s=limit), order=view.model_order)
    started = time.perf_counter()
    result = MemoryPass()(context)
    seconds = time.perf_counter() - started
    assert result.solver is not None
    memory = result.sections["memory"]
    if not streaming:  # every operand held at its step, in the order the pass chose
        problem = build_problem(view, result.order or view.model_order, resident_operands=True)
        residencies = [Residency(r["start"], r["end"], r["tensor"], r["offset"])
                       for r in memory["residency"]]
        assert not uncovered(problem, residencies)
    return memory, result.solver.status, seconds


def _mb(value: int) -> str:
    return f"{value / MIB:.2f}"


def main() -> None:
    """Measure and write the RESULTS.md section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-limit", type=float, default=20.0)
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    rows = []
    for name in args.models.split(","):
        view = load_view(name)
        problem = build_problem(view, view.model_order, resident_operands=True)
        floor = largest_operator_bytes(problem, ALIGN)
        for label, capacity in (("M_R", floor), ("2 x M_R", 2 * floor), ("8 MiB", 8 * MIB)):
            try:
                held, status, seconds = _plan(view, capacity, False, args.time_limit)
            except InfeasibleError as error:  # below M_R: the pass names the operator
                operator = str(error).split(" needs ")[0].removeprefix("operator ")
                rows.append(f"| {name} | {label} | {format_size(capacity)} | - | - | - | - | - "
                            f"| exit 3: {operator} needs {format_size(floor)} | - |")
                print(rows[-1], flush=True)
                continue
            free, _, _ = _plan(view, capacity, True, args.time_limit)
            total = held["traffic"]["total"]
            extra = total / free["traffic"]["total"] - 1
            rows.append(f"| {name} | {label} | {format_size(capacity)} | "
                        f"{_mb(held['traffic']['baselines']['stream_all'])} | "
                        f"{_mb(held['traffic']['baselines']['belady'])} | {_mb(total)} | "
                        f"{_mb(free['traffic']['total'])} | {extra:+.1%} | {status} | "
                        f"{seconds:.2f} |")
            print(rows[-1], flush=True)
    body = ("The memory pass on edge-npu with the scratchpad set to each capacity, once with "
            "`memory.scratchpad.streaming=false` and once as shipped (streaming allowed), "
            f"time limit {args.time_limit:g} s, seed 0, model order. M_R = the most bytes one "
            "operator's inputs and outputs take together (64-byte aligned): the least "
            "capacity the resident plan can exist at. Every resident plan holds every operand "
            "at its step (checked), and `mapper verify-plan` checks the same in tests.\n\n"
            "| model | budget | capacity | stream_all MB | belady (resident) MB | resident "
            "plan MB | streaming plan MB | resident vs streaming | status | seconds |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|---|---:|\n" + "\n".join(rows)
            + "\n\nReproduce: `.venv/bin/python -m benchmarks.memory_resident`")
    update_section("memory-resident", "Memory pass: a level compute cannot bypass", body)


if __name__ == "__main__":
    main()
