"""The torch evaluation of ONNX graphs (GQSA's end-to-end stage runs models in it) gives
onnxruntime's outputs, op by op and on the real reference models, and refuses what it
does not know before running anything."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import models
from mapper.compression.torch_graph import TorchGraph, Unsupported

torch = pytest.importorskip("torch")


def _ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _model(nodes, inputs, outputs, initializers=(), opset=20) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    return model


def _const(name: str, values, dtype=np.int64):
    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


def _float(name: str, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


CASES = {
    "layernorm_gelu_softmax": (
        [helper.make_node("LayerNormalization", ["x", "g", "b"], ["n"], axis=-1,
                          epsilon=1e-5),
         helper.make_node("Gelu", ["n"], ["a"], approximate="tanh"),
         helper.make_node("Softmax", ["a"], ["y"], axis=1)],
        [_const("g", np.linspace(0.5, 1.5, 8), np.float32),
         _const("b", np.linspace(-1, 1, 8), np.float32)], (2, 3, 8)),
    "reshape_transpose_slice_concat": (
        [helper.make_node("Reshape", ["x", "shape"], ["r"]),
         helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1, 3]),
         helper.make_node("Slice", ["t", "starts", "ends", "axes", "steps"], ["s"]),
         helper.make_node("Concat", ["s", "s"], ["y"], axis=-1)],
        [_const("shape", [0, 3, 2, 4]), _const("starts", [-1, 0]),
         _const("ends", [-100, 4]), _const("axes", [1, 3]), _const("steps", [-1, 2])],
        (2, 3, 8)),
    "gather_where_reduce_clip": (
        [helper.make_node("Gather", ["x", "idx"], ["gth"], axis=2),
         helper.make_node("Greater", ["gth", "zero"], ["pos"]),
         helper.make_node("Where", ["pos", "gth", "zero"], ["w"]),
         helper.make_node("ReduceL2", ["w", "ax"], ["l2"], keepdims=1),
         helper.make_node("Clip", ["l2", "lo", "hi"], ["c"]),
         helper.make_node("ReduceMean", ["c", "ax0"], ["y"], keepdims=0)],
        [_const("idx", [[1, -1], [0, 3]]), _const("zero", 0.0, np.float32),
         _const("ax", [-1]), _const("ax0", [0]), _const("lo", 0.1, np.float32),
         _const("hi", 2.0, np.float32)], (2, 3, 8)),
    "matmul_gemm_rms": (
        [helper.make_node("MatMul", ["x", "w"], ["m"]),
         helper.make_node("Pow", ["m", "two"], ["p"]),
         helper.make_node("ReduceMean", ["p", "ax"], ["ms"], keepdims=1),
         helper.make_node("Sqrt", ["ms"], ["rms"]),
         helper.make_node("Reciprocal", ["rms"], ["inv"]),
         helper.make_node("Mul", ["m", "inv"], ["n"]),
         helper.make_node("Reshape", ["n", "flat"], ["f"]),
         helper.make_node("Gemm", ["f", "w2", "bias"], ["y"], transB=1, alpha=0.5)],
        [_const("w", np.random.default_rng(0).standard_normal((8, 6)), np.float32),
         _const("two", 2.0, np.float32), _const("ax", [-1]), _const("flat", [-1, 6]),
         _const("w2", np.random.default_rng(1).standard_normal((5, 6)), np.float32),
         _const("bias", np.arange(5), np.float32)], (2, 3, 8)),
    "unsqueeze_expand_sigmoid_split": (
        [helper.make_node("Unsqueeze", ["x", "ax"], ["u"]),
         helper.make_node("Expand", ["u", "shape"], ["e"]),
         helper.make_node("Sigmoid", ["e"], ["sg"]),
         helper.make_node("Split", ["sg", "sizes"], ["y", "z"], axis=-1),
         helper.make_node("Neg", ["z"], ["nz"])],
        [_const("ax", [1]), _const("shape", [2, 4, 3, 8]), _const("sizes", [3, 5])],
        (2, 3, 8)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_op_matches_onnxruntime(case):
    nodes, initializers, shape = CASES[case]
    outputs = [out for node in nodes for out in node.output]
    # Every intermediate is an output too, typed by ONNX's shape inference.
    model = onnx.shape_inference.infer_shapes(
        _model(nodes, [_float("x", list(shape))], [_float(nodes[-1].output[0], None)],
               initializers))
    typed = {v.name: v for v in model.graph.value_info}
    model.graph.output.extend(typed[o] for o in outputs if o in typed)
    outputs = [o.name for o in model.graph.output]
    x = np.random.default_rng(7).standard_normal(shape).astype(np.float32)
    expected = _ort(model, {"x": x})
    got = TorchGraph(model).run({"x": x}, outputs)
    for name, want in zip(outputs, expected, strict=True):
        value = got[name].numpy()
        assert value.shape == want.shape, name
        assert np.allclose(value, want, rtol=1e-5, atol=1e-5), name


def test_gradients_reach_a_fed_weight():
    nodes, initializers, shape = CASES["matmul_gemm_rms"]
    model = _model(nodes, [_float("x", list(shape))], [_float("y", None)], initializers)
    graph = TorchGraph(model, fed=["w2"])
    w2 = torch.from_numpy(numpy_helper.to_array(initializers[4]).copy()).requires_grad_()
    x = np.ones(shape, np.float32)
    graph.run({"x": x, "w2": w2})["y"].sum().backward()
    assert w2.grad is not None and float(w2.grad.abs().sum()) > 0


def test_unknown_op_is_refused_up_front():
    model = _model([helper.make_node("TopK", ["x", "k"], ["y", "i"])],
                   [_float("x", [4])], [_float("y", None)], [_const("k", [2])])
    with pytest.raises(Unsupported, match="TopK"):
        TorchGraph(model)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["minilm_l6", "smollm2_135m"])
def test_reference_models_match_onnxruntime(name):
    from models import minilm, smollm, text

    tokenize = minilm.tokenize if name == "minilm_l6" else smollm.tokenize
    path = models.build(name)
    model = onnx.load(str(path))
    feed = tokenize(text.passages("eval", 1)[0])
    expected = _ort(model, feed)
    with torch.no_grad():
        got = TorchGraph(model).run(feed)
    for output, want in zip(model.graph.output, expected, strict=True):
        value = got[output.name].numpy()
        scale = float(np.abs(want).max())
        assert np.abs(value - want).max() <= 1e-4 * scale, output.name
