"""`mapper measure`: latency and per-op times of a model in onnxruntime, and the estimate."""

from __future__ import annotations

import json

import onnx

from tests.conftest import run_mapper
from tests.onnx_builders import dynamic_mlp, save

DIMS = ("--dim", "batch=2", "--dim", "seq=4")


def test_measure_reports_latency_and_the_models_own_nodes(tmp_path):
    model = save(dynamic_mlp(), tmp_path / "mlp.onnx")
    result = run_mapper("measure", model, *DIMS, "--runs", "5", "--warmup", "1",
                        "--ort-level", "none", "--hw", "epyc-9654", "--json")
    assert result.code == 0, result.stderr
    payload = json.loads(result.stdout)
    latency = payload["latency_s"]
    assert 0 < latency["min"] <= latency["median"] <= latency["max"]
    assert payload["runs"] == 5 and payload["hardware"] == "epyc-9654"
    # The rows are the nodes mapper names (the source model's are unnamed), each measured.
    rows = payload["nodes"]
    assert [row["op"] for row in rows] == ["MatMul", "Relu"]
    assert all(row["in_model"] and row["measured_s"] > 0 and row["estimate_s"] > 0
               for row in rows)
    assert len({row["node"] for row in rows}) == 2 and all(row["node"] for row in rows)
    assert {o["op"] for o in payload["op_types"]} == {"MatMul", "Relu"}
    assert payload["ratio"] == payload["estimate_s"] / latency["median"]


def test_measure_names_the_nodes_of_a_named_model_and_prints_a_table(tmp_path):
    named = dynamic_mlp()
    for index, node in enumerate(named.graph.node):
        node.name = f"layer{index}"
    model = save(named, tmp_path / "named.onnx")
    result = run_mapper("measure", model, *DIMS, "--runs", "3")
    assert result.code == 0, result.stderr
    assert "latency   median" in result.stdout
    assert "layer0" in result.stdout and "MatMul" in result.stdout
    as_json = run_mapper("measure", model, *DIMS, "--runs", "3", "--ort-level", "none", "--json")
    nodes = [row["node"] for row in json.loads(as_json.stdout)["nodes"]]
    assert nodes == [node.name for node in onnx.load(model).graph.node]


def test_measure_refuses_bad_input_with_exit_2(tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    result = run_mapper("measure", str(broken), "--json")
    assert result.code == 2
    assert "broken.onnx" in json.loads(result.stdout)["message"]
    model = save(dynamic_mlp(), tmp_path / "mlp.onnx")
    unresolved = run_mapper("measure", model)
    assert unresolved.code == 2 and "batch" in unresolved.stderr
    missing = run_mapper("measure", str(tmp_path / "absent.onnx"))
    assert missing.code == 2 and "absent.onnx" in missing.stderr


def test_nodes_onnxruntime_makes_are_given_to_the_model_nodes_they_came_from(tmp_path):
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1] * 4),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1] * 4),
             helper.make_node("Add", ["c2", "r1"], ["y"], name="residual")]
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
             for name, shape in (("w1", (32, 16, 3, 3)), ("b1", (32,)),
                                 ("w2", (32, 32, 3, 3)), ("b2", (32,)))]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 32, 32])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "conv.onnx"
    onnx.save(model, path)
    result = run_mapper("measure", str(path), "--runs", "3", "--ort-level", "all", "--json")
    assert result.code == 0, result.stderr
    payload = json.loads(result.stdout)
    # onnxruntime fuses and re-lays out (NCHWc reorders, Conv+Relu, Conv+Add); every kernel
    # it ran lands on a model node, none is left unattributed.
    assert [row["node"] for row in payload["nodes"]] == [n.name for n in nodes]
    assert all(row["in_model"] for row in payload["nodes"])
    assert any(row["ran_as"] for row in payload["nodes"])
