"""Per-operator work: FLOPs and an op category, from static shapes and attributes.

FLOPs count a multiply-add as two. Ops that only reinterpret a buffer (Reshape and kin) are
"view" ops: no FLOPs and, in the roofline, no bytes moved either.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import onnx
from onnx import NodeProto

Shape = tuple[int, ...]
ShapeOf = Callable[[str], Shape | None]

VIEW_OPS = {"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Dropout"}
DATA_MOVEMENT_OPS = {
    "Transpose", "Concat", "Split", "Slice", "Gather", "GatherElements", "GatherND", "Scatter",
    "ScatterElements", "ScatterND", "Expand", "Tile", "Pad", "Cast", "CastLike", "Shape", "Size",
    "Constant", "ConstantOfShape", "Range", "Where", "DepthToSpace", "SpaceToDepth", "Resize",
    "Upsample", "NonZero", "Compress", "OneHot", "Trilu", "CumSum", "ReverseSequence",
    "SplitToSequence", "SequenceAt", "SequenceConstruct", "ConcatFromSequence", "EyeLike",
}
NORMALIZATION_FLOPS_PER_ELEMENT = {
    "BatchNormalization": 2, "InstanceNormalization": 7, "LayerNormalization": 8,
    "GroupNormalization": 8, "SimplifiedLayerNormalization": 6, "LpNormalization": 4,
    "MeanVarianceNormalization": 7, "LRN": 6, "SkipLayerNormalization": 9,
}
REDUCTION_OPS = {
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin", "TopK",
}
SOFTMAX_OPS = {"Softmax": 5, "LogSoftmax": 6, "Hardmax": 2}
POOLING_OPS = {"MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool",
               "GlobalLpPool", "MaxRoiPool", "RoiAlign"}
# Transcendental activations cost several FLOP-equivalents on every vector unit.
ELEMENTWISE_WEIGHT = {"Gelu": 8, "Erf": 8, "Tanh": 6, "Sigmoid": 4, "Exp": 4, "Log": 4,
                      "Softplus": 6, "Mish": 10, "HardSwish": 4, "Swish": 5, "Pow": 4,
                      "Sqrt": 2, "Reciprocal": 2, "Div": 1, "Elu": 4, "Selu": 4, "Celu": 4,
                      "FastGelu": 8, "BiasGelu": 9, "QuickGelu": 5}


@dataclass(frozen=True)
class OpWork:
    """The work of one operator: FLOPs and which roofline family it belongs to."""

    flops: float
    category: str


def numel(shape: Shape | None) -> int:
    """Number of elements of a static shape (0 if unknown)."""
    return 0 if shape is None else math.prod(shape)


def attributes(node: NodeProto) -> dict[str, object]:
    """A node's attributes as Python values."""
    return {attr.name: onnx.helper.get_attribute_value(attr) for attr in node.attribute}


def _matmul(node: NodeProto, shape_of: ShapeOf) -> float:
    a, b = shape_of(node.input[0]), shape_of(node.input[1])
    out = shape_of(node.output[0])
    if a is None or b is None or out is None:
        return 0.0
    k = a[-1] if a else 1
    return 2.0 * numel(out) * k


def _gemm(node: NodeProto, shape_of: ShapeOf) -> float:
    a, out = shape_of(node.input[0]), shape_of(node.output[0])
    if a is None or out is None or len(a) != 2:
        return 0.0
    k = a[0] if attributes(node).get("transA", 0) else a[1]
    bias = numel(out) if len(node.input) > 2 and node.input[2] else 0
    return 2.0 * numel(out) * k + bias


def _conv(node: NodeProto, shape_of: ShapeOf) -> float:
    weight, out = shape_of(node.input[1]), shape_of(node.output[0])
    if weight is None or out is None:
        return 0.0
    # weight: [OC, IC/group, *kernel]; every output element takes IC/group * kernel MACs.
    macs_per_output = numel(weight[1:])
    bias = numel(out) if len(node.input) > 2 and node.input[2] else 0
    return 2.0 * numel(out) * macs_per_output + bias


def _conv_transpose(node: NodeProto, shape_of: ShapeOf) -> float:
    data, weight = shape_of(node.input[0]), shape_of(node.input[1])
    if data is None or weight is None:
        return 0.0
    # weight: [IC, OC/group, *kernel]; every input element scatters into OC/group * kernel.
    return 2.0 * numel(data) * numel(weight[1:])


def _pool(node: NodeProto, shape_of: ShapeOf) -> float:
    if node.op_type.startswith("Global"):
        return float(numel(shape_of(node.input[0])))
    kernel = attributes(node).get("kernel_shape") or [1]
    return float(numel(shape_of(node.output[0])) * math.prod(kernel))  # type: ignore[arg-type]


def op_work(node: NodeProto, shape_of: ShapeOf,
            subgraph_flops: Mapping[str, float] | None = None) -> OpWork:
    """FLOPs and category of one (non-control-flow) node; control flow takes `subgraph_flops`."""
    op = node.op_type
    out_elems = numel(shape_of(node.output[0])) if node.output and node.output[0] else 0
    if op in ("MatMul", "MatMulInteger", "QLinearMatMul", "MatMulNBits", "FusedMatMul"):
        return OpWork(_matmul(node, shape_of), "matmul")
    if op == "Gemm":
        return OpWork(_gemm(node, shape_of), "matmul")
    if op in ("Conv", "ConvInteger", "QLinearConv", "FusedConv"):
        return OpWork(_conv(node, shape_of), "conv")
    if op == "ConvTranspose":
        return OpWork(_conv_transpose(node, shape_of), "conv")
    if op in ("If", "Loop", "Scan"):
        return OpWork(float((subgraph_flops or {}).get(node.name, 0.0)), "control_flow")
    if op in VIEW_OPS:
        return OpWork(0.0, "view")
    if op in DATA_MOVEMENT_OPS:
        return OpWork(0.0, "data_movement")
    if op in NORMALIZATION_FLOPS_PER_ELEMENT:
        return OpWork(float(NORMALIZATION_FLOPS_PER_ELEMENT[op] * out_elems), "normalization")
    if op in SOFTMAX_OPS:
        return OpWork(float(SOFTMAX_OPS[op] * out_elems), "reduction")
    if op in REDUCTION_OPS:
        return OpWork(float(numel(shape_of(node.input[0]))), "reduction")
    if op in POOLING_OPS:
        return OpWork(_pool(node, shape_of), "pooling")
    if op in ("LSTM", "GRU", "RNN"):
        return OpWork(_recurrent(node, shape_of), "recurrent")
    weight = ELEMENTWISE_WEIGHT.get(op, 1)
    return OpWork(float(weight * out_elems), "elementwise")


def _recurrent(node: NodeProto, shape_of: ShapeOf) -> float:
    x, w, r = shape_of(node.input[0]), shape_of(node.input[1]), shape_of(node.input[2])
    if x is None or w is None or r is None:
        return 0.0
    seq, batch = x[0], x[1]
    directions, gates_hidden, input_size = w
    hidden = r[-1]
    return 2.0 * seq * batch * directions * gates_hidden * (input_size + hidden)
