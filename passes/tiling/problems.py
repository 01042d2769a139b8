"""GEMM problems of a graph: MatMul, Gemm, batched MatMul (attention) and Conv as implicit GEMM.

Every operator the tiling pass handles becomes `C[b] (M x N) = A[b] (M x K) @ B[b] (K x N)`:

- MatMul / Gemm / FusedMatMul / MatMulInteger / QLinearMatMul: M, N, K from the operand shapes.
  A weight (B of rank <= 2) shared by every batch entry folds the batch into M, as a linear
  layer runs; two batched operands (attention's Q @ K^T and P @ V) keep `batch`.
- MatMulNBits (weight-only quantized, com.microsoft): K and N from its attributes, B at `bits`.
- Conv / ConvInteger / QLinearConv: implicit GEMM with M = N*OH*OW, N = OC/groups,
  K = IC/groups*KH*KW and batch = groups (each group is its own GEMM; for groups = 1 this is
  exactly M = N*OH*OW, N = OC, K = IC*KH*KW).
- ConvTranspose: the GEMM + col2im form, M = N*IH*IW, N = OC/groups*KH*KW, K = IC/groups.

Compulsory bytes (what must cross main memory at least once) come from the real tensors,
not the im2col matrix: a convolution reads its input once however often windows overlap.

The compute dtype is the node's as the graph view stores it (the model's own, or the
deployment precision); quantized weights keep the compute dtype and are read at their stored
bytes and code bits (weight-only quantization: dequantized in the main loop).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import onnx

from mapper.costs import DTYPE_BITS, FALLBACK_CHAIN, matrix_operands
from mapper.errors import InfeasibleError, UserError
from mapper.graph import GraphView, Node
from mapper.hwmodels.schema import Hardware

__all__ = ["CONV_OPS", "DTYPE_BITS", "FALLBACK_CHAIN", "MATMUL_OPS", "GemmProblem",
           "KernelSite", "extract_problems", "resolve_dtype", "supported_dtype", "tileable"]

# Output bits when the model does not say: floats keep their width (fp8 GEMMs write bf16),
# integer GEMMs write their int32 accumulators.
_DEFAULT_OUT_BITS = {"fp64": 64, "fp32": 32, "tf32": 32, "fp16": 16, "bf16": 16, "fp8": 16,
                     "int16": 32, "int8": 32, "int4": 32, "fp4": 16}
MATMUL_OPS = ("MatMul", "FusedMatMul", "MatMulInteger", "QLinearMatMul", "MatMulNBits", "Gemm",
              "MatMulBnb4")
CONV_OPS = ("Conv", "ConvInteger", "QLinearConv", "ConvTranspose")
_INT8_OPS = ("MatMulInteger", "QLinearMatMul", "ConvInteger", "QLinearConv")
# dtypes a GPU can run without a matrix instruction (CUDA-core / SIMT GEMM).
SIMT_DTYPES = ("fp32", "fp64")


@dataclass(frozen=True)
class GemmProblem:
    """One GEMM: `batch` independent (M x K) @ (K x N) products in `dtype`.

    `a_bits`/`b_bits`/`c_bits` are storage bits per element of A, B and C (B may be narrower
    than the compute dtype under weight-only quantization); `a_bytes`/`b_bytes`/`c_bytes` are
    the compulsory main-memory bytes of the real tensors.
    """

    batch: int
    m: int
    n: int
    k: int
    dtype: str
    a_bits: int
    b_bits: int
    c_bits: int
    a_bytes: int
    b_bytes: int
    c_bytes: int

    def __post_init__(self) -> None:
        for name in ("batch", "m", "n", "k"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise UserError(f"GEMM {name} must be a positive integer, got {value!r}")
        if self.dtype not in DTYPE_BITS:
            raise UserError(f"unknown dtype {self.dtype!r}; known: {', '.join(DTYPE_BITS)}")

    @property
    def flops(self) -> int:
        """Useful FLOPs (a multiply-add counts two)."""
        return 2 * self.batch * self.m * self.n * self.k

    def to_dict(self) -> dict[str, int]:
        """The contract's `problem` object."""
        return {"batch": self.batch, "M": self.m, "N": self.n, "K": self.k}

    @classmethod
    def dense(cls, m: int, n: int, k: int, dtype: str, batch: int = 1) -> GemmProblem:
        """A plain GEMM with all operands in `dtype` (what `mapper tile` solves)."""
        if dtype not in DTYPE_BITS:
            raise UserError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPE_BITS)}")
        bits = DTYPE_BITS[dtype]
        out = _DEFAULT_OUT_BITS[dtype]
        return cls(batch=batch, m=m, n=n, k=k, dtype=dtype, a_bits=bits, b_bits=bits,
                   c_bits=out, a_bytes=_bytes(batch * m * k, bits),
                   b_bytes=_bytes(batch * k * n, bits), c_bytes=_bytes(batch * m * n, out))

    def with_dtype(self, dtype: str) -> GemmProblem:
        """The same shapes in another compute dtype (operands re-sized; narrower B kept)."""
        old, new = DTYPE_BITS[self.dtype], DTYPE_BITS[dtype]
        b_bits = self.b_bits if self.b_bits < old else new
        c_bits = _DEFAULT_OUT_BITS[dtype] if self.c_bits >= old else min(self.c_bits, new)
        return GemmProblem(
            batch=self.batch, m=self.m, n=self.n, k=self.k, dtype=dtype, a_bits=new,
            b_bits=b_bits, c_bits=c_bits,
            a_bytes=math.ceil(self.a_bytes * new / self.a_bits),
            b_bytes=math.ceil(self.b_bytes * b_bits / self.b_bits),
            c_bytes=math.ceil(self.c_bytes * c_bits / self.c_bits))


