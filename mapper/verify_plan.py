"""`mapper verify-plan MODEL PLAN`: an independent check of a plan.json (CONTRACTS.md 2-4, 7).

Everything is recomputed here from the ONNX file and the plan alone, on purpose apart from
the passes' own bookkeeping (mapper.graph, mapper.passes.memory, mapper.passes.arena): tensor
sizes from the declared types and shapes, steps from `schedule.order`, residency validity
and the off-chip traffic by the contract's rules, and the arena's buffers, overlaps, size,
lower bound and greedy-by-size baseline. A bug in a solver's accounting therefore shows up
as a disagreement instead of being checked against itself.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto

from mapper.errors import UserError

PLAN_SCHEMA = "mapper.plan/1"
_PASS_STATUSES = ("ok", "fallback", "skipped", "failed")
# Bits per element of every ONNX element type with a fixed width; strings count 0 bytes.
_BITS = {
    TensorProto.FLOAT: 32, TensorProto.DOUBLE: 64, TensorProto.FLOAT16: 16,
    TensorProto.BFLOAT16: 16, TensorProto.INT8: 8, TensorProto.UINT8: 8, TensorProto.INT16: 16,
    TensorProto.UINT16: 16, TensorProto.INT32: 32, TensorProto.UINT32: 32,
    TensorProto.INT64: 64, TensorProto.UINT64: 64, TensorProto.BOOL: 8,
    TensorProto.COMPLEX64: 64, TensorProto.COMPLEX128: 128,
}
for _name, _bits in (("FLOAT8E4M3FN", 8), ("FLOAT8E4M3FNUZ", 8), ("FLOAT8E5M2", 8),
                     ("FLOAT8E5M2FNUZ", 8), ("FLOAT8E8M0", 8), ("INT4", 4), ("UINT4", 4),
                     ("FLOAT4E2M1", 4), ("INT2", 2), ("UINT2", 2)):
    if hasattr(TensorProto, _name):
        _BITS[getattr(TensorProto, _name)] = _bits
_STRINGLIKE = (TensorProto.STRING, TensorProto.UNDEFINED)
_FLOATS = (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16)
# Storage bits of each deployment precision (plan.model.precision): float tensors take it.
_PRECISION_BITS = {"fp32": 32, "tf32": 32, "fp16": 16, "bf16": 16, "fp8": 8, "int8": 8}
_CODES = {TensorProto.INT8, TensorProto.UINT8, TensorProto.INT16, TensorProto.UINT16,
          TensorProto.INT4, TensorProto.UINT4}
# Standard ops that may turn constant integer codes into a float weight.
_DECODING = {"DequantizeLinear", "Cast", "CastLike", "Mul", "Sub", "Add", "Div", "Reshape",
             "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Gather", "Identity", "Expand",
             "Concat", "Slice", "BitShift", "BitwiseAnd", "BitwiseOr", "Tile", "Neg",
              "Pad"}


@dataclass(frozen=True)
class ModelFacts:
    """What the rules need from the model: per-node reads/writes, sizes, roles of tensors."""

    nodes: Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]]  # name -> (reads, writes)
    sizes: Mapping[str, int | None]     # tensor -> bytes (None: no static shape declared)
    producer: Mapping[str, str]         # tensor -> producing node
    sources: frozenset[str]             # graph inputs and initializers (always off-chip)
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class PlanCheck:
    """The verdict: every violation found, and the numbers recomputed along the way."""

    violations: tuple[str, ...]
    checked: tuple[str, ...]
    traffic: Mapping[str, int] | None = None
    arena: Mapping[str, int] | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """True when the plan honours every checked rule."""
        return not self.violations

    def to_dict(self) -> dict[str, Any]:
        """The `--json` form."""
        return {"ok": self.ok, "violations": list(self.violations),
                "checked": list(self.checked), "traffic": self.traffic, "arena": self.arena,
                "notes": list(self.notes)}


# --- the model ------------------------------------------------------------------------------

def _subgraphs(node: NodeProto) -> Iterable[GraphProto]:
    for attribute in node.attribute:
        if attribute.type == AttributeProto.GRAPH:
            yield attribute.g
        elif attribute.type == AttributeProto.GRAPHS:
            yield from attribute.graphs


def _outer_reads(graph: GraphProto, defined: set[str]) -> list[str]:
    """Names a subgraph reads from enclosing scopes (not defined anywhere inside it)."""
    local = set(defined) | {i.name for i in graph.input} | {i.name for i in graph.initializer}
    for node in graph.node:
        local.update(name for name in node.output if name)
    found: list[str] = []
    for node in graph.node:
        for name in node.input:
            if name and name not in local:
                found.append(name)
        for sub in _subgraphs(node):
            found.extend(name for name in _outer_reads(sub, local) if name not in local)
    found.extend(o.name for o in graph.output if o.name not in local)
    return found


def _node_reads(node: NodeProto) -> tuple[str, ...]:
    """Distinct tensors a node reads: explicit inputs, then its subgraphs' outer-scope reads."""
    names = [name for name in node.input if name]
    for sub in _subgraphs(node):
        names.extend(_outer_reads(sub, set()))
    return tuple(dict.fromkeys(names))


