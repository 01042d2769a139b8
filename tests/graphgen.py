"""Random valid ONNX graphs for the property tests (hypothesis), and in-process compiles.

`graphs(families=...)` is a hypothesis strategy: a DAG of 1 to `max_ops` operators drawn from
the given op families, over small float32 tensors (every dim 1-8, at most `MAX_ELEMENTS`
elements), opset 17. Every operator's output shape is computed here from the ONNX operator
definition and checked against ONNX's strict shape inference before the model is returned,
so a generated model is always valid: a mismatch is a bug of this generator and raises
`GeneratorError` rather than handing the compiler an invalid graph. Inputs are made on
demand (an operator that needs a rank-4 tensor and finds none in the pool reads a new graph
input), so every input is read; every tensor no operator reads is a graph output. Sometimes
an intermediate that others read is an output too, a graph input is passed through as an
output, or an output is declared without a shape (all valid ONNX that exporters write).

`compile_exit` runs `mapper.driver.compile_model` in-process and maps what it raises to the
exit code the CLI would return (mapper/cli.py `_run`): a `MapperError` -> its exit code, any
other exception -> 1 (a bug), with the traceback as the message.
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
MAX_ELEMENTS = 4096
FLOAT = TensorProto.FLOAT


class GeneratorError(AssertionError):
    """The generator computed a shape ONNX disagrees with: fix the generator, not mapper."""


@dataclass
class _Builder:
    draw: Callable
    rng: np.random.Generator
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inputs: list[onnx.ValueInfoProto] = field(default_factory=list)
    inits: list[onnx.TensorProto] = field(default_factory=list)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # float activations
    consumed: set[str] = field(default_factory=set)
    counter: int = 0

    def name(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def const(self, array: np.ndarray, prefix: str = "w") -> str:
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def weight(self, shape: Sequence[int], scale: float = 0.5) -> str:
        return self.const((self.rng.standard_normal(tuple(shape)) * scale).astype(np.float32))

    def ints(self, values: Sequence[int]) -> str:
        return self.const(np.array(list(values), dtype=np.int64), "i")

    def new_input(self, shape: Sequence[int], dtype: int = FLOAT) -> str:
        name = self.name("x")
        self.inputs.append(helper.make_tensor_value_info(name, dtype, list(shape)))
        if dtype == FLOAT:
            self.shapes[name] = tuple(shape)
        return name

    def random_shape(self, rank: int, low: int = 1, high: int = 6) -> tuple[int, ...]:
        return tuple(self.draw(st.integers(low, high)) for _ in range(rank))

    def pick(self, accept: Callable[[tuple[int, ...]], bool], make_rank: int | None = None,
             low: int = 1) -> str:
        """A float tensor of the pool that `accept`s, or a new input of rank `make_rank`."""
        pool = sorted(name for name, shape in self.shapes.items() if shape and accept(shape))
        if pool and self.draw(st.integers(0, 5)) > 0:
            return self.draw(st.sampled_from(pool))
        ranks = getattr(accept, "ranks", (1, 2, 3, 4))
        rank = make_rank if make_rank is not None else self.draw(st.sampled_from(ranks))
        for _ in range(20):
            shape = self.random_shape(rank, low=low)
            if accept(shape) and math.prod(shape) <= MAX_ELEMENTS:
                return self.new_input(shape)
        raise GeneratorError(f"no random rank-{rank} shape satisfies the operator")

    def add(self, op: str, inputs: Sequence[str], out_shapes: Sequence[tuple[int, ...]],
            **attrs) -> list[str]:
        outputs = [self.name("t") for _ in out_shapes]
        self.nodes.append(helper.make_node(op, list(inputs), outputs, name=self.name(op), **attrs))
        self.consumed.update(i for i in inputs if i)
        for out, shape in zip(outputs, out_shapes, strict=True):
            self.shapes[out] = tuple(int(d) for d in shape)
        return outputs


def _small(shape: Sequence[int]) -> bool:
    return math.prod(shape) <= MAX_ELEMENTS and all(d >= 1 for d in shape)


def _rank(*ranks: int) -> Callable[[tuple[int, ...]], bool]:
    def accept(shape: tuple[int, ...]) -> bool:
        return len(shape) in ranks

    accept.ranks = ranks  # type: ignore[attr-defined]  # what pick makes a new input of
    return accept


# --------------------------------------------------------------------------- the operators


def op_conv(b: _Builder) -> None:
    kernel = b.draw(st.integers(1, 3))
    x = b.pick(lambda s: len(s) == 4 and s[2] >= kernel and s[3] >= kernel, 4, low=kernel)
    n, c, h, w = b.shapes[x]
    stride, pad = b.draw(st.integers(1, 2)), b.draw(st.integers(0, min(1, kernel - 1)))
    depthwise = b.draw(st.booleans())
    m, group = (c, c) if depthwise else (b.draw(st.integers(1, 8)), 1)
    oh, ow = (h + 2 * pad - kernel) // stride + 1, (w + 2 * pad - kernel) // stride + 1
    inputs = [x, b.weight((m, c // group, kernel, kernel))]
    if b.draw(st.booleans()):
        inputs.append(b.weight((m,)))
    if not _small((n, m, oh, ow)):
        return
    b.add("Conv", inputs, [(n, m, oh, ow)], kernel_shape=[kernel, kernel],
          strides=[stride, stride], pads=[pad] * 4, group=group)


def op_matmul(b: _Builder) -> None:
    x = b.pick(_rank(1, 2, 3, 4))
    shape = b.shapes[x]
    if len(shape) >= 2 and b.draw(st.booleans()):
        # activation x activation: x @ x^T over the last two dims (attention scores).
        perm = [*range(len(shape) - 2), len(shape) - 1, len(shape) - 2]
        (xt,) = b.add("Transpose", [x], [tuple(shape[p] for p in perm)], perm=perm)
        out = (*shape[:-1], shape[-2])
        if _small(out):
            b.add("MatMul", [x, xt], [out])
        return
    n = b.draw(st.integers(1, 8))
    out = (*shape[:-1], n) if len(shape) > 1 else (n,)
    if _small(out):
        b.add("MatMul", [x, b.weight((shape[-1], n))], [out])


def op_gemm(b: _Builder) -> None:
    x = b.pick(_rank(2), 2)
    m, k = b.shapes[x]
    n = b.draw(st.integers(1, 8))
    trans_b = b.draw(st.integers(0, 1))
    inputs = [x, b.weight((n, k) if trans_b else (k, n))]
    bias = b.draw(st.sampled_from(["none", "vector", "row", "full"]))
    if bias != "none":
        inputs.append(b.weight({"vector": (n,), "row": (1, n), "full": (m, n)}[bias]))
    b.add("Gemm", inputs, [(m, n)], transB=trans_b,
          alpha=b.draw(st.sampled_from([1.0, 0.5])), beta=b.draw(st.sampled_from([1.0, 2.0])))


def _binary(b: _Builder, op: str) -> None:
    x = b.pick(lambda s: True)
    shape = b.shapes[x]
    same = sorted(n for n, s in b.shapes.items() if s == shape)
    if b.draw(st.booleans()):
        other = b.draw(st.sampled_from(same))
    else:
        # A constant that broadcasts: a suffix of the shape, some dims 1.
        rank = b.draw(st.integers(0, len(shape)))
        suffix = shape[len(shape) - rank:]
        other = b.weight(tuple(d if b.draw(st.booleans()) else 1 for d in suffix))
    operands = [x, other] if b.draw(st.booleans()) else [other, x]
    b.add(op, operands, [shape])


def op_add(b: _Builder) -> None:
    _binary(b, "Add")


def op_mul(b: _Builder) -> None:
    _binary(b, "Mul")


def op_relu(b: _Builder) -> None:
    x = b.pick(lambda s: True)
    b.add("Relu", [x], [b.shapes[x]])


def op_softmax(b: _Builder) -> None:
    x = b.pick(lambda s: True)
    rank = len(b.shapes[x])
    b.add("Softmax", [x], [b.shapes[x]], axis=b.draw(st.integers(-rank, rank - 1)))


def op_concat(b: _Builder) -> None:
    x = b.pick(lambda s: True)
    shape = b.shapes[x]
    axis = b.draw(st.integers(0, len(shape) - 1))
    candidates = sorted(n for n, s in b.shapes.items() if len(s) == len(shape)
                        and all(a == c for i, (a, c) in enumerate(zip(s, shape, strict=True))
                                if i != axis))
    others = [b.draw(st.sampled_from(candidates))]
    if b.draw(st.booleans()):
        extra = list(shape)
        extra[axis] = b.draw(st.integers(1, 4))
        others.append(b.weight(extra))
    parts = [x, *others]
    out = list(shape)
    out[axis] = sum(b.shapes[p][axis] if p in b.shapes else extra[axis] for p in parts)
    if _small(out):
        b.add("Concat", parts, [tuple(out)], axis=axis - len(shape) * b.draw(st.integers(0, 1)))


def op_split(b: _Builder) -> None:
    x = b.pick(lambda s: max(s) >= 2, None, low=2)
    shape = b.shapes[x]
    axis = b.draw(st.sampled_from([i for i, d in enumerate(shape) if d >= 2]))
    dim = shape[axis]
    cut = b.draw(st.integers(1, dim - 1))
    sizes = [cut, dim - cut]
    outs = [tuple(s if i != axis else part for i, s in enumerate(shape)) for part in sizes]
    if b.draw(st.booleans()):
        b.add("Split", [x, b.ints(sizes)], outs, axis=axis)
    elif dim % 2 == 0:
        half = [tuple(s if i != axis else dim // 2 for i, s in enumerate(shape))] * 2
        b.add("Split", [x], half, axis=axis)


def op_reshape(b: _Builder) -> None:
    x = b.pick(lambda s: True)
    shape = list(b.shapes[x])
    how = b.draw(st.sampled_from(["merge", "split", "flatten", "unsqueeze"]))
    if how == "merge" and len(shape) >= 2:
        i = b.draw(st.integers(0, len(shape) - 2))
        target = [*shape[:i], shape[i] * shape[i + 1], *shape[i + 2:]]
    elif how == "split":
        i = b.draw(st.integers(0, len(shape) - 1))
        factors = [f for f in range(1, shape[i] + 1) if shape[i] % f == 0]
        f = b.draw(st.sampled_from(factors))
        target = [*shape[:i], f, shape[i] // f, *shape[i + 1:]]
    elif how == "flatten":
        target = [math.prod(shape)]
    else:
        i = b.draw(st.integers(0, len(shape)))
        target = [*shape[:i], 1, *shape[i:]]
    if len(target) > 5:
        return
    spec = list(target)
    if b.draw(st.booleans()):
        spec[b.draw(st.integers(0, len(spec) - 1))] = -1
    b.add("Reshape", [x, b.ints(spec)], [tuple(target)])


def op_transpose(b: _Builder) -> None:
    x = b.pick(_rank(2, 3, 4))
    shape = b.shapes[x]
    perm = b.draw(st.permutations(range(len(shape))))
    b.add("Transpose", [x], [tuple(shape[p] for p in perm)], perm=list(perm))


def op_pool(b: _Builder) -> None:
    kind = b.draw(st.sampled_from(["MaxPool", "AveragePool", "GlobalAveragePool"]))
    if kind == "GlobalAveragePool":
        x = b.pick(_rank(3, 4), 4)
        shape = b.shapes[x]
        b.add(kind, [x], [(*shape[:2], *([1] * (len(shape) - 2)))])
        return
    kernel = b.draw(st.integers(1, 3))
    x = b.pick(lambda s: len(s) == 4 and min(s[2:]) >= kernel, 4, low=kernel)
    n, c, h, w = b.shapes[x]
    stride, pad = b.draw(st.integers(1, 2)), b.draw(st.integers(0, kernel - 1))
    oh, ow = (h + 2 * pad - kernel) // stride + 1, (w + 2 * pad - kernel) // stride + 1
    attrs = {"kernel_shape": [kernel, kernel], "strides": [stride, stride], "pads": [pad] * 4}
    if kind == "AveragePool":
        attrs["count_include_pad"] = b.draw(st.integers(0, 1))
    b.add(kind, [x], [(n, c, oh, ow)], **attrs)


def op_norm(b: _Builder) -> None:
    kind = b.draw(st.sampled_from(["BatchNormalization", "LayerNormalization",
                                   "InstanceNormalization"]))
    if kind == "BatchNormalization":
        x = b.pick(_rank(2, 3, 4), 4)
        c = b.shapes[x][1]
        var = b.const((b.rng.random(c) + 0.5).astype(np.float32))
        b.add(kind, [x, b.weight((c,)), b.weight((c,)), b.weight((c,)), var], [b.shapes[x]],
              epsilon=1e-5)
    elif kind == "LayerNormalization":
        x = b.pick(lambda s: True)
        shape = b.shapes[x]
        axis = b.draw(st.integers(-len(shape), len(shape) - 1))
        normalized = shape[axis:]
        inputs = [x, b.weight(normalized)]
        if b.draw(st.booleans()):
            inputs.append(b.weight(normalized))
        b.add(kind, inputs, [shape], axis=axis, epsilon=1e-5)
    else:
        x = b.pick(_rank(3, 4), 4)
        c = b.shapes[x][1]
        b.add(kind, [x, b.weight((c,)), b.weight((c,))], [b.shapes[x]], epsilon=1e-5)


def op_gather(b: _Builder) -> None:
    if b.draw(st.booleans()):
        # An embedding lookup: int64 ids from a graph input into a weight table.
        rows, width = b.draw(st.integers(2, 16)), b.draw(st.integers(1, 8))
        ids_shape = b.random_shape(b.draw(st.integers(1, 2)), high=4)
        ids = b.new_input(ids_shape, TensorProto.INT64)
        b.add("Gather", [b.weight((rows, width)), ids], [(*ids_shape, width)], axis=0)
        return
    x = b.pick(lambda s: True)
    shape = b.shapes[x]
    axis = b.draw(st.integers(0, len(shape) - 1))
    dim = shape[axis]
    scalar = b.draw(st.booleans()) and len(shape) > 1
    count = 1 if scalar else b.draw(st.integers(1, 4))
    values = [b.draw(st.integers(-dim, dim - 1)) for _ in range(count)]
    indices = b.const(np.array(values[0] if scalar else values, dtype=np.int64), "i")
    out = [*shape[:axis], *([] if scalar else [count]), *shape[axis + 1:]]
    if _small(out):
        b.add("Gather", [x, indices], [tuple(out)], axis=axis - len(shape) * b.draw(
            st.integers(0, 1)))


def op_slice(b: _Builder) -> None:
    x = b.pick(lambda s: True)
    shape = b.shapes[x]
    axes = sorted(b.draw(st.sets(st.integers(0, len(shape) - 1), min_size=1)))
    starts, ends, steps, out = [], [], [], list(shape)
    for axis in axes:
        dim = shape[axis]
        step = b.draw(st.sampled_from([1, 1, 2, -1]))
        start = b.draw(st.integers(-dim - 1, dim + 1))
        end = b.draw(st.sampled_from([b.draw(st.integers(-dim - 1, dim + 1)),
                                      2**62 if step > 0 else -(2**62)]))
        length = len(range(dim)[slice(start, end, step)])
        if length == 0:  # empty tensors are not what these graphs test
            start, end, step, length = 0, dim, 1, dim
        starts.append(start)
        ends.append(end)
        steps.append(step)
        out[axis] = length
    inputs = [x, b.ints(starts), b.ints(ends), b.ints(axes)]
    if any(s != 1 for s in steps) or b.draw(st.booleans()):
        inputs.append(b.ints(steps))
    b.add("Slice", inputs, [tuple(out)])


def op_resize(b: _Builder) -> None:
    x = b.pick(_rank(4), 4)
    n, c, h, w = b.shapes[x]
    scale = b.draw(st.sampled_from([0.5, 2.0, 1.5]))
    mode = b.draw(st.sampled_from(["nearest", "linear"]))
    out = (n, c, math.floor(h * scale), math.floor(w * scale))
    if not _small(out):
        return
    scales = b.const(np.array([1, 1, scale, scale], dtype=np.float32), "s")
    b.add("Resize", [x, "", scales], [out], mode=mode)


def op_lstm(b: _Builder) -> None:
    x = b.pick(lambda s: len(s) == 3 and s[0] <= 6, 3)
    seq, batch, size = b.shapes[x]
    hidden = b.draw(st.integers(1, 4))
    directions = b.draw(st.integers(1, 2))
    inputs = [x, b.weight((directions, 4 * hidden, size)),
              b.weight((directions, 4 * hidden, hidden))]
    if b.draw(st.booleans()):
        inputs.append(b.weight((directions, 8 * hidden)))
    y, y_h = b.add("LSTM", inputs, [(seq, directions, batch, hidden), (directions, batch, hidden)],
                   hidden_size=hidden,
                   direction="forward" if directions == 1 else "bidirectional")
    del y, y_h


def op_if(b: _Builder) -> None:
    x = b.pick(lambda s: True)
    shape = b.shapes[x]
    (total,) = b.add("ReduceSum", [x], [()], keepdims=0)
    cond = b.name("cond")
    b.add("Greater", [total, b.const(np.array(0.0, np.float32))], [])
    b.nodes[-1].output.append(cond)
    then_out, else_out = b.name("then"), b.name("else")
    then_graph = helper.make_graph(
        [helper.make_node("Relu", [x], [then_out], name=b.name("Relu"))], b.name("then_g"), [],
        [helper.make_tensor_value_info(then_out, FLOAT, list(shape))])
    factor = b.const(np.array(-0.5, np.float32))
    else_graph = helper.make_graph(
        [helper.make_node("Mul", [x, factor], [else_out], name=b.name("Mul"))],
        b.name("else_g"), [], [helper.make_tensor_value_info(else_out, FLOAT, list(shape))])
    b.consumed.add(factor)
    b.add("If", [cond], [shape], then_branch=then_graph, else_branch=else_graph)
    b.consumed.add(x)


def op_dense(b: _Builder) -> None:
    """A MatMul or Gemm whose weight is wide enough for group quantization (K >= 16)."""
    pool = sorted(name for name, s in b.shapes.items() if len(s) in (2, 3) and s[-1] >= 16)
    if pool and b.draw(st.booleans()):
        x = b.draw(st.sampled_from(pool))
    else:
        x = b.new_input((b.draw(st.integers(1, 4)), b.draw(st.sampled_from([16, 24, 32, 64]))))
    shape = b.shapes[x]
    k, n = shape[-1], b.draw(st.sampled_from([4, 8, 16, 32]))
    if len(shape) == 2 and b.draw(st.booleans()):
        b.add("Gemm", [x, b.weight((n, k)), b.weight((n,))], [(shape[0], n)], transB=1)
    else:
        b.add("MatMul", [x, b.weight((k, n))], [(*shape[:-1], n)])


OPS: dict[str, Callable[[_Builder], None]] = {
    "Conv": op_conv, "MatMul": op_matmul, "Gemm": op_gemm, "Add": op_add, "Mul": op_mul,
    "Relu": op_relu, "Concat": op_concat, "Split": op_split, "Reshape": op_reshape,
    "Transpose": op_transpose, "Softmax": op_softmax, "Pool": op_pool, "Norm": op_norm,
    "Gather": op_gather, "Slice": op_slice, "Resize": op_resize, "LSTM": op_lstm, "If": op_if,
    "Dense": op_dense,
}


# --------------------------------------------------------------------------- the strategy


def _check(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> None:
    """The model passes the checker, and strict inference agrees with every shape we made."""
    try:
        onnx.checker.check_model(model, full_check=True)
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as error:
        raise GeneratorError(f"generated an invalid model: {error}\n"
                             f"{onnx.printer.to_text(model.graph)}") from error
    for info in [*inferred.graph.value_info, *inferred.graph.output]:
        if info.name not in shapes:
            continue
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1
                     for d in info.type.tensor_type.shape.dim)
        if dims != shapes[info.name]:
            raise GeneratorError(f"{info.name}: generator says {shapes[info.name]}, ONNX says "
                                 f"{dims}\n{onnx.printer.to_text(model.graph)}")


@st.composite
def graphs(draw, families: Sequence[str] = tuple(OPS), min_ops: int = 1, max_ops: int = 10,
           first: str | None = None) -> onnx.ModelProto:
    """A random valid model whose operators come from `families` (keys of OPS), starting
    with `first` when given (so that a family's own operator is always there)."""
    b = _Builder(draw, np.random.default_rng(draw(st.integers(0, 2**32 - 1))))
    count = draw(st.integers(min_ops, max_ops))
    for index in range(count):
        OPS[first if index == 0 and first else draw(st.sampled_from(list(families)))](b)
    if not b.nodes:
        op_relu(b)
    produced = [name for node in b.nodes for name in node.output if name in b.shapes]
    outputs = [name for name in produced if name not in b.consumed]
    inner = [name for name in produced if name in b.consumed]
    if inner and draw(st.booleans()):  # an output that other nodes read as well
        outputs.append(draw(st.sampled_from(inner)))
    float_inputs = [i.name for i in b.inputs if i.name in b.shapes]
    if float_inputs and draw(st.integers(0, 7)) == 0:  # an input passed through as an output
        outputs.append(draw(st.sampled_from(float_inputs)))
    graph = helper.make_graph(
        b.nodes, "random", b.inputs,
        [helper.make_tensor_value_info(name, FLOAT, list(b.shapes[name])) for name in outputs],
        b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    _check(model, b.shapes)
    if draw(st.integers(0, 7)) == 0:  # an output declared without a shape (mapper infers it)
        graph.output[draw(st.integers(0, len(graph.output) - 1))].type.tensor_type.ClearField(
            "shape")
    return model


def make_dynamic(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int]]:
    """A copy whose float inputs have a named first dim, and the `--dim` values that fix them
    back (what a user exporting with a dynamic batch passes)."""
    dynamic = onnx.ModelProto()
    dynamic.CopyFrom(model)
    dims: dict[str, int] = {}
    for inp in dynamic.graph.input:
        tensor = inp.type.tensor_type
        if tensor.elem_type != FLOAT or not tensor.shape.dim:
            continue
        name = f"n_{inp.name}"
        dims[name] = tensor.shape.dim[0].dim_value
        tensor.shape.dim[0].Clear()
        tensor.shape.dim[0].dim_param = name
    return dynamic, dims


# --------------------------------------------------------------------------- in-process runs


def exit_code_of(call: Callable[[], object]) -> tuple[int, str]:
    """Run `call` as mapper's CLI runs a command: (exit code, message or traceback)."""
    from mapper.errors import MapperError

    try:
        call()
    except MapperError as error:
        return error.exit_code, str(error)
    except Exception:  # anything else is exit 1: a bug in mapper
        return 1, traceback.format_exc()
    return 0, ""


def compile_exit(model_path: Path, hardware: str, out: Path, options=None) -> tuple[int, str]:
    """`mapper compile MODEL --hw HARDWARE -o OUT` in-process: (exit code, message)."""
    from mapper.driver import compile_model

    return exit_code_of(lambda: compile_model(model_path, hardware, out, options))