@dataclass(frozen=True)
class KernelSite:
    """A graph node that runs as a GEMM, the problem it poses and the dtype it asked for."""

    node: str
    op: str
    problem: GemmProblem
    requested_dtype: str
    notes: tuple[str, ...] = ()


def _bytes(elements: int, bits: int) -> int:
    return math.ceil(elements * bits / 8)


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def tileable(hardware: Hardware, dtype: str) -> bool:
    """Whether the hardware can run a GEMM in `dtype` at all (a peak, and a way to issue it)."""
    if not hardware.peak(dtype):
        return False
    if hardware.kind == "gpu":
        return dtype in hardware.compute.matrix_shapes or dtype in SIMT_DTYPES
    return True


def supported_dtype(hardware: Hardware, dtype: str) -> str | None:
    """The nearest dtype along FALLBACK_CHAIN the hardware can run, or None."""
    for candidate in FALLBACK_CHAIN.get(dtype, (dtype,)):
        if tileable(hardware, candidate):
            return candidate
    return None


def unsupported_dtype_error(hardware: Hardware, dtype: str) -> InfeasibleError:
    """The error `mapper tile` raises for a dtype the hardware cannot run."""
    nearest = supported_dtype(hardware, dtype)
    have = ", ".join(d for d in hardware.compute.peak_ops if tileable(hardware, d)) or "none"
    hint = (f"the nearest supported dtype is {nearest}: rerun with --dtype {nearest}, or pass "
            "--allow-fallback to use it" if nearest else "no dtype of its chain is supported")
    return InfeasibleError(
        f"{hardware.name} cannot run a {dtype} GEMM: its hardware model has no {dtype} peak"
        f"{' or matrix shape' if hardware.kind == 'gpu' else ''} (it runs GEMMs in: {have}); "
        f"{hint}")


