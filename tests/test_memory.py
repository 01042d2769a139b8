"""Memory pass: the contract's rules, the baseline, optimality against brute force, windows,
order search, the peak objective and the pass wired into compile."""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from mapper.driver import compile_model
from mapper.graph import GraphView
from mapper.options import CompileOptions, MemoryConfig
from mapper.passes.memory.belady import belady
from mapper.passes.memory.memory_pass import plan_order
from mapper.passes.memory.order import list_schedule, search_order
from mapper.passes.memory.planner import baseline_plan, solve_order, whole_life_plan
from mapper.passes.memory.problem import (
    Problem,
    build_problem,
    predecessors,
    problem_from_lists,
    reorder,
    repeated,
    zero_traffic_peak,
)
from mapper.passes.memory.solver import Budget
from mapper.passes.memory.traffic import (
    InvalidPlanError,
    Residency,
    check_plan,
    footprint,
    traffic_of,
)
from tests.test_memory_checker import check_memory_plan, expected_traffic

KIB = 1024


def contract_total(problem: Problem, residencies, capacity: int, alignment: int = 64) -> int:
    """The independent checker's traffic for a plan of a Problem (validity asserted)."""
    reads = {n: list(problem.reads[s]) for s, n in enumerate(problem.order)}
    writes = {n: list(problem.writes[s]) for s, n in enumerate(problem.order)}
    sizes = {n: t.size for n, t in problem.tensors.items()}
    inputs = {n for n, t in problem.tensors.items() if not t.produced}
    got = expected_traffic(list(problem.order), reads, writes, sizes,
                           set(problem.graph_outputs), inputs,
                           [r.to_dict() for r in residencies], capacity, alignment)
    return got["total"]


def random_problem(seed: int, steps: int, sizes: tuple[int, ...]) -> Problem:
    """A random DAG: each step reads one or two earlier tensors (or a weight), writes one."""
    rng = random.Random(seed)
    order, reads, writes, size = [], [], [], {"x": rng.choice(sizes)}
    made = ["x"]
    for step in range(steps):
        picks = rng.sample(made, k=min(len(made), rng.choice((1, 2))))
        if rng.random() < 0.3:
            weight = f"w{step % 2}"
            size.setdefault(weight, rng.choice(sizes))
            picks.append(weight)
        out = f"t{step}"
        size[out] = rng.choice(sizes)
        order.append(f"n{step}")
        reads.append(picks)
        writes.append([out])
        made.append(out)
    return problem_from_lists(order, reads, writes, size, outputs=[made[-1]])


def _residency_sets(problem: Problem, name: str, most: int) -> list[list[tuple[int, int]]]:
    """Every set of up to `most` disjoint spans with ends on the tensor's touches (candidate
    form); on a level that cannot be bypassed, only sets holding it at every touch."""
    tensor = problem.tensors[name]
    points = sorted({*tensor.uses, *([tensor.producer] if tensor.produced else [])})
    spans = [(a, b) for a in points for b in points if a <= b]
    found: list[list[tuple[int, int]]] = [[]]
    for count in range(1, most + 1):
        for combo in itertools.combinations(spans, count):
            ordered = sorted(combo)
            if all(x[1] < y[0] for x, y in itertools.pairwise(ordered)):
                found.append(ordered)
    if problem.resident_operands:
        found = [s for s in found if all(any(a <= p <= b for a, b in s) for p in points)]
    return found


def brute_force(problem: Problem, capacity_units: int, most: int = 2) -> int:
    """The least traffic over all candidate-form plans of 64-byte tensors (exhaustive), with
    up to `most` residencies per tensor.

    The contract's rules are per tensor, so a plan's traffic is stream_all plus each
    tensor's own change; unit boxes of an interval graph pack whenever no step holds more
    than `capacity_units` of them.
    """
    names = sorted(problem.tensors)
    stream = traffic_of(problem, []).total
    single = dataclasses.replace(problem, resident_operands=False)  # one tensor at a time
    options = []
    for name in names:
        found = []
        for spans in _residency_sets(problem, name, most):
            plan = [Residency(a, b, name, 0) for a, b in spans]
            try:
                check_plan(single, plan, 64, 64)
            except InvalidPlanError:
                continue
            load = [0] * problem.steps
            for a, b in spans:
                for step in range(a, b + 1):
                    load[step] += 1
            found.append((traffic_of(problem, plan).total - stream, load))
        options.append(found)
    best = None
    for choice in itertools.product(*options):
        cost = stream + sum(delta for delta, _ in choice)
        if best is not None and cost >= best:
            continue
        if all(sum(load[step] for _, load in choice) <= capacity_units
               for step in range(problem.steps)):
            best = cost
    assert best is not None
    return best