def _bytes(elem_type: int, dims: Sequence[int], precision: str = "model") -> int | None:
    if elem_type in _STRINGLIKE:
        return 0
    bits = _BITS.get(elem_type)
    if precision in _PRECISION_BITS and elem_type in _FLOATS:
        bits = _PRECISION_BITS[precision]
    if bits is None:
        return None
    return math.ceil(math.prod(dims) * bits / 8)


def _decoded_weights(graph: GraphProto) -> tuple[set[str], dict[str, tuple[str, ...]]]:
    """Nodes that only decode constant integer codes into a float weight, and each decoded
    tensor's source initializers. Runtimes fuse such nodes into the op that reads the
    weight, so that op reads the sources and the decoded tensor never exists."""
    initializers = {i.name: i for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    sources: dict[str, tuple[str, ...]] = {}
    coded: set[str] = set()
    nodes: set[str] = set()
    for node in graph.node:
        names = [n for n in node.input if n]
        if (node.domain not in ("", "ai.onnx") or node.op_type not in _DECODING or not names
                or any(o in outputs for o in node.output)
                or not all(n in initializers or n in sources for n in names)):
            continue
        codes = any(n in coded or (n in initializers and initializers[n].data_type in _CODES
                                   and math.prod(initializers[n].dims) >= 16) for n in names)
        if not codes:
            continue
        roots: list[str] = []
        for n in names:
            roots.extend(sources.get(n, (n,) if n in initializers else ()))
        for out in node.output:
            if out:
                sources[out] = tuple(dict.fromkeys(roots))
                coded.add(out)
        nodes.add(node.name)
    return nodes, sources


def model_facts(model: ModelProto, precision: str = "model",
                input_shapes: Mapping[str, Sequence[int]] | None = None) -> ModelFacts:
    """Read reads/writes per node and the size of every main-graph tensor from the model,
    float tensors at the deployment `precision`; `input_shapes` sizes the graph inputs the
    model declares dynamic (plan.model.inputs_as_declared)."""
    graph = model.graph
    sizes: dict[str, int | None] = {}
    for info in graph.input:
        if input_shapes and info.name in input_shapes and info.type.HasField("tensor_type"):
            sizes[info.name] = _bytes(info.type.tensor_type.elem_type,
                                      list(input_shapes[info.name]), precision)
    for info in [*graph.input, *graph.value_info, *graph.output]:
        if not info.type.HasField("tensor_type"):
            # Sequences, maps and optionals (e.g. ZipMap's output) have no byte size, like
            # strings: 0, never an arena buffer.
            sizes[info.name] = 0
            continue
        tensor = info.type.tensor_type
        static = tensor.HasField("shape") and all(d.HasField("dim_value")
                                                  for d in tensor.shape.dim)
        size = _bytes(tensor.elem_type, [d.dim_value for d in tensor.shape.dim], precision) \
            if static else None
        if size is not None or info.name not in sizes:
            sizes[info.name] = size
    for init in graph.initializer:
        sizes[init.name] = _bytes(init.data_type, list(init.dims), precision)
    decoders, decoded = _decoded_weights(graph)
    nodes: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
    producer: dict[str, str] = {}
    for node in graph.node:
        if node.name in decoders:
            nodes[node.name] = ((), ())
            continue
        writes = tuple(name for name in node.output if name)
        reads: list[str] = []
        for name in _node_reads(node):
            reads.extend(decoded.get(name, (name,)))
        nodes[node.name] = (tuple(dict.fromkeys(reads)), writes)
        for name in writes:
            producer[name] = node.name
            sizes.setdefault(name, None)
    sources = frozenset({i.name for i in graph.input} | {i.name for i in graph.initializer})
    return ModelFacts(nodes=nodes, sizes=sizes, producer=producer, sources=sources,
                      outputs=tuple(o.name for o in graph.output))


# --- checks ---------------------------------------------------------------------------------

class _Report:
    """Collects violations under a section prefix."""

    def __init__(self) -> None:
        self.violations: list[str] = []

    def add(self, section: str, message: str) -> None:
        self.violations.append(f"{section}: {message}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_top(plan: Mapping[str, Any], report: _Report) -> None:
    if plan.get("schema") != PLAN_SCHEMA:
        report.add("plan", f"schema is {plan.get('schema')!r}, expected {PLAN_SCHEMA!r}")
    passes = plan.get("passes")
    if not isinstance(passes, list):
        report.add("plan", "`passes` is missing or not a list")
        return
    for record in passes:
        if not isinstance(record, dict) or record.get("status") not in _PASS_STATUSES:
            report.add("plan", f"pass record {record!r} has no status among "
                       f"{', '.join(_PASS_STATUSES)}")


def _check_schedule(facts: ModelFacts, plan: Mapping[str, Any], report: _Report
                    ) -> list[str] | None:
    """Check `schedule.order`; returns it when steps are well defined (a permutation)."""
    order = (plan.get("schedule") or {}).get("order") if isinstance(plan.get("schedule"),
                                                                     dict) else None
    if not isinstance(order, list) or not all(isinstance(n, str) for n in order):
        report.add("schedule", "`schedule.order` is missing or not a list of node names")
        return None
    seen: set[str] = set()
    permutation = True
    for name in order:
        if name not in facts.nodes:
            report.add("schedule", f"order names {name!r}, which is not a node of the model")
            permutation = False
        elif name in seen:
            report.add("schedule", f"order names {name!r} more than once")
            permutation = False
        seen.add(name)
    missing = [name for name in facts.nodes if name not in seen]
    if missing:
        report.add("schedule", f"order misses {len(missing)} node(s) of the model, e.g. "
                   f"{', '.join(map(repr, missing[:3]))}")
        permutation = False
    if not permutation:
        return None
    step = {name: index for index, name in enumerate(order)}
    for name in order:
        for tensor in facts.nodes[name][0]:
            maker = facts.producer.get(tensor)
            if maker is not None and maker != name and step[maker] > step[name]:
                report.add("schedule", f"node {name!r} (step {step[name]}) reads {tensor!r} "
                           f"before its producer {maker!r} runs (step {step[maker]}): the "
                           "order is not topological")
    return order


def _overlapping_pairs(boxes: Sequence[tuple[int, int, int, int, str]]
                       ) -> Iterable[tuple[str, str]]:
    """Pairs of (first step, last step, low address, high address, label) boxes that share
    a step and an address (inclusive steps, half-open addresses), by a sweep over steps."""
    active: list[tuple[int, int, int, int, str]] = []
    for box in sorted(boxes):
        start, _, low, high, label = box
        active = [a for a in active if a[1] >= start]
        for other in active:
            if low < other[3] and other[2] < high:
                yield other[4], label
        active.append(box)


def _stream_traffic(facts: ModelFacts, order: Sequence[str]) -> int:
    """Off-chip bytes with nothing resident: every read and every write streamed."""
    total = 0
    for name in order:
        reads, writes = facts.nodes[name]
        total += sum(facts.sizes.get(t) or 0 for t in reads)
        total += sum(facts.sizes.get(t) or 0 for t in writes)
    return total


def _check_memory(facts: ModelFacts, plan: Mapping[str, Any], order: Sequence[str],
                  report: _Report) -> dict[str, int] | None:
    memory = plan["memory"]
    if not isinstance(memory, dict):
        report.add("memory", "the section is not an object")
        return None
    missing = [key for key in ("level", "capacity", "alignment", "tensors", "residency",
                               "traffic") if key not in memory]
    if missing:
        report.add("memory", f"missing field(s) {', '.join(missing)}")
        return None
    capacity, alignment = memory["capacity"], memory["alignment"]
    if not _is_int(capacity) or capacity < 0 or not _is_int(alignment) or alignment < 1:
        report.add("memory", f"capacity {capacity!r} / alignment {alignment!r} must be "
                   "integers >= 0 / >= 1")
        return None
    level = (plan.get("hardware") or {}).get("memory", {}).get(memory["level"]) \
        if isinstance(plan.get("hardware"), dict) else None
    if isinstance(level, dict):
        if not level.get("managed", False):
            report.add("memory", f"level {memory['level']!r} is not the hardware's managed "
                       "level")
        if level.get("size") != capacity:
            report.add("memory", f"capacity {capacity} differs from the size of level "
                       f"{memory['level']!r} in plan.hardware ({level.get('size')})")
    elif isinstance(plan.get("hardware"), dict):
        report.add("memory", f"level {memory['level']!r} is not a memory level of "
                   "plan.hardware")
    tensors = memory["tensors"]
    if not isinstance(tensors, dict):
        report.add("memory", "`tensors` is not an object of name -> bytes")
        tensors = {}
    for name, size in tensors.items():
        if name not in facts.sizes:
            report.add("memory", f"tensors lists {name!r}, which is not a tensor of the model")
        elif facts.sizes[name] is None:
            report.add("memory", f"tensor {name!r} has no static shape in the model, so its "
                       "size cannot be checked")
        elif size != facts.sizes[name]:
            report.add("memory", f"tensors[{name!r}] = {size}, but numel x element size is "
                       f"{facts.sizes[name]}")
    steps = len(order)
    step_of = {name: index for index, name in enumerate(order)}
    produced_at = {t: step_of[n] for t, n in facts.producer.items()}
    spans: dict[str, list[tuple[int, int]]] = defaultdict(list)
    boxes: list[tuple[int, int, int, int, str]] = []
    residency = memory["residency"] if isinstance(memory["residency"], list) else []
    if not isinstance(memory["residency"], list):
        report.add("memory", "`residency` is not a list")
    for index, entry in enumerate(residency):
        label = f"residency[{index}]"
        if not isinstance(entry, dict) or not all(key in entry for key in
                                                  ("tensor", "start", "end", "offset")):
            report.add("memory", f"{label} lacks tensor/start/end/offset")
            continue
        tensor, start, end, offset = (entry["tensor"], entry["start"], entry["end"],
                                      entry["offset"])
        label = f"{label} ({tensor!r}, steps {start}..{end}, offset {offset})"
        if not all(_is_int(v) for v in (start, end, offset)):
            report.add("memory", f"{label}: start, end and offset must be integers")
            continue
        if tensor not in facts.sizes or tensor not in tensors:
            report.add("memory", f"{label}: the tensor is "
                       + ("not in the model" if tensor not in facts.sizes
                          else "missing from memory.tensors"))
            continue
        size = facts.sizes[tensor]
        if size is None:
            report.add("memory", f"{label}: the tensor has no static shape in the model")
            continue
        if not 0 <= start <= end < steps:
            report.add("memory", f"{label}: steps must satisfy 0 <= start <= end < {steps}")
            continue
        if offset < 0 or offset + size > capacity:
            report.add("memory", f"{label}: [offset, offset + {size}) leaves [0, {capacity})")
        if offset % alignment:
            report.add("memory", f"{label}: offset is not a multiple of {alignment}")
        if tensor in produced_at and start < produced_at[tensor]:
            report.add("memory", f"{label}: starts before the producing step "
                       f"{produced_at[tensor]}")
            continue
        if tensor not in produced_at and tensor not in facts.sources:
            report.add("memory", f"{label}: the tensor is neither produced by a node nor a "
                       "graph input or initializer")
            continue
        spans[tensor].append((start, end))
        if size > 0:
            boxes.append((start, end, offset, offset + size, label))
    for tensor, ranges in spans.items():
        ranges.sort()
        for (s1, e1), (s2, e2) in itertools.pairwise(ranges):
            if s2 <= e1:
                report.add("memory", f"residencies of {tensor!r} overlap in time "
                           f"({s1}..{e1} and {s2}..{e2})")
    for first, second in _overlapping_pairs(boxes):
        report.add("memory", f"{first} and {second} overlap in time and in address")
    if isinstance(level, dict) and level.get("streaming") is False:
        _check_resident_operands(facts, order, spans, report)
    traffic = _memory_traffic(facts, order, spans, produced_at, report)
    stream_all = _stream_traffic(facts, order)
    claimed = memory["traffic"] if isinstance(memory["traffic"], dict) else {}
    for key in ("total", "compulsory", "non_compulsory"):
        if claimed.get(key) != traffic[key]:
            report.add("memory", f"traffic.{key} is {claimed.get(key)!r}, the rules give "
                       f"{traffic[key]}")
    baselines = claimed.get("baselines") if isinstance(claimed.get("baselines"), dict) else {}
    if baselines.get("stream_all") != stream_all:
        report.add("memory", f"traffic.baselines.stream_all is {baselines.get('stream_all')!r},"
                   f" the rules give {stream_all}")
    if not _is_int(baselines.get("belady")):
        report.add("memory", "traffic.baselines.belady is missing or not an integer")
    # mapper's own addition (what the estimate prices per step): checked for consistency only.
    per_step = memory.get("step_offchip")
    if per_step is not None and (not isinstance(per_step, list) or len(per_step) != len(order)
                                 or not all(_is_int(v) and v >= 0 for v in per_step)
                                 or sum(per_step) != traffic["total"]):
        report.add("memory", "step_offchip must list one non-negative integer per step, "
                   f"summing to traffic.total ({traffic['total']})")
    return {**traffic, "stream_all": stream_all}


def _check_resident_operands(facts: ModelFacts, order: Sequence[str],
                             spans: Mapping[str, list[tuple[int, int]]], report: _Report) -> None:
    """A level compute cannot bypass (`streaming: false`) holds every operand when used."""
    missing = []
    for step, name in enumerate(order):
        reads, writes = facts.nodes[name]
        for tensor in dict.fromkeys((*reads, *writes)):
            if (facts.sizes.get(tensor) or 0) > 0 and not any(
                    s <= step <= e for s, e in spans.get(tensor, ())):
                missing.append(f"{tensor!r} at step {step} ({name})")
    if missing:
        shown = "; ".join(missing[:5]) + (f"; ... ({len(missing)} in all)"
                                          if len(missing) > 5 else "")
        report.add("memory", "the level cannot be bypassed (streaming: false), but operands "
                   f"are not resident when their node runs: {shown}")


def _memory_traffic(facts: ModelFacts, order: Sequence[str],
                    spans: Mapping[str, list[tuple[int, int]]], produced_at: Mapping[str, int],
                    report: _Report) -> dict[str, int]:
    """Off-chip bytes of the residencies, walking the contract's rules step by step."""
    held: dict[int, set[str]] = defaultdict(set)
    for tensor, ranges in spans.items():
        for start, end in ranges:
            for step in range(start, end + 1):
                held[step].add(tensor)
    uses: dict[str, list[int]] = defaultdict(list)
    total = 0
    for step, name in enumerate(order):
        reads, writes = facts.nodes[name]
        for tensor in reads:
            uses[tensor].append(step)
            if tensor not in held[step]:
                total += facts.sizes.get(tensor) or 0       # streamed read
        for tensor in writes:
            if tensor not in held[step]:
                total += facts.sizes.get(tensor) or 0       # streamed write
    outputs = set(facts.outputs)
    for tensor, ranges in spans.items():
        size = facts.sizes.get(tensor) or 0
        made = produced_at.get(tensor)
        # When an off-chip copy exists: sources always; an intermediate streamed out at its
        # producing step from then on; one produced on-chip once written back.
        copy_from: int | None = -1 if made is None else None
        if made is not None and (not ranges or ranges[0][0] != made):
            copy_from = made
        for index, (start, end) in enumerate(ranges):
            if made is not None and start == made:
                needed_later = any(u > end for u in uses[tensor]) or index + 1 < len(ranges)
                if needed_later or tensor in outputs:
                    total += size                           # write-back, once
                    copy_from = end
                continue
            if copy_from is None or copy_from >= start:
                report.add("memory", f"residency of {tensor!r} at steps {start}..{end} loads "
                           "it before any off-chip copy exists")
            total += size                                   # load
    used = {t for name in order for t in facts.nodes[name][0]}
    compulsory = sum(facts.sizes.get(t) or 0 for t in used if t in facts.sources)
    # Graph outputs count when a node writes them: an output that is a graph input or an
    # initializer passed through is already off-chip, and counting it made non_compulsory
    # negative (found by the random-graph property tests).
    compulsory += sum(facts.sizes.get(t) or 0 for t in set(facts.outputs)
                      if t in facts.producer)
    return {"total": total, "compulsory": compulsory, "non_compulsory": total - compulsory}


def arena_buffers(facts: ModelFacts, order: Sequence[str]
                  ) -> tuple[list[tuple[str, int, int, int]], list[str]]:
    """(tensor, first step, last step, bytes) of every produced tensor with bytes, in
    schedule order (producing step, output position); and the tensors lacking a size."""
    step_of = {name: index for index, name in enumerate(order)}
    last_use: dict[str, int] = {}
    for step, name in enumerate(order):
        for tensor in facts.nodes[name][0]:
            last_use[tensor] = step
    outputs = set(facts.outputs)
    buffers, unsized = [], []
    for name in order:
        for tensor in facts.nodes[name][1]:
            size = facts.sizes.get(tensor)
            if size is None:
                unsized.append(tensor)
                continue
            if size == 0:
                continue
            start = step_of[name]
            end = len(order) - 1 if tensor in outputs else max(start, last_use.get(tensor,
                                                                                   start))
            buffers.append((tensor, start, end, size))
    return buffers, unsized


def live_peak(buffers: Sequence[tuple[str, int, int, int]]) -> int:
    """Max over steps of the bytes of buffers live at that step (inclusive step ranges)."""
    delta: dict[int, int] = defaultdict(int)
    for _, start, end, size in buffers:
        delta[start] += size
        delta[end + 1] -= size
    running = best = 0
    for step in sorted(delta):
        running += delta[step]
        best = max(best, running)
    return best


def greedy_peak(buffers: Sequence[tuple[str, int, int, int]]) -> int:
    """Greedy-by-size: largest first (ties: earlier start, earlier end, schedule order),
    each at the lowest offset clear of every placed buffer live at a common step."""
    placed: list[tuple[int, int, int, int]] = []   # (start, end, offset, size)
    peak = 0
    ranked = sorted(range(len(buffers)), key=lambda i: (-buffers[i][3], buffers[i][1],
                                                        buffers[i][2], i))
    for index in ranked:
        _, start, end, size = buffers[index]
        offset = 0
        for _, _, low, length in sorted((p for p in placed if p[0] <= end and start <= p[1]),
                                        key=lambda p: p[2]):
            if offset + size <= low:
                break
            offset = max(offset, low + length)
        placed.append((start, end, offset, size))
        peak = max(peak, offset + size)
    return peak


def _check_arena(facts: ModelFacts, plan: Mapping[str, Any], order: Sequence[str],
                 report: _Report) -> dict[str, int] | None:
    arena = plan["arena"]
    if not isinstance(arena, dict):
        report.add("arena", "the section is not an object")
        return None
    missing = [key for key in ("size", "lower_bound", "greedy_by_size", "buffers")
               if key not in arena]
    if missing:
        report.add("arena", f"missing field(s) {', '.join(missing)}")
        return None
    expected, unsized = arena_buffers(facts, order)
    for tensor in unsized:
        report.add("arena", f"tensor {tensor!r} has no static shape in the model")
    by_tensor = {b[0]: b for b in expected}
    seen: dict[str, int] = {}
    boxes: list[tuple[int, int, int, int, str]] = []
    entries = arena["buffers"] if isinstance(arena["buffers"], list) else []
    if not isinstance(arena["buffers"], list):
        report.add("arena", "`buffers` is not a list")
    top = 0
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or "tensor" not in entry or "offset" not in entry:
            report.add("arena", f"buffers[{index}] lacks tensor/offset")
            continue
        tensor, offset = entry["tensor"], entry["offset"]
        if tensor not in by_tensor:
            report.add("arena", f"buffers[{index}]: {tensor!r} is not a tensor produced by a "
                       "node with a non-zero size")
            continue
        if tensor in seen:
            report.add("arena", f"{tensor!r} has more than one buffer")
            continue
        if not _is_int(offset) or offset < 0:
            report.add("arena", f"{tensor!r}: offset {offset!r} is not an integer >= 0")
            continue
        seen[tensor] = offset
        _, start, end, size = by_tensor[tensor]
        top = max(top, offset + size)
        boxes.append((start, end, offset, offset + size,
                      f"{tensor!r} (steps {start}..{end}, [{offset}, {offset + size}))"))
    absent = [b[0] for b in expected if b[0] not in seen]
    if absent:
        report.add("arena", f"{len(absent)} produced tensor(s) have no buffer, e.g. "
                   f"{', '.join(map(repr, absent[:3]))}")
    for first, second in _overlapping_pairs(boxes):
        report.add("arena", f"buffers {first} and {second} are live at the same step and "
                   "overlap")
    numbers = {"size": top, "lower_bound": live_peak(expected),
               "greedy_by_size": greedy_peak(expected)}
    if not absent and arena["size"] != numbers["size"]:
        report.add("arena", f"size is {arena['size']!r}, max(offset + size) is "
                   f"{numbers['size']}")
    for key in ("lower_bound", "greedy_by_size"):
        if arena[key] != numbers[key]:
            report.add("arena", f"{key} is {arena[key]!r}, recomputed {numbers[key]}")
    return numbers


def _group_sparse_sizes(model: ModelProto, facts: ModelFacts) -> ModelFacts:
    """On a device with group-sparse kernels, a MatMulNBits weight with zero-scale (pruned)
    groups is stored as its kept groups in block-sparse-row form: its parts shrink in
    proportion to those bytes (the BSR layout of weights.gqsa.safetensors)."""
    from onnx import numpy_helper

    from mapper.formats import bsr_bytes

    initializers = {i.name: i for i in model.graph.initializer}
    sizes = dict(facts.sizes)
    for node in model.graph.node:
        if node.op_type != "MatMulNBits" or len(node.input) < 3 \
                or node.input[2] not in initializers:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        scales = numpy_helper.to_array(initializers[node.input[2]])
        kept = int(np.count_nonzero(scales))
        if kept == scales.size:
            continue
        bits, block = int(attrs.get("bits", 4)), int(attrs["block_size"])
        groups = -(-int(attrs["K"]) // block)
        symmetric = not (len(node.input) > 3 and node.input[3])
        packed = bsr_bytes(int(attrs["N"]), groups, kept, block, bits, 2,
                           0 if symmetric else bits)
        parts = [n for n in node.input[1:4] if n]
        stored = [sizes.get(p) or 0 for p in parts]
        if packed >= sum(stored):
            continue
        shares = [size * packed // (sum(stored) or 1) for size in stored]
        shares[0] += packed - sum(shares)
        sizes.update(zip(parts, shares, strict=True))
    return ModelFacts(nodes=facts.nodes, sizes=sizes, producer=facts.producer,
                      sources=facts.sources, outputs=facts.outputs)


def _check_compression(model: ModelProto, section: Any, facts: ModelFacts, report: _Report
                       ) -> None:
    """Every listed weight exists, and its bits per weight recomputed from the stored
    initializers it names (codes, scales, zero points, factors) match the plan's."""
    if not isinstance(section, dict) or not isinstance(section.get("weights"), list):
        report.add("compression", "`weights` is missing or not a list")
        return
    initializers = {i.name for i in model.graph.initializer}
    total_bits = 0.0
    total_elements = 0
    for entry in section["weights"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            report.add("compression", f"weight entry {entry!r} has no name")
            continue
        name = entry["name"]
        parts = [*entry.get("parts", ()), *entry.get("factors", ())]
        missing = [p for p in parts if p not in initializers]
        if not parts or missing:
            report.add("compression", f"weight {name!r}: stored parts {missing or parts!r} are "
                       "not initializers of the model")
            continue
        shape = entry.get("shape")
        if not isinstance(shape, list) or not all(_is_int(d) and d > 0 for d in shape):
            report.add("compression", f"weight {name!r}: shape {shape!r} is not a list of "
                       "positive dims")
            continue
        elements = math.prod(shape)
        stored = sum(facts.sizes.get(p) or 0 for p in parts)
        total_elements += elements
        if entry.get("artifact") and _is_int(entry.get("artifact_bytes")):
            # Counted from its artifact; _check_artifacts reads the file beside the plan.
            total_bits += 8.0 * entry["artifact_bytes"]
            continue
        bits = 8.0 * stored / elements
        total_bits += 8.0 * stored
        claimed = entry.get("bits_per_weight")
        if not isinstance(claimed, int | float) or abs(bits - claimed) > 1e-3 * max(1, bits):
            report.add("compression", f"weight {name!r}: bits_per_weight is {claimed!r}, the "
                       f"stored initializers give {bits:.6f}")
    claimed_total = section.get("bits_per_weight")
    if total_elements and (not isinstance(claimed_total, int | float)
                           or abs(total_bits / total_elements - claimed_total) > 1e-3):
        report.add("compression", f"bits_per_weight is {claimed_total!r}, the stored "
                   f"initializers give {total_bits / total_elements:.6f}")


def _declared_input_shapes(model_info: Mapping[str, Any]) -> dict[str, list[int]]:
    """The planned shapes of the inputs that the model declares dynamic, where well formed."""
    shapes = model_info.get("input_shapes")
    names = model_info.get("inputs_as_declared")
    if not isinstance(shapes, dict) or not isinstance(names, list):
        return {}
    return {name: shapes[name] for name in names if isinstance(name, str)
            and isinstance(shapes.get(name), list) and all(_is_int(d) for d in shapes[name])}


def check_plan(model: ModelProto, plan: Mapping[str, Any]) -> PlanCheck:
    """Check `plan` against `model` (the compile's OUT/model.onnx) by CONTRACTS.md 2-4."""
    model_info = plan.get("model") if isinstance(plan.get("model"), dict) else {}
    precision = model_info.get("precision", "model")
    facts = model_facts(model, precision if isinstance(precision, str) else "model",
                        _declared_input_shapes(model_info))
    compute = ((plan.get("hardware") or {}).get("compute") or {}) \
        if isinstance(plan.get("hardware"), dict) else {}
    if compute.get("group_sparse_kernels"):
        facts = _group_sparse_sizes(model, facts)
    report = _Report()
    checked = ["plan", "schedule"]
    notes: list[str] = []
    _check_top(plan, report)
    order = _check_schedule(facts, plan, report)
    traffic = arena = None
    for section in ("memory", "arena"):
        if plan.get(section) is None:
            notes.append(f"no {section} section: nothing to check")
            continue
        if order is None:
            notes.append(f"{section} not checked: schedule.order does not define the steps")
            continue
        checked.append(section)
        if section == "memory":
            traffic = _check_memory(facts, plan, order, report)
        else:
            arena = _check_arena(facts, plan, order, report)
    if plan.get("compression") is not None:
        checked.append("compression")
        _check_compression(model, plan["compression"], facts, report)
    return PlanCheck(violations=tuple(report.violations), checked=tuple(checked),
                     traffic=traffic, arena=arena, notes=tuple(notes))


def _artifact_bytes(path: Path) -> dict[str, int]:
    """Bytes of every tensor of a safetensors artifact, read from its header alone."""
    import struct

    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    sizes = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        start, end = info["data_offsets"]
        sizes[key] = int(end) - int(start)
    return sizes


def _check_artifacts(plan: Mapping[str, Any], plan_dir: Path, report: _Report) -> None:
    """Weights counted from an artifact: its tensors named `<weight>.*` must add up to the
    plan's artifact bytes and bits per weight."""
    section = plan.get("compression") or {}
    cache: dict[str, dict[str, int] | None] = {}
    for entry in section.get("weights") or ():
        name = entry.get("artifact") if isinstance(entry, dict) else None
        if not name:
            continue
        if name not in cache:
            path = plan_dir / name
            cache[name] = _artifact_bytes(path) if path.is_file() else None
        sizes = cache[name]
        if sizes is None:
            report.add("compression", f"artifact {name!r} named by weight {entry['name']!r} is "
                       "not beside the plan")
            continue
        prefix = f"{entry['name']}."
        stored = sum(size for key, size in sizes.items()
                     if key.startswith(prefix) and "." not in key[len(prefix):])
        elements = math.prod(entry.get("shape") or [0]) or 1
        if stored != entry.get("artifact_bytes") or \
                abs(8.0 * stored / elements - entry.get("bits_per_weight", -1)) > 1e-3:
            report.add("compression", f"weight {entry['name']!r}: {name} holds {stored} bytes "
                       f"({8.0 * stored / elements:.6f} bits per weight), the plan says "
                       f"{entry.get('artifact_bytes')} ({entry.get('bits_per_weight')})")


def verify_plan(model_path: str | Path, plan_path: str | Path) -> PlanCheck:
    """Read MODEL and PLAN and check them; UserError (exit 2) when either is unreadable."""
    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as error:
        raise UserError(f"cannot read the model {str(model_path)!r}: {error}") from None
    try:
        plan = json.loads(Path(plan_path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"cannot read the plan {str(plan_path)!r}: {error}") from None
    if not isinstance(plan, dict):
        raise UserError(f"the plan {str(plan_path)!r} is not a JSON object")
    check = check_plan(model, plan)
    report = _Report()
    _check_artifacts(plan, Path(plan_path).parent, report)
    if not report.violations:
        return check
    return PlanCheck(violations=(*check.violations, *report.violations), checked=check.checked,
                     traffic=check.traffic, arena=check.arena, notes=check.notes)
