"""LQ-LoRA: NF quantizer, decomposition, budget ILP, emission, adapters and the CLI."""

from __future__ import annotations

import itertools
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mapper.passes.lqlora import budget
from mapper.passes.lqlora import search as search_module
from mapper.passes.lqlora.decompose import decompose, default_rank, estimate_errors, low_rank
from mapper.passes.lqlora.grid import IntConfig, grid, storage_bits
from mapper.passes.lqlora.nf import (
    QLORA_NF4,
    NfConfig,
    nearest_level,
    nf_levels,
    paper_grid,
    quantize,
)
from mapper.passes.lqlora.search import (
    SEARCH_ITERATIONS,
    Matrix,
    frontier,
    options_for,
    search,
)
from tests.conftest import run_mapper

# bitsandbytes' NF4 table (its create_normal_map), to 4 decimals.
BNB_NF4 = [-1.0, -0.6962, -0.5251, -0.3949, -0.2844, -0.1848, -0.0911, 0.0, 0.0796, 0.1609,
           0.2461, 0.3379, 0.4407, 0.5626, 0.7230, 1.0]


def test_nf_levels_and_the_paper_grid():
    np.testing.assert_allclose(nf_levels(4), BNB_NF4, atol=1e-4)
    for bits in (2, 3, 4, 8):
        levels = nf_levels(bits)
        assert levels.size == 1 << bits and levels[0] == -1 and levels[-1] == 1
        assert 0.0 in levels and np.all(np.diff(levels) > 0)
    configs = paper_grid()
    assert len(configs) == 432 == len(set(configs))
    assert round(QLORA_NF4.bits_per_weight(), 3) == 4.127


def test_nearest_level_is_exact_against_searchsorted():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.uniform(-1, 1, 20000).astype(np.float32),
                             np.float32([-1, 1, 0])])
    for bits in (2, 3, 4, 8):
        levels = nf_levels(bits)
        edges = (levels[1:] + levels[:-1]) / 2
        values_with_edges = np.concatenate([values, edges])
        expected = np.searchsorted(edges, values_with_edges, side="left")
        expected += (expected < edges.size) & (edges[np.minimum(expected, edges.size - 1)]
                                               < values_with_edges)
        got = nearest_level(values_with_edges, bits)
        assert np.array_equal(got, expected)
        # Nearest by distance: never farther than a brute-force argmin.
        brute = np.abs(values[:, None] - levels[None, :]).argmin(axis=1)
        assert np.all(np.abs(levels[got[:values.size]] - values)
                      <= np.abs(levels[brute] - values))


def test_quantize_stores_the_paper_bits_and_decodes_close():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((64, 256)).astype(np.float32)
    for config in (QLORA_NF4, NfConfig(2, 16, 3, 64, "bf16"), NfConfig(8, 32, 8, 16, "fp16")):
        q = quantize(w, config)
        formula = config.bits_per_weight() * w.size + 32
        # A partial last second-level group still stores one whole scale.
        assert formula <= q.stored_bits() <= formula + 32
        error = np.linalg.norm(q.dequantize() - w) / np.linalg.norm(w)
        assert error < {2: 0.5, 4: 0.12, 8: 0.01}[config.bits]


def test_decomposition_keeps_the_best_iterate_and_rank_zero_is_quantization():
    rng = np.random.default_rng(2)
    low = rng.standard_normal((96, 8)) @ rng.standard_normal((8, 128))
    w = (low + 0.3 * rng.standard_normal((96, 128))).astype(np.float32)
    config = NfConfig(3, 32, 8, 64, "fp32")
    plain = decompose(w, config, 0)
    assert plain.rank == 0 and plain.iterations == 1
    np.testing.assert_array_equal(plain.q.dequantize(), quantize(w, config).dequantize())
    with_rank = decompose(w, config, 8)
    first = decompose(w, config, 8, max_iterations=1)
    assert with_rank.error <= first.error < plain.error
    assert with_rank.error == pytest.approx(float(((w - with_rank.dense()) ** 2).sum()),
                                            rel=1e-4)


