"""GQSA: pruned groups decode to 0, compensation helps, the allocation is exact, the BSR
artifact rebuilds the model's weights bit-exactly, and bad flags name themselves."""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import models
from mapper.compression.codes import unpack_bits
from mapper.passes.gqsa import artifact
from mapper.passes.gqsa.bqpo import quantize_pruned, to_codes
from mapper.passes.gqsa.refit import refit_scales, row_errors
from mapper.passes.gqsa.saliency import (
    MAX_DEVIATION,
    MAX_SHARE,
    allocate,
    group_saliency,
    prune_lowest,
)
from mapper.passes.rtn.quantize import round_to_nearest
from models.corpus.quantized import _float_mlp
from tests.conftest import run_mapper


def _layer(seed: int = 0, rows: int = 48, cols: int = 256, tokens: int = 1024):
    rng = np.random.default_rng(seed)
    # Correlated inputs with a few strong channels, like real activations.
    basis = rng.standard_normal((cols, cols)) / np.sqrt(cols)
    x = rng.standard_normal((tokens, cols)) @ basis * (1 + 4 * (rng.random(cols) < 0.05))
    w = rng.standard_normal((rows, cols))
    return w, x.T @ x, x


def _output_error(x: np.ndarray, w: np.ndarray, approx: np.ndarray) -> float:
    return float(np.linalg.norm(x @ (w - approx).T) / np.linalg.norm(x @ w.T))


def test_pruned_groups_decode_to_zero_and_compensation_helps():
    w, h, x = _layer()
    mask = prune_lowest(group_saliency(w, h, 32, "obs"), 0.5)
    codes = to_codes(quantize_pruned(w, h, mask, 4, 32, symmetric=False), 4, 32)
    dense = codes.dequantize()
    assert np.all(dense.reshape(48, 8, 32)[mask] == 0)
    assert np.array_equal(codes.scales == 0, mask)
    # Against pruning the same groups and rounding the rest, nothing compensated.
    naive = round_to_nearest(w, 4, 32, symmetric=False).dequantize().reshape(48, 8, 32)
    naive[mask] = 0
    assert _output_error(x, w, dense) < 0.9 * _output_error(x, w, naive.reshape(48, 256))


def test_obs_saliency_prunes_cheaper_groups_than_magnitude():
    w, h, x = _layer(1)
    errors = {}
    for method in ("obs", "wanda"):
        mask = prune_lowest(group_saliency(w, h, 32, method), 0.5)
        codes = to_codes(quantize_pruned(w, h, mask, 8, 32, symmetric=False), 8, 32)
        errors[method] = _output_error(x, w, codes.dequantize())
    magnitude = prune_lowest(group_saliency(w, np.eye(256), 32, "wanda"), 0.5)
    plain = to_codes(quantize_pruned(w, h, magnitude, 8, 32, False), 8, 32)
    assert errors["obs"] <= errors["wanda"] * 1.05
    assert errors["obs"] < _output_error(x, w, plain.dequantize())


def test_refit_never_raises_a_rows_error():
    w, h, _ = _layer(2)
    mask = prune_lowest(group_saliency(w, h, 32, "obs"), 0.25)
    codes = to_codes(quantize_pruned(w, h, mask, 3, 32, symmetric=False), 3, 32)
    refit = refit_scales(codes, w, h, h)
    assert np.all(row_errors(refit, w, h, h) <= row_errors(codes, w, h, h) + 1e-6)
    assert np.array_equal(refit.scales == 0, codes.scales == 0)
    assert np.array_equal(refit.scales.astype(np.float16).astype(np.float32), refit.scales)