# --- the rules ----------------------------------------------------------------------------


def test_traffic_matches_independent_checker_on_random_plans():
    for seed in range(20):
        problem = random_problem(seed, 8, (64, 128, 192, 256))
        capacity = 512
        plan = belady(problem, capacity, 64)
        check_plan(problem, plan, capacity, 64)
        assert traffic_of(problem, plan).total == contract_total(problem, plan, capacity)
        assert sum(traffic_of(problem, plan).by_step) == traffic_of(problem, plan).total
        assert traffic_of(problem, []).total == contract_total(problem, [], capacity)


def test_load_before_any_offchip_copy_is_rejected():
    problem = problem_from_lists(["a", "b", "c"], [["x"], ["t"], ["t"]], [["t"], ["u"], ["v"]],
                                 {"x": 64, "t": 64, "u": 64, "v": 64}, outputs=["u", "v"])
    # t produced on-chip, resident at 0 only, then a second residency at 2: it was written
    # back when the first ended (needed later), so the load is legal and costs 64.
    plan = [Residency(0, 0, "t", 0), Residency(2, 2, "t", 0)]
    assert traffic_of(problem, plan).total == contract_total(problem, plan, 256)


def test_belady_evicts_the_furthest_next_use():
    # a is read at steps 1 and 4, b at 2 and 3; room for two of the three 64-byte tensors at
    # step 2 (c arrives): Belady keeps b (next use 3) and evicts a (next use 4).
    problem = problem_from_lists(
        ["pa", "pb", "pc", "u1", "u2"],
        [["x"], ["a"], ["a", "b"], ["b", "c"], ["a", "c"]],
        [["a"], ["b"], ["c"], ["d"], ["e"]],
        {"x": 64, "a": 64, "b": 64, "c": 64, "d": 64, "e": 64}, outputs=["d", "e"])
    plan = belady(problem, 192, 64)
    check_plan(problem, plan, 192, 64)
    a_spans = [(r.start, r.end) for r in plan if r.tensor == "a"]
    assert a_spans[0][0] == 0 and len(a_spans) == 2  # evicted, then reloaded for step 4
    assert traffic_of(problem, plan).total == contract_total(problem, plan, 192)


# --- the solver ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(12))
def test_fixed_order_model_matches_brute_force(seed):
    problem = random_problem(seed, 6 if seed % 3 == 0 else 5, (64,))
    for units in (1, 2, 3):
        plan = solve_order(problem, units * 64, 64, Budget.starting_now(10), 0, span_limit=10)
        assert plan.traffic.total == contract_total(problem, plan.residencies, units * 64)
        assert plan.traffic.total == brute_force(problem, units), (seed, units)
        assert plan.status == "OPTIMAL" and plan.bound == plan.traffic.total


def test_never_above_belady_and_proven_on_mixed_sizes():
    for seed in range(10):
        problem = random_problem(100 + seed, 40, (64, 200, 640, 1000, 4096))
        for capacity in (2 * KIB, 6 * KIB):
            plan = solve_order(problem, capacity, 64, Budget.starting_now(10), seed)
            base = baseline_plan(problem, capacity, 64)
            assert plan.traffic.total <= base.traffic.total
            assert plan.traffic.total == contract_total(problem, plan.residencies, capacity)
            assert plan.bound is not None and plan.bound <= plan.traffic.total


def test_whole_lives_plan_is_optimal_where_it_packs_and_absent_where_not():
    # Where every tensor held over its whole life packs, only compulsory bytes move (the
    # floor), by the independent checker too; where the live set exceeds the level, no plan.
    for seed in range(10):
        problem = random_problem(200 + seed, 40, (64, 200, 640, 1000, 4096))
        peak = zero_traffic_peak(problem)
        plan = whole_life_plan(problem, 2 * peak, 64)
        assert plan is not None and plan.status == "OPTIMAL"
        assert plan.traffic.total == problem.floor() == plan.bound
        assert contract_total(problem, plan.residencies, 2 * peak) == problem.floor()
        assert whole_life_plan(problem, peak - 1, 64) is None
        solved = solve_order(problem, peak - 1, 64, Budget.starting_now(10), seed)
        assert solved.traffic.total > problem.floor()