def test_weighted_low_rank_is_the_weighted_optimum():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((40, 30))
    importance = rng.uniform(0.1, 5, 30)
    l1, l2 = low_rank(w, 5, importance, 0)
    root = np.sqrt(importance)
    u, s, vt = np.linalg.svd(w * root, full_matrices=False)
    best = ((u[:, :5] * s[:5]) @ vt[:5]) / root
    np.testing.assert_allclose(l1 @ l2, best, atol=1e-4)


def test_estimates_track_the_exact_first_iteration():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((64, 128)).astype(np.float32)
    configs = [NfConfig(b, 32, 4, 64, "fp32") for b in (2, 3, 4)] + [IntConfig(4, 32)]
    estimates = estimate_errors(w, configs, 8, None)
    for config, estimate in zip(estimates.configs, estimates.errors, strict=True):
        exact = decompose(w, config, 8, max_iterations=1).error
        assert estimate == pytest.approx(exact, rel=0.1), config


def test_default_rank_scales_with_the_matrix():
    assert default_rank(4096, 4096) == 64
    assert default_rank(384, 1536) == 8
    assert default_rank(11008, 4096) == 64


def test_ilp_matches_brute_force_and_beats_uniform():
    rng = np.random.default_rng(5)
    bits = [[int(b) for b in sorted(rng.integers(100, 400, 4))] for _ in range(4)]
    errors = [sorted(rng.uniform(1, 10, 4), reverse=True) for _ in range(4)]
    for budget_bits in (800, 1000, 1200):
        solved = budget.solve(bits, errors, budget_bits, 5.0, 0)
        feasible = [(sum(errors[m][o] for m, o in enumerate(p)), p)
                    for p in itertools.product(range(4), repeat=4)
                    if sum(bits[m][o] for m, o in enumerate(p)) <= budget_bits]
        best = min(feasible)
        assert solved.objective == pytest.approx(best[0], rel=1e-9)
        assert solved.bits <= budget_bits and solved.status == "OPTIMAL"
    with pytest.raises(ValueError):
        budget.solve(bits, errors, 10, 1.0, 0)


def test_frontier_drops_dominated_options():
    rng = np.random.default_rng(6)
    m = Matrix("w", rng.standard_normal((32, 64)).astype(np.float32), None, (0,))
    options = options_for(m, grid("nf"), 0)
    front = frontier(options, False)
    assert 0 < len(front) < len(options) / 4
    for a, b in itertools.pairwise(front):
        assert a.q_bits < b.q_bits and a.estimate > b.estimate


def test_search_meets_the_budget_and_the_full_table_agrees():
    rng = np.random.default_rng(7)
    matrices = [Matrix(f"w{i}", (rng.standard_normal((64, 128)) * (i + 1)).astype(np.float32),
                       None, (8,)) for i in range(3)]
    elements = sum(m.elements for m in matrices)
    configs = [c for c in paper_grid() if c.scale_dtype == "fp32" and c.scale_block == 64]
    for target in (3.0, 3.5):
        budget_bits = int(target * elements)
        fast = search(matrices, configs, budget_bits, False, 10.0, 0)
        full = search(matrices, configs, budget_bits, False, 10.0, 0, exhaustive=True)
        used = sum(c.option.q_bits for c in fast.choices)
        assert used <= budget_bits and used >= budget_bits - 0.05 * elements
        assert fast.decomposed < full.decomposed
        assert fast.assignment.objective <= full.assignment.objective * 1.001
        assert fast.uniform is None or fast.assignment.objective <= fast.uniform[1]


