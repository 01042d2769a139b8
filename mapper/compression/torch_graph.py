"""An ONNX graph evaluated with torch ops, so that gradients flow to chosen weights.

Stage 2 of GQSA (E2E-OQP) tunes quantization scales against the original model's outputs;
that needs the model's gradient with respect to its weights, which onnxruntime's inference
build cannot give. This interpreter runs the standard-ONNX ops that exported transformers,
CNNs and MLPs use, node by node, on torch tensors; the weights being tuned are fed in as
tensors that carry gradients. An op it does not know raises `Unsupported` before anything
runs, and the caller falls back to a method that needs no gradients.

(onnx2torch would be the library to use, but it requires torchvision, whose wheels pull an
unpinned CUDA build of torch here; the op set below is what the reference models need.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from onnx import ModelProto, NodeProto, helper, numpy_helper

from mapper.onnx_utils import np_dtype


class Unsupported(Exception):
    """The graph holds an op (or an op form) this interpreter does not evaluate."""


def _torch():
    import torch

    return torch


def _attrs(node: NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _ints(tensor) -> list[int]:
    return [int(v) for v in tensor.reshape(-1).tolist()]


def _axes(node_attrs: dict[str, Any], inputs: Sequence[Any], position: int) -> list[int] | None:
    """Axes from an input (newer opsets) or the `axes` attribute (older ones)."""
    if len(inputs) > position and inputs[position] is not None:
        return _ints(inputs[position])
    axes = node_attrs.get("axes")
    return [int(a) for a in axes] if axes is not None else None


def _reduce(kind: str) -> Callable[..., list[Any]]:
    def run(inputs: Sequence[Any], attrs: dict[str, Any]) -> list[Any]:
        torch = _torch()
        x = inputs[0]
        axes = _axes(attrs, inputs, 1)
        keep = bool(attrs.get("keepdims", 1))
        if axes is None or not axes:
            if attrs.get("noop_with_empty_axes", 0):
                return [x]
            axes = list(range(x.dim()))
        if kind == "sum":
            return [torch.sum(x, dim=axes, keepdim=keep)]
        if kind == "mean":
            return [torch.mean(x, dim=axes, keepdim=keep)]
        if kind == "l2":
            return [torch.sqrt(torch.sum(x * x, dim=axes, keepdim=keep))]
        if kind == "max":
            return [torch.amax(x, dim=axes, keepdim=keep)]
        return [torch.amin(x, dim=axes, keepdim=keep)]
    return run


def _unary(name: str) -> Callable[..., list[Any]]:
    return lambda inputs, attrs: [getattr(_torch(), name)(inputs[0])]


def _binary(name: str) -> Callable[..., list[Any]]:
    return lambda inputs, attrs: [getattr(_torch(), name)(inputs[0], inputs[1])]


def _div(inputs: Sequence[Any], attrs: dict[str, Any]) -> list[Any]:
    torch = _torch()
    a, b = inputs
    if not a.is_floating_point() and not b.is_floating_point():
        return [torch.div(a, b, rounding_mode="trunc")]
    return [a / b]


def _gemm(inputs: Sequence[Any], attrs: dict[str, Any]) -> list[Any]:
    a, b = inputs[0], inputs[1]
    if attrs.get("transA", 0):
        a = a.transpose(0, 1)
    if attrs.get("transB", 0):
        b = b.transpose(0, 1)
    out = attrs.get("alpha", 1.0) * (a @ b)
    if len(inputs) > 2 and inputs[2] is not None:
        out = out + attrs.get("beta", 1.0) * inputs[2]
    return [out]


def _softmax(opset: int) -> Callable[..., list[Any]]:
    def run(inputs: Sequence[Any], attrs: dict[str, Any]) -> list[Any]:
        x = inputs[0]
        axis = attrs.get("axis", -1 if opset >= 13 else 1)
        if opset >= 13:
            return [_torch().softmax(x, dim=axis)]
        axis %= x.dim()
        flat = x.reshape(int(np.prod(x.shape[:axis])), -1)
        return [_torch().softmax(flat, dim=1).reshape(x.shape)]
    return run


def _layer_norm(inputs: Sequence[Any], attrs: dict[str, Any]) -> list[Any]:
    x, scale = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    axis = attrs.get("axis", -1) % x.dim()
    return [_torch().nn.functional.layer_norm(x, tuple(x.shape[axis:]), scale, bias,
                                              attrs.get("epsilon", 1e-5))]


def _gelu(inputs: Sequence[Any], attrs: dict[str, Any]) -> list[Any]:
    approximate = attrs.get("approximate", b"none")
    approximate = approximate.decode() if isinstance(approximate, bytes) else approximate
    return [_torch().nn.functional.gelu(inputs[0], approximate=approximate)]


def _reshape(inputs: Sequence[Any], attrs: dict[str, Any]) -> list[Any]:
    x = inputs[0]
    shape = _ints(inputs[1])
    if not attrs.get("allowzero", 0):
        shape = [x.shape[i] if dim == 0 else dim for i, dim in enumerate(shape)]
    return [x.reshape(shape)]


def _transpose(inputs: Sequence[Any], attrs: dict[str, Any]) -> list[Any]:
    x = inputs[0]
    perm = attrs.get("perm") or list(reversed(range(x.dim())))
    return [x.permute(*perm)]


def _unsqueeze(inputs: Sequence[Any], attrs: dict[str, Any]) -> list[Any]:
    x = inputs[0]
    axes = _axes(attrs, inputs, 1) or []
    rank = x.dim() + len(axes)
    for axis in sorted(a % rank for a in axes):
        x = x.unsqueeze(axis)
    return [x]


def _squeeze(inputs: Sequence[Any], attrs: dict[str, Any]) -> list[Any]:
    x = inputs[0]
    axes = _axes(attrs, inputs, 1)
    if axes is None:
        return [x.squeeze()]
    for axis in sorted((a % x.dim() for a in axes), reverse=True):
        x = x.squeeze(axis)
    return [x]


def _concat(inputs: Sequence[Any], attrs: dict[str, Any]) -> list[Any]:
    return [_torch().cat([x for x in inputs if x is not None], dim=attrs["axis"])]


def _slice(inputs: Sequence[Any], attrs: dict[str, Any]) -> list[Any]:
    x = inputs[0]
    starts, ends = _ints(inputs[1]), _ints(inputs[2])
    axes = _ints(inputs[3]) if len(inputs) > 3 and inputs[3] is not None \
        else list(range(len(starts)))
    steps = _ints(inputs[4]) if len(inputs) > 4 and inputs[4] is not None \
        else [1] * len(starts)
    out = x
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        axis %= x.dim()
        size = x.shape[axis]
        start = start + size if start < 0 else start
        end = end + size if end < 0 else end
        if step > 0:
            start, end = max(0, min(size, start)), max(0, min(size, end))
            index: list[Any] = [slice(None)] * x.dim()
            index[axis] = slice(start, end, step)
            out = out[tuple(index)]
        else:
            # torch slices take no negative steps: pick the indices ONNX defines.
            start, end = max(-1, min(size - 1, start)), max(-1, min(size - 1, end))
            picked = _torch().arange(start, end, step, dtype=_torch().int64)
            out = out.index_select(axis, picked)
    return [out]


def _gather(inputs: Sequence[Any], attrs: dict[str, Any]) -> list[Any]:
    torch = _torch()
    data, indices = inputs
    axis = attrs.get("axis", 0) % data.dim()
    indices = indices.long()
    indices = torch.where(indices < 0, indices + data.shape[axis], indices)
    flat = torch.index_select(data, axis, indices.reshape(-1))
    shape = list(data.shape[:axis]) + list(indices.shape) + list(data.shape[axis + 1:])
    return [flat.reshape(shape)]


def _gather_nd(inputs: Sequence[Any], attrs: dict[str, Any]) -> list[Any]:
    data, indices = inputs
    batch_dims = attrs.get("batch_dims", 0)
    if batch_dims:
        raise Unsupported("GatherND with batch_dims")
    indices = indices.long()
    depth = indices.shape[-1]
    flat = indices.reshape(-1, depth)
    picked = data[tuple(flat[:, i] for i in range(depth))]
    return [picked.reshape(list(indices.shape[:-1]) + list(data.shape[depth:]))]


def _expand(inputs: Sequence[Any], attrs: dict[str, Any]) -> list[Any]:
    x = inputs[0]
    shape = _ints(inputs[1])
    target = list(np.broadcast_shapes(tuple(x.shape), tuple(shape)))
    return [x.expand(target)]


def _where(inputs: Sequence[Any], attrs: dict[str, Any]) -> list[Any]:
    return [_torch().where(inputs[0].bool(), inputs[1], inputs[2])]


def _cast(inputs: Sequence[Any], attrs: dict[str, Any]) -> list[Any]:
    torch = _torch()
    target = np_dtype(attrs["to"])
    return [inputs[0].to(getattr(torch, np.dtype(target).name) if np.dtype(target) != bool
                         else torch.bool)]


def _clip(inputs: Sequence[Any], attrs: dict[str, Any]) -> list[Any]:
    low = inputs[1] if len(inputs) > 1 and inputs[1] is not None else attrs.get("min")
    high = inputs[2] if len(inputs) > 2 and inputs[2] is not None else attrs.get("max")
    x = inputs[0]
    if low is not None:
        x = _torch().maximum(x, low if not isinstance(low, float) else
                             _torch().tensor(low, dtype=x.dtype))
    if high is not None:
        x = _torch().minimum(x, high if not isinstance(high, float) else
                             _torch().tensor(high, dtype=x.dtype))
    return [x]


def _shape(inputs: Sequence[Any], attrs: dict[str, Any]) -> list[Any]:
    dims = list(inputs[0].shape)
    start, end = attrs.get("start", 0), attrs.get("end", len(dims))
    return [_torch().tensor(dims[start:end], dtype=_torch().int64)]


def _constant_of_shape(inputs: Sequence[Any], attrs: dict[str, Any]) -> list[Any]:
    torch = _torch()
    value = attrs.get("value")
    array = numpy_helper.to_array(value) if value is not None else np.zeros(1, np.float32)
    fill = torch.from_numpy(array.copy()).reshape(())
    return [torch.full(_ints(inputs[0]), fill.item(), dtype=fill.dtype)]


def _range(inputs: Sequence[Any], attrs: dict[str, Any]) -> list[Any]:
    start, limit, delta = (x.item() for x in inputs)
    return [_torch().arange(start, limit, delta, dtype=inputs[0].dtype)]


def _split(inputs: Sequence[Any], attrs: dict[str, Any], outputs: int) -> list[Any]:
    x = inputs[0]
    axis = attrs.get("axis", 0)
    sizes = (_ints(inputs[1]) if len(inputs) > 1 and inputs[1] is not None
             else attrs.get("split"))
    if sizes is None:
        size = x.shape[axis]
        sizes = [-(-size // outputs)] * outputs
        sizes[-1] = size - sum(sizes[:-1])
    return list(_torch().split(x, list(sizes), dim=axis))


def _trilu(inputs: Sequence[Any], attrs: dict[str, Any]) -> list[Any]:
    k = int(inputs[1].item()) if len(inputs) > 1 and inputs[1] is not None else 0
    op = _torch().triu if attrs.get("upper", 1) else _torch().tril
    return [op(inputs[0], diagonal=k)]


def _variadic(name: str) -> Callable[..., list[Any]]:
    def run(inputs: Sequence[Any], attrs: dict[str, Any]) -> list[Any]:
        out = inputs[0]
        for x in inputs[1:]:
            out = getattr(_torch(), name)(out, x)
        return [out]
    return run


_OPS: dict[str, Callable[..., list[Any]]] = {
    "Add": _binary("add"), "Sub": _binary("sub"), "Mul": _binary("mul"), "Div": _div,
    "Pow": _binary("pow"), "MatMul": _binary("matmul"), "Gemm": _gemm,
    "Equal": _binary("eq"), "Less": _binary("lt"), "Greater": _binary("gt"),
    "LessOrEqual": _binary("le"), "GreaterOrEqual": _binary("ge"),
    "And": _binary("logical_and"), "Or": _binary("logical_or"),
    "Max": _variadic("maximum"), "Min": _variadic("minimum"), "Sum": _variadic("add"),
    "Sqrt": _unary("sqrt"), "Reciprocal": _unary("reciprocal"), "Neg": _unary("neg"),
    "Exp": _unary("exp"), "Log": _unary("log"), "Tanh": _unary("tanh"), "Erf": _unary("erf"),
    "Sigmoid": _unary("sigmoid"), "Relu": _unary("relu"), "Abs": _unary("abs"),
    "Sin": _unary("sin"), "Cos": _unary("cos"), "Not": _unary("logical_not"),
    "Floor": _unary("floor"), "Ceil": _unary("ceil"),
    "Identity": lambda inputs, attrs: [inputs[0]],
    "Dropout": lambda inputs, attrs: [inputs[0]],
    "Gelu": _gelu, "LayerNormalization": _layer_norm,
    "ReduceSum": _reduce("sum"), "ReduceMean": _reduce("mean"), "ReduceL2": _reduce("l2"),
    "ReduceMax": _reduce("max"), "ReduceMin": _reduce("min"),
    "Reshape": _reshape, "Transpose": _transpose, "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze, "Concat": _concat, "Slice": _slice, "Gather": _gather,
    "GatherND": _gather_nd, "Expand": _expand, "Where": _where, "Cast": _cast,
    "Clip": _clip, "Shape": _shape, "ConstantOfShape": _constant_of_shape, "Range": _range,
    "Trilu": _trilu,
}


class TorchGraph:
    """`model`'s main graph on torch tensors; `fed` initializers become inputs of `run`."""

    def __init__(self, model: ModelProto, fed: Sequence[str] = ()) -> None:
        torch = _torch()
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                     13)
        self._ops = dict(_OPS, Softmax=_softmax(opset))
        graph = model.graph
        missing = sorted({n.op_type for n in graph.node if n.domain not in ("", "ai.onnx")
                          or (n.op_type not in self._ops and n.op_type not in
                              ("Constant", "Split"))})
        if missing:
            raise Unsupported(f"ops {', '.join(missing)}")
        skip = set(fed)
        self.constants: dict[str, Any] = {
            init.name: torch.from_numpy(numpy_helper.to_array(init).copy())
            for init in graph.initializer if init.name not in skip}
        for node in graph.node:
            if node.op_type == "Constant":
                attrs = _attrs(node)
                if "value" not in attrs:
                    raise Unsupported("Constant without a tensor value")
                self.constants[node.output[0]] = torch.from_numpy(
                    numpy_helper.to_array(attrs["value"]).copy())
        self._nodes = [(node, _attrs(node)) for node in graph.node
                       if node.op_type != "Constant"]
        self.outputs = [output.name for output in graph.output]

    def run(self, feeds: Mapping[str, Any], outputs: Sequence[str] | None = None
            ) -> dict[str, Any]:
        """The named outputs (default: the graph's) for `feeds` (numpy arrays or tensors)."""
        torch = _torch()
        values: dict[str, Any] = dict(self.constants)
        for name, value in feeds.items():
            values[name] = value if isinstance(value, torch.Tensor) else \
                torch.from_numpy(np.ascontiguousarray(value))
        for node, attrs in self._nodes:
            inputs = [values[name] if name else None for name in node.input]
            if node.op_type == "Split":
                results = _split(inputs, attrs, len(node.output))
            else:
                results = self._ops[node.op_type](inputs, attrs)
            for name, value in zip(node.output, results, strict=False):
                if name:
                    values[name] = value
        return {name: values[name] for name in (outputs or self.outputs)}