def resolve_dtype(hardware: Hardware, problem: GemmProblem, fallback: bool
                  ) -> tuple[GemmProblem, str | None]:
    """The problem in a dtype the hardware runs, and a note when it had to fall back."""
    if tileable(hardware, problem.dtype):
        return problem, None
    nearest = supported_dtype(hardware, problem.dtype)
    if nearest is None or not fallback:
        raise unsupported_dtype_error(hardware, problem.dtype)
    note = (f"{hardware.name} has no {problem.dtype} GEMM support: tiled as {nearest}, the "
            f"nearest supported dtype")
    return problem.with_dtype(nearest), note


def _shape(view: GraphView, name: str) -> tuple[int, ...] | None:
    tensor = view.tensors.get(name)
    if tensor is None:
        # A decoded weight (fused decode chain) has no tensor of its own: its format's shape.
        stored = view.formats.get(name)
        return stored.shape if stored is not None and stored.shape else None
    if not tensor.shape or any(d <= 0 for d in tensor.shape):
        return None
    return tuple(tensor.shape)


def _compute_dtype(node: Node) -> str:
    if node.op_type in _INT8_OPS:
        return "int8"
    return node.dtype if node.dtype in DTYPE_BITS else "fp32"


def _out_bits(view: GraphView, node: Node, dtype: str) -> int:
    if node.outputs:
        produced = view.tensors[node.outputs[0]].dtype
        if produced in DTYPE_BITS:
            return DTYPE_BITS[produced]
    return _DEFAULT_OUT_BITS[dtype]


def _weight_bits(view: GraphView, weight: str | None, default: int) -> tuple[int, int | None]:
    """Bits of the codes and stored bytes of a weight as the view stores it (None: dense at
    the compute dtype, sized from its shape)."""
    stored = view.formats.get(weight) if weight is not None else None
    if stored is None or not stored.quantized:
        return default, None
    return min(stored.bits, default), stored.stored_bytes


def _matmul_dims(a: tuple[int, ...], b: tuple[int, ...], out: tuple[int, ...]
                 ) -> tuple[int, int, int, int, bool] | None:
    """(batch, M, N, K, a_broadcast) of a numpy-style matmul, folding a shared B into M."""
    m = 1 if len(a) == 1 else a[-2]
    k = a[-1]
    n = 1 if len(b) == 1 else b[-1]
    total = math.prod(out) if out else 1
    if m * n == 0 or total % (m * n):
        return None
    batch = total // (m * n)
    if len(b) <= 2:  # one weight for every batch entry: a linear layer, batch folds into M
        return 1, batch * m, n, k, False
    return batch, m, n, k, len(a) <= 2


def _is_weight(view: GraphView, name: str) -> bool:
    tensor = view.tensors.get(name)
    return name in view.formats or (tensor is not None and tensor.kind == "weight")


def _matmul_site(view: GraphView, node: Node, onnx_node: onnx.NodeProto, dtype: str
                 ) -> GemmProblem | None:
    op = node.op_type
    inputs = list(onnx_node.input)
    out = _shape(view, onnx_node.output[0])
    if out is None:
        return None
    bits = DTYPE_BITS[dtype]
    c_bits = _out_bits(view, node, dtype)
    if op in ("MatMulNBits", "MatMulBnb4"):
        attrs = _attrs(onnx_node)
        a = _shape(view, inputs[0])
        if a is None or "K" not in attrs or "N" not in attrs:
            return None
        k, n = int(attrs["K"]), int(attrs["N"])
        w_bits, packed = _weight_bits(view, inputs[1], bits)
        if packed is None:
            w_bits = int(attrs.get("bits", 4))
            packed = sum(view.tensors[name].size for name in inputs[1:4] if name in view.tensors)
        m = math.prod(a) // k
        return GemmProblem(batch=1, m=m, n=n, k=k, dtype=dtype, a_bits=bits, b_bits=w_bits,
                           c_bits=c_bits, a_bytes=_bytes(m * k, bits), b_bytes=packed,
                           c_bytes=_bytes(m * n, c_bits))
    operands = matrix_operands(op) or (0, 1)
    a_name = inputs[operands[0]]
    b_name = inputs[operands[1]]
    a, b = _shape(view, a_name), _shape(view, b_name)
    if a is None or b is None:
        return None
    if op in ("Gemm", "FusedMatMul"):
        attrs = _attrs(onnx_node)
        if attrs.get("transA"):
            a = (*a[:-2], a[-1], a[-2]) if len(a) >= 2 else a
        if attrs.get("transB"):
            b = (*b[:-2], b[-1], b[-2]) if len(b) >= 2 else b
    dims = _matmul_dims(a, b, out)
    if dims is None:
        return None
    batch, m, n, k, a_broadcast = dims
    b_bits, b_stored = _weight_bits(view, b_name if _is_weight(view, b_name) else None, bits)
    b_elems = math.prod(b)
    a_elems = math.prod(a) if a_broadcast else batch * m * k
    return GemmProblem(batch=batch, m=m, n=n, k=k, dtype=dtype, a_bits=bits, b_bits=b_bits,
                       c_bits=c_bits, a_bytes=_bytes(a_elems, bits),
                       b_bytes=b_stored if b_stored is not None else _bytes(b_elems, bits),
                       c_bytes=_bytes(batch * m * n, c_bits))