def test_a_calibrated_cell_predicts_its_variants_exact_errors():
    # One cell (NF3, blocks of 32, rank 8): its finest and coarsest variants decomposed,
    # every other variant predicted from them within a few percent of its own decomposition,
    # where the raw first-step estimate is off by far more.
    rng = np.random.default_rng(8)
    w = (rng.standard_normal((96, 128)) + rng.standard_normal((96, 1)) * 3).astype(np.float32)
    m = Matrix("w", w, None, (8,))
    options = [o for o in options_for(m, grid("nf"), 0) if (o.config.bits, o.config.block)
               == (3, 32)]
    finest = min(options, key=lambda o: o.estimate)
    coarsest = max(options, key=lambda o: o.estimate)
    exact = {o: decompose(w, o.config, 8, None, 0, max_iterations=SEARCH_ITERATIONS).error
             for o in options}
    refined = search_module._cell_errors(m, options,
                                         decompose(w, finest.config, 8, None, 0,
                                                   max_iterations=SEARCH_ITERATIONS))
    known = {finest: exact[finest], coarsest: exact[coarsest]}
    values = search_module._calibrated(options, known, refined,
                                       {search_module._cell(finest): finest})
    predicted = [abs(values[o] / exact[o] - 1) for o in options if o not in known]
    raw = [abs(o.estimate / exact[o] - 1) for o in options if o not in known]
    assert max(predicted) < 0.03
    assert np.median(predicted) < np.median(raw) / 3


# --- end to end on a small MLP --------------------------------------------------------------


