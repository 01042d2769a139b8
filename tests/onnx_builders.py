"""Tiny ONNX models built inline for unit tests (each shows one loader or analysis case)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def save(model: onnx.ModelProto, path) -> str:
    """Write a model without checking it (some tests need invalid ones)."""
    path.write_bytes(model.SerializeToString())
    return str(path)


def legacy_ir3_cnn() -> onnx.ModelProto:
    """Model-zoo style: opset 9, IR 3, weights partly initializers not listed as inputs and
    partly made by ConstantOfShape/Constant, a Reshape target from a Constant."""
    rng = np.random.default_rng(0)
    conv_w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "conv_w")
    nodes = [
        helper.make_node("Constant", [], ["bias_shape"],
                         value=numpy_helper.from_array(np.array([4], np.int64))),
        helper.make_node("ConstantOfShape", ["bias_shape"], ["conv_b"],
                         value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.1])),
        helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Constant", [], ["flat_shape"],
                         value=numpy_helper.from_array(np.array([1, -1], np.int64))),
        helper.make_node("Reshape", ["p", "flat_shape"], ["f"]),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], transB=1),
    ]
    fc_w = numpy_helper.from_array(rng.standard_normal((10, 64)).astype(np.float32), "fc_w")
    fc_b = numpy_helper.from_array(np.zeros(10, np.float32), "fc_b")
    graph = helper.make_graph(
        nodes, "legacy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        initializer=[conv_w, fc_w, fc_b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    model.ir_version = 3
    return model


def dynamic_mlp() -> onnx.ModelProto:
    """MatMul -> Relu with a symbolic batch dim and a symbolic sequence dim."""
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Relu", ["m"], ["y"])],
        "dyn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 8])],
        initializer=[w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def if_model() -> onnx.ModelProto:
    """An If whose branches read an outer-scope tensor (a hidden dependency) plus a state input."""
    rng = np.random.default_rng(2)
    w = numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w")
    then_graph = helper.make_graph(
        [helper.make_node("MatMul", ["h", "w"], ["then_out"])], "then", [],
        [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, [1, 8])])
    else_graph = helper.make_graph(
        [helper.make_node("Neg", ["h"], ["else_out"])], "else", [],
        [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, [1, 8])])
    nodes = [
        helper.make_node("Add", ["x", "state"], ["h"]),
        helper.make_node("If", ["cond"], ["branch"], then_branch=then_graph,
                         else_branch=else_graph),
        helper.make_node("Tanh", ["branch"], ["y"]),
        helper.make_node("Identity", ["h"], ["new_state"]),
    ]
    graph = helper.make_graph(
        nodes, "with_if",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [1, 8]),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8]),
         helper.make_tensor_value_info("new_state", TensorProto.FLOAT, [1, 8])],
        initializer=[w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def cyclic_model() -> onnx.ModelProto:
    """Two nodes that read each other's outputs."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "b"], ["a"], name="first"),
         helper.make_node("Relu", ["a"], ["b"], name="second")],
        "cycle",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("b", TensorProto.FLOAT, [2])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def unsorted_unnamed_model() -> onnx.ModelProto:
    """Nodes stored out of dependency order, without names, two with the same name."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["a"], ["y"]),
         helper.make_node("Sigmoid", ["x"], ["a0"], name="dup"),
         helper.make_node("Neg", ["a0"], ["a"], name="dup")],
        "unsorted",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
