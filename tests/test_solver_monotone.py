"""Monotone, honestly labelled solvers: for memory, arena, MoE and tiling, the same input
solved at two time limits never gives the longer limit the worse objective, and the solver
record says what its status and bound are proven for (`scope`)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from mapper.graph import GraphView
from mapper.hwmodels.loader import load_hardware, set_managed_capacity
from mapper.loader import load_model
from mapper.options import CompileOptions
from mapper.pipeline import PassContext, SolverRecord
from tests import onnx_builders as build


def test_scope_is_in_the_plan_record_right_after_status():
    record = SolverRecord("cp-sat", "OPTIMAL", 1.0, 1.0, 0, scope="fixed order")
    assert list(record.to_dict()) == ["name", "status", "scope", "objective", "bound", "seed"]
    assert record.to_dict()["scope"] == "fixed order"
    assert SolverRecord("cp-sat", "OPTIMAL", 1.0, 1.0, 0).to_dict()["scope"] is None


@pytest.mark.parametrize("first", [0.05, 0.25, 0.5])
def test_rung_ladders_are_prefixes_of_each_other(first):
    from mapper.passes.arena.solve import _ladder as arena_ladder
    from mapper.passes.memory.solver import ladder
    from mapper.passes.moe.place import _ladder as moe_ladder

    for climb in (ladder, arena_ladder, moe_ladder):
        previous: list[float] = []
        for total in [first * k / 4 for k in range(4, 200)]:
            rungs = climb(total, first)
            assert sum(rungs) <= total * (1 + 1e-9)
            assert rungs[:len(previous)] == previous
            previous = rungs


def _context(model, view: GraphView, hardware, **options) -> PassContext:
    return PassContext(model=model, view=view, hardware=hardware,
                       options=CompileOptions(**options), order=view.model_order)


@pytest.fixture(scope="module")
def resnet_small():
    import models
    from mapper.loader import ShapeSpec

    loaded = load_model(models.build("resnet_small"), ShapeSpec({}, {}), None)
    return loaded.model, GraphView.from_model(loaded.model)


@pytest.mark.parametrize("capacity", [64 * 1024, None])
def test_memory_longer_limit_never_worse_and_scope_recorded(resnet_small, capacity):
    from mapper.passes.memory import MemoryPass
    from mapper.passes.memory.problem import build_problem, largest_operator_bytes

    model, view = resnet_small
    capacity = capacity or largest_operator_bytes(build_problem(view, view.model_order))
    hardware = set_managed_capacity(load_hardware("edge-npu"), capacity)
    results = [MemoryPass()(_context(model, view, hardware, time_limit_s=limit))
               for limit in (1.0, 4.0)]
    short, long = (r.solver for r in results)
    assert short is not None and long is not None
    assert long.objective <= short.objective
    for record, result in zip((short, long), results, strict=True):
        assert record.scope is not None
        assert record.scope in result.notes[0]
        assert record.bound is None or record.bound <= record.objective
        if result.order is not None:  # a searched order: its proof covers that order only
            assert record.scope.startswith("searched order")


def test_memory_same_limit_same_plan(resnet_small):
    from mapper.passes.memory import MemoryPass

    model, view = resnet_small
    hardware = set_managed_capacity(load_hardware("edge-npu"), 128 * 1024)
    first, second = (MemoryPass()(_context(model, view, hardware, time_limit_s=1.0))
                     for _ in range(2))
    assert first.sections == second.sections and first.order == second.order


def _arena_case() -> list:
    from mapper.passes.arena import Buffer

    rng = random.Random(7)
    buffers = []
    for index in range(120):
        start = rng.randrange(0, 60)
        buffers.append(Buffer(f"b{index}", start, start + rng.randrange(1, 12),
                              rng.choice((1, 2, 3, 5, 8)) * 64))
    return buffers


def test_arena_longer_limit_never_worse():
    from mapper.passes.arena import minimize_arena

    buffers = _arena_case()
    sizes = [minimize_arena(buffers, limit, method=method).size
             for method in ("search", "auto") for limit in (0.3, 1.2)]
    assert sizes[1] <= sizes[0] and sizes[3] <= sizes[2]


MINIMALLOC = Path("/work/shared/benchmarks/minimalloc")


@pytest.mark.skipif(not MINIMALLOC.is_dir(), reason="MiniMalloc instances not present")
def test_arena_longer_limit_never_worse_on_a_hard_instance():
    from mapper.passes.arena import minimize_arena
    from mapper.passes.arena.csv import parse_csv

    buffers = parse_csv((MINIMALLOC / "B.1048576.csv").read_text()).buffers
    short, long = (minimize_arena(buffers, limit) for limit in (0.3, 1.2))
    assert long.size <= short.size
    assert long.rungs > short.rungs and long.bound >= short.bound


def test_arena_pass_records_its_scope():
    from mapper.passes.arena import ArenaPass
    from tests.test_verify_plan import tiny_model

    loaded = load_model(build.save(tiny_model(), _tmp() / "tiny.onnx"))
    view = GraphView.from_model(loaded.model)
    result = ArenaPass()(_context(loaded.model, view, load_hardware("a100"), time_limit_s=1))
    assert result.solver is not None and result.solver.scope == "the fixed order"
    assert "for the fixed order" in result.notes[0]


def _tmp():
    import tempfile
    from pathlib import Path

    return Path(tempfile.mkdtemp(prefix="monotone-"))


def test_moe_staged_longer_limit_never_worse():
    from mapper.passes.moe.cost import Topology
    from mapper.passes.moe.metrics import check_placement, trace_stats
    from mapper.passes.moe.place import PlacementProblem, PlaceOptions, place_experts
    from mapper.passes.moe.synth import SynthSpec, synthesize

    spec = SynthSpec(layers=12, experts=16, top_k=2, tokens=1024, skew=0.3, affinity=0.6,
                     planted_devices=4, seed=5)
    trace = synthesize(spec)
    stats = trace_stats(trace.routes, spec.experts)
    problem = PlacementProblem(stats, Topology(4, 2), 10, 40)
    results = [place_experts(problem, PlaceOptions(time_limit_s=limit, method="staged"))
               for limit in (1.0, 3.0)]
    for result in results:
        check_placement(result.placement, spec.experts, 4)
        assert result.method == "staged"
        assert result.bound is not None and result.bound <= result.objective
    assert results[1].objective <= results[0].objective
    assert results[1].rungs > results[0].rungs


def test_tiling_longer_limit_never_worse():
    from mapper.passes.tiling import TilingPass
    from tests.test_tiling import _gemm_zoo

    loaded = load_model(build.save(_gemm_zoo(), _tmp() / "zoo.onnx"))
    view = GraphView.from_model(loaded.model)
    hardware = load_hardware("h100")
    short, long = (TilingPass()(_context(loaded.model, view, hardware, time_limit_s=limit))
                   .solver for limit in (0.05, 5.0))
    assert short is not None and long is not None
    assert long.objective <= short.objective
    assert short.scope == long.scope == "each problem alone"
