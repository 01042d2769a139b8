"""Roofline pricing: peaks per dtype, one operator's time, and the cost of decoding weights.

An operator reads its inputs and writes its outputs once and runs at its dtype's peak:
`time = max(compute, memory) + the hardware's per-op overhead`, where compute is FLOPs at
the matrix-unit peak of its dtype (matrix ops) or the vector peak (everything else), plus
the vector work of decoding the packed weights it reads, and memory is its bytes at
main-memory bandwidth, or split between main memory and the managed on-chip level where a
memory plan says how many of them cross the chip boundary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mapper.costs.dtypes import FALLBACK_CHAIN, VECTOR_DTYPES
from mapper.formats import INTEGER_OPS

if TYPE_CHECKING:
    from mapper.formats import WeightFormat
    from mapper.graph import Node
    from mapper.hwmodels.schema import Hardware

MATRIX_CATEGORIES = ("matmul", "conv", "recurrent")
# Input indices of the A (activation) and B (weight) operands of each matrix op.
_MATRIX_OPERANDS = {
    "MatMul": (0, 1), "Gemm": (0, 1), "FusedMatMul": (0, 1), "MatMulInteger": (0, 1),
    "QLinearMatMul": (0, 3), "MatMulNBits": (0, 1), "MatMulBnb4": (0, 1), "Conv": (0, 1),
    "ConvInteger": (0, 1), "QLinearConv": (0, 3), "ConvTranspose": (0, 1), "FusedConv": (0, 1),
}
# Vector ops per weight to decode it: a code to float conversion (or a table lookup) and a
# multiply by its scale; zero points fold into the conversion's offset.
DEQUANT_OPS_PER_WEIGHT = {"int": 2.0, "nf": 2.0, "fp4": 2.0, "lut": 2.0}
# Rows of A a fused kernel serves with one decoded tile of B (a GEMM's M tile): a GEMV
# decodes every weight once, a large GEMM once per M tile.
DEQUANT_REUSE_ROWS = 128


def matrix_operands(op_type: str) -> tuple[int, int] | None:
    """(A index, B index) of a matrix op's inputs, or None for other ops."""
    return _MATRIX_OPERANDS.get(op_type)


def peak_for(hardware: Hardware, dtype: str, matrix: bool) -> tuple[float, str]:
    """Peak ops/s for an op of `dtype`, and the dtype that peak belongs to (after fallback)."""
    chain = FALLBACK_CHAIN.get(dtype, ("fp32", "bf16", "fp16", "int8"))
    if not matrix:
        # Vector units run element-wise work at the fp32 rate on GPUs; NPUs/TPUs without fp32
        # fall back along the same chain.
        chain = tuple(d for d in dict.fromkeys(("fp32", *chain)) if d in VECTOR_DTYPES)
    for candidate in chain:
        peak = hardware.peak(candidate)
        if peak:
            # Matrix engines are what a power limit throttles under sustained load.
            return peak * (hardware.sustained_share if matrix else 1.0), candidate
    best = max(hardware.compute.peak_ops.items(), key=lambda item: item[1])
    return best[1], best[0]


def dequant_ops(weight: WeightFormat, rows: int) -> float:
    """Vector ops to decode `weight` for a product with `rows` rows of activations."""
    per_weight = DEQUANT_OPS_PER_WEIGHT.get(weight.scheme, 0.0)
    if not per_weight or weight.container in INTEGER_OPS:
        # An integer op (MatMulInteger, QLinearConv, ...) multiplies the codes as they are.
        return 0.0
    kept = weight.elements * (1.0 - weight.sparsity)
    return kept * per_weight * max(1, math.ceil(rows / DEQUANT_REUSE_ROWS))


@dataclass(frozen=True)
class OpTime:
    """One operator priced: what bounds it and its time (the estimate's per-op row)."""

    node: str
    op: str
    dtype: str
    flops: int
    bytes: int
    time_s: float
    bound: str
    dequant_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The plan.json `estimate.ops` row."""
        row: dict[str, Any] = {"node": self.node, "op": self.op, "dtype": self.dtype,
                               "flops": self.flops, "bytes": self.bytes, "time_s": self.time_s,
                               "bound": self.bound}
        if self.dequant_s:
            row["dequant_s"] = self.dequant_s
        return row


def op_time(node: Node, hardware: Hardware, bandwidth: float, offchip: int | None = None,
            onchip_bandwidth: float | None = None, dequant: float = 0.0) -> OpTime:
    """The roofline time of `node` (its bytes and dtype as the graph view stores them). With
    a memory plan only `offchip` of its bytes go at main-memory `bandwidth`, the rest at the
    managed level's `onchip_bandwidth`; `dequant` vector ops decode its packed weights."""
    if node.category in ("view", "decode"):
        # Views reinterpret a buffer; decode nodes are fused into the op that reads them.
        return OpTime(node.name, node.op_type, node.dtype, 0, 0, 0.0, "none")
    matrix = node.category in MATRIX_CATEGORIES
    peak, used = peak_for(hardware, node.dtype, matrix)
    vector_peak, _ = peak_for(hardware, node.dtype, False)
    moved = node.bytes_read + node.bytes_written
    dequant_s = dequant / vector_peak
    compute_s = node.flops / peak + dequant_s
    if offchip is None or not onchip_bandwidth:
        memory_s = moved / bandwidth
    else:
        memory_s = offchip / bandwidth + max(0, moved - offchip) / onchip_bandwidth
    return OpTime(node.name, node.op_type, used, int(node.flops), moved,
                  max(compute_s, memory_s) + hardware.compute.op_overhead_s,
                  "compute" if compute_s >= memory_s else "memory", dequant_s)
