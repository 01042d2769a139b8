"""Rewrite rules the onnxscript library lacks, written with its pattern rewriter.

`MatMul(A, B) + C -> Gemm(A, B, C)`: onnxscript's own rule checks only that A and B are 2-D;
Gemm also needs C unidirectionally broadcastable to `[M, N]` (a 3-D C would broadcast the
sum to 3-D, which Gemm cannot write), so this one also demands a constant C of rank <= 2
whose dims are 1 or match, and a float dtype.
"""

from __future__ import annotations

from onnxscript import ir
from onnxscript.rewriter import _ir_utils
from onnxscript.rewriter._basics import MatchResult
from onnxscript.rewriter._rewrite_rule import RewriteRuleClassBase, RewriteRuleSet

_GEMM_DTYPES = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE,
                          ir.DataType.BFLOAT16})


def bias_broadcasts(bias_shape: tuple[int, ...], rows: int, cols: int) -> bool:
    """Whether a tensor of `bias_shape` broadcasts one way to `[rows, cols]` (Gemm's C)."""
    if len(bias_shape) > 2:
        return False
    padded = (1,) * (2 - len(bias_shape)) + tuple(bias_shape)
    return padded[0] in (1, rows) and padded[1] in (1, cols)


class MatMulAddToGemm(RewriteRuleClassBase):
    """``Add(MatMul(a, b), c)`` (or ``Add(c, MatMul(a, b))``) -> ``Gemm(a, b, c)`` for 2-D
    a and b and a constant c that broadcasts to the product's shape."""

    def __init__(self) -> None:
        super().__init__("MatMulAddToGemm")

    def pattern(self, op, input_a, input_b, input_c):
        return op.Add(op.MatMul(input_a, input_b), input_c)

    def check(self, context, input_a, input_b, input_c, **_) -> MatchResult:
        del context
        result = MatchResult()
        if not (_ir_utils.has_rank(input_a, 2) and _ir_utils.has_rank(input_b, 2)):
            return result.fail("A and B must both be 2-D")
        if input_a.dtype not in _GEMM_DTYPES or input_c.dtype != input_a.dtype:
            return result.fail("Gemm needs one float dtype for A, B and C")
        if input_c.const_value is None:
            return result.fail("the bias must be a constant")
        a_dims, b_dims = input_a.shape.dims, input_b.shape.dims
        if not all(isinstance(d, int) for d in (a_dims[0], b_dims[1])):
            return result.fail("M and N must be static")
        if not bias_broadcasts(tuple(input_c.const_value.shape.dims), a_dims[0], b_dims[1]):
            return result.fail("the bias does not broadcast to [M, N]")
        return result

    def rewrite(self, op, input_a, input_b, input_c):
        return op.Gemm(input_a, input_b, input_c)


matmul_add_to_gemm_rule = MatMulAddToGemm().rule()

# Add is commutative: the bias may be either operand.
RULES = RewriteRuleSet([matmul_add_to_gemm_rule], commute=True)


def _channel_vector(value: ir.Value, rank: int, channels: int):
    """A constant that broadcasts along the channel axis of a `[N, C, ...]` output only, as
    a length-C numpy vector (None when it is not one)."""
    import numpy as np

    const = value.const_value
    if const is None:
        return None
    array = const.numpy()
    if array.ndim > rank:
        return None
    shape = (1,) * (rank - array.ndim) + tuple(array.shape)
    if any(dim != 1 for axis, dim in enumerate(shape) if axis != 1) \
            or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(array.reshape(-1), (channels,)).copy()


