"""`--compress rtn`: onnxruntime's own codes, models onnxruntime runs, the gate, bad input."""

from __future__ import annotations

import copy
import json
import logging

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import models
from mapper.compression.codes import matmulnbits_arrays, pack_bits, unpack_bits
from mapper.passes.rtn.quantize import round_to_nearest
from tests.conftest import run_mapper


def _ort_quantize(model: onnx.ModelProto, bits: int, block: int, symmetric: bool
                  ) -> dict[str, np.ndarray]:
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    config = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=symmetric, bits=bits)
    quantizer = MatMulNBitsQuantizer(copy.deepcopy(model), bits=bits, block_size=block,
                                     is_symmetric=symmetric, algo_config=config)
    quantizer.process()
    return {i.name: numpy_helper.to_array(i) for i in quantizer.model.model.graph.initializer}


def _one_matmul(w: np.ndarray) -> onnx.ModelProto:
    k, n = w.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
        [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def minilm_weights() -> list[np.ndarray]:
    model = onnx.load(str(models.build("minilm_l6")))
    wanted = [i for i in model.graph.initializer if len(i.dims) == 2
              and i.dims[0] in (384, 1536) and i.dims[1] in (384, 1536)]
    return [numpy_helper.to_array(i) for i in wanted[:3]]


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("block", [32, 128])
def test_codes_scales_and_zero_points_equal_onnxruntimes(minilm_weights, bits, symmetric, block):
    rng = np.random.default_rng(bits)
    padded = rng.standard_normal((80, 24)).astype(np.float32)  # K = 80: a partial last block
    for w in [*minilm_weights, padded]:
        if w.shape[0] < block:
            continue
        ours = matmulnbits_arrays(round_to_nearest(w.T, bits, block, symmetric))
        theirs = _ort_quantize(_one_matmul(w), bits, block, symmetric)
        assert np.array_equal(ours[0], theirs[f"w_Q{bits}"])
        assert np.array_equal(ours[1], theirs["w_scales"].reshape(ours[1].shape))
        if symmetric:
            assert ours[2] is None and "w_zero_points" not in theirs
        else:
            assert np.array_equal(ours[2], theirs["w_zero_points"].reshape(ours[2].shape))


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 8])
def test_bit_packing_round_trips(bits):
    values = np.random.default_rng(bits).integers(0, 1 << bits, (7, 37), dtype=np.uint8)
    packed = pack_bits(values, bits)
    assert packed.shape == (7, -(-37 * bits // 8))
    assert np.array_equal(unpack_bits(packed, bits, 37), values)


def test_dequantized_weights_are_what_onnxruntime_computes():
    import onnxruntime as ort

    w = np.random.default_rng(1).standard_normal((96, 16)).astype(np.float32)
    codes = round_to_nearest(w.T, 4, 32, symmetric=False)
    b, scales, zero_points = matmulnbits_arrays(codes)
    node = helper.make_node("MatMulNBits", ["x", "b", "s", "z"], ["y"], domain="com.microsoft",
                            K=96, N=16, bits=4, block_size=32)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [96, 96])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [96, 16])],
        [numpy_helper.from_array(b, "b"), numpy_helper.from_array(scales, "s"),
         numpy_helper.from_array(zero_points, "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    identity = np.eye(96, dtype=np.float32)
    (decoded,) = session.run(None, {"x": identity})
    assert np.allclose(decoded, codes.dequantize().T, rtol=0, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("fmt,bits", [("matmulnbits", 4), ("matmulnbits", 2), ("qdq", 8)])
def test_minilm_compiles_to_a_model_onnxruntime_runs(tmp_path, fmt, bits):
    out = tmp_path / "out"
    result = run_mapper("compile", str(models.build("minilm_l6")), "--hw", "a100",
                        "--compress", "rtn", "--bits", str(bits), "--format", fmt,
                        "--group-size", "32", "-o", str(out), "--passes", "estimate")
    assert result.code == 0, result.stderr
    plan = json.loads((out / "plan.json").read_text())
    section = plan["compression"]
    assert section["method"] == "rtn" and len(section["weights"]) >= 36
    expected = bits + 32 / 32 + (bits / 32)  # codes + fp32 scale + zero point per 32
    assert section["bits_per_weight"] == pytest.approx(expected, rel=1e-3)
    assert section["quality"]["metric"] == "cosine"
    assert (0.85 if bits >= 4 else 0.0) < section["quality"]["mean"] <= 1.0
    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert ("MatMulNBits" in ops) == (fmt == "matmulnbits")
    assert ("DequantizeLinear" in ops) == (fmt == "qdq")
    check = run_mapper("verify-plan", str(out / "model.onnx"), str(out / "plan.json"))
    assert check.code == 0 and "compression" in check.stdout, check.stdout


def test_quality_gate_exits_4_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    result = run_mapper("compile", str(models.build("gpt_decoder")), "--hw", "a100",
                        "--dim", "seq=16", "--compress", "rtn", "--bits", "2",
                        "--max-degradation", "0.0001", "-o", str(out), "--passes", "estimate")
    assert result.code == 4, result.stderr
    assert "nothing was written" in result.stderr and "cosine mean" in result.stderr
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == []


def test_bad_compression_flags_exit_2_naming_the_flag(tmp_path):
    model = str(models.build("gpt_decoder"))
    base = ["compile", model, "--hw", "a100", "--dim", "seq=16", "-o", str(tmp_path / "o")]
    cases = [
        (["--compress", "rtn", "--bits", "3", "--format", "matmulnbits"], ["--bits 3"]),
        (["--bits", "4"], ["--bits", "--compress"]),
        (["--compress", "rtn", "--group-size", "48"], ["--group-size", "power of two"]),
        (["--compress", "rtn", "--group-size", "512"], ["--group-size"]),
        (["--compress", "rtn", "--bits", "4", "--format", "qdq", "--bits", "2"], ["--bits 2"]),
        (["--compress", "nope"], ["--compress"]),
    ]
    for extra, words in cases:
        result = run_mapper(*base, *extra)
        assert result.code == 2, (extra, result.stderr)
        assert "Traceback" not in result.stderr
        for word in words:
            assert word in result.stderr, (extra, result.stderr)
    assert not (tmp_path / "o").exists()


def test_a_reduction_dim_that_is_not_a_multiple_of_the_group_is_padded(tmp_path):
    import onnxruntime as ort

    w = np.random.default_rng(2).standard_normal((80, 24)).astype(np.float32)
    path = tmp_path / "m.onnx"
    onnx.save(_one_matmul(w), str(path))
    out = tmp_path / "o"
    result = run_mapper("compile", str(path), "--hw", "a100", "--compress", "rtn", "--bits", "8",
                        "--group-size", "32", "-o", str(out), "--passes", "estimate")
    assert result.code == 0, result.stderr
    x = np.random.default_rng(3).standard_normal((1, 80)).astype(np.float32)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": x})
    decoded = round_to_nearest(w.T, 8, 32, symmetric=False).dequantize().T
    assert np.allclose(y, x @ decoded, rtol=1e-5, atol=1e-4)  # the padding changes nothing
    assert np.corrcoef(y.ravel(), (x @ w).ravel())[0, 1] > 0.999
    node = next(n for n in onnx.load(str(out / "model.onnx")).graph.node)
    assert node.op_type == "MatMulNBits"
    b = next(i for i in onnx.load(str(out / "model.onnx")).graph.initializer if i.name == "w")
    assert list(b.dims) == [24, 3, 32]  # ceil(80 / 32) blocks, the last one padded