def _mlp(path, hidden=256):
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((128, hidden)) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((hidden, 64)) * 0.1).astype(np.float32)
    bias = (rng.standard_normal(64) * 0.1).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "fc1.weight"], ["h"], name="fc1"),
         helper.make_node("Relu", ["h"], ["r"], name="relu"),
         helper.make_node("Gemm", ["r", "fc2.weight", "fc2.bias"], ["y"], name="fc2",
                          alpha=0.5)],
        "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 128])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 64])],
        [numpy_helper.from_array(w1, "fc1.weight"), numpy_helper.from_array(w2, "fc2.weight"),
         numpy_helper.from_array(bias, "fc2.bias")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _compile(model, out, *flags):
    return run_mapper("compile", str(model), "--hw", "a100", "-o", str(out),
                      "--compress", "lqlora", *flags)


@pytest.mark.parametrize("grid_name", ["nf", "int", "mixed"])
def test_cli_meets_the_budget_and_verify_plan_recounts_it(tmp_path, grid_name):
    from mapper.verify_plan import check_plan

    model = _mlp(tmp_path / "mlp.onnx")
    result = _compile(model, tmp_path / "out", "--bits", "3.25", "--grid", grid_name)
    assert result.code == 0, (result.stdout + result.stderr)
    plan = json.loads((tmp_path / "out" / "plan.json").read_text())
    section = plan["compression"]
    details = section["lqlora"]
    # Two small matrices with 0.6 KiB of decode tables each: the budget is met, not filled.
    assert 2.9 <= details["bits_per_weight_q"] <= 3.25
    # The plan's bits come from the stored initializers, factors included.
    assert section["bits_per_weight"] == pytest.approx(details["bits_per_weight_total"],
                                                       abs=1e-4)
    assert check_plan(onnx.load(tmp_path / "out" / "model.onnx"), plan).ok
    for entry in section["weights"]:
        assert entry["factors"] == [f"{entry['name']}.lora_A", f"{entry['name']}.lora_B"]
    assert details["ilp"]["objective"] <= details["ilp"]["best_uniform"]["objective"]
    # GPTQ-compensated codes (the default) trade weight error for output error.
    compensation = details["compensation"]
    assert compensation["method"] == "gptq"
    assert compensation["output_error_after"] < compensation["output_error_before"]
    # Without compensation, Q + L1·L2 is closer to W than Q alone would be.
    result = _compile(model, tmp_path / "plain", "--bits", "3.25", "--grid", grid_name,
                      "--compensation", "none")
    assert result.code == 0, (result.stdout + result.stderr)
    plain = json.loads((tmp_path / "plain" / "plan.json").read_text())["compression"]
    assert plain["lqlora"]["compensation"] == {"method": "none"}
    for entry in plain["weights"]:
        assert entry["rel_error"] < entry["rel_error_quantized_only"]


def test_adapters_round_trip_through_torch(tmp_path):
    torch = pytest.importorskip("torch")
    import onnxruntime as ort
    from safetensors.torch import load_file

    model = _mlp(tmp_path / "mlp.onnx")
    result = _compile(model, tmp_path / "out", "--bits", "2.5")
    assert result.code == 0, (result.stdout + result.stderr)
    emitted = onnx.load(tmp_path / "out" / "model.onnx")
    adapters = load_file(tmp_path / "out" / "adapters.safetensors")
    # The dequantized Q of each weight, read from the emitted model's own decode.
    names = ["fc1.weight.dequantized", "fc2.weight.dequantized"]
    probe = onnx.ModelProto()
    probe.CopyFrom(emitted)
    probe.graph.output.extend([helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                               for n in names])
    x = np.random.default_rng(9).standard_normal((4, 128)).astype(np.float32)
    session = ort.InferenceSession(probe.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    y_onnx, q1, q2 = session.run(["y", *names], {"x": x})
    bias = torch.from_numpy(numpy_helper.to_array(
        next(i for i in onnx.load(model).graph.initializer if i.name == "fc2.bias")))

    def lora(name, inputs):
        a = adapters[f"base_model.model.{name}.lora_A.weight"]
        b = adapters[f"base_model.model.{name}.lora_B.weight"]
        return inputs @ a.T @ b.T

    xt = torch.from_numpy(x)
    hidden = torch.relu(xt @ torch.from_numpy(q1) + lora("fc1", xt))
    y_torch = hidden @ torch.from_numpy(q2) + bias + lora("fc2", hidden)
    np.testing.assert_allclose(y_torch.numpy(), y_onnx, atol=1e-5)


def test_budget_can_include_the_factors_and_bits_auto_fits_the_device(tmp_path):
    model = _mlp(tmp_path / "mlp.onnx")
    result = _compile(model, tmp_path / "lora", "--bits", "4", "--budget-includes-lora")
    assert result.code == 0, (result.stdout + result.stderr)
    details = json.loads((tmp_path / "lora" / "plan.json").read_text())["compression"]["lqlora"]
    assert details["bits_per_weight_total"] <= 4.0
    result = _compile(model, tmp_path / "auto", "--bits", "auto",
                      "--budget", "device_memory=60KiB")
    assert result.code == 0, (result.stdout + result.stderr)
    plan = json.loads((tmp_path / "auto" / "plan.json").read_text())
    assert "--bits auto" in plan["compression"]["lqlora"]["budget_note"]
    assert plan["estimate"]["peak_device_bytes"] <= 60 * 1024
    result = _compile(model, tmp_path / "tiny", "--bits", "auto",
                      "--budget", "device_memory=4KiB")
    assert result.code == 3, (result.stdout + result.stderr)
    assert not (tmp_path / "tiny").exists()


@pytest.mark.parametrize(("flags", "message"), [
    (["--bits", "1.5"], "below the smallest config: the minimum is"),
    (["--bits", "3", "--rank", "100"], "--rank 100 exceeds min(rows, cols) = 64"),
    (["--bits", "3", "--only", "fc2.bias"], "--only fc2.bias: that initializer is 1-D"),
    (["--bits", "3", "--format", "matmulnbits"], "--format matmulnbits cannot hold"),
    (["--bits", "3", "--grid", "int", "--format", "qdq"], "--format qdq cannot hold"),
    (["--bits", "3", "--budget", "memroy=1GiB"], "is not a plan metric; did you mean"),
    ([], "needs --bits"),
])
def test_bad_lqlora_input_exits_2_naming_the_flag(tmp_path, flags, message):
    model = _mlp(tmp_path / "mlp.onnx")
    result = _compile(model, tmp_path / "out", *flags)
    assert result.code == 2, (result.stdout + result.stderr)
    assert message in (result.stdout + result.stderr)
    assert "Traceback" not in (result.stdout + result.stderr)
    assert not (tmp_path / "out").exists()


def test_storage_bits_count_partial_groups():
    assert storage_bits(IntConfig(4, 32), 10, 40) == 10 * (2 * 32 * 4 + 2 * 32 + 8)


@pytest.mark.slow
def test_minilm_budget_is_met_and_the_ilp_beats_the_best_uniform_config(tmp_path):
    import models
    from mapper.verify_plan import check_plan

    out = tmp_path / "out"
    result = run_mapper("compile", str(models.build("minilm_l6")), "--hw", "a100", "-o",
                        str(out), "--compress", "lqlora", "--bits", "2.75")
    assert result.code == 0, result.stderr
    plan = json.loads((out / "plan.json").read_text())
    details = plan["compression"]["lqlora"]
    assert 2.74 <= details["bits_per_weight_q"] <= 2.75
    ilp = details["ilp"]
    assert ilp["objective"] < ilp["best_uniform"]["objective"]
    assert ilp["bound"] <= ilp["objective"]
    assert len(details["weights"]) == 36
    assert check_plan(onnx.load(out / "model.onnx"), plan).ok
    from safetensors.numpy import load_file

    adapters = load_file(out / "adapters.safetensors")
    assert len(adapters) == 72  # lora_A and lora_B for each of the 36 weights


def test_matmulbnb4_decodes_exactly_the_nf4_weights():
    import onnxruntime as ort

    from mapper.compression.sites import WeightSite
    from mapper.passes.lqlora.emit import _bnb4_site

    rng = np.random.default_rng(11)
    w = rng.standard_normal((64, 128)).astype(np.float32)  # [out, in]
    q = quantize(w, QLORA_NF4)
    site = WeightSite(node="mm", kind="matmul", weight="w", rows=64, cols=128,
                      activation="x", output="y")
    nodes, inits = _bnb4_site(site, q)
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [128, 128])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, [128, 64])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    decoded = session.run(None, {"x": np.eye(128, dtype=np.float32)})[0]
    np.testing.assert_array_equal(decoded, q.dequantize().T)


