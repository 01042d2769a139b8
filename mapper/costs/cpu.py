"""CPU pricing: how onnxruntime's MLAS kernels use a CPU's cores and caches.

The roofline (`roofline.op_time`) prices every operator at the dtype's peak and every byte
at main-memory bandwidth. On a CPU run by onnxruntime three things differ, and this module
prices them (the estimate pass uses it for hardware of kind `cpu` only):

- **GEMM shape**: MLAS computes a GEMM in register tiles and packs B once per call; a
  product with few rows (M), columns (N) or a short reduction (K) reaches only a part of
  the sustained rate a large square GEMM does (what `hw probe` measures as the fp32 peak).
  `gemm_efficiency` is that part, relative to the probe's 960^3 GEMM. A depthwise
  convolution is not a GEMM at all: MLAS runs it as vector work over the channels.
- **Cache residency**: an operator whose activation bytes fit in a cache level streams them
  at that level's bandwidth, not main memory's (batch-1 activations of most models fit in
  L2 or L3); levels private to a core (`scope: unit`) hold `size x units`. Weights come
  from main memory (a GEMV classifier head streams its weights at the DRAM rate).
- **Vector kernels**: non-matrix work reaches a small share of the GEMM peak, streams
  cache-resident bytes at a few bytes per clock, and a few ops are scalar loops.
- **Threads**: onnxruntime splits an operator over its intra-op threads only when it has
  enough work; a small operator runs on one core, so at most its share of the peak. A
  grouped (not depthwise) convolution is split by groups: each thread runs whole groups'
  GEMMs, so the busiest thread runs ceil(groups / threads) of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mapper.costs.roofline import MATRIX_CATEGORIES, OpTime, peak_for

if TYPE_CHECKING:
    from mapper.graph import GraphView, Node
    from mapper.hwmodels.schema import Hardware

# The probe's reference GEMM (mapper.probe.GEMM_SIZE): its rate is the stated fp32 peak.
REFERENCE_GEMM = 960
# Half-efficiency sizes of each GEMM dimension: a dimension of this size reaches half of
# the rate a long one does (register tile rows, tile columns, the packed K panel's reuse).
# Calibrated on a probed Sapphire Rapids host (benchmarks/cpu_fidelity): convolutions with
# 64+ output channels and transformer MatMuls with 128 rows run at 88-96% of the probe's rate.
HALF_M, HALF_N, HALF_K = 8.0, 4.0, 4.0
# Share of the fp32 peak a depthwise (one channel per group) convolution reaches: MLAS's
# depthwise kernel is vectorized over channels and bound by loads, not FMAs.
DEPTHWISE_EFFICIENCY = 0.35
# Share of the fp32 (GEMM) peak non-matrix work reaches: onnxruntime's vector kernels run
# a few operations per element (exp, erf and tanh are polynomials, softmax and layer norm
# take two passes) with no FMA reuse; Gelu and Softmax ran at 0.07-0.1 of it on that host.
VECTOR_EFFICIENCY = 0.10
# Bytes per clock per core that onnxruntime's elementwise, copy and pooling kernels stream
# from cache-resident tensors (far below the L1/L2 load ports: one pass, no unrolled
# prefetch; 17-18 B/clock measured for Add, Mul and Div on that host).
STREAM_BYTES_PER_CLOCK = 16.0
# Ops onnxruntime computes with a scalar loop: clock cycles per output element (LRN calls
# std::pow per element: about 60 cycles on that host).
SCALAR_CYCLES_PER_ELEMENT = {"LRN": 60.0}
# Ops that stream at a share of that rate: a Transpose gathers with strides (half of it).
STREAM_SHARE = {"Transpose": 0.5}
# Work below which onnxruntime runs an operator on one thread (its thread pool's cost
# model hands out no work smaller than some microseconds): FLOPs, or bytes moved.
PARALLEL_GRAIN_FLOPS = 2.0e6
PARALLEL_GRAIN_BYTES = 128 * 2**10
# Fork/join of onnxruntime's intra-op thread pool, paid by an operator split over more than
# one core (the probe's per-op overhead is measured on ops too small to split). About
# 13,000 clock cycles (5 us at 2.6 GHz): what 2-thread runs of the transformer and
# mobile models on the probed host needed beyond their 1-thread kernels' halves.
FORK_JOIN_CYCLES = 13_000.0


@dataclass(frozen=True)
class GemmShape:
    """A matrix op as the GEMM MLAS runs: `batch` products of M x K by K x N."""

    m: int
    n: int
    k: int
    batch: int = 1
    depthwise: bool = False
    # A convolution's kernel window (1 for a pointwise one, which MLAS runs as a plain GEMM).
    window: int = 1


def gemm_shape(view: GraphView, node: Node) -> GemmShape | None:
    """The GEMM a MatMul, Gemm or Conv runs, from the view's static shapes (None: unknown)."""
    if not node.outputs or node.outputs[0] not in view.tensors:
        return None
    out = view.tensors[node.outputs[0]].shape
    if not out or node.flops <= 0:
        return None
    if node.category == "conv" and len(node.inputs) > 1 and node.inputs[1] in view.tensors:
        weight = view.tensors[node.inputs[1]].shape
        data = view.tensors[node.inputs[0]].shape if node.inputs[0] in view.tensors else ()
        if len(weight) < 3 or len(out) < 3 or not data:
            return None
        groups = max(1, data[1] // max(1, weight[1]))
        rows = out[0] * math.prod(out[2:])
        return GemmShape(m=rows, n=max(1, out[1] // groups), k=math.prod(weight[1:]),
                         batch=groups, depthwise=groups > 1 and weight[1] == 1,
                         window=math.prod(weight[2:]))
    if node.category != "matmul":
        return None
    n = out[-1]
    k = max(1, round(node.flops / (2 * max(1, math.prod(out)))))
    b_operand = node.inputs[1] if len(node.inputs) > 1 else ""
    b_shape = view.tensors[b_operand].shape if b_operand in view.tensors else ()
    if len(b_shape) <= 2 or len(out) <= 2:
        # A 2-D B (a weight): MLAS folds every leading axis of A into M.
        return GemmShape(m=max(1, math.prod(out) // max(1, n)), n=n, k=k)
    return GemmShape(m=out[-2], n=n, k=k, batch=math.prod(out[:-2]))


def _dim_efficiency(size: int, half: float) -> float:
    return size / (size + half)


def gemm_efficiency(shape: GemmShape) -> float:
    """Share of the probe's sustained GEMM rate this GEMM reaches (at most 1)."""
    if shape.depthwise:
        return DEPTHWISE_EFFICIENCY
    reference = (_dim_efficiency(REFERENCE_GEMM, HALF_M) * _dim_efficiency(REFERENCE_GEMM, HALF_N)
                 * _dim_efficiency(REFERENCE_GEMM, HALF_K))
    found = (_dim_efficiency(shape.m, HALF_M) * _dim_efficiency(shape.n, HALF_N)
             * _dim_efficiency(shape.k, HALF_K))
    return min(1.0, found / reference)


def _group_imbalance(shape: GemmShape | None, cores: float) -> float:
    """How much longer than an even split over `cores` threads a grouped convolution takes.
    MLAS's MlasConv hands each of min(threads, groups) threads whole groups (one
    single-threaded GEMM each) when a group's GEMM reads the input directly (pointwise) or
    in segments (no more filters than output pixels); 3 groups on 2 threads take 2 groups'
    time, not 1.5. Otherwise it runs the groups one by one, each GEMM threaded."""
    if (shape is None or shape.depthwise or shape.batch <= 1 or math.floor(cores) < 2
            or (shape.window > 1 and shape.n > shape.m)):
        return 1.0
    used = min(math.floor(cores), shape.batch)
    return math.ceil(shape.batch / used) * cores / shape.batch


def resident_bandwidth(hardware: Hardware, working_set: int, cores: float) -> float:
    """Bandwidth of the smallest memory level that holds `working_set` bytes on `cores`
    cores (a per-core level holds and streams its figures times the cores; a shared level
    gives those cores their share of its bandwidth), else main memory's."""
    levels = list(hardware.memory.values())
    share = cores / hardware.compute.units
    for level in levels[:-1]:
        if level.scope == "unit":
            capacity, bandwidth = level.size * cores, level.bandwidth * cores
        else:
            capacity, bandwidth = level.size, level.bandwidth * share
        if working_set <= capacity:
            return bandwidth
    return levels[-1].bandwidth


def cpu_op_time(view: GraphView, node: Node, hardware: Hardware, dequant: float = 0.0
                ) -> OpTime:
    """`node` priced as onnxruntime runs it on a CPU (module docstring)."""
    if node.category in ("view", "decode"):
        return OpTime(node.name, node.op_type, node.dtype, 0, 0, 0.0, "none")
    matrix = node.category in MATRIX_CATEGORIES
    peak, used = peak_for(hardware, node.dtype, matrix)
    vector_peak, _ = peak_for(hardware, node.dtype, False)
    units = hardware.compute.units
    moved = node.bytes_read + node.bytes_written
    # A small operator runs on one core: its share of the all-core rates.
    cores = max(1.0, min(units, max(node.flops / PARALLEL_GRAIN_FLOPS,
                                    moved / PARALLEL_GRAIN_BYTES)))
    share = cores / units
    shape = gemm_shape(view, node) if matrix else None
    efficiency = (gemm_efficiency(shape) if shape is not None else 1.0) if matrix \
        else VECTOR_EFFICIENCY
    dequant_s = dequant / (vector_peak * VECTOR_EFFICIENCY * share)
    compute_s = node.flops / (peak * efficiency * share) * _group_imbalance(shape, cores) \
        + dequant_s
    if node.op_type in SCALAR_CYCLES_PER_ELEMENT and node.outputs:
        elements = math.prod(view.tensors[node.outputs[0]].shape or (1,))
        compute_s = (elements * SCALAR_CYCLES_PER_ELEMENT[node.op_type]
                     / (hardware.compute.clock_hz * cores))
    stream = (STREAM_BYTES_PER_CLOCK * STREAM_SHARE.get(node.op_type, 1.0)
              * hardware.compute.clock_hz * cores)
    # Weights come from main memory on every run (a model's weights outlive the caches
    # between runs); activations, just written by the previous op, from cache.
    weights = min(moved, sum(view.tensors[t].size for t in dict.fromkeys(node.inputs)
                             if t in view.tensors and view.tensors[t].kind == "weight"))
    activations = moved - weights
    memory_s = (weights / list(hardware.memory.values())[-1].bandwidth
                + activations / min(stream, resident_bandwidth(hardware, activations, cores)))
    fork_join_s = FORK_JOIN_CYCLES / hardware.compute.clock_hz if cores > 1 else 0.0
    return OpTime(node.name, node.op_type, used, int(node.flops), moved,
                  max(compute_s, memory_s) + hardware.compute.op_overhead_s + fork_join_s,
                  "compute" if compute_s >= memory_s else "memory", dequant_s)
