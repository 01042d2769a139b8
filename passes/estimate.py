"""Estimate pass: every operator priced by the core cost model, and the model's latency.

Each operator is priced by `mapper.costs.op_time` on the bytes the graph view stores
(float tensors at the deployment precision, quantized weights at their packed bytes, plus
the work of decoding them). Kernel times from the tiling pass replace the roofline's for the
GEMMs they cover. Where the memory pass planned this very order, each other operator's bytes
are split by its plan: the step's off-chip bytes at main-memory bandwidth, the rest at the
managed level's bandwidth (so a bigger scratchpad shows up as lower latency), and
`offchip_bytes` is the plan's total. Operators run one after another. When the moe pass
placed experts across devices, its per-forward all-to-all time is added to `latency_s` and
reported as `moe_alltoall_s`; the experts' compute is already in the per-op rows. The
hardware model's `run_overhead` (a probed host's session.run cost) is paid once per run and
reported as `run_overhead_s`: for a model of a few tiny ops it is most of the latency.

On CPU hardware (kind `cpu`, run by onnxruntime's CPU provider) the estimate prices the graph
onnxruntime runs: nodes its optimizer fuses into one kernel (`mapper.costs.fusion`: Conv,
Gemm and MatMul with a following activation, bias Add or scale; a Conv with its residual
Add; Add + LayerNormalization; bias Add + Gelu; a Transpose folded into a MatMul) pay one
per-op overhead, and the tensors passed inside a group make no round trip through memory.
The group's time is on its anchor's row (`fused`: the members), each other member's row has
time 0 and `fused_into`; members onnxruntime folds into the anchor's weights at load
(BatchNormalization, constant Mul/Add) add no time at all. Each operator is priced as MLAS
runs it (`mapper.costs.cpu`: the share of the probed GEMM rate a GEMM of its shape reaches,
vector work at a share of it, activations at the in-cache streaming rate and weights from
main memory, one core for small operators and a thread-pool fork/join for split ones)
unless a memory plan splits its bytes. Those constants are calibrated on one probed host
(benchmarks/cpu_fidelity).
GPU, TPU, NPU and accelerator estimates assume no fusion: every node is its own kernel
with its own launch and its own memory traffic.

`fits`: the weights plus peak activations against the memory that holds them: main memory,
or level by level where the hardware model says a level holds the weights (an MCU's flash)
or the activations (its SRAM); `memory_fit` has the bytes on both sides of each.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from onnx import ModelProto

from mapper.costs import MATRIX_CATEGORIES, dequant_ops, op_time
from mapper.costs.cpu import cpu_op_time
from mapper.costs.fusion import FusionGroup, cpu_fusion_groups
from mapper.costs.work import attributes
from mapper.graph import GraphView, Node
from mapper.hwmodels.schema import Hardware
from mapper.pipeline import Pass, PassContext, PassResult


def peak_device_bytes(view: GraphView, order: tuple[str, ...], arena_bytes: int | None = None
                      ) -> int:
    """Weights + inputs + the activation arena (the arena pass's size where it ran, else the
    most activation bytes live at once in `order`)."""
    if arena_bytes is not None:
        return view.weight_bytes() + view.input_bytes() + int(arena_bytes)
    live = view.live_activation_bytes(order)
    return view.weight_bytes() + view.input_bytes() + (max(live) if live else 0)


def fit_by_level(hardware: Hardware, weight_bytes: int, activation_bytes: int
                 ) -> list[dict[str, Any]]:
    """Whether the model fits, level by level: the weights and the activations (inputs plus
    the arena or peak live activations) each against the level the hardware model says
    holds them (main memory unless a level claims them, e.g. an MCU's flash)."""
    holders = hardware.holders()
    need = {"weights": weight_bytes, "activations": activation_bytes}
    rows = []
    for level_name in dict.fromkeys(holders.values()):
        holds = [what for what in ("weights", "activations") if holders[what] == level_name]
        needed = sum(need[what] for what in holds)
        capacity = hardware.memory[level_name].size
        rows.append({"memory": level_name, "holds": holds, "bytes": int(needed),
                     "capacity": int(capacity), "fits": needed <= capacity})
    return rows


def _rows(view: GraphView, name: str) -> int:
    """Rows of activations a matrix op multiplies its weights with (M of its GEMM)."""
    node = view.nodes[name]
    if not node.outputs or not view.tensors[node.outputs[0]].shape:
        return 1
    shape = view.tensors[node.outputs[0]].shape
    last = shape[-1] if shape else 1
    total = 1
    for dim in shape:
        total *= dim
    return max(1, total // max(last, 1))


def transpose_perms(model: ModelProto) -> dict[str, tuple[int, ...]]:
    """Each Transpose node's perm (the fusion rules fold a last-two-axes swap into MatMul)."""
    return {node.name: tuple(attributes(node)["perm"]) for node in model.graph.node
            if node.op_type == "Transpose" and "perm" in attributes(node)}


def _unfused(view: GraphView, node: Node, group: FusionGroup) -> Node:
    """`node` without the bytes of the tensors its fused group keeps out of memory."""
    read = sum(view.tensors[t].size for t in node.inputs if t in group.internal)
    written = sum(view.tensors[t].size for t in node.outputs if t in group.internal)
    return dataclasses.replace(node, bytes_read=max(0, node.bytes_read - read),
                               bytes_written=max(0, node.bytes_written - written))


def merge_groups(rows: list[dict[str, Any]], groups: dict[str, FusionGroup]) -> None:
    """Move each fused member's time onto its group's anchor row (in place)."""
    by_node = {row["node"]: row for row in rows}
    for group in {id(g): g for g in groups.values()}.values():
        anchor = by_node[group.anchor]
        for member in group.members[1:]:
            row = by_node[member]
            anchor["time_s"] += row["time_s"]
            row["time_s"] = 0.0
            row["bound"] = "fused"
            row["fused_into"] = group.anchor
        anchor["fused"] = list(group.members)


class EstimatePass(Pass):
    """Roofline latency of every operator and of the model, into `plan.estimate`."""

    name = "estimate"
    description = "per-op roofline time on the hardware and the model latency estimate"
    writes = ("estimate",)

    def run(self, context: PassContext) -> PassResult:
        """Price every node in schedule order; prefer kernel times and traffic from passes."""
        hardware, view, facts = context.hardware, context.view, context.facts
        _, main = hardware.main_memory
        kernel_times = facts.kernels.seconds if facts.kernels else {}
        step_offchip = facts.traffic.for_order(context.order) if facts.traffic else None
        managed = hardware.managed_level
        onchip_bandwidth = managed[1].bandwidth if managed and step_offchip else None
        # onnxruntime's CPU fusions (module docstring); other kinds run every node alone.
        groups = (cpu_fusion_groups(view, context.order, transpose_perms(context.model))
                  if hardware.kind == "cpu" else {})
        rows: list[dict[str, Any]] = []
        for step, name in enumerate(context.order):
            node = view.nodes[name]
            group = groups.get(name)
            if group is not None:
                node = _unfused(view, node, group)
            dequant = sum(dequant_ops(view.formats[w], _rows(view, name))
                          for w in node.weights if view.formats[w].quantized)
            if hardware.kind == "cpu" and step_offchip is None:
                # MLAS's GEMM efficiency, cache-resident bandwidth, threads (costs.cpu).
                priced = cpu_op_time(view, node, hardware, dequant)
            else:
                priced = op_time(node, hardware, main.bandwidth,
                                 step_offchip[step] if step_offchip else None,
                                 onchip_bandwidth, dequant)
            row = priced.to_dict()
            if name in kernel_times:
                row["time_s"] = kernel_times[name] + hardware.compute.op_overhead_s
                row["source"] = "tiling"
            if group is not None and name in group.folded:
                # Folded into the anchor's weights when the session is created.
                row["time_s"] = 0.0
            elif group is not None and name != group.anchor:
                # A fused member runs inside its anchor's kernel: no launch of its own.
                row["time_s"] = max(0.0, row["time_s"] - hardware.compute.op_overhead_s)
            rows.append(row)
        merge_groups(rows, groups)
        offchip = facts.traffic.total if facts.traffic else sum(row["bytes"] for row in rows)
        # Only matrix ops have a dtype-specific peak worth a note; vector work runs at the
        # vector rate whatever its dtype.
        substituted = sorted({(view.nodes[row["node"]].dtype, row["dtype"]) for row in rows
                              if view.nodes[row["node"]].category in MATRIX_CATEGORIES
                              and row["dtype"] != view.nodes[row["node"]].dtype})
        notes = [f"{hardware.name} has no {src} matrix peak: {src} matrix ops priced at its "
                 f"{dst} peak" for src, dst in substituted]
        alltoall = facts.alltoall.seconds if facts.alltoall else 0.0
        arena_bytes = facts.arena.bytes if facts.arena else None
        peak = peak_device_bytes(view, context.order, arena_bytes)
        memory_fit = fit_by_level(hardware, view.weight_bytes(), peak - view.weight_bytes())
        fits = all(row["fits"] for row in memory_fit)
        device_memory = sum(row["capacity"] for row in memory_fit)
        for row in reversed(memory_fit):
            if not row["fits"]:
                notes.insert(0, f"does not fit: {' + '.join(row['holds'])} need {row['bytes']} "
                             f"B, the {row['memory']} of {hardware.name} holds "
                             f"{row['capacity']} B")
        estimate = {
            "latency_s": (sum(row["time_s"] for row in rows) + alltoall
                          + hardware.compute.run_overhead_s),
            "moe_alltoall_s": alltoall,
            "run_overhead_s": hardware.compute.run_overhead_s,
            "offchip_bytes": int(offchip),
            "peak_device_bytes": peak,
            "device_memory_bytes": device_memory,
            "fits": fits,
            "memory_fit": memory_fit,
            "weight_bytes": view.weight_bytes(),
            "precision": view.precision,
            "ops": rows,
        }
        return PassResult(sections={"estimate": estimate}, notes=tuple(notes))