def test_global_allocation_is_exact_and_never_worse_than_uniform():
    rng = np.random.default_rng(3)
    saliencies = [rng.gamma(shape, size=(16, 8)) for shape in (0.5, 1.0, 4.0)]
    energies = [10.0, 5.0, 1.0]
    total = sum(s.size for s in saliencies)
    costs = {}
    for method in ("uniform", "global"):
        found = allocate(saliencies, energies, 0.5, method)
        assert sum(int(m.sum()) for m in found.masks) == round(0.5 * total)
        assert all(share <= MAX_SHARE for share in found.shares)
        # Within the bound, up to the rounding of one group.
        assert all(abs(share - 0.5) <= MAX_DEVIATION + 1 / 128 for share in found.shares)
        costs[method] = sum(float(s[m].sum()) / e for s, m, e in
                            zip(saliencies, found.masks, energies, strict=True))
    assert costs["global"] <= costs["uniform"]
    assert len(set(allocate(saliencies, energies, 0.5, "global").shares)) > 1
    # Exact: no split of the same count within the bounds costs less.
    prefix = [np.concatenate([[0.0], np.cumsum(np.sort(s.ravel()) / e)])
              for s, e in zip(saliencies, energies, strict=True)]
    low, high = int(0.4 * 128), int(0.6 * 128)
    need = round(0.5 * total)
    best = min(prefix[0][a] + prefix[1][b] + prefix[2][need - a - b]
               for a in range(low, high + 1) for b in range(low, high + 1)
               if low <= need - a - b <= high)
    assert costs["global"] == pytest.approx(best, rel=1e-12)


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gqsa")
    path = tmp / "mlp.onnx"
    onnx.save(_float_mlp(), str(path))
    rng = np.random.default_rng(4)
    np.savez(tmp / "calib.npz", x=rng.standard_normal((12, 4, 256)).astype(np.float32))
    return path, tmp / "calib.npz"


