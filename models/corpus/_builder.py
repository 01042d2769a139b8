"""A small graph builder that writes ONNX the way the classic model-zoo exporters did.

The model-zoo files of 2017-2019 (onnx-caffe2, PyTorch 0.3/0.4, CNTK, keras2onnx) share a few
conventions that today's exporters no longer produce and that a loader must still accept:

* ``ir_version`` 3 with opset 7, 8 or 9;
* weights stored in one of four ways (``WeightMode``):
  - ``"init-inputs"``: initializers that are also listed as graph inputs (what IR 3 requires);
  - ``"init-hidden"``: initializers that are *not* listed as graph inputs (what many tools wrote
    anyway: onnxruntime runs such files, ``onnx.checker`` rejects them for IR < 4, and
    ``onnx.shape_inference`` cannot see them);
  - ``"constant"``: every weight is the ``value`` of a ``Constant`` node (no initializers);
  - ``"cos"``: every weight is made at run time by ``ConstantOfShape`` from a shape held in a
    ``Constant`` node (the trick the ONNX "light" test models use; opset >= 9);
* shapes for ``Reshape`` and scales for ``Upsample`` held in ``Constant`` nodes;
* legacy attributes (``BatchNormalization.spatial``, ``Clip`` min/max as attributes, ...).

Random weights are seeded numpy draws: numerically meaningless, but the right sizes, so memory
planning sees real tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

WeightMode = Literal["init-inputs", "init-hidden", "constant", "cos"]

PRODUCER = "mapper-corpus"

Dim = int | str | None


class LegacyGraph:
    """Collects nodes and weights, then writes a model with the chosen legacy conventions."""

    def __init__(self, name: str, *, opset: int, weights: WeightMode, seed: int = 0) -> None:
        if weights == "cos" and opset < 9:
            raise ValueError("ConstantOfShape exists from opset 9 on")
        self.name = name
        self.opset = opset
        self.weights = weights
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._counts: dict[str, int] = {}

    # ------------------------------------------------------------------ naming
    def fresh(self, prefix: str) -> str:
        n = self._counts.get(prefix, 0)
        self._counts[prefix] = n + 1
        return prefix if n == 0 else f"{prefix}_{n}"

    # ------------------------------------------------------------------ nodes
    def node(
        self,
        op: str,
        inputs: Sequence[str],
        outputs: int | Sequence[str] = 1,
        *,
        name: str | None = None,
        **attrs: object,
    ) -> str | list[str]:
        """Append a node; return its output name (or names when it has several)."""
        node_name = name or self.fresh(op.lower())
        outs = (
            [node_name if outputs == 1 else f"{node_name}:{i}" for i in range(outputs)]
            if isinstance(outputs, int)
            else list(outputs)
        )
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=node_name, **attrs))
        return outs[0] if len(outs) == 1 else outs

    def const(self, value: np.ndarray, name: str | None = None) -> str:
        """A ``Constant`` node holding ``value`` (shapes, scales: in every weight mode)."""
        out = name or self.fresh("const")
        tensor = numpy_helper.from_array(np.asarray(value), out + "_value")
        self.nodes.append(helper.make_node("Constant", [], [out], name=out, value=tensor))
        return out

    # ------------------------------------------------------------------ weights
    def weight(
        self,
        name: str,
        shape: Sequence[int],
        *,
        fan_in: int | None = None,
        fill: float | None = None,
        gain: float = 2.0,
    ) -> str:
        """A float32 weight in the graph's weight mode.

        With ``fill`` every element is that value; otherwise a He-style normal draw with
        variance ``gain / fan_in`` (``fan_in`` defaults to the product of ``shape[1:]``). In
        ``"cos"`` mode random draws are impossible: the value is ``1 / fan_in`` (an average),
        which keeps activations bounded through deep stacks.
        """
        shape = [int(s) for s in shape]
        if fan_in is None:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        if self.weights == "cos":
            value = fill if fill is not None else 1.0 / max(fan_in, 1)
            shape_name = self.const(np.array(shape, dtype=np.int64), name=name + "_shape")
            value_t = helper.make_tensor(name + "_fill", TensorProto.FLOAT, [1], [value])
            self.nodes.append(
                helper.make_node("ConstantOfShape", [shape_name], [name], name=name, value=value_t)
            )
            return name
        if fill is not None:
            array = np.full(shape, fill, dtype=np.float32)
        else:
            std = float(np.sqrt(gain / max(fan_in, 1)))
            array = self.rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
        if self.weights == "constant":
            tensor = numpy_helper.from_array(array, name + "_value")
            self.nodes.append(helper.make_node("Constant", [], [name], name=name, value=tensor))
        else:
            self.initializers.append(numpy_helper.from_array(array, name))
        return name

    # ------------------------------------------------------------------ layers
    def conv(
        self,
        x: str,
        cin: int,
        cout: int,
        k: int | tuple[int, int],
        *,
        name: str,
        stride: int = 1,
        pads: Sequence[int] | None = None,
        group: int = 1,
        bias: bool = True,
    ) -> str:
        kh, kw = (k, k) if isinstance(k, int) else k
        if pads is None:
            pads = [kh // 2, kw // 2, kh // 2, kw // 2]
        w = self.weight(name + "_w", [cout, cin // group, kh, kw])
        inputs = [x, w]
        if bias:
            inputs.append(self.weight(name + "_b", [cout], fill=0.0))
        return self.node(
            "Conv",
            inputs,
            name=name,
            kernel_shape=[kh, kw],
            strides=[stride, stride],
            pads=list(pads),
            group=group,
            dilations=[1, 1],
        )

    def bn(self, x: str, c: int, *, name: str, gamma: float = 1.0) -> str:
        """Inference BatchNormalization with identity statistics (mean 0, var 1)."""
        scale = self.weight(name + "_scale", [c], fill=gamma)
        bias = self.weight(name + "_bias", [c], fill=0.0)
        mean = self.weight(name + "_mean", [c], fill=0.0)
        var = self.weight(name + "_var", [c], fill=1.0)
        attrs: dict[str, object] = {"epsilon": 1e-5}
        if self.opset < 9:
            attrs["spatial"] = 1  # removed in BatchNormalization-9
        return self.node("BatchNormalization", [x, scale, bias, mean, var], name=name, **attrs)

    def gemm(self, x: str, cin: int, cout: int, *, name: str) -> str:
        """Fully connected layer, weight laid out [cout, cin] with transB=1 (Caffe/Torch)."""
        w = self.weight(name + "_w", [cout, cin], gain=1.0)
        b = self.weight(name + "_b", [cout], fill=0.0)
        return self.node("Gemm", [x, w, b], name=name, alpha=1.0, beta=1.0, transB=1)

    def maxpool(
        self, x: str, k: int, stride: int, pads: Sequence[int] = (0, 0, 0, 0), *, name: str
    ) -> str:
        return self.node(
            "MaxPool",
            [x],
            name=name,
            kernel_shape=[k, k],
            strides=[stride, stride],
            pads=list(pads),
        )

    def avgpool(
        self, x: str, k: int, stride: int, pads: Sequence[int] = (0, 0, 0, 0), *, name: str
    ) -> str:
        return self.node(
            "AveragePool",
            [x],
            name=name,
            kernel_shape=[k, k],
            strides=[stride, stride],
            pads=list(pads),
        )

    def reshape(self, x: str, shape: Sequence[int], *, name: str) -> str:
        target = self.const(np.array(list(shape), dtype=np.int64), name=name + "_shape")
        return self.node("Reshape", [x, target], name=name)

    def dropout(self, x: str, ratio: float, *, name: str) -> str:
        # One output only: the optional mask output was written by some exporters, not all.
        return self.node("Dropout", [x], name=name, ratio=ratio)

    # ------------------------------------------------------------------ model
    def model(
        self,
        inputs: Sequence[tuple[str, int, Sequence[Dim]]],
        outputs: Sequence[tuple[str, int, Sequence[Dim]]],
        *,
        ir_version: int = 3,
        doc: str = "",
        extra_opsets: Sequence[tuple[str, int]] = (),
    ) -> onnx.ModelProto:
        """Write the model. ``inputs``/``outputs``: (name, elem_type, dims); a str dim is a
        ``dim_param``, None an unnamed unknown dim."""

        def vi(name: str, elem: int, dims: Sequence[Dim]) -> onnx.ValueInfoProto:
            return helper.make_tensor_value_info(name, elem, list(dims))

        graph_inputs = [vi(*spec) for spec in inputs]
        if self.weights == "init-inputs":
            graph_inputs += [
                helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                for t in self.initializers
            ]
        graph = helper.make_graph(
            self.nodes,
            self.name,
            graph_inputs,
            [vi(*spec) for spec in outputs],
            initializer=self.initializers,
        )
        model = helper.make_model(
            graph,
            opset_imports=[
                helper.make_opsetid("", self.opset),
                *(helper.make_opsetid(d, v) for d, v in extra_opsets),
            ],
            producer_name=PRODUCER,
            producer_version="1",
            doc_string=doc,
        )
        model.ir_version = ir_version
        return model


def float_input(name: str, dims: Sequence[Dim]) -> tuple[str, int, Sequence[Dim]]:
    return (name, TensorProto.FLOAT, dims)
