"""One plan tells one story: stored bytes move every figure that prices them, consistently.

The same model compiled dense, with `--compress rtn --bits 4`, and at `--precision fp16`:
peak device bytes, off-chip traffic, the memory plan's tensor sizes, the tiling pass's
weight bits and the latency each move by what the stored format predicts.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import models
from mapper.driver import compile_model
from mapper.options import CompileOptions


@pytest.fixture(scope="module")
def plans(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("story")
    path = models.build("gpt_decoder")
    runs = {"dense": CompileOptions(dims={"seq": 64}),
            "rtn4": CompileOptions(dims={"seq": 64},
                                   compression={"method": "rtn", "bits": 4,
                                                "group_size": 32, "embeddings": "off"}),
            "fp16": CompileOptions(dims={"seq": 64}, precision="fp16")}
    return {name: compile_model(path, "edge-npu", tmp / name, options).plan
            for name, options in runs.items()}


def test_every_figure_moves_by_what_the_format_predicts(plans):
    dense, rtn, half = plans["dense"], plans["rtn4"], plans["fp16"]
    section = rtn["compression"]
    dense_bytes = sum(w["dense_bytes"] for w in section["weights"])
    stored = sum(w["stored_bytes"] for w in section["weights"])
    saved = dense_bytes - stored
    assert stored == pytest.approx(dense_bytes * (4 + 32 / 32 + 4 / 32) / 32, rel=0.01)
    # Peak device bytes: the weights shrink by exactly what the format saved.
    assert dense["estimate"]["peak_device_bytes"] - rtn["estimate"]["peak_device_bytes"] \
        == pytest.approx(saved, rel=0.01)
    assert dense["estimate"]["weight_bytes"] - rtn["estimate"]["weight_bytes"] == saved
    # The memory plan sizes every part of a packed weight at its stored bytes.
    sizes = rtn["memory"]["tensors"]
    for weight in section["weights"]:
        assert sum(sizes.get(part, 0) for part in weight["parts"]) == weight["stored_bytes"]
    # Off-chip traffic: every weight is read once at least, so it falls by about `saved`.
    drop = dense["estimate"]["offchip_bytes"] - rtn["estimate"]["offchip_bytes"]
    assert drop == pytest.approx(saved, rel=0.1)
    # Tiling reads the compressed weights at 4 bits.
    compressed = {w["node"] for w in section["weights"]}
    kernels = {k["node"]: k for k in rtn["kernels"]}
    assert compressed <= set(kernels)
    assert all(kernels[node]["element_bits"]["b"] == 4 for node in compressed)
    # fp16: every float tensor halves, so weights, traffic and arena all halve (ids stay).
    assert half["estimate"]["weight_bytes"] == pytest.approx(
        dense["estimate"]["weight_bytes"] / 2, rel=0.01)
    assert half["arena"]["size"] == pytest.approx(dense["arena"]["size"] / 2, rel=0.05)
    assert half["estimate"]["offchip_bytes"] < 0.6 * dense["estimate"]["offchip_bytes"]
    assert all(k["dtype"] == "fp16" for k in half["kernels"])
    assert half["estimate"]["latency_s"] < dense["estimate"]["latency_s"]
    assert rtn["estimate"]["latency_s"] < dense["estimate"]["latency_s"]


def _gemm_model(path, m: int, k: int, n: int) -> str:
    w = (np.random.default_rng(0).standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="gemm")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [m, n])],
        [numpy_helper.from_array(w.astype(np.float16), "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path)


@pytest.mark.parametrize("m,faster", [(1, True), (1024, False)])
def test_4bit_weights_speed_up_memory_bound_gemms_only(tmp_path, m, faster):
    path = _gemm_model(tmp_path / "g.onnx", m, 4096, 4096)
    options = CompileOptions(passes=("tiling", "estimate"))
    dense = compile_model(path, "h100", tmp_path / "dense", options).plan
    packed = compile_model(path, "h100", tmp_path / "rtn", options.model_copy(update={
        "compression": options.compression.model_copy(update={"method": "rtn", "bits": 4})}
    )).plan
    ratio = packed["estimate"]["latency_s"] / dense["estimate"]["latency_s"]
    kernel = packed["kernels"][0]["est_time_s"] / dense["kernels"][0]["est_time_s"]
    if faster:
        # A GEMV reads its weights once: 16 -> ~4.2 bits; the launch overhead stays.
        assert kernel < 0.45 and ratio < 0.6, (kernel, ratio)
    else:
        assert kernel > 0.95 and ratio > 0.95, (kernel, ratio)  # compute-bound