def test_deterministic_for_the_same_seed():
    problem = random_problem(7, 60, (64, 640, 1000, 4096))
    first = solve_order(problem, 5 * KIB, 64, Budget.starting_now(10), 3)
    second = solve_order(problem, 5 * KIB, 64, Budget.starting_now(10), 3)
    assert first.residencies == second.residencies


def chain_of_blocks(blocks: int) -> Problem:
    """A 2,000-node-class graph: inception-like blocks (4 branches, concat), weights per node."""
    order, reads, writes, size = [], [], [], {"x": 150_000}
    current = "x"
    rng = random.Random(0)
    for b in range(blocks):
        branch_outs = []
        for k in range(4):
            src = current
            for d in range(k % 2 + 1):
                name = f"b{b}_{k}_{d}"
                w = f"w{name}"
                size[w] = rng.choice((4_096, 36_864, 147_456))
                out = f"t{name}"
                size[out] = rng.choice((50_176, 100_352, 200_704))
                order.append(name)
                reads.append([src, w])
                writes.append([out])
                src = out
            branch_outs.append(src)
        name = f"cat{b}"
        out = f"t{name}"
        size[out] = sum(size[t] for t in branch_outs) // 2
        order.append(name)
        reads.append(branch_outs)
        writes.append([out])
        current = out
    return problem_from_lists(order, reads, writes, size, outputs=[current])


@pytest.fixture(scope="module")
def inception_problem() -> Problem:
    from mapper.loader import ShapeSpec, load_model
    from models import corpus

    loaded = load_model(corpus.fetch("zoo_light_inception_v1"), ShapeSpec({}, {}), None)
    view = GraphView.from_model(loaded.model)
    return build_problem(view, view.model_order)


@pytest.mark.slow
def test_divide_and_conquer_on_2000_nodes(inception_problem):
    problem = repeated(inception_problem, 14)
    assert problem.steps >= 2000
    config = MemoryConfig()
    for capacity in (512 * KIB, 2048 * KIB):
        started = time.perf_counter()
        plan = plan_order(problem, capacity, 64, Budget.starting_now(20), 0, config.window,
                          config.lookahead, config.span_limit, config.relative_gap)
        assert time.perf_counter() - started < 25
        assert plan.windows == 3
        assert plan.traffic.total == contract_total(problem, plan.residencies, capacity)
        assert plan.traffic.total < baseline_plan(problem, capacity, 64).traffic.total
        assert plan.bound is not None and plan.bound <= plan.traffic.total


@pytest.mark.slow
def test_order_search_keeps_or_improves(inception_problem):
    problem = inception_problem

    def solve(candidate: Problem, budget: Budget):
        return solve_order(candidate, 512 * KIB, 64, budget, 0)

    fixed = solve(problem, Budget.starting_now(10))
    searched = search_order(fixed, solve, Budget.starting_now(20), 12)
    # Measured: a new order of Inception-v1 at 512 KiB moves about 1% less.
    assert searched.traffic.total < fixed.traffic.total
    order = searched.problem.order
    position = {name: i for i, name in enumerate(order)}
    assert sorted(order) == sorted(problem.order)
    for name, before in predecessors(problem).items():
        assert all(position[p] < position[name] for p in before)
    assert searched.traffic.total == contract_total(searched.problem, searched.residencies,
                                                    512 * KIB)


def test_list_schedules_are_topological():
    problem = chain_of_blocks(5)
    for priority in ("free", "depth"):
        order = list_schedule(problem, priority)
        moved = reorder(problem, order)
        assert sorted(order) == sorted(problem.order)
        for tensor in moved.tensors.values():
            if tensor.produced and tensor.uses:
                assert tensor.producer < tensor.uses[0]


def test_memory_config_rejects_bad_values():
    with pytest.raises(ValidationError):
        MemoryConfig(objective="fast")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        MemoryConfig(alignment=0)


# --- the pass in compile -------------------------------------------------------------------


def _plan(out: Path) -> dict:
    return json.loads((out / "plan.json").read_text())


def _without_seconds(plan: dict) -> dict:
    plan = json.loads(json.dumps(plan))
    for record in plan["passes"]:
        record.pop("seconds", None)
    return plan


@pytest.fixture(scope="module")
def resnet_small() -> Path:
    import models

    return models.build("resnet_small")


