"""The memory pass on a level compute cannot bypass (`streaming: false`): every operand is
resident while its node runs, and an operator whose operands cannot fit is infeasible."""

from __future__ import annotations

import dataclasses
import json

import pytest

from mapper.passes.memory.belady import belady
from mapper.passes.memory.decompose import solve_windows
from mapper.passes.memory.planner import baseline_plan, solve_order
from mapper.passes.memory.problem import Problem, problem_from_lists
from mapper.passes.memory.solver import Budget
from mapper.passes.memory.traffic import (
    Residency,
    check_plan,
    traffic_of,
    uncovered,
)
from mapper.verify_plan import check_plan as verify_plan_dict
from tests.conftest import run_mapper
from tests.test_memory import KIB, brute_force, contract_total, random_problem


def resident(problem: Problem) -> Problem:
    """The same problem on a level that cannot be bypassed."""
    return dataclasses.replace(problem, resident_operands=True)


def _fits(problem: Problem, capacity: int) -> bool:
    return all(problem.operand_bytes(s, 64) <= capacity for s in range(problem.steps))


@pytest.mark.parametrize("seed", range(8))
def test_optimal_resident_plan_matches_brute_force(seed):
    problem = resident(random_problem(seed, 5, (64,)))
    for units in (3, 4):
        if not _fits(problem, units * 64):
            continue
        plan = solve_order(problem, units * 64, 64, Budget.starting_now(10), 0, span_limit=10)
        assert uncovered(problem, plan.residencies) == []
        assert plan.traffic.total == contract_total(problem, plan.residencies, units * 64)
        assert plan.traffic.total == brute_force(problem, units, most=3), (seed, units)
        assert plan.status == "OPTIMAL"


def test_holding_every_operand_never_beats_streaming_and_never_loses_to_belady():
    for seed in range(8):
        free = random_problem(200 + seed, 40, (64, 200, 640, 1000, 4096))
        held = resident(free)
        capacity = 16 * KIB
        assert _fits(held, capacity)
        streaming = solve_order(free, capacity, 64, Budget.starting_now(10), 0)
        plan = solve_order(held, capacity, 64, Budget.starting_now(10), 0)
        base = baseline_plan(held, capacity, 64)
        assert uncovered(held, base.residencies) == []
        assert uncovered(held, plan.residencies) == []
        assert plan.traffic.total <= base.traffic.total
        assert streaming.bound is not None and plan.traffic.total >= streaming.bound


def test_belady_compacts_when_the_steps_own_tensors_fragment_the_level():
    # x sits at 128 when step 2 needs it next to a 192-byte output in 256 bytes: x is written
    # back, both are placed again from offset 0, and x is reloaded.
    problem = problem_from_lists(
        ["a", "b", "c"], [["i"], ["p"], ["x"]], [["p", "x"], ["o1"], ["y"]],
        {"i": 64, "p": 64, "x": 64, "o1": 64, "y": 192}, outputs=["o1", "y"],
        resident_operands=True)
    plan = belady(problem, 256, 64)
    check_plan(problem, plan, 256, 64)
    assert [r for r in plan if r.tensor in ("x", "y")] == [
        Residency(0, 0, "x", 128), Residency(2, 2, "x", 0), Residency(2, 2, "y", 64)]
    assert contract_total(problem, plan, 256) == traffic_of(problem, plan).total


def test_windows_hold_every_operand():
    problem = resident(random_problem(5, 90, (64, 200, 640, 1000)))
    plan = solve_windows(problem, 4 * KIB, 64, Budget.starting_now(20), 0, window=30,
                         lookahead=5)
    assert plan.windows == 3 and uncovered(problem, plan.residencies) == []
    assert plan.traffic.total <= baseline_plan(problem, 4 * KIB, 64).traffic.total


@pytest.fixture(scope="module")
def resnet_small():
    import models

    return models.build("resnet_small")


def test_cli_operator_that_cannot_fit_exits_3_naming_it(tmp_path, resnet_small):
    out = tmp_path / "out"
    result = run_mapper("compile", str(resnet_small), "--hw", "edge-npu", "--set",
                        "memory.scratchpad.streaming=false", "--scratchpad", "64KiB",
                        "-o", str(out))
    assert result.code == 3, result.stderr
    assert "needs 786432 bytes of scratchpad" in result.stderr
    assert "'node_add_1' (Add)" in result.stderr and "--scratchpad 768KiB" in result.stderr
    assert "Traceback" not in result.stderr and not out.exists()


def test_cli_plan_holds_every_operand_and_verify_plan_checks_it(tmp_path, resnet_small):
    out = tmp_path / "out"
    result = run_mapper("compile", str(resnet_small), "--hw", "edge-npu", "--set",
                        "memory.scratchpad.streaming=false", "--scratchpad", "1MiB",
                        "-o", str(out))
    assert result.code == 0, result.stderr
    plan = json.loads((out / "plan.json").read_text())
    assert plan["memory"]["streaming"] is False
    assert plan["hardware"]["memory"]["scratchpad"]["streaming"] is False
    assert run_mapper("verify-plan", str(out / "model.onnx"), str(out / "plan.json")).code == 0
    import onnx

    model = onnx.load(str(out / "model.onnx"))
    # Drop a residency of the first conv's weight: the checker must see the bypass.
    weight = model.graph.node[0].input[1]
    plan["memory"]["residency"] = [r for r in plan["memory"]["residency"]
                                   if r["tensor"] != weight]
    check = verify_plan_dict(model, plan)
    assert any("cannot be bypassed" in v and weight in v for v in check.violations)
