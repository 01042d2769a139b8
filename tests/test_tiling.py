"""Tiling pass: GEMM problem extraction, the checker, fallbacks, caching, records, report."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mapper.errors import InfeasibleError
from mapper.formats import WeightFormat
from mapper.graph import GraphView
from mapper.hwmodels.loader import load_hardware
from mapper.loader import load_model
from mapper.options import CompileOptions, TilingConfig
from mapper.passes.tiling import gpu, tile_problem
from mapper.passes.tiling.constraints import check_record
from mapper.passes.tiling.cpsat import SolveOutcome
from mapper.passes.tiling.problems import GemmProblem, extract_problems
from mapper.passes.tiling.report import kernels_section
from mapper.passes.tiling.triton import triton_config
from mapper.pipeline import PassContext
from tests import onnx_builders as build


def _w(name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.random.default_rng(0).standard_normal(shape)
                                   .astype(np.float32), name)


def _gemm_zoo() -> onnx.ModelProto:
    """Linear layer (batch folds into M), attention-style batched MatMul, Gemm with transB,
    grouped Conv, ConvTranspose, and two identical MatMuls."""
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="linear"),
        helper.make_node("Reshape", ["h", "heads"], ["q"], name="split_heads"),
        helper.make_node("Transpose", ["q"], ["kt"], perm=[0, 1, 3, 2], name="kt"),
        helper.make_node("MatMul", ["q", "kt"], ["scores"], name="attn"),
        helper.make_node("Reshape", ["scores", "flat"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w2"], ["g"], transB=1, name="gemm"),
        helper.make_node("MatMul", ["g", "w3"], ["g2"], name="same_a"),
        helper.make_node("MatMul", ["g", "w3"], ["g3"], name="same_b"),
        helper.make_node("Conv", ["img", "cw"], ["c"], group=2, pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("ConvTranspose", ["c", "tw"], ["u"], strides=[2, 2], name="deconv"),
    ]
    inits = [_w("w1", (64, 96)), numpy_helper.from_array(np.array([2, 4, 16, 24], np.int64),
                                                         "heads"),
             numpy_helper.from_array(np.array([2, 1024], np.int64), "flat"),
             _w("w2", (48, 1024)), _w("w3", (48, 32)), _w("cw", (8, 2, 3, 3)),
             _w("tw", (8, 4, 2, 2))]
    graph = helper.make_graph(
        nodes, "zoo",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16, 64]),
         helper.make_tensor_value_info("img", TensorProto.FLOAT, [1, 4, 10, 10])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in
         ("g2", "g3", "u")], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    path = build.save(_gemm_zoo(), tmp_path_factory.mktemp("zoo") / "zoo.onnx")
    loaded = load_model(path)
    return loaded.model, GraphView.from_model(loaded.model)


def _context(model, view, hw_name: str, **options) -> PassContext:
    return PassContext(model=model, view=view, hardware=load_hardware(hw_name),
                       options=CompileOptions(**options), order=view.model_order)


def test_problems_cover_matmul_attention_gemm_conv(zoo):
    model, view = zoo
    sites, skipped = extract_problems(model, view, view.model_order)
    assert not skipped
    shapes = {s.node: (s.problem.batch, s.problem.m, s.problem.n, s.problem.k) for s in sites}
    assert shapes["linear"] == (1, 32, 96, 64)        # [2,16,64] @ [64,96]: batch folds into M
    assert shapes["attn"] == (8, 16, 16, 24)          # [2,4,16,24] @ [2,4,24,16]: kept batched
    assert shapes["gemm"] == (1, 2, 48, 1024)         # transB: w2 is [N, K]
    assert shapes["conv"] == (2, 100, 4, 18)          # groups=2: M=N*OH*OW, N=OC/g, K=IC/g*9
    assert shapes["deconv"] == (1, 100, 16, 8)        # GEMM + col2im: N=OC*KH*KW, K=IC
    conv = next(s.problem for s in sites if s.node == "conv")
    assert conv.a_bytes == 1 * 4 * 10 * 10 * 4       # the real input, not the im2col matrix
    assert conv.b_bytes == 8 * 2 * 3 * 3 * 4
    assert all(s.problem.dtype == "fp32" for s in sites)
    fp16, _ = extract_problems(model, GraphView.from_model(model, "fp16"), view.model_order)
    assert {s.problem.dtype for s in fp16} == {"fp16"}
    assert next(s.problem for s in fp16 if s.node == "linear").a_bits == 16


def test_a_quantized_weight_is_read_at_its_stored_bytes(zoo):
    model, _ = zoo
    dense = GraphView.from_model(model, "fp16")
    packed = WeightFormat(name="w1", shape=(64, 96), scheme="int", bits=4, group_size=32,
                          symmetric=False, sparsity=0.0, rank=0, stored_bytes=3456,
                          packed_bytes=3456, parts=("w1",), container="MatMulNBits")
    view = GraphView(dense.nodes, dense.tensors, dense.graph_outputs, "fp16",
                     {**dense.formats, "w1": packed})
    sites, _ = extract_problems(model, view, view.model_order)
    linear = next(s.problem for s in sites if s.node == "linear")
    assert linear.dtype == "fp16" and linear.b_bits == 4
    assert linear.b_bytes == 3456


def test_pass_records_every_gemm_once_and_caches_identical_shapes(zoo):
    from mapper.passes.tiling import TilingPass

    model, view = zoo
    result = TilingPass()(_context(model, view, "a100"))
    kernels = result.sections["kernels"]
    assert [k["node"] for k in kernels] == [s.node for s in
                                            extract_problems(model, view, view.model_order)[0]]
    same = {k["node"]: k for k in kernels if k["node"] in ("same_a", "same_b")}
    assert not same["same_a"]["cached"] and same["same_b"]["cached"]
    assert same["same_b"]["solve_s"] == 0.0
    assert same["same_a"]["tile"] == same["same_b"]["tile"]
    assert result.solver is not None and result.solver.status == "OPTIMAL"
    hw = load_hardware("a100")
    for record in kernels:
        assert check_record(record, hw) == [], record
        for key in ("node", "op", "dtype", "problem", "tile", "smem_bytes", "regs_per_thread",
                    "blocks_per_unit", "est_time_s", "bound", "solve_s"):
            assert key in record
        assert set(record["tile"]) >= {"BM", "BN", "BK", "warps", "stages", "split_k"}
        assert record["bound"] in ("compute", "memory") and record["est_time_s"] > 0


def test_same_input_same_records(zoo):
    from mapper.passes.tiling import TilingPass

    model, view = zoo
    first = TilingPass()(_context(model, view, "h100", seed=3)).sections["kernels"]
    second = TilingPass()(_context(model, view, "h100", seed=3)).sections["kernels"]
    assert json.dumps(first) == json.dumps(second)


def test_accelerator_records_are_loop_nests(zoo):
    from mapper.passes.tiling import TilingPass

    model, view = zoo
    hw = load_hardware("tpu-v5e")
    result = TilingPass()(_context(model, view, "tpu-v5e"))
    kernels = result.sections["kernels"]
    assert kernels and all(k["target"] == "accelerator" for k in kernels)
    for record in kernels:
        assert record["tile"]["stationary"] in ("output", "weight", "input")
        assert record["tile"]["Tn"] % 128 == 0 and record["tile"]["Tk"] % 128 == 0
        assert record["smem_bytes"] <= hw.memory["vmem"].size
        assert check_record(record, hw) == []
    # fp32 graph on a bf16/int8 TPU: the documented dtype fallback, on the record and in notes
    assert all(k["dtype"] == "bf16" and k["fallback"]["requested_dtype"] == "fp32"
               for k in kernels)
    assert any("tiled as bf16" in note for note in result.notes)


def test_dtype_fallback_or_exit3(zoo):
    from mapper.passes.tiling import TilingPass

    model, view = zoo
    view = GraphView.from_model(model, "fp8")
    result = TilingPass()(_context(model, view, "v100", precision="fp8"))
    kernels = result.sections["kernels"]
    assert {k["dtype"] for k in kernels} == {"fp16"}
    assert all(k["fallback"] == {"requested_dtype": "fp8", "reason": kernels[0]["fallback"][
        "reason"]} for k in kernels)
    assert "nearest supported dtype" in kernels[0]["fallback"]["reason"]
    with pytest.raises(InfeasibleError, match="nearest supported dtype is fp16"):
        TilingPass()(_context(model, view, "v100", precision="fp8",
                              tiling=TilingConfig(dtype_fallback=False)))


def test_no_tile_fits_is_recorded_not_a_crash(zoo):
    from mapper.passes.tiling import TilingPass

    model, view = zoo
    hw = load_hardware("edge-npu", ("memory.scratchpad.size=2KiB",))
    context = replace(_context(model, view, "edge-npu"), hardware=hw)
    result = TilingPass()(context)
    assert result.sections["kernels"] == []
    assert any("scratchpad capacity" in note and "priced by the roofline" in note
               for note in result.notes)
    with pytest.raises(InfeasibleError, match="scratchpad capacity"):
        tile_problem(hw, GemmProblem.dense(256, 256, 256, "int8"), TilingConfig())


def test_time_out_without_answer_falls_back_to_the_heuristic(zoo, monkeypatch):
    from mapper.passes.tiling import TilingPass

    def no_answer(*args, **kwargs):
        return None, SolveOutcome(None, "UNKNOWN", None, None, 0.0, 0.0)

    monkeypatch.setattr(gpu, "solve_cpsat", no_answer)
    model, view = zoo
    result = TilingPass()(_context(model, view, "a100"))
    assert result.status == "fallback"
    assert result.solver is not None and result.solver.status == "UNKNOWN"
    hw = load_hardware("a100")
    for record in result.sections["kernels"]:
        assert record["solver"]["status"] in ("fallback",) or record["cached"]
        assert check_record(record, hw) == []


def _valid_record(hw_name: str = "a100", dtype: str = "fp16") -> dict:
    return tile_problem(load_hardware(hw_name), GemmProblem.dense(2048, 2048, 2048, dtype),
                        TilingConfig())


@pytest.mark.parametrize("corrupt, message", [
    (lambda r: r["tile"].update(BM=24), "power of two"),
    (lambda r: r["tile"].update(BK=8), "MMA shape"),
    (lambda r: r.update(smem_bytes=r["smem_bytes"] + 2), "stages*(BM*BK+BK*BN)"),
    (lambda r: r["tile"].update(stages=40) or r.update(smem_bytes=40 * r["tile"]["BK"] * (
        r["tile"]["BM"] + r["tile"]["BN"]) * 2), "shared_memory_per_block"),
    (lambda r: r["tile"].update(warps=64, warp_grid=[8, 8]), "max_threads_per_block"),
    (lambda r: r.update(regs_per_thread=300), "registers/thread"),
    (lambda r: r.update(blocks_per_unit=40), "max_blocks_per_unit"),
    (lambda r: r["tile"].update(split_k=4096), "empty"),
])
def test_checker_catches_each_violation(corrupt, message):
    record = _valid_record()
    assert check_record(record, load_hardware("a100")) == []
    corrupt(record)
    assert any(message in v for v in check_record(record, load_hardware("a100"))), \
        check_record(record, load_hardware("a100"))


def test_checker_catches_accelerator_violations():
    hw = load_hardware("edge-npu")
    record = tile_problem(hw, GemmProblem.dense(512, 512, 512, "int8"), TilingConfig())
    assert check_record(record, hw) == []
    bad = json.loads(json.dumps(record))
    bad["tile"]["Tn"] = 100
    assert any("multiple of the array" in v for v in check_record(bad, hw))
    bad = json.loads(json.dumps(record))
    bad["tile"].update(Tm=4096, Tk=4096)
    assert any("capacity" in v for v in check_record(bad, hw))
    assert any("no fp8 peak" in v for v in check_record({**record, "dtype": "fp8"}, hw))


def test_contract_record_fields_and_triton_config():
    record = _valid_record("h100")
    tile = record["tile"]
    assert record["smem_bytes"] == tile["stages"] * (tile["BM"] * tile["BK"]
                                                     + tile["BK"] * tile["BN"]) * 2
    assert tile["warps"] * 32 <= 1024 and tile["BM"] % 64 == 0  # wgmma: m = 64
    triton = record["triton"]
    assert (triton["BLOCK_SIZE_M"], triton["BLOCK_SIZE_N"], triton["BLOCK_SIZE_K"]) == \
        (tile["BM"], tile["BN"], tile["BK"])
    assert triton["num_warps"] == tile["warps"] and triton["num_stages"] == tile["stages"]
    assert triton["exact"] == (tile["split_k"] == 1 and not tile["persistent"])
    only = tile_problem(load_hardware("h100"), GemmProblem.dense(2048, 2048, 2048, "fp16"),
                        TilingConfig(triton_only=True))
    assert only["triton"]["exact"] and only["tile"]["split_k"] == 1
    small = gpu.make_tile(gpu.gpu_target(load_hardware("a100"), "fp16"), 64, 64, 32, 2, 2, 3,
                          1, 0)
    assert triton_config(small, GemmProblem.dense(100, 64, 64, "fp16"))["GROUP_SIZE_M"] == 2


def test_optimum_beats_heuristic_and_first_feasible():
    hw = load_hardware("a100")
    problem = GemmProblem.dense(3000, 1000, 147, "fp16")
    target = gpu.gpu_target(hw, "fp16")
    space = gpu.gpu_space(problem, target, gpu.GpuOptions())
    record = tile_problem(hw, problem, TilingConfig())
    best = record["model"]["objective"]
    for other in (gpu.heuristic(problem, target, space),
                  gpu.first_feasible(problem, target, space)):
        assert other is not None
        assert gpu.evaluate_tile(problem, target, space, other)["objective"] >= best


def test_model_prefers_big_tiles_for_big_gemms_and_is_memory_bound_for_gemv():
    hw = load_hardware("a100")
    big = tile_problem(hw, GemmProblem.dense(8192, 8192, 8192, "fp16"), TilingConfig())
    assert big["bound"] == "compute" and big["tile"]["BM"] * big["tile"]["BN"] >= 128 * 128
    assert 200e12 < big["flops"] / big["est_time_s"] < 312e12
    gemv = tile_problem(hw, GemmProblem.dense(1, 8192, 8192, "fp16"), TilingConfig())
    assert gemv["bound"] == "memory"
    # a GEMV reads B once: time within 25% of its bytes at the HBM bandwidth
    assert gemv["est_time_s"] == pytest.approx(8192 * 8192 * 2 / 2039e9, rel=0.25)


def test_report_section_lists_kernels(zoo):
    from mapper.passes.tiling import TilingPass

    model, view = zoo
    kernels = TilingPass()(_context(model, view, "a100")).sections["kernels"]
    html = kernels_section({"kernels": kernels})
    assert "Kernels (tiling)" in html and "linear" in html and "cached" in html
    assert kernels_section({"kernels": []}) == ""


def test_a_sustained_clock_slows_compute_bound_gemms_by_its_share():
    problem = GemmProblem.dense(8192, 8192, 8192, "fp16")
    boost = load_hardware("l4", ("compute.sustained_clock=2.04GHz",))
    sustained = load_hardware("l4")
    fast = tile_problem(boost, problem, TilingConfig())
    slow = tile_problem(sustained, problem, TilingConfig())
    assert fast["bound"] == slow["bound"] == "compute"
    assert slow["est_time_s"] / fast["est_time_s"] == pytest.approx(
        1 / sustained.sustained_share, rel=0.05)
    # A memory-bound GEMV streams its weight at the same bytes per second either way.
    gemv = GemmProblem.dense(1, 8192, 8192, "fp16")
    assert tile_problem(sustained, gemv, TilingConfig())["est_time_s"] == pytest.approx(
        tile_problem(boost, gemv, TilingConfig())["est_time_s"], rel=0.15)