def _decoded_matmulnbits(model: onnx.ModelProto, weight: str) -> np.ndarray:
    node = next(n for n in model.graph.node if n.op_type == "MatMulNBits"
                and n.input[1] == weight)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    k, n, bits, block = attrs["K"], attrs["N"], attrs["bits"], attrs["block_size"]
    groups = -(-k // block)
    codes = unpack_bits(inits[node.input[1]].reshape(n, -1), bits, groups * block)
    scales = inits[node.input[2]].reshape(n, groups)
    zero = unpack_bits(inits[node.input[3]], bits, groups) if len(node.input) > 3 \
        else np.full((n, groups), 1 << (bits - 1))
    column_group = np.arange(groups * block) // block
    values = (codes.astype(np.int32) - zero[:, column_group]).astype(np.float32) \
        * scales[:, column_group]
    return values[:, :k]


@pytest.mark.parametrize("allocation", ["uniform", "global"])
def test_artifact_round_trips_bit_exactly_and_verify_plan_counts_it(tmp_path, mlp,
                                                                    allocation):
    path, calib = mlp
    out = tmp_path / "out"
    result = run_mapper("compile", str(path), "--hw", "a100", "--compress", "gqsa",
                        "--bits", "4", "--group-size", "128", "--sparsity", "0.5",
                        "--sparsity-allocation", allocation, "--calib", str(calib),
                        "--passes", "estimate", "-o", str(out))
    assert result.code == 0, result.stderr
    plan = json.loads((out / "plan.json").read_text())
    section = plan["compression"]
    assert section["artifacts"] == [artifact.ARTIFACT]
    # Stage 2's refit is kept only where the held-out outputs get closer to the original's.
    note = next(n for p in plan["passes"] for n in p["notes"] if "closed form" in n)
    before, after = (float(v) for v in re.search(
        r"held-out output error (\S+) -> (\S+)$", note).groups())
    assert after <= before
    model = onnx.load(str(out / "model.onnx"))
    rebuilt = artifact.read(out / artifact.ARTIFACT)
    for entry in section["weights"]:
        assert np.array_equal(rebuilt[entry["name"]],
                              _decoded_matmulnbits(model, entry["name"]))
    assert sum(float((rebuilt[w["name"]] == 0).mean()) * np.prod(w["shape"])
               for w in section["weights"]) >= 0.49 * sum(np.prod(w["shape"])
                                                          for w in section["weights"])
    # bits per weight from the artifact, and below W2 g64's 2.28 at W4S50
    sizes = artifact.stored_bytes(out / artifact.ARTIFACT)
    for entry in section["weights"]:
        assert entry["bits_per_weight"] == pytest.approx(
            8 * sizes[entry["name"]] / np.prod(entry["shape"]), abs=1e-5)
    assert section["bits_per_weight"] < 2.28
    check = run_mapper("verify-plan", str(out / "model.onnx"), str(out / "plan.json"))
    assert check.code == 0, check.stdout
    # A plan whose bits disagree with the artifact is caught.
    entry = section["weights"][0]
    entry["artifact_bytes"] += 1
    (out / "plan.json").write_text(json.dumps(plan))
    assert run_mapper("verify-plan", str(out / "model.onnx"), str(out / "plan.json")).code == 4


def test_bad_gqsa_flags_exit_2_naming_the_flag(tmp_path, mlp):
    path, calib = mlp
    base = ["compile", str(path), "--hw", "a100", "--calib", str(calib), "-o",
            str(tmp_path / "o")]
    cases = [
        (["--compress", "gqsa", "--sparsity", "1.0"], "--sparsity"),
        (["--compress", "gqsa", "--sparsity", "-0.1"], "--sparsity"),
        (["--compress", "gqsa", "--group-size", "24"], "--group-size"),
        (["--compress", "gqsa", "--group-size", "512"], "--group-size"),
        (["--compress", "gqsa", "--bits", "3", "--format", "matmulnbits"], "lut"),
        (["--compress", "gqsa", "--bits", "5"], "--bits"),
        (["--compress", "rtn", "--sparsity", "0.5"], "gqsa pass"),
        (["--sparsity", "0.5"], "gqsa pass"),
    ]
    for extra, word in cases:
        result = run_mapper(*base, *extra)
        assert result.code == 2, (extra, result.stderr)
        assert word in result.stderr and "Traceback" not in result.stderr, (extra,
                                                                            result.stderr)
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_minilm_w4_beats_round_to_nearest(tmp_path):
    from models import minilm, text

    calib = text.calibration_file(tmp_path / "calib.npz", "calib", 24, minilm.tokenize)
    cosines = {}
    for method in ("rtn", "gqsa"):
        out = tmp_path / method
        result = run_mapper("compile", str(models.build("minilm_l6")), "--hw", "a100",
                            "--compress", method, "--bits", "4", "--group-size", "128",
                            "--embeddings", "off", "--calib", str(calib), "--passes",
                            "estimate", "-o", str(out))
        assert result.code == 0, result.stderr
        quality = json.loads((out / "plan.json").read_text())["compression"]["quality"]
        cosines[method] = next(o["cosine_mean"] for o in quality["outputs"]
                               if o["name"] == "sentence_embedding")
    assert cosines["gqsa"] > cosines["rtn"] + 0.02, cosines


def test_group_sparse_hardware_moves_only_the_kept_groups(tmp_path, mlp):
    path, calib = mlp
    plans = {}
    for name, extra in (("dense", []),
                        ("sparse", ["--set", "compute.group_sparse_kernels.efficiency=0.8"])):
        out = tmp_path / name
        result = run_mapper("compile", str(path), "--hw", "edge-npu", "--compress", "gqsa",
                            "--bits", "4", "--group-size", "128", "--sparsity", "0.5",
                            "--calib", str(calib), "-o", str(out), *extra)
        assert result.code == 0, result.stderr
        plans[name] = json.loads((out / "plan.json").read_text())
        check = run_mapper("verify-plan", str(out / "model.onnx"), str(out / "plan.json"))
        assert check.code == 0, check.stdout
    dense, sparse = (plans[k]["estimate"] for k in ("dense", "sparse"))
    stored = sum(w["artifact_bytes"] for w in plans["sparse"]["compression"]["weights"])
    onnx_bytes = sum(w["stored_bytes"] for w in plans["sparse"]["compression"]["weights"])
    assert sparse["weight_bytes"] == pytest.approx(dense["weight_bytes"] - onnx_bytes + stored,
                                                   rel=0.01)
    assert sparse["offchip_bytes"] < dense["offchip_bytes"]
    assert sparse["latency_s"] < dense["latency_s"]


def test_end_to_end_stage_lowers_the_heldout_loss_and_keeps_the_artifact_exact(tmp_path,
                                                                                mlp):
    path, calib = mlp
    out = tmp_path / "out"
    result = run_mapper("compile", str(path), "--hw", "a100", "--compress", "gqsa",
                        "--bits", "2", "--group-size", "64", "--sparsity", "0.25",
                        "--stage2", "e2e", "--calib", str(calib), "--passes", "estimate",
                        "-o", str(out))
    assert result.code == 0, result.stderr
    section = json.loads((out / "plan.json").read_text())["compression"]
    tuning = section["gqsa"]["e2e"]
    assert tuning["applied"], tuning
    assert tuning["heldout_loss_after"] < tuning["heldout_loss_before"]
    model = onnx.load(str(out / "model.onnx"))
    rebuilt = artifact.read(out / artifact.ARTIFACT)
    for entry in section["weights"]:
        decoded = _decoded_matmulnbits(model, entry["name"])
        assert np.array_equal(rebuilt[entry["name"]], decoded)
    assert run_mapper("verify-plan", str(out / "model.onnx"), str(out / "plan.json")).code == 0


def test_end_to_end_stage_without_torch_names_the_extra(monkeypatch):
    import sys

    from mapper.errors import UserError
    from mapper.passes.gqsa.e2e import tune_scales

    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(UserError, match=r"mapper\[compress\]"):
        tune_scales(_float_mlp(), [], {}, [])