@pytest.mark.parametrize("scratchpad", [64 * KIB, 256 * KIB, 1024 * KIB])
def test_compile_writes_a_valid_memory_plan(tmp_path, resnet_small, scratchpad):
    import onnx

    options = CompileOptions(scratchpad=scratchpad, time_limit_s=10)
    result = compile_model(resnet_small, "edge-npu", tmp_path / "a", options)
    plan = _plan(tmp_path / "a")
    view = GraphView.from_model(onnx.load(str(tmp_path / "a" / "model.onnx")))
    check_memory_plan(view, plan)
    memory = plan["memory"]
    assert memory["capacity"] == scratchpad and memory["alignment"] == 64
    assert plan["estimate"]["offchip_bytes"] == memory["traffic"]["total"]
    record = next(p for p in plan["passes"] if p["name"] == "memory")
    assert record["solver"]["name"] == "cp-sat" and record["solver"]["bound"] is not None
    report = (tmp_path / "a" / "report.html").read_text()
    assert "<h2>Scratchpad memory</h2>" in report and "Residency timeline" in report
    # One box per residency in the timeline (the roofline's points are classed 'point').
    timeline = report[report.index("Residency timeline"):]
    boxes = timeline.count("fill-opacity='0.75'><title>") - timeline.count("class='point'")
    assert boxes == len(memory["residency"]) > 0
    assert result.plan["memory"]["traffic"] == memory["traffic"]
    again = compile_model(resnet_small, "edge-npu", tmp_path / "b", options)
    assert _without_seconds(again.plan) == _without_seconds(result.plan)


def test_estimate_prices_the_memory_plan(tmp_path, resnet_small):
    latencies = []
    for scratchpad in (64 * KIB, 256 * KIB, 2048 * KIB):
        plan = compile_model(resnet_small, "edge-npu", tmp_path / str(scratchpad),
                             CompileOptions(scratchpad=scratchpad, time_limit_s=10)).plan
        memory = plan["memory"]
        assert len(memory["step_offchip"]) == len(plan["schedule"]["order"])
        assert sum(memory["step_offchip"]) == memory["traffic"]["total"]
        latencies.append(plan["estimate"]["latency_s"])
    # The same 64 KiB scratchpad (which also shapes the accelerator's conv tiles), no plan.
    streamed = compile_model(resnet_small, "edge-npu", tmp_path / "none",
                             CompileOptions(scratchpad=64 * KIB, skip=("memory",))
                             ).plan["estimate"]["latency_s"]
    # More on-chip bytes never cost time; the plan beats streaming everything.
    assert latencies == sorted(latencies, reverse=True)
    assert latencies[-1] < latencies[0] < streamed


def test_peak_objective_keeps_traffic_and_lowers_footprint(tmp_path, resnet_small):
    plans = {}
    for objective in ("offchip", "peak"):
        options = CompileOptions(scratchpad=256 * KIB, time_limit_s=10,
                                 memory=MemoryConfig(objective=objective))
        plans[objective] = compile_model(resnet_small, "edge-npu", tmp_path / objective,
                                         options).plan["memory"]
    assert plans["peak"]["traffic"] == plans["offchip"]["traffic"]
    assert plans["peak"]["peak"] <= plans["offchip"]["peak"]


def test_cli_scratchpad_flag_and_skip_without_managed_level(tmp_path, resnet_small, mapper_cli):
    done = mapper_cli("compile", str(resnet_small), "--hw", "edge-npu", "--scratchpad",
                      "128KiB", "-o", str(tmp_path / "a"), "--time-limit", "5")
    assert done.code == 0, done.stderr
    assert _plan(tmp_path / "a")["memory"]["capacity"] == 128 * KIB
    done = mapper_cli("compile", str(resnet_small), "--hw", "edge-npu", "--set",
                      "memory.scratchpad.managed=false", "-o", str(tmp_path / "b"))
    assert done.code == 0, done.stderr
    plan = _plan(tmp_path / "b")
    assert plan["memory"] is None
    assert next(p for p in plan["passes"] if p["name"] == "memory")["status"] == "skipped"


def test_footprint_of_plan_fits_capacity():
    problem = random_problem(3, 30, (64, 640, 4096))
    plan = solve_order(problem, 8 * KIB, 64, Budget.starting_now(10), 0)
    assert footprint(problem, plan.residencies) <= 8 * KIB
