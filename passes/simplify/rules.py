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
