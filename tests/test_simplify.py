"""The simplify pass: what a runtime would fold and fuse is gone before anything plans it,
the numerics stay, and `--skip simplify` keeps the graph as loaded."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mapper.driver import compile_model
from mapper.loader import load_model
from mapper.options import CompileOptions
from mapper.passes.simplify.optimize import DEAD_CODE, simplify_model
from mapper.passes.simplify.rules import bias_broadcasts
from mapper.verify import verify_models
from models import corpus

RNG = np.random.default_rng(0)


def _weight(name: str, *shape: int, positive: bool = False) -> onnx.TensorProto:
    array = RNG.standard_normal(shape).astype(np.float32)
    return numpy_helper.from_array(np.abs(array) + 0.5 if positive else array, name)


def _model(nodes, inputs, outputs, initializers, opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _value(name: str, *shape: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _ops(model: onnx.ModelProto) -> Counter:
    return Counter(node.op_type for node in model.graph.node)


def _compile(tmp_path, model: onnx.ModelProto, **options):
    path = tmp_path / "in.onnx"
    onnx.save(model, path)
    out = tmp_path / "out"
    compile_model(path, "a100", out, CompileOptions(passes=("simplify",), **options))
    plan = json.loads((out / "plan.json").read_text())
    optimized = onnx.load(out / "model.onnx")
    check = verify_models(path, out / "model.onnx")
    assert check.ok, [(o.name, o.max_abs, o.max_rel) for o in check.outputs]
    names = [node.name for node in optimized.graph.node]
    assert all(names) and len(set(names)) == len(names)
    return plan, optimized


def conv_bn_relu() -> onnx.ModelProto:
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "g", "beta", "mean", "var"], ["n"],
                              epsilon=1e-3),
             helper.make_node("Relu", ["n"], ["y"])]
    inits = [_weight("w", 8, 3, 3, 3), _weight("b", 8), _weight("g", 8), _weight("beta", 8),
             _weight("mean", 8), _weight("var", 8, positive=True)]
    return _model(nodes, [_value("x", 1, 3, 16, 16)], [_value("y", 1, 8, 16, 16)], inits)


def test_batchnorm_is_folded_into_conv(tmp_path):
    plan, optimized = _compile(tmp_path, conv_bn_relu())
    assert _ops(optimized) == {"Conv": 1, "Relu": 1}
    section = plan["simplify"]
    assert (section["nodes_before"], section["nodes_after"]) == (3, 2)
    assert section["before"]["BatchNormalization"] == 1
    assert "BatchNormalization" not in section["after"]
    assert section["rules"]["BatchNormalization folded into Conv/ConvTranspose/Gemm"] == 1
    assert plan["passes"][0]["name"] == "simplify" and plan["passes"][0]["status"] == "ok"
    assert "Graph simplification" in (tmp_path / "out" / "report.html").read_text()


def test_skip_simplify_keeps_the_graph(tmp_path):
    plan, optimized = _compile(tmp_path, conv_bn_relu(), skip=("simplify",))
    assert _ops(optimized) == {"Conv": 1, "BatchNormalization": 1, "Relu": 1}
    assert plan["simplify"] is None


def test_identity_and_dropout_are_removed(tmp_path):
    nodes = [helper.make_node("Identity", ["x"], ["i"]),
             helper.make_node("MatMul", ["i", "w"], ["m"]),
             helper.make_node("Dropout", ["m", "ratio"], ["d"]),
             helper.make_node("Relu", ["d"], ["r"]),
             helper.make_node("Identity", ["r"], ["y"])]
    inits = [_weight("w", 16, 8), numpy_helper.from_array(np.array(0.1, np.float32), "ratio")]
    _, optimized = _compile(tmp_path, _model(nodes, [_value("x", 4, 16)],
                                                [_value("y", 4, 8)], inits))
    assert _ops(optimized) == {"MatMul": 1, "Relu": 1}
    # The graph's output keeps its name.
    assert [out.name for out in optimized.graph.output] == ["y"]


def _matmul_add(a_shape: tuple[int, ...], bias_shape: tuple[int, ...]) -> onnx.ModelProto:
    out_shape = (*a_shape[:-1], 8)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]),
             helper.make_node("Add", ["m", "b"], ["y"])]
    return _model(nodes, [_value("x", *a_shape)], [_value("y", *out_shape)],
                  [_weight("w", a_shape[-1], 8), _weight("b", *bias_shape)])


def test_matmul_add_becomes_gemm_for_2d_operands(tmp_path):
    plan, optimized = _compile(tmp_path, _matmul_add((4, 16), (8,)))
    assert _ops(optimized) == {"Gemm": 1}
    assert plan["simplify"]["rules"]["MatMul+Add -> Gemm"] == 1


@pytest.mark.parametrize(("a_shape", "bias_shape"), [((2, 4, 16), (8,)),  # 3-D A
                                                      ((4, 16), (3, 4, 8))])  # 3-D bias
def test_matmul_add_stays_where_gemm_cannot_express_it(tmp_path, a_shape, bias_shape):
    model = _matmul_add(a_shape, bias_shape)
    if len(bias_shape) == 3:
        model.graph.output[0].CopyFrom(_value("y", 3, 4, 8))
    _, optimized = _compile(tmp_path, model)
    assert _ops(optimized) == {"MatMul": 1, "Add": 1}


def test_bias_broadcast_rule():
    assert bias_broadcasts((8,), 4, 8) and bias_broadcasts((1, 8), 4, 8)
    assert bias_broadcasts((4, 1), 4, 8) and bias_broadcasts((), 4, 8)
    assert not bias_broadcasts((4,), 4, 8) and not bias_broadcasts((1, 4, 8), 4, 8)


def test_common_subexpressions_and_dead_code_are_eliminated():
    nodes = [helper.make_node("Relu", ["x"], ["a"]),
             helper.make_node("Relu", ["x"], ["b"]),
             helper.make_node("Add", ["a", "b"], ["y"]),
             helper.make_node("Sigmoid", ["x"], ["unused"])]
    model = _model(nodes, [_value("x", 4, 8)], [_value("y", 4, 8)], [])
    simplified = simplify_model(model)
    assert _ops(simplified.model) == {"Relu": 1, "Add": 1}
    assert simplified.rules["common subexpression elimination"] == 1
    assert simplified.rules[DEAD_CODE] == 1


def test_convs_with_equal_large_weights_are_merged(tmp_path):
    # Two sibling 1x1 convolutions whose weights (far above onnx-ir's default 1,024-element
    # dedup limit) are equal: one Conv and one Relu remain (the model zoo's inception_v1).
    weight = _weight("w1", 64, 32, 1, 1)
    twin = numpy_helper.from_array(numpy_helper.to_array(weight), "w2")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"]),
             helper.make_node("Conv", ["x", "w2"], ["c2"]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("Add", ["r1", "r2"], ["y"])]
    _, optimized = _compile(tmp_path, _model(nodes, [_value("x", 1, 32, 8, 8)],
                                                [_value("y", 1, 64, 8, 8)], [weight, twin]))
    assert _ops(optimized) == {"Conv": 1, "Relu": 1, "Add": 1}
    assert len(optimized.graph.initializer) == 1


def test_a_no_op_cast_writing_an_output_is_bypassed(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Cast", ["r"], ["y"], to=TensorProto.FLOAT),
             helper.make_node("Sigmoid", ["x"], ["s"]),
             helper.make_node("Cast", ["s"], ["z"], to=TensorProto.DOUBLE)]
    outputs = [_value("y", 4, 8), helper.make_tensor_value_info("z", TensorProto.DOUBLE, [4, 8])]
    plan, optimized = _compile(tmp_path, _model(nodes, [_value("x", 4, 8)], outputs, []))
    # The float->float Cast goes (Relu writes y); the widening one stays.
    assert _ops(optimized) == {"Relu": 1, "Sigmoid": 1, "Cast": 1}
    assert [out.name for out in optimized.graph.output] == ["y", "z"]
    assert plan["simplify"]["nodes_after"] == 3


def test_a_copy_whose_source_has_other_readers_stays():
    from mapper.passes.simplify.outputs import bypass_output_copies

    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Identity", ["r"], ["y"]),
             helper.make_node("Sigmoid", ["r"], ["z"])]
    model = _model(nodes, [_value("x", 4, 8)], [_value("y", 4, 8), _value("z", 4, 8)], [])
    assert bypass_output_copies(model) == 0
    assert len(model.graph.node) == 3


def test_graphs_with_map_outputs_lose_their_output_copies(tmp_path):
    # An ai.onnx.ml classifier: onnx-ir cannot load the ZipMap's sequence of maps, so only
    # the no-op Cast on its int64 label output goes.
    nodes = [helper.make_node("LinearClassifier", ["x"], ["label", "scores"],
                              domain="ai.onnx.ml", classlabels_ints=[0, 1, 2],
                              coefficients=RNG.standard_normal(12).astype(float).tolist(),
                              intercepts=[0.1, 0.2, 0.3], post_transform="SOFTMAX"),
             helper.make_node("Cast", ["label"], ["output_label"], to=TensorProto.INT64),
             helper.make_node("ZipMap", ["scores"], ["output_probability"],
                              domain="ai.onnx.ml", classlabels_int64s=[0, 1, 2])]
    probability = helper.make_tensor_sequence_value_info("output_probability", 0, None)
    probability.type.sequence_type.elem_type.CopyFrom(helper.make_map_type_proto(
        TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, [])))
    graph = helper.make_graph(nodes, "g", [_value("x", 2, 4)], [
        helper.make_tensor_value_info("output_label", TensorProto.INT64, [2]), probability])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("ai.onnx.ml", 1)])
    model.ir_version = 8
    plan, optimized = _compile(tmp_path, model)
    assert _ops(optimized) == {"LinearClassifier": 1, "ZipMap": 1}
    assert plan["simplify"]["nodes_after"] == 2


def _slice_model(starts, ends, axes, steps=None, out_shape=(2, 3, 4)) -> onnx.ModelProto:
    consts = [numpy_helper.from_array(np.array(v, np.int64), n)
              for n, v in (("starts", starts), ("ends", ends), ("axes", axes), ("steps", steps))
              if v is not None]
    inputs = ["s", "starts", "ends", "axes"] + (["steps"] if steps is not None else [])
    nodes = [helper.make_node("Relu", ["x"], ["s"]),
             helper.make_node("Slice", inputs, ["t"]),
             helper.make_node("Sigmoid", ["t"], ["y"])]
    return _model(nodes, [_value("x", 2, 3, 4)], [_value("y", *out_shape)], consts)


@pytest.mark.parametrize(("starts", "ends", "axes", "steps", "shape", "kept"), [
    ([0, -9], [2**62, 4], [0, -1], None, (2, 3, 4), False),  # every element: gone
    ([0, 0], [2, 4], [0, 2], [1, 1], (2, 3, 4), False),
    ([-1], [-2**62], [1], [-1], (2, 3, 4), True),  # same shape, reversed: kept
    ([1], [3], [1], None, (2, 2, 4), True),  # trims: kept
])
def test_a_slice_that_keeps_everything_is_removed(tmp_path, starts, ends, axes, steps, shape,
                                                  kept):
    _, optimized = _compile(tmp_path, _slice_model(starts, ends, axes, steps, shape))
    assert ("Slice" in _ops(optimized)) == kept


def test_quantized_codes_are_not_decoded():
    codes = numpy_helper.from_array(RNG.integers(-8, 8, (16, 8)).astype(np.int8), "codes")
    scale = numpy_helper.from_array(np.array(0.05, np.float32), "scale")
    nodes = [helper.make_node("Cast", ["codes"], ["wf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["wf", "scale"], ["w"]),
             helper.make_node("MatMul", ["x", "w"], ["y"])]
    model = _model(nodes, [_value("x", 4, 16)], [_value("y", 4, 8)], [codes, scale])
    simplified = simplify_model(model)
    assert _ops(simplified.model) == {"Cast": 1, "Mul": 1, "MatMul": 1}


@pytest.mark.slow
def test_model_zoo_resnet50_loses_its_batchnorms_like_onnxruntime_basic(tmp_path):
    import onnxruntime as ort

    path = corpus.fetch("resnet50")
    loaded = load_model(path)
    assert len(loaded.model.graph.node) == 176
    out = tmp_path / "out"
    compile_model(path, "a100", out, CompileOptions(passes=("simplify",)))
    optimized = onnx.load(out / "model.onnx")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(tmp_path / "ort_basic.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ort_basic = len(onnx.load(tmp_path / "ort_basic.onnx").graph.node)
    assert len(optimized.graph.node) <= min(123, ort_basic), (len(optimized.graph.node),
                                                               ort_basic)
    assert "BatchNormalization" not in _ops(optimized)
    check = verify_models(path, out / "model.onnx", rtol=1e-3, atol=1e-3)
    assert check.ok


def test_per_channel_scale_and_shift_fold_into_conv(tmp_path):
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["c", "scale"], ["m"]),
             helper.make_node("Add", ["shift", "m"], ["y"])]
    inits = [_weight("w", 8, 3, 3, 3), _weight("scale", 8, 1, 1), _weight("shift", 1, 8, 1, 1)]
    plan, optimized = _compile(tmp_path, _model(nodes, [_value("x", 1, 3, 16, 16)],
                                                [_value("y", 1, 8, 16, 16)], inits))
    assert _ops(optimized) == {"Conv": 1}
    assert plan["simplify"]["rules"]["per-channel Mul/Add folded into Conv"] == 2