class _ConvChannelAffine(RewriteRuleClassBase):
    """``Conv(x, W, B)`` followed by a per-channel constant ``Mul`` or ``Add`` -> one Conv
    (onnxruntime's ConvMulFusion / ConvAddFusion; onnxscript fuses scalars only)."""

    op_name = ""

    def pattern(self, op, x, w, operand):
        conv = op.Conv(x, w, _allow_other_inputs=True, _outputs=["conv_out"])
        return op.Mul(conv, operand) if self.op_name == "Mul" else op.Add(conv, operand)

    def check(self, context, x, w, operand, conv_out, **_) -> MatchResult:
        del context, x
        result = MatchResult()
        conv = conv_out.producer()
        if w.const_value is None or w.is_graph_input():
            return result.fail("the weight must be a constant initializer")
        if len(conv.inputs) > 2 and conv.inputs[2] is not None \
                and conv.inputs[2].const_value is None:
            return result.fail("the bias must be constant")
        for value in conv.inputs[1:]:
            if value is not None and any(user is not conv for user, _ in value.uses()):
                return result.fail("the weight or bias is shared with another node")
        if conv_out.shape is None or conv_out.dtype != operand.dtype:
            return result.fail("the Conv output needs a known shape and the operand's dtype")
        channels = w.const_value.shape.dims[0]
        if _channel_vector(operand, len(conv_out.shape), channels) is None:
            return result.fail("the operand is not a per-channel constant")
        return result

    def rewrite(self, op, x, w, operand, conv_out, **_):
        import numpy as np

        conv = conv_out.producer()
        weights = w.const_value.numpy()
        channels = weights.shape[0]
        vector = _channel_vector(operand, len(conv_out.shape), channels).astype(weights.dtype)
        bias_value = conv.inputs[2] if len(conv.inputs) > 2 else None
        bias = bias_value.const_value.numpy() if bias_value is not None \
            else np.zeros(channels, weights.dtype)
        if self.op_name == "Mul":
            weights = weights * vector.reshape((channels,) + (1,) * (weights.ndim - 1))
            bias = bias * vector
        else:
            bias = bias + vector
        base = conv.name or conv_out.name
        return op.Conv(x, op.initializer(ir.tensor(weights), name=f"{base}_{self.op_name}_w"),
                       op.initializer(ir.tensor(bias.astype(weights.dtype)),
                                      name=f"{base}_{self.op_name}_b"),
                       **conv.attributes)


class ConvMul(_ConvChannelAffine):
    op_name = "Mul"


class ConvAdd(_ConvChannelAffine):
    op_name = "Add"


CONV_AFFINE_RULES = RewriteRuleSet([ConvMul().rule(), ConvAdd().rule()], commute=True)


class FullSlice(RewriteRuleClassBase):
    """``Slice(x, starts, ends[, axes[, steps]])`` that keeps every element in order (each
    start reaches the axis' beginning, each step is 1 and the output shape is the input's)
    -> ``Identity(x)``; onnxscript's own rule takes one axis with an explicit step only."""

    def __init__(self) -> None:
        super().__init__("FullSlice")

    def pattern(self, op, data, starts):
        return op.Slice(data, starts, _allow_other_inputs=True, _outputs=["sliced"])

    def check(self, context, data, starts, sliced, **_) -> MatchResult:
        del context
        result = MatchResult()
        node = sliced.producer()
        steps = node.inputs[4] if len(node.inputs) > 4 else None
        if starts.const_value is None:
            return result.fail("the starts must be constant")
        if steps is not None and (steps.const_value is None
                                  or any(int(v) != 1 for v in steps.const_value.numpy())):
            return result.fail("every step must be 1")
        if data.shape is None or sliced.shape is None or data.shape.is_dynamic() \
                or sliced.shape.is_dynamic() or tuple(data.shape) != tuple(sliced.shape):
            return result.fail("the output must have the input's static shape")
        axes_value = node.inputs[3] if len(node.inputs) > 3 else None
        rank = len(data.shape)
        start_list = [int(v) for v in starts.const_value.numpy().reshape(-1)]
        if axes_value is None:
            axes = list(range(len(start_list)))
        elif axes_value.const_value is None:
            return result.fail("the axes must be constant")
        else:
            axes = [int(v) % rank for v in axes_value.const_value.numpy().reshape(-1)]
        for axis, start in zip(axes, start_list, strict=True):
            if (start + data.shape[axis] if start < 0 else start) > 0:
                return result.fail("a start skips elements")
        return result

    def rewrite(self, op, data, **_):
        return op.Identity(data)


SLICE_RULES = RewriteRuleSet([FullSlice().rule()])
