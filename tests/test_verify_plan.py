"""The independent plan checker (`mapper verify-plan`): hand-made tiny plans, each contract
rule of CONTRACTS.md sections 2-4 broken once, and the command's exit codes."""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mapper.driver import compile_model
from mapper.verify_plan import check_plan, greedy_peak, live_peak
from tests import onnx_builders
from tests.conftest import run_mapper
from tests.plan_checks import assert_output_valid

# x[1,16] --A:MatMul(w)--> a[1,32] --B:Concat(a,a)--> b[1,64] --C:MatMul(v)--> c[1,4]
# D:Concat(c, a) -> y[1,36] (graph output). fp32 bytes: x 64, w 2048, v 1024, a 128,
# b 256, c 16, y 144. Steps: A 0, B 1, C 2, D 3.
SIZES = {"x": 64, "w": 2048, "v": 1024, "a": 128, "b": 256, "c": 16, "y": 144}
STREAM_ALL = (64 + 2048) + 128 + (256 + 1024) + (16 + 128) + (128 + 256 + 16 + 144)
COMPULSORY = 64 + 2048 + 1024 + 144


def tiny_model() -> onnx.ModelProto:
    """The four-node graph above, with every intermediate shape in value_info."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((16, 32)).astype(np.float32), "w")
    v = numpy_helper.from_array(rng.standard_normal((64, 4)).astype(np.float32), "v")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"], name="A"),
             helper.make_node("Concat", ["a", "a"], ["b"], axis=1, name="B"),
             helper.make_node("MatMul", ["b", "v"], ["c"], name="C"),
             helper.make_node("Concat", ["c", "a"], ["y"], axis=1, name="D")]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 36])], initializer=[w, v])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return onnx.shape_inference.infer_shapes(model)


def valid_plan() -> dict[str, Any]:
    """A plan honouring every rule; its traffic worked out by hand below."""
    residency = [
        {"tensor": "a", "start": 0, "end": 3, "offset": 0},      # made on-chip, held to D
        {"tensor": "w", "start": 0, "end": 0, "offset": 128},    # load 2048
        {"tensor": "b", "start": 1, "end": 2, "offset": 128},    # reuses w's bytes
        {"tensor": "y", "start": 3, "end": 3, "offset": 512},    # graph output: write-back
    ]
    # Streamed: read x 64, read v 1024, write c 16, read c 16; load w 2048; write back y 144.
    total = 64 + 1024 + 16 + 16 + 2048 + 144
    return {
        "schema": "mapper.plan/1",
        "hardware": {"memory": {"scratchpad": {"size": 4096, "managed": True},
                                "dram": {"size": 1 << 30, "managed": False}}},
        "passes": [{"name": "memory", "status": "ok"}, {"name": "arena", "status": "ok"}],
        "schedule": {"order": ["A", "B", "C", "D"]},
        "memory": {"level": "scratchpad", "capacity": 4096, "alignment": 64,
                   "tensors": {r["tensor"]: SIZES[r["tensor"]] for r in residency},
                   "residency": residency,
                   "traffic": {"total": total, "compulsory": COMPULSORY,
                               "non_compulsory": total - COMPULSORY,
                               "baselines": {"stream_all": STREAM_ALL, "belady": total}}},
        # Live bytes per step: 128, 384, 400, 288; greedy: b 0, y 0, a 256, c 384 -> 400.
        "arena": {"size": 400, "lower_bound": 400, "greedy_by_size": 400,
                  "buffers": [{"tensor": "a", "offset": 256}, {"tensor": "b", "offset": 0},
                              {"tensor": "c", "offset": 384}, {"tensor": "y", "offset": 0}]},
    }


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return tiny_model()


def test_valid_plan_passes_with_hand_computed_numbers(model):
    check = check_plan(model, valid_plan())
    assert check.ok, check.violations
    assert check.checked == ("plan", "schedule", "memory", "arena")
    assert check.traffic == {"total": 3312, "compulsory": COMPULSORY, "non_compulsory": 32,
                             "stream_all": STREAM_ALL}
    assert check.arena == {"size": 400, "lower_bound": 400, "greedy_by_size": 400}


def test_reload_prices_write_back_and_load(model):
    plan = valid_plan()
    plan["memory"]["residency"] = [
        {"tensor": "a", "start": 0, "end": 1, "offset": 0},      # needed at 3: write-back 128
        {"tensor": "a", "start": 3, "end": 3, "offset": 0},      # load 128
        {"tensor": "w", "start": 0, "end": 0, "offset": 128},
        {"tensor": "b", "start": 1, "end": 2, "offset": 256},
        {"tensor": "y", "start": 3, "end": 3, "offset": 512}]
    total = 64 + 1024 + 16 + 16 + 2048 + 128 + 128 + 144
    plan["memory"]["traffic"].update(total=total, non_compulsory=total - COMPULSORY)
    check = check_plan(model, plan)
    assert check.ok, check.violations
    assert check.traffic["total"] == 3568


def test_no_residency_is_stream_all_and_absent_sections_are_skipped(model):
    plan = valid_plan()
    plan["memory"].update(residency=[], tensors={})
    plan["memory"]["traffic"].update(total=STREAM_ALL, non_compulsory=STREAM_ALL - COMPULSORY)
    assert check_plan(model, plan).ok
    plan["memory"] = plan["arena"] = None
    check = check_plan(model, plan)
    assert check.ok and check.checked == ("plan", "schedule") and len(check.notes) == 2


def _set(path: str, value: Any):
    def apply(plan: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = plan
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value
    return apply


def _append(path: str, value: Any):
    def apply(plan: dict[str, Any]) -> None:
        target: Any = plan
        for key in path.split("."):
            target = target[key]
        target.append(value)
    return apply


def _drop_buffer(tensor: str):
    def apply(plan: dict[str, Any]) -> None:
        plan["arena"]["buffers"] = [b for b in plan["arena"]["buffers"] if b["tensor"] != tensor]
    return apply


# Each case breaks one rule of the contract once; the violation must name it.
BROKEN = {
    "schema": (_set("schema", "mapper.plan/0"), "schema"),
    "pass status": (_set("passes.0.status", "great"), "status"),
    "order not topological": (_set("schedule.order", ["B", "A", "C", "D"]), "not topological"),
    "order misses a node": (_set("schedule.order", ["A", "B", "C"]), "misses 1 node"),
    "order names an unknown node": (_set("schedule.order", ["A", "B", "C", "D", "E"]),
                                    "not a node of the model"),
    "order repeats a node": (_set("schedule.order", ["A", "B", "B", "C", "D"]),
                             "more than once"),
    "tensor size": (_set("memory.tensors.a", 100), "numel x element size is 128"),
    "unknown tensor": (_set("memory.tensors.zz", 4), "not a tensor of the model"),
    "same tensor twice at once": (_append("memory.residency",
                                          {"tensor": "a", "start": 2, "end": 3,
                                           "offset": 1024}), "overlap in time"),
    "address overlap": (_set("memory.residency.2.offset", 0), "in time and in address"),
    "past the capacity": (_set("memory.residency.3.offset", 4032), "leaves [0, 4096)"),
    "misaligned": (_set("memory.residency.3.offset", 520), "not a multiple of 64"),
    "negative offset": (_set("memory.residency.3.offset", -64), "leaves [0, 4096)"),
    "before the producing step": (_set("memory.residency.2.start", 0),
                                  "before the producing step 1"),
    "step past the end": (_set("memory.residency.3.end", 4), "start <= end < 4"),
    "capacity vs hardware": (_set("memory.capacity", 8192), "differs from the size"),
    "unmanaged level": (_set("memory.level", "dram"), "not the hardware's managed level"),
    "traffic total": (_set("memory.traffic.total", 3000), "traffic.total is 3000"),
    "traffic compulsory": (_set("memory.traffic.compulsory", 1), "traffic.compulsory"),
    "traffic non-compulsory": (_set("memory.traffic.non_compulsory", 0),
                               "traffic.non_compulsory"),
    "stream_all baseline": (_set("memory.traffic.baselines.stream_all", 1),
                            "baselines.stream_all"),
    "belady missing": (_set("memory.traffic.baselines.belady", None), "belady"),
    "per-step bytes off": (_set("memory.step_offchip", [0, 0, 0, 1]), "step_offchip"),
    "arena buffer missing": (_drop_buffer("c"), "have no buffer"),
    "arena buffer for a weight": (_append("arena.buffers", {"tensor": "w", "offset": 4096}),
                                  "not a tensor produced by a node"),
    "arena buffer twice": (_append("arena.buffers", {"tensor": "c", "offset": 384}),
                           "more than one buffer"),
    "arena overlap": (_set("arena.buffers.2.offset", 256), "overlap"),
    "arena negative offset": (_set("arena.buffers.1.offset", -1), "not an integer >= 0"),
    "arena size": (_set("arena.size", 399), "max(offset + size) is 400"),
    "arena lower bound": (_set("arena.lower_bound", 384), "lower_bound is 384"),
    "arena greedy": (_set("arena.greedy_by_size", 512), "greedy_by_size is 512"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_each_broken_rule_is_reported(model, case):
    break_it, expected = BROKEN[case]
    plan = copy.deepcopy(valid_plan())
    break_it(plan)
    check = check_plan(model, plan)
    assert not check.ok
    assert any(expected in v for v in check.violations), check.violations


def test_an_invalid_order_skips_step_based_checks(model):
    plan = valid_plan()
    plan["schedule"]["order"] = ["A", "B"]
    check = check_plan(model, plan)
    assert check.checked == ("plan", "schedule")
    assert any("schedule.order does not define the steps" in n for n in check.notes)


def test_greedy_and_lower_bound_by_hand():
    # q (300, earlier start) goes first to 0, r to 0 beside it in time, p above both (300),
    # s above r and p (400).
    buffers = [("p", 0, 3, 100), ("q", 0, 0, 300), ("r", 1, 3, 300), ("s", 2, 2, 50)]
    assert live_peak(buffers) == 450
    assert greedy_peak(buffers) == 450
    # Greedy is not optimal: a, b at 0; d (earlier start than c) above a at 4; c above b and
    # d at 7 -> 10, while a 3, b 0, c 4, d 0 fits the lower bound 7.
    buffers = [("a", 0, 0, 4), ("b", 2, 2, 4), ("c", 1, 3, 3), ("d", 0, 1, 3)]
    assert (live_peak(buffers), greedy_peak(buffers)) == (7, 10)


def test_subgraph_reads_count_as_uses(tmp_path):
    model = onnx.shape_inference.infer_shapes(onnx_builders.if_model())
    for index, node in enumerate(model.graph.node):
        node.name = node.name or f"n{index}"
    order = [n.name for n in model.graph.node]
    # h is read by the If's branches (outer scope): it lives until the If's step at least.
    plan = {"schema": "mapper.plan/1", "passes": [], "schedule": {"order": order},
            "memory": None, "arena": None}
    check = check_plan(model, plan)
    assert check.ok, check.violations
    swapped = [order[1], order[0], *order[2:]]
    plan["schedule"]["order"] = swapped
    assert any("not topological" in v for v in check_plan(model, plan).violations)


def test_cli_exit_codes(tmp_path, model):
    model_path = tmp_path / "model.onnx"
    onnx.save(model, model_path)
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(valid_plan()))
    plan = valid_plan()
    plan["arena"]["size"] = 1
    plan["memory"]["traffic"]["total"] = 1
    bad.write_text(json.dumps(plan))
    ok = run_mapper("verify-plan", str(model_path), str(good))
    assert ok.code == 0 and "valid" in ok.stdout, ok.stderr
    failed = run_mapper("verify-plan", str(model_path), str(bad), "--json")
    assert failed.code == 4
    verdict = json.loads(failed.stdout)
    assert not verdict["ok"] and len(verdict["violations"]) == 2
    text = run_mapper("verify-plan", str(model_path), str(bad))
    assert text.code == 4 and "traffic.total" in text.stdout and "2 rule(s)" in text.stderr
    (tmp_path / "junk.json").write_text("{not json")
    assert run_mapper("verify-plan", str(model_path), str(tmp_path / "junk.json")).code == 2
    assert run_mapper("verify-plan", str(tmp_path / "none.onnx"), str(good)).code == 2


def test_compiled_plan_of_a_tiny_model_verifies(tmp_path):
    source = onnx_builders.save(tiny_model(), tmp_path / "tiny.onnx")
    compile_model(source, "edge-npu", tmp_path / "out")
    check = assert_output_valid(tmp_path / "out")
    assert "arena" in check.checked and "memory" in check.checked