def test_bnb4_format_emits_nf4_weights_as_matmulbnb4(tmp_path):
    from mapper.verify_plan import check_plan

    model = _mlp(tmp_path / "mlp.onnx")
    result = _compile(model, tmp_path / "out", "--bits", "4.3", "--format", "bnb4",
                      "--rank", "0")
    assert result.code == 0, result.stderr
    emitted = onnx.load(tmp_path / "out" / "model.onnx")
    plan = json.loads((tmp_path / "out" / "plan.json").read_text())
    nf4 = [w["name"] for w in plan["compression"]["lqlora"]["weights"]
           if w["config"].startswith("nf4")]
    bnb = [n.input[1] for n in emitted.graph.node if n.op_type == "MatMulBnb4"]
    # Only the MatMul (not the Gemm) can be a MatMulBnb4, and only in an NF4 config.
    assert set(bnb) == set(nf4) - {"fc2.weight"}
    assert check_plan(emitted, plan).ok


@pytest.mark.parametrize("config", [NfConfig(3, 64, 8, 256, "fp32"), IntConfig(4, 32)])
def test_compensation_lowers_the_output_error_and_keeps_the_config(config):
    from mapper.passes.lqlora.compensate import compensate, output_error
    from mapper.passes.lqlora.grid import quantize_config

    rng = np.random.default_rng(3)
    cols = 256
    basis = rng.standard_normal((cols, cols)) / np.sqrt(cols)
    x = rng.standard_normal((2048, cols)) @ basis * (1 + 4 * (rng.random(cols) < 0.05))
    hessian = x.T @ x
    target = rng.standard_normal((64, cols)).astype(np.float32)
    q = quantize_config(target, config)
    better, before, after = compensate(q, target, hessian)
    assert after < 0.8 * before
    assert after == pytest.approx(output_error(target - better.dequantize(), hessian))
    assert before == pytest.approx(output_error(target - q.dequantize(), hessian))
    # The same config and stored bits: NF keeps its scales; integer groups may take new
    # ranges, in the same shapes and widths.
    assert not np.array_equal(better.codes, q.codes)
    if isinstance(config, NfConfig):
        assert better.stored_bits() == q.stored_bits()
        assert np.array_equal(better.block_scales(), q.block_scales())
    else:
        assert (better.bits, better.group_size) == (q.bits, q.group_size)
        assert better.scales.shape == q.scales.shape
        assert better.zero_point_array().shape == q.zero_point_array().shape
        assert int(better.codes.max()) < 1 << q.bits
