"""The CPU estimate prices the graph onnxruntime runs: a Conv+Relu or MatMul+Add+Relu is one
kernel (one per-op overhead, no memory round trip for the tensors inside it), while GPU
estimates of the same graph price every node alone, as before."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mapper.costs import op_time
from mapper.costs.cpu import (
    REFERENCE_GEMM,
    GemmShape,
    cpu_op_time,
    gemm_efficiency,
    resident_bandwidth,
)
from mapper.costs.fusion import cpu_fusion_groups
from mapper.driver import load_for, plan_loaded, resolve_hardware
from mapper.graph import GraphView
from mapper.options import CompileOptions

RNG = np.random.default_rng(0)


def _weight(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32), name)


def _model(nodes, inputs, outputs, initializers) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _value(name: str, *shape: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def conv_relu_then_mlp() -> onnx.ModelProto:
    """Conv+Relu, then a flattening Reshape and MatMul+Add+Relu: two fused groups."""
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Reshape", ["r", "shape"], ["flat"], name="flatten"),
        helper.make_node("MatMul", ["flat", "fc_w"], ["m"], name="matmul"),
        helper.make_node("Add", ["m", "fc_b"], ["a"], name="bias"),
        helper.make_node("Relu", ["a"], ["y"], name="relu2"),
    ]
    inits = [_weight("w", 8, 4, 3, 3), _weight("b", 8), _weight("fc_w", 8 * 16 * 16, 64),
             _weight("fc_b", 64), numpy_helper.from_array(np.array([1, -1], np.int64), "shape")]
    return _model(nodes, [_value("x", 1, 4, 16, 16)], [_value("y", 1, 64)], inits)


def _estimate(tmp_path, hardware: str) -> tuple[dict, GraphView]:
    path = tmp_path / "in.onnx"
    onnx.save(conv_relu_then_mlp(), path)
    options = CompileOptions(passes=("estimate",))
    loaded = load_for(path, options)
    plan, _ = plan_loaded(loaded, resolve_hardware(hardware, options), options, str(path))
    return plan["estimate"], GraphView.from_model(loaded.model)


def test_cpu_groups_follow_onnxruntime_rules():
    view = GraphView.from_model(conv_relu_then_mlp())
    groups = cpu_fusion_groups(view, view.model_order)
    members = {group.members for group in groups.values()}
    assert members == {("conv", "relu"), ("matmul", "bias", "relu2")}
    assert groups["relu"].internal == {"c"}
    assert groups["relu2"].internal == {"m", "a"}


def test_conv_output_read_twice_is_not_fused():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Add", ["c", "r"], ["y"], name="add")]
    model = _model(nodes, [_value("x", 1, 4, 8, 8)], [_value("y", 1, 8, 6, 6)],
                   [_weight("w", 8, 4, 3, 3)])
    view = GraphView.from_model(model)
    assert cpu_fusion_groups(view, view.model_order) == {}


def test_cpu_estimate_pays_one_launch_and_no_round_trip(tmp_path):
    estimate, view = _estimate(tmp_path, "epyc-9654")
    hardware = resolve_hardware("epyc-9654", CompileOptions())
    rows = {row["node"]: row for row in estimate["ops"]}
    assert rows["conv"]["fused"] == ["conv", "relu"]
    assert rows["matmul"]["fused"] == ["matmul", "bias", "relu2"]
    for follower, anchor in (("relu", "conv"), ("bias", "matmul"), ("relu2", "matmul")):
        assert rows[follower]["fused_into"] == anchor
        assert rows[follower]["time_s"] == 0.0
    # The fused intermediates are neither written nor read back.
    internal = sum(view.tensors[t].size for t in ("c", "m", "a"))
    plain = sum(node.bytes_read + node.bytes_written for name, node in view.nodes.items()
                if node.category != "view")
    assert sum(row["bytes"] for row in estimate["ops"]) == plain - 2 * internal
    # Two kernels pay two overheads, not five, and move fewer bytes.
    unfused = sum(cpu_op_time(view, node, hardware).time_s for node in view.nodes.values())
    overhead = hardware.compute.op_overhead_s
    assert estimate["latency_s"] <= unfused - 3 * overhead + 1e-15
    assert estimate["latency_s"] == pytest.approx(sum(row["time_s"] for row in estimate["ops"]))


def test_batchnorm_folded_by_onnxruntime_costs_nothing_on_cpu(tmp_path):
    # onnxruntime folds Conv+BatchNormalization into the weights at load: the CPU estimate
    # of a Conv+BN+Relu equals that of the Conv+Relu the simplify pass emits.
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "g", "beta", "mean", "var"], ["n"],
                              name="bn"),
             helper.make_node("Relu", ["n"], ["y"], name="relu")]
    inits = [_weight("w", 32, 16, 3, 3), _weight("g", 32), _weight("beta", 32),
             _weight("mean", 32),
             numpy_helper.from_array(np.abs(RNG.standard_normal(32)).astype(np.float32) + 1,
                                     "var")]
    path = tmp_path / "in.onnx"
    onnx.save(_model(nodes, [_value("x", 1, 16, 64, 64)], [_value("y", 1, 32, 64, 64)],
                     inits), path)
    view = GraphView.from_model(onnx.load(path))
    assert cpu_fusion_groups(view, view.model_order)["bn"].folded == {"bn"}
    latencies = []
    for skip in (("simplify",), ()):
        options = CompileOptions(passes=("simplify", "estimate"), skip=skip)
        loaded = load_for(path, options)
        plan, _ = plan_loaded(loaded, resolve_hardware("epyc-9654", options), options,
                              str(path))
        rows = {row["node"]: row for row in plan["estimate"]["ops"]}
        assert len(rows) == (3 if skip else 2)
        latencies.append(plan["estimate"]["latency_s"])
    assert latencies[0] == pytest.approx(latencies[1], rel=1e-3)


@pytest.mark.parametrize("gpu", ["a100", "h100"])
def test_gpu_estimate_prices_every_node_alone(tmp_path, gpu):
    estimate, view = _estimate(tmp_path, gpu)
    hardware = resolve_hardware(gpu, CompileOptions())
    _, main = hardware.main_memory
    for row in estimate["ops"]:
        assert "fused" not in row and "fused_into" not in row
        expected = op_time(view.nodes[row["node"]], hardware, main.bandwidth).time_s
        assert row["time_s"] == pytest.approx(expected)


def test_cpu_gemm_efficiency_and_cache_bandwidth():
    reference = GemmShape(REFERENCE_GEMM, REFERENCE_GEMM, REFERENCE_GEMM)
    assert gemm_efficiency(reference) == pytest.approx(1.0)
    skinny = gemm_efficiency(GemmShape(m=1, n=384, k=384))
    assert 0 < skinny < gemm_efficiency(GemmShape(m=128, n=384, k=384)) < 1
    assert gemm_efficiency(GemmShape(m=3136, n=1, k=9, batch=64, depthwise=True)) < 0.5
    hardware = resolve_hardware("epyc-9654", CompileOptions())
    dram = list(hardware.memory.values())[-1].bandwidth
    # A tensor that fits one core's L2 streams at its L2 rate; one past every cache at DRAM's.
    assert resident_bandwidth(hardware, 2**19, 1) == hardware.memory["l2"].bandwidth
    assert resident_bandwidth(hardware, 2**40, 1) == dram


def test_grouped_convolutions_split_by_whole_groups_over_threads():
    # MlasConv gives each thread whole groups: 3 groups on 2 threads take two groups' time,
    # 4 groups an even half each; one thread, or a depthwise conv, is not affected.
    def conv_time(groups: int, threads: int) -> float:
        channels = 240
        nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", group=groups)]
        model = _model(nodes, [_value("x", 1, channels, 28, 28)],
                       [_value("y", 1, channels, 28, 28)],
                       [_weight("w", channels, channels // groups, 1, 1)])
        view = GraphView.from_model(model)
        hardware = resolve_hardware("epyc-9654", CompileOptions(
            hardware_overrides=(f"compute.units={threads}",
                                f"compute.peak_ops.fp32={100 * threads}GFLOPS")))
        return cpu_op_time(view, view.nodes["conv"], hardware).time_s

    for groups in (3, 4):
        one, two = conv_time(groups, 1), conv_time(groups, 2)
        overhead = resolve_hardware("epyc-9654", CompileOptions()).compute.op_overhead_s
        speedup = (one - overhead) / (two - overhead)
        # The fork/join of the split run is a small part of these times.
        assert speedup == pytest.approx(1.5 if groups == 3 else 2.0, rel=0.05), groups


def test_run_overhead_is_paid_once_per_run(tmp_path):
    path = tmp_path / "in.onnx"
    onnx.save(conv_relu_then_mlp(), path)
    latencies = {}
    for overhead in ("0", "7us"):
        options = CompileOptions(passes=("estimate",),
                                 hardware_overrides=(f"compute.run_overhead={overhead}",))
        loaded = load_for(path, options)
        plan, _ = plan_loaded(loaded, resolve_hardware("epyc-9654", options), options,
                              str(path))
        latencies[overhead] = plan["estimate"]["latency_s"]
        assert plan["estimate"]["run_overhead_s"] == pytest.approx(
            0 if overhead == "0" else 7e-6)
        assert plan["estimate"]["latency_s"] == pytest.approx(
            sum(row["time_s"] for row in plan["estimate"]["ops"])
            + plan["estimate"]["run_overhead_s"])
    assert latencies["7us"] - latencies["0"] == pytest.approx(7e-6)


def test_integer_ops_multiply_their_codes_without_decoding_them():
    from mapper.costs import dequant_ops
    from mapper.formats import WeightFormat

    def int8(container: str) -> WeightFormat:
        return WeightFormat(name="w", shape=(256, 512), scheme="int", bits=8, group_size=256,
                            symmetric=True, sparsity=0.0, rank=0, stored_bytes=131072,
                            packed_bytes=131072, parts=("w",), container=container)

    assert dequant_ops(int8("MatMulInteger"), 4) == 0.0
    assert dequant_ops(int8("QLinearConv"), 4) == 0.0
    assert dequant_ops(int8("DequantizeLinear"), 4) == 2.0 * 256 * 512