def _conv_site(view: GraphView, node: Node, onnx_node: onnx.NodeProto, dtype: str
               ) -> GemmProblem | None:
    inputs = list(onnx_node.input)
    operands = matrix_operands(node.op_type) or (0, 1)
    w_name = inputs[operands[1]]
    x, w = _shape(view, inputs[0]), _shape(view, w_name)
    y = _shape(view, onnx_node.output[0])
    if x is None or w is None or y is None or len(x) < 3 or len(w) != len(x):
        return None
    groups = int(_attrs(onnx_node).get("group", 1)) or 1
    bits = DTYPE_BITS[dtype]
    c_bits = _out_bits(view, node, dtype)
    kernel = math.prod(w[2:])
    if node.op_type == "ConvTranspose":
        # weight [IC, OC/g, *k]: each input pixel scatters OC/g*k outputs (GEMM + col2im).
        m, n, k = x[0] * math.prod(x[2:]), w[1] * kernel, x[1] // groups
    else:
        # weight [OC, IC/g, *k]: every output pixel is a dot of IC/g*k inputs.
        m, n, k = y[0] * math.prod(y[2:]), w[0] // groups, w[1] * kernel
    if min(m, n, k) < 1:
        return None
    b_bits, b_stored = _weight_bits(view, w_name if _is_weight(view, w_name) else None, bits)
    return GemmProblem(batch=groups, m=m, n=n, k=k, dtype=dtype, a_bits=bits,
                       b_bits=b_bits, c_bits=c_bits,
                       a_bytes=_bytes(math.prod(x), bits),
                       b_bytes=b_stored if b_stored is not None
                       else _bytes(math.prod(w), bits),
                       c_bytes=_bytes(math.prod(y), c_bits))


def extract_problems(model: onnx.ModelProto, view: GraphView, order: tuple[str, ...]
                     ) -> tuple[list[KernelSite], list[str]]:
    """The GEMM-shaped nodes of `order`, as kernel sites, and notes on the ones skipped."""
    by_name = {n.name: n for n in model.graph.node}
    sites: list[KernelSite] = []
    skipped: list[str] = []
    for name in order:
        node = view.nodes[name]
        if node.op_type not in MATMUL_OPS and node.op_type not in CONV_OPS:
            continue
        dtype = _compute_dtype(node)
        if dtype not in DTYPE_BITS:
            skipped.append(f"{name}: {node.op_type} in {dtype} is not a GEMM dtype")
            continue
        maker = _conv_site if node.op_type in CONV_OPS else _matmul_site
        problem = maker(view, node, by_name[name], dtype)
        if problem is None:
            skipped.append(f"{name}: {node.op_type} has shapes that are not a GEMM")
            continue
        sites.append(KernelSite(node=name, op=node.op_type, problem=problem,
                                requested_dtype=dtype))
    return sites, skipped
