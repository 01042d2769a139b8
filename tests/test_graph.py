"""The graph view: FLOPs and bytes per op, attention chains, control flow, lifetimes."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mapper.graph import GraphView
from mapper.loader import ShapeSpec, load_model
from tests import onnx_builders as build


def _view(tmp_path, model: onnx.ModelProto, spec: ShapeSpec | None = None) -> GraphView:
    return GraphView.from_model(load_model(build.save(model, tmp_path / "m.onnx"), spec).model)


def _attention_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    scale = numpy_helper.from_array(np.array(0.125, np.float32), "scale")
    wq = numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "wq")
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"], name="proj"),
        helper.make_node("Transpose", ["q"], ["kt"], perm=[0, 2, 1], name="kt"),
        helper.make_node("MatMul", ["q", "kt"], ["scores"], name="qk"),
        helper.make_node("Mul", ["scores", "scale"], ["scaled"], name="scale"),
        helper.make_node("Softmax", ["scaled"], ["probs"], axis=-1, name="softmax"),
        helper.make_node("MatMul", ["probs", "q"], ["y"], name="av"),
    ]
    graph = helper.make_graph(
        nodes, "attn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 32, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 32, 64])],
        initializer=[scale, wq])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_matmul_flops_bytes_and_attention(tmp_path):
    view = _view(tmp_path, _attention_model())
    nodes = view.nodes
    assert nodes["proj"].flops == 2 * 2 * 32 * 64 * 64
    assert nodes["qk"].flops == 2 * 2 * 32 * 32 * 64
    assert nodes["av"].flops == 2 * 2 * 32 * 64 * 32
    assert nodes["proj"].bytes_read == (2 * 32 * 64 + 64 * 64) * 4
    assert nodes["proj"].bytes_written == 2 * 32 * 64 * 4
    assert {n.name for n in nodes.values() if n.attention} == {"qk", "av"}
    assert nodes["softmax"].category == "reduction"


def test_conv_and_gemm_flops(tmp_path):
    view = _view(tmp_path, build.legacy_ir3_cnn())
    conv = next(n for n in view.nodes.values() if n.op_type == "Conv")
    gemm = next(n for n in view.nodes.values() if n.op_type == "Gemm")
    # 4 output channels x 8 x 8 positions, 3 x 3 x 3 MACs each, plus the bias.
    assert conv.flops == 2 * 4 * 8 * 8 * 27 + 4 * 8 * 8
    assert gemm.flops == 2 * 10 * 64 + 10
    reshape = next(n for n in view.nodes.values() if n.op_type == "Reshape")
    assert reshape.category == "view" and reshape.bytes_read == 0


def test_if_costs_its_costlier_branch_and_reads_outer_scope(tmp_path):
    view = _view(tmp_path, build.if_model())
    branch = next(n for n in view.nodes.values() if n.op_type == "If")
    assert branch.flops == 2 * 8 * 8
    assert "h" in branch.inputs and "w" in branch.inputs
    producer_of_h = view.tensors["h"].producer
    assert view.dag.has_edge(producer_of_h, branch.name)


def test_lifetimes_and_live_bytes(tmp_path):
    view = _view(tmp_path, _attention_model())
    lifetimes = view.activation_lifetimes()
    order = list(view.model_order)
    assert lifetimes["q"] == (order.index("proj"), order.index("av"))
    assert lifetimes["y"][1] == len(order) - 1
    live = view.live_activation_bytes()
    assert len(live) == len(order)
    assert max(live) >= view.tensors["q"].size + view.tensors["scores"].size
    assert view.is_topological(order)
    assert not view.is_topological(list(reversed(order)))


def test_loop_with_constant_trip_count_costs_body_times_trips(tmp_path):
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("MatMul", ["h_in", "w"], ["h_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_in", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_out", TensorProto.FLOAT, [1, 8])])
    rng = np.random.default_rng(3)
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "cond", "x"], ["y"], body=body, name="loop")],
        "looped", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        initializer=[numpy_helper.from_array(np.array(5, np.int64), "trips"),
                     numpy_helper.from_array(np.array(True), "cond"),
                     numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    view = _view(tmp_path, model)
    assert view.nodes["loop"].flops == 5 * 2 * 8 * 8
    assert "w" in view.nodes["loop"].inputs


def test_gather_reads_only_the_rows_it_returns(tmp_path):
    table = numpy_helper.from_array(np.zeros((1000, 64), np.float32), "table")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["rows"], name="lookup")], "embed",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 16])],
        [helper.make_tensor_value_info("rows", TensorProto.FLOAT, [1, 16, 64])],
        initializer=[table])
    view = _view(tmp_path, helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    lookup = view.nodes["lookup"]
    assert lookup.bytes_read == 16 * 64 * 4 + 16 * 8
    assert lookup.bytes_written == 16 * 64 * 4
