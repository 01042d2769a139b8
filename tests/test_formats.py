"""Stored formats in the graph view: quantized models stay quantized, sizes are stored sizes."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mapper.costs import stored_bits
from mapper.driver import compile_model
from mapper.graph import GraphView
from mapper.loader import load_model
from mapper.options import CompileOptions
from mapper.verify import verify_models
from models import corpus
from tests import onnx_builders as build

QUANTIZED = corpus.names("quantized")


def _initializer_bytes(model: onnx.ModelProto) -> int:
    return sum(len(i.raw_data) or i.ByteSize() for i in model.graph.initializer)


@pytest.mark.parametrize("name", QUANTIZED)
def test_a_quantized_model_stays_quantized(tmp_path, name):
    path = corpus.fetch(name)
    source = onnx.load(str(path))
    result = compile_model(path, "a100", tmp_path / "out", CompileOptions())
    emitted = onnx.load(str(tmp_path / "out" / "model.onnx"))
    stored_in, stored_out = _initializer_bytes(source), _initializer_bytes(emitted)
    assert abs(stored_out - stored_in) <= 0.1 * stored_in
    # The estimate prices what is stored: int8/int4 weights, not their decoded floats.
    priced = result.plan["estimate"]["weight_bytes"]
    assert abs(priced - stored_in) <= 0.1 * stored_in, (priced, stored_in)
    view = GraphView.from_model(load_model(tmp_path / "out" / "model.onnx").model)
    quantized = [f for f in view.formats.values() if f.quantized]
    assert quantized and all(f.bits in (4, 8) for f in quantized)
    feeds = corpus.sample_inputs(name)
    np.savez(tmp_path / "in.npz", **feeds)
    check = verify_models(path, tmp_path / "out" / "model.onnx", inputs=tmp_path / "in.npz")
    assert check.ok


def test_decode_chains_are_fused_into_their_consumer(tmp_path):
    view = GraphView.from_model(load_model(corpus.fetch("q_cast_mul_mlp")).model)
    decode = [n for n in view.nodes.values() if n.category == "decode"]
    assert {n.op_type for n in decode} == {"Cast", "Mul"}
    assert all(not n.inputs and not n.outputs for n in decode)
    fc0 = view.nodes["fc0"]
    assert "fc0.weight.q" in fc0.inputs and "fc0.weight.scale" in fc0.inputs
    stored = view.formats["fc0.weight"]
    assert stored.bits == 8 and stored.stored_bytes == 256 * 512 + 512 * 4
    assert "fc0.weight" not in view.tensors  # the decoded floats never exist
    # Every decode node still precedes the node that reads its weight.
    assert view.is_topological(view.model_order)
    assert not view.is_topological(tuple(reversed(view.model_order)))


def test_matmulnbits_format_reads_packed_bytes_and_zero_scale_groups():
    rng = np.random.default_rng(0)
    k, n, block = 64, 8, 32
    packed = rng.integers(0, 256, (n, k // block, block // 2), dtype=np.uint8)
    scales = rng.random((n, k // block)).astype(np.float32)
    scales[:, 0] = 0  # half the groups pruned
    node = helper.make_node("MatMulNBits", ["x", "w", "w.scales"], ["y"], name="q",
                            domain="com.microsoft", K=k, N=n, bits=4, block_size=block)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
        [numpy_helper.from_array(packed, "w"), numpy_helper.from_array(scales, "w.scales")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    stored = GraphView.from_model(model).formats["w"]
    assert stored.stored_bytes == packed.nbytes + scales.nbytes
    assert stored.bits == 4 and stored.group_size == block and stored.symmetric
    assert stored.sparsity == pytest.approx(0.5)
    assert stored.packed_bytes < stored.stored_bytes


def test_precision_sizes_float_tensors_everywhere(tmp_path):
    model = load_model(build.save(build.legacy_ir3_cnn(), tmp_path / "m.onnx")).model
    dense, half = GraphView.from_model(model), GraphView.from_model(model, "fp16")
    for name, tensor in dense.tensors.items():
        if tensor.dtype == "fp32":
            assert half.tensors[name].size * 2 == pytest.approx(tensor.size, abs=1)
            assert half.tensors[name].dtype == "fp16"
    floats = sum(t.size for t in dense.tensors.values()
                 if t.kind == "weight" and t.consumers and t.dtype == "fp32")
    assert half.weight_bytes() == dense.weight_bytes() - floats // 2
    assert stored_bits(TensorProto.INT64, "fp16") == 64  # integers keep their width


def test_folding_never_decodes_weights(tmp_path):
    codes = numpy_helper.from_array(np.arange(-64, 64, dtype=np.int8).reshape(8, 16), "w.q")
    scale = numpy_helper.from_array(np.full(16, 0.01, np.float32), "w.scale")
    nodes = [helper.make_node("Cast", ["w.q"], ["w.f"], to=TensorProto.FLOAT, name="cast"),
             helper.make_node("Mul", ["w.f", "w.scale"], ["w"], name="mul"),
             helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 16])], [codes, scale])
    path = build.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
                      tmp_path / "m.onnx")
    loaded = load_model(path).model
    assert [n.op_type for n in loaded.graph.node] == ["Cast", "Mul", "MatMul"]
    assert {i.name for i in loaded.graph.initializer} == {"w.q", "w.scale"}


def test_plan_precision_is_recorded_and_verify_plan_sizes_by_it(tmp_path, mapper_cli):
    model = build.save(build.legacy_ir3_cnn(), tmp_path / "m.onnx")
    out = tmp_path / "o"
    assert mapper_cli("compile", model, "--hw", "edge-npu", "--precision", "fp16",
                      "-o", str(out)).code == 0
    plan = json.loads((out / "plan.json").read_text())
    assert plan["model"]["precision"] == "fp16"
    check = mapper_cli("verify-plan", str(out / "model.onnx"), str(out / "plan.json"))
    assert check.code == 0, check.stdout
