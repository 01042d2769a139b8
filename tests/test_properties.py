"""Random-graph property tests: valid random ONNX graphs through the default pipeline.

Each example is a random DAG (tests/graphgen.py) of the common operators: Conv, MatMul,
Gemm, Add, Mul, Relu, Concat, Split, Reshape, Transpose, Softmax, pooling, normalization,
Gather, Slice, Resize, LSTM and If. The properties, for every one of them:

* the compile never exits 1 (in fact exits 0: the graphs are valid and small);
* the plan passes `verify-plan` (mapper.verify_plan, the independent checker);
* the output model computes what the input computes, in onnxruntime (mapper.verify).

Through the lossy rtn pass: the compression section records a measured quality, and a
`max_degradation` of 0 turns any loss into exit 4 with nothing written.

Everything runs in-process (a `mapper` subprocess costs 1-2 s to start), derandomized so
every CI run sees the same graphs, without shrinking (a failure prints the example;
`MAPPER_SHRINK=1` turns shrinking back on to minimize it). One test per op family plus a
mixed one, so pytest-xdist spreads them over its workers; the examples add up to
`TOTAL_EXAMPLES`.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from mapper.options import CompileOptions, CompressionConfig, Degradation
from mapper.verify import verify_models
from mapper.verify_plan import verify_plan
from tests.graphgen import OPS, compile_exit, graphs, make_dynamic

FAMILIES: dict[str, tuple[str, ...]] = {
    "conv_pool": ("Conv", "Pool", "Relu", "Add"),
    "dense": ("MatMul", "Gemm", "Add", "Relu", "Reshape"),
    "elementwise": ("Add", "Mul", "Relu", "Softmax"),
    "layout": ("Concat", "Split", "Reshape", "Transpose", "Slice", "Gather"),
    "norm": ("Norm", "Conv", "Relu", "Transpose"),
    "resize": ("Resize", "Pool", "Conv", "Mul"),
    "lstm": ("LSTM", "MatMul", "Reshape", "Slice"),
    "if": ("If", "Relu", "MatMul", "Add", "Softmax"),
}
PER_FAMILY = 15
MIXED = 70
LOSSY = 30
TOTAL_EXAMPLES = PER_FAMILY * len(FAMILIES) + MIXED + LOSSY
HARDWARE = ("a100", "h100", "t4", "edge-npu", "ethos-u55", "eyeriss", "tpu-v4")
SPEED = CompileOptions(time_limit_s=2)

_PHASES = (Phase.explicit, Phase.generate, Phase.shrink) if os.environ.get("MAPPER_SHRINK") \
    else (Phase.explicit, Phase.generate)


def _settings(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, derandomize=True, phases=_PHASES,
                    print_blob=False, suppress_health_check=[
                        HealthCheck.too_slow, HealthCheck.data_too_large,
                        HealthCheck.function_scoped_fixture])


def _check_compile(model: onnx.ModelProto, directory: Path, hardware: str = "a100",
                   options: CompileOptions = SPEED) -> None:
    """The three properties, for one graph."""
    source = directory / "in.onnx"
    onnx.save(model, str(source))
    out = directory / "out"
    code, message = compile_exit(source, hardware, out, options)
    assert code == 0, f"exit {code} on {hardware}: {message}\n{onnx.printer.to_text(model.graph)}"
    check = verify_plan(out / "model.onnx", out / "plan.json")
    assert check.ok, f"verify-plan on {hardware}: {check.violations[:5]}"
    result = verify_models(source, out / "model.onnx", dims=dict(options.dims))
    assert result.ok, [o for o in result.outputs if not o.ok]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_op_family_compiles_verifies_and_matches(family, tmp_path_factory):
    @_settings(PER_FAMILY)
    @given(graphs(families=FAMILIES[family], max_ops=12, first=FAMILIES[family][0]))
    def check(model: onnx.ModelProto) -> None:
        _check_compile(model, tmp_path_factory.mktemp(family))

    check()


@pytest.mark.slow
@given(model=graphs(families=tuple(OPS), max_ops=30), hardware=st.sampled_from(HARDWARE),
       precision=st.sampled_from(["model", "fp16", "bf16", "int8"]),
       scratchpad=st.sampled_from([None, 4096, 65536]), dynamic=st.booleans())
@_settings(MIXED)
def test_mixed_graphs_on_every_kind_of_hardware(tmp_path_factory, model, hardware, precision,
                                                scratchpad, dynamic):
    dims: dict[str, int] = {}
    if dynamic:
        model, dims = make_dynamic(model)
    options = CompileOptions(time_limit_s=2, precision=precision, scratchpad=scratchpad,
                             dims=dims)
    _check_compile(model, tmp_path_factory.mktemp("mixed"), hardware, options)


@pytest.mark.parametrize("method", ["rtn", "gqsa"])
def test_lossy_passes_measure_quality_and_honour_the_gate(tmp_path_factory, method):
    """lqlora is left out: on weights this small its smallest config (the low-rank factors)
    costs more bits than any budget, which it refuses with exit 2, as it should."""

    @given(model=graphs(families=("Dense", "Relu", "Add", "Softmax"), max_ops=8,
                        first="Dense"), bits=st.sampled_from([4, 8]))
    @_settings(LOSSY // 2)
    def check(model: onnx.ModelProto, bits: int) -> None:
        _check_lossy(model, bits, method, tmp_path_factory.mktemp(method))

    check()


def _check_lossy(model: onnx.ModelProto, bits: int, method: str, directory: Path) -> None:
    source = directory / "in.onnx"
    onnx.save(model, str(source))
    compression = {"method": method, "bits": bits, "group_size": 16}
    options = CompileOptions(time_limit_s=2, compression=CompressionConfig(**compression))
    code, message = compile_exit(source, "a100", directory / "out", options)
    assert code == 0, message
    check = verify_plan(directory / "out" / "model.onnx", directory / "out" / "plan.json")
    assert check.ok, check.violations[:5]
    import json

    plan = json.loads((directory / "out" / "plan.json").read_text())
    quality = plan["compression"]["quality"]
    assert quality["eval_samples"] > 0 and 0 < quality["mean"] <= quality["reference"] + 1e-6
    assert plan["compression"]["bits_per_weight"] > bits
    gated = CompileOptions(time_limit_s=2, compression=CompressionConfig(
        **compression, max_degradation=Degradation(limit=0.0)))
    code, message = compile_exit(source, "a100", directory / "gated", gated)
    lossless = quality["mean"] >= quality["reference"]
    assert code == (0 if lossless else 4), message
    if code == 4:
        assert not (directory / "gated").exists() and "cosine" in message


def test_the_suite_runs_at_least_200_graphs():
    assert TOTAL_EXAMPLES >= 200


# --------------------------------------------------------------------------- regressions


def _relu_model(extra_outputs: list[str], shaped: bool = True) -> onnx.ModelProto:
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3] if shaped else None)]
    outputs += [helper.make_tensor_value_info(name, TensorProto.FLOAT, [2, 3])
                for name in extra_outputs]
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"], name="add")], "g", [x], outputs,
        [numpy_helper.from_array(np.ones((2, 3), np.float32), "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("passed_through", ["x", "w"])
def test_an_input_or_weight_that_is_also_a_graph_output(tmp_path, passed_through):
    """Was exit 1 ('plan.json breaks its schema: memory.traffic.non_compulsory' < 0): the
    pass-through output counted as compulsory traffic that no plan ever moves."""
    _check_compile(_relu_model([passed_through]), tmp_path)


def test_an_output_declared_without_a_shape(tmp_path):
    """Valid for mapper (it infers the shape); the loader's ONNX check must not reject it."""
    _check_compile(_relu_model([], shaped=False), tmp_path)


def test_simplify_keeps_an_input_that_is_also_an_output(tmp_path):
    """Was exit 1 with --compress rtn|gqsa (a weight stored twice) and a renamed graph input
    ('x' -> 'x_orig') otherwise: the simplify pass's optimizer renames a graph input that is
    also a graph output; the pass now keeps the model as loaded then."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4]),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [numpy_helper.from_array(np.linspace(-1, 1, 64, dtype=np.float32).reshape(16, 4), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    (tmp_path / "plain").mkdir()
    _check_compile(model, tmp_path / "plain")
    for method in ("rtn", "gqsa"):
        options = CompileOptions(time_limit_s=2, compression=CompressionConfig(
            method=method, bits=4, group_size=16))
        code, message = compile_exit(tmp_path / "plain" / "in.onnx", "a100",
                                     tmp_path / method, options)
        assert code == 0, message
