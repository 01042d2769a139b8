"""Estimate pass: per-operator roofline time on the chosen hardware and the model's latency.

Each operator reads its inputs from and writes its outputs to main memory and runs at its
dtype's peak: time = max(FLOPs / peak, bytes / bandwidth) + the hardware's per-op overhead.
Matrix ops (MatMul, Gemm, Conv) use the matrix-unit peak of their dtype; the rest use the
vector (fp32) peak. Kernel times from the tiling pass replace the roofline's for the GEMMs
they cover. Where the memory pass ran, each other operator's bytes are split by its plan: the
step's off-chip bytes at main-memory bandwidth, the rest at the managed level's bandwidth
(so a bigger scratchpad shows up as lower latency), and `offchip_bytes` is the plan's total.
Operators run one after another.
When the moe pass placed experts across devices, its per-forward all-to-all time
(`plan.moe.metrics.alltoall_s`: token transfers between consecutive MoE layers) is added
to `latency_s` and reported as `moe_alltoall_s`; the experts' compute is already in the
per-op rows, so it is not added again.
"""

from __future__ import annotations

from typing import Any

from mapper.graph import GraphView, Node
from mapper.hwmodels.schema import Hardware
from mapper.pipeline import Pass, PassContext, PassResult

# When the hardware lacks a dtype, the nearest one a deployment would use instead.
_FALLBACKS = {
    "fp64": ("fp64", "fp32", "tf32", "bf16", "fp16", "int16", "int8"),
    "fp32": ("fp32", "tf32", "bf16", "fp16", "int16", "int8"),
    "tf32": ("tf32", "fp32", "bf16", "fp16", "int16", "int8"),
    "fp16": ("fp16", "bf16", "fp32", "int16", "int8"),
    "bf16": ("bf16", "fp16", "fp32", "int16", "int8"),
    "fp8": ("fp8", "int8", "fp16", "bf16", "int16"),
    "int16": ("int16", "fp16", "bf16", "int8", "fp32"),
    "int8": ("int8", "fp8", "int16", "fp16", "bf16", "fp32"),
    "int4": ("int4", "int8", "fp8", "int16", "fp16"),
}
_MATRIX_CATEGORIES = ("matmul", "conv", "recurrent")
_VECTOR_DTYPES = ("fp32", "fp16", "bf16", "int16", "int8")


def peak_for(hardware: Hardware, dtype: str, matrix: bool) -> tuple[float, str]:
    """Peak ops/s for an op of `dtype`, and the dtype that peak belongs to (after fallback)."""
    chain = _FALLBACKS.get(dtype, ("fp32", "bf16", "fp16", "int8"))
    if not matrix:
        # Vector units run element-wise work at the fp32 rate on GPUs; NPUs/TPUs without fp32
        # fall back along the same chain.
        chain = tuple(d for d in ("fp32", *chain) if d in _VECTOR_DTYPES)
    for candidate in chain:
        peak = hardware.peak(candidate)  # type: ignore[arg-type]
        if peak:
            return peak, candidate
    best = max(hardware.compute.peak_ops.items(), key=lambda item: item[1])
    return best[1], best[0]


def op_time(node: Node, hardware: Hardware, precision: str, bandwidth: float,
            offchip: int | None = None, onchip_bandwidth: float | None = None
            ) -> dict[str, Any]:
    """One row of the per-op table: the roofline time of `node` and what bounds it. With a
    memory plan, only `offchip` of its bytes go at main-memory `bandwidth`; the rest are served
    by the managed on-chip level at `onchip_bandwidth`."""
    if node.category == "view":
        return {"node": node.name, "op": node.op_type, "dtype": node.dtype, "flops": 0,
                "bytes": 0, "time_s": 0.0, "bound": "none"}
    matrix = node.category in _MATRIX_CATEGORIES
    dtype = precision if (precision != "model" and matrix) else node.dtype
    peak, used = peak_for(hardware, dtype, matrix)
    moved = node.bytes_read + node.bytes_written
    compute_s = node.flops / peak
    if offchip is None or not onchip_bandwidth:
        memory_s = moved / bandwidth
    else:
        memory_s = offchip / bandwidth + max(0, moved - offchip) / onchip_bandwidth
    return {"node": node.name, "op": node.op_type, "dtype": used, "flops": int(node.flops),
            "bytes": moved, "time_s": max(compute_s, memory_s) + hardware.compute.op_overhead_s,
            "bound": "compute" if compute_s >= memory_s else "memory"}


def peak_device_bytes(view: GraphView, order: tuple[str, ...],
                      arena: dict[str, Any] | None = None) -> int:
    """Weights + inputs + the activation arena (the arena pass's size where it ran, else the
    most activation bytes live at once in `order`)."""
    if arena is not None:
        return view.weight_bytes() + view.input_bytes() + int(arena["size"])
    live = view.live_activation_bytes(order)
    return view.weight_bytes() + view.input_bytes() + (max(live) if live else 0)


def _step_offchip(memory: dict[str, Any] | None, steps: int) -> list[int] | None:
    """Off-chip bytes per step from the memory pass, when it ran on this very order."""
    per_step = (memory or {}).get("step_offchip")
    return list(per_step) if per_step is not None and len(per_step) == steps else None


class EstimatePass(Pass):
    """Roofline latency of every operator and of the model, into `plan.estimate`."""

    name = "estimate"
    description = "per-op roofline time on the hardware and the model latency estimate"
    writes = ("estimate",)

    def run(self, context: PassContext) -> PassResult:
        """Price every node in schedule order; prefer kernel times and traffic from passes."""
        hardware = context.hardware
        _, main = hardware.main_memory
        precision = context.options.estimate.precision
        kernel_times = {k["node"]: k["est_time_s"] for k in context.plan.get("kernels") or []}
        memory = context.plan.get("memory")
        step_offchip = _step_offchip(memory, len(context.order))
        managed = hardware.managed_level
        onchip_bandwidth = managed[1].bandwidth if managed and step_offchip else None
        rows = []
        for step, name in enumerate(context.order):
            row = op_time(context.view.nodes[name], hardware, precision, main.bandwidth,
                          step_offchip[step] if step_offchip else None, onchip_bandwidth)
            if name in kernel_times:
                row["time_s"] = kernel_times[name] + hardware.compute.op_overhead_s
                row["source"] = "tiling"
            rows.append(row)
        offchip = sum(row["bytes"] for row in rows)
        if memory and "traffic" in memory:
            offchip = memory["traffic"]["total"]
        # Only matrix ops have a dtype-specific peak worth a note; vector work runs at the
        # vector rate whatever its dtype.
        substituted = sorted({(node.dtype, row["dtype"]) for row in rows
                              for node in (context.view.nodes[row["node"]],)
                              if node.category in _MATRIX_CATEGORIES and precision == "model"
                              and row["dtype"] != node.dtype})
        notes = tuple(f"{hardware.name} has no {src} matrix peak: {src} matrix ops priced at "
                      f"its {dst} peak" for src, dst in substituted)
        moe = context.plan.get("moe")
        alltoall = float(moe["metrics"]["alltoall_s"]) if moe else 0.0
        estimate = {
            "latency_s": sum(row["time_s"] for row in rows) + alltoall,
            "moe_alltoall_s": alltoall,
            "offchip_bytes": int(offchip),
            "peak_device_bytes": peak_device_bytes(context.view, context.order,
                                                   context.plan.get("arena")),
            "precision": precision,
            "ops": rows,
        }
        return PassResult(sections={"estimate": estimate}, notes=notes)
