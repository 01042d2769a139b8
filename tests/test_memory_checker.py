"""An independent checker of `plan.memory` (CONTRACTS.md section 3), used by the memory tests.

Written apart from the pass's own bookkeeping (mapper.passes.memory.traffic): it reads the
ONNX graph and the plan.json dict, builds per-step residency sets, and walks the contract's
rules step by step. Its own tests below pin it to hand-computed numbers.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest
from onnx import TensorProto, helper

from mapper.graph import GraphView


def expected_traffic(order: list[str], reads: dict[str, list[str]], writes: dict[str, list[str]],
                     sizes: dict[str, int], outputs: set[str], inputs: set[str],
                     residency: list[dict[str, Any]], capacity: int, alignment: int
                     ) -> dict[str, int]:
    """Validity (asserted) and traffic of a residency list, straight from the contract."""
    step_of = {name: index for index, name in enumerate(order)}
    producer: dict[str, int] = {}
    for name in order:
        for tensor in writes[name]:
            producer[tensor] = step_of[name]
    uses: dict[str, list[int]] = defaultdict(list)
    for name in order:
        for tensor in set(reads[name]):
            uses[tensor].append(step_of[name])
    held: dict[int, set[str]] = defaultdict(set)
    per_tensor: dict[str, list[tuple[int, int]]] = defaultdict(list)
    boxes = []
    for r in residency:
        tensor, start, end, offset = r["tensor"], r["start"], r["end"], r["offset"]
        size = sizes[tensor]
        assert 0 <= start <= end < len(order), r
        assert offset >= 0 and offset + size <= capacity, r
        assert offset % alignment == 0, r
        assert tensor not in producer or start >= producer[tensor], r
        assert tensor in producer or tensor in inputs, f"{tensor} is neither produced nor input"
        for step in range(start, end + 1):
            assert tensor not in held[step], f"{tensor} held twice at step {step}"
            held[step].add(tensor)
        per_tensor[tensor].append((start, end))
        boxes.append((start, end, offset, offset + size))
    for i, (s1, e1, lo1, hi1) in enumerate(boxes):
        for s2, e2, lo2, hi2 in boxes[i + 1:]:
            if s1 <= e2 and s2 <= e1 and lo1 < hi2 and lo2 < hi1:
                raise AssertionError(f"boxes {(s1, e1, lo1, hi1)} and {(s2, e2, lo2, hi2)} "
                                     "overlap")
    total = 0
    for name in order:
        step = step_of[name]
        total += sum(sizes[t] for t in set(reads[name]) if t not in held[step])
        total += sum(sizes[t] for t in set(writes[name]) if t not in held[step])
    for tensor, spans in per_tensor.items():
        spans.sort()
        copy_after = -1 if tensor not in producer else None
        if tensor in producer and tensor not in held[producer[tensor]]:
            copy_after = producer[tensor]
        for index, (start, end) in enumerate(spans):
            if tensor in producer and start == producer[tensor]:
                later = any(u > end for u in uses[tensor]) or index + 1 < len(spans)
                if later or tensor in outputs:
                    total += sizes[tensor]
                    copy_after = end
                continue
            assert copy_after is not None and copy_after < start, \
                f"{tensor} loaded at {start} with no off-chip copy"
            total += sizes[tensor]
    used = {t for name in order for t in reads[name]}
    compulsory = sum(sizes[t] for t in used if t not in producer) + sum(sizes[t] for t in outputs)
    return {"total": total, "compulsory": compulsory, "non_compulsory": total - compulsory}


def check_memory_plan(view: GraphView, plan: dict[str, Any]) -> dict[str, int]:
    """Check `plan["memory"]` against the graph of `view`; returns the recomputed traffic."""
    memory = plan["memory"]
    order = list(plan["schedule"]["order"])
    assert sorted(order) == sorted(view.nodes), "schedule.order must name every node once"
    reads = {name: [t for t in view.nodes[name].inputs] for name in order}
    writes = {name: list(view.nodes[name].outputs) for name in order}
    for name, size in memory["tensors"].items():
        assert view.tensors[name].size == size, f"size of {name}"
    for r in memory["residency"]:
        assert r["tensor"] in memory["tensors"], f"{r['tensor']} has a residency but no size"
    sizes = {name: t.size for name, t in view.tensors.items()}
    inputs = {name for name, t in view.tensors.items() if t.producer is None}
    outputs = set(view.graph_outputs)
    got = expected_traffic(order, reads, writes, sizes, outputs, inputs, memory["residency"],
                           memory["capacity"], memory["alignment"])
    traffic = memory["traffic"]
    for key in ("total", "compulsory", "non_compulsory"):
        assert traffic[key] == got[key], f"traffic.{key}: plan {traffic[key]}, rules {got[key]}"
    stream = expected_traffic(order, reads, writes, sizes, outputs, inputs, [],
                              memory["capacity"], memory["alignment"])
    assert traffic["baselines"]["stream_all"] == stream["total"]
    assert traffic["total"] <= traffic["baselines"]["belady"] <= stream["total"]
    return got


def _chain() -> tuple[list[str], dict, dict, dict[str, int]]:
    # x -> A -> a -> B -> b -> C(a, b) -> y ; w read by A and C.
    order = ["A", "B", "C"]
    reads = {"A": ["x", "w"], "B": ["a"], "C": ["a", "b", "w"]}
    writes = {"A": ["a"], "B": ["b"], "C": ["y"]}
    sizes = {"x": 100, "w": 10, "a": 1000, "b": 200, "y": 50}
    return order, reads, writes, sizes


def test_checker_counts_stream_all_by_hand():
    order, reads, writes, sizes = _chain()
    got = expected_traffic(order, reads, writes, sizes, {"y"}, {"x", "w"}, [], 4096, 64)
    # reads: x + w, a, a + b + w; writes: a, b, y
    assert got["total"] == (100 + 10) + 1000 + (1000 + 200 + 10) + 1000 + 200 + 50
    assert got["compulsory"] == 100 + 10 + 50


def test_checker_prices_residency_rules_by_hand():
    order, reads, writes, sizes = _chain()
    plan = [
        {"tensor": "a", "start": 0, "end": 1, "offset": 0},     # produced on-chip, read at 1
        {"tensor": "a", "start": 2, "end": 2, "offset": 0},     # reloaded: write-back + load
        {"tensor": "w", "start": 0, "end": 2, "offset": 1024},  # one load covers both reads
        {"tensor": "y", "start": 2, "end": 2, "offset": 2048},  # graph output: written back
    ]
    got = expected_traffic(order, reads, writes, sizes, {"y"}, {"x", "w"}, plan, 4096, 64)
    # x streamed 100; b written 200 and read 200; a write-back 1000 + load 1000;
    # w load 10; y write-back 50.
    assert got["total"] == 100 + 200 + 200 + 1000 + 1000 + 10 + 50


@pytest.mark.parametrize("bad", [
    {"tensor": "a", "start": 0, "end": 1, "offset": 32},     # misaligned
    {"tensor": "a", "start": 0, "end": 1, "offset": 3200},   # past the capacity
    {"tensor": "b", "start": 0, "end": 2, "offset": 2048},   # before its producing step
])
def test_checker_rejects_broken_rules(bad):
    order, reads, writes, sizes = _chain()
    with pytest.raises(AssertionError):
        expected_traffic(order, reads, writes, sizes, {"y"}, {"x", "w"}, [bad], 4096, 64)


def test_checker_rejects_address_overlap():
    order, reads, writes, sizes = _chain()
    plan = [{"tensor": "a", "start": 0, "end": 2, "offset": 0},
            {"tensor": "b", "start": 1, "end": 2, "offset": 960}]
    with pytest.raises(AssertionError, match="overlap"):
        expected_traffic(order, reads, writes, sizes, {"y"}, {"x", "w"}, plan, 4096, 64)


def test_checker_reads_an_onnx_graph():
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="r"),
             helper.make_node("Add", ["a", "a"], ["y"], name="s")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [4, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 16])],
                              value_info=[helper.make_tensor_value_info("a", 1, [4, 16])])
    view = GraphView.from_model(helper.make_model(graph))
    plan = {"schedule": {"order": ["r", "s"]},
            "memory": {"capacity": 1024, "alignment": 64, "tensors": {"a": 256},
                       "residency": [{"tensor": "a", "start": 0, "end": 1, "offset": 0}],
                       "traffic": {"total": 256 + 256, "compulsory": 512, "non_compulsory": 0,
                                   "baselines": {"stream_all": 256 * 4, "belady": 512}}}}
    assert check_memory_plan(view, plan)["total"] == 512
