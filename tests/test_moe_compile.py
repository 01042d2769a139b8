"""`mapper compile --devices N` on the reference MoE model: plan.moe, report, estimate, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

import models
from mapper.driver import compile_model
from mapper.options import CompileOptions
from mapper.passes.moe.synth import SynthSpec, save_trace, synthesize
from tests.conftest import run_mapper

_FAST = ("moe", "estimate")


def _moe_options(**moe) -> CompileOptions:
    return CompileOptions(passes=_FAST, time_limit_s=5, moe=moe)


@pytest.fixture(scope="module")
def moe_model():
    return models.build("moe_transformer")


def _check_section(moe: dict, devices: int) -> None:
    assert moe["num_devices"] == devices and moe["num_experts"] == 8 and moe["top_k"] == 2
    assert [layer["name"] for layer in moe["layers"]] == ["blocks.0.moe", "blocks.1.moe"]
    for layer in moe["layers"]:
        counts = np.bincount(layer["placement"], minlength=devices)
        assert (counts == 8 // devices).all()
    metrics = moe["metrics"]
    for key in ("load_max_over_mean", "cross_device_fraction", "cross_node_fraction",
                "alltoall_s"):
        assert key in metrics
        for name in ("contiguous", "round_robin", "eplb"):
            assert key in metrics["baselines"][name]
    assert metrics["load_max_over_mean"] <= metrics["baselines"]["eplb"]["load_max_over_mean"]


def test_cli_compile_places_experts_from_an_onnxruntime_trace(tmp_path, moe_model):
    out = tmp_path / "out"
    result = run_mapper("compile", str(moe_model), "--hw", "h100", "--devices", "4",
                        "--time-limit", "5", "-o", str(out), "--json")
    assert result.code == 0, result.stderr
    plan = json.loads((out / "plan.json").read_text())
    _check_section(plan["moe"], 4)
    assert plan["moe"]["devices_per_node"] == 8  # from h100's interconnect
    assert plan["moe"]["trace"]["source"].startswith("onnxruntime on")
    record = next(p for p in plan["passes"] if p["name"] == "moe")
    assert record["status"] == "ok" and record["solver"]["name"] == "cp-sat"
    estimate = plan["estimate"]
    assert estimate["moe_alltoall_s"] == plan["moe"]["metrics"]["alltoall_s"] > 0
    assert estimate["latency_s"] == pytest.approx(
        sum(op["time_s"] for op in estimate["ops"]) + estimate["moe_alltoall_s"])
    report = (out / "report.html").read_text()
    assert "MoE expert placement" in report and "Device-to-device transitions" in report


def test_same_model_same_moe_section(tmp_path, moe_model):
    plans = []
    for name in ("a", "b"):
        result = compile_model(moe_model, "h100", tmp_path / name,
                               _moe_options(devices=2, devices_per_node=1))
        plans.append(result.plan["moe"])
    assert plans[0] == plans[1]
    _check_section(plans[0], 2)
    assert plans[0]["metrics"]["cross_node_fraction"] == plans[0]["metrics"][
        "cross_device_fraction"]


def test_calibration_inputs_feed_the_trace(tmp_path, moe_model):
    calib = tmp_path / "calib.npz"
    rng = np.random.default_rng(0)
    np.savez(calib, input_ids=rng.integers(0, 1000, size=(3, 1, 32)))
    options = CompileOptions(passes=_FAST, time_limit_s=5, calib=calib, moe={"devices": 4})
    plan = compile_model(moe_model, "h100", tmp_path / "o", options).plan
    assert plan["moe"]["trace"]["tokens"] == 96
    assert str(calib) in plan["moe"]["trace"]["source"]


def test_given_trace_tokens_first(tmp_path, moe_model):
    trace = synthesize(SynthSpec(layers=2, experts=8, top_k=2, tokens=256, affinity=0.9,
                                 planted_devices=4, seed=0))
    path = tmp_path / "routes.npz"
    save_trace(trace, str(path), tokens_first=True)
    options = _moe_options(devices=4, trace=path, trace_layout="tokens-first")
    plan = compile_model(moe_model, "a100", tmp_path / "o", options).plan
    _check_section(plan["moe"], 4)
    assert plan["moe"]["trace"] == {"source": str(path), "tokens": 256, "layers": 2}


def test_skipped_without_devices(tmp_path, moe_model):
    plan = compile_model(moe_model, "h100", tmp_path / "o", CompileOptions(passes=_FAST)).plan
    record = next(p for p in plan["passes"] if p["name"] == "moe")
    assert record["status"] == "skipped" and "--devices" in record["notes"][0]
    assert plan["moe"] is None and plan["estimate"]["moe_alltoall_s"] == 0.0


def test_skipped_for_a_model_without_moe(tmp_path):
    plan = compile_model(models.build("resnet_small"), "h100", tmp_path / "o",
                         _moe_options(devices=4)).plan
    record = next(p for p in plan["passes"] if p["name"] == "moe")
    assert record["status"] == "skipped" and "no MoE layer" in record["notes"][0]


def test_no_detection_outlives_its_compile(tmp_path, moe_model):
    # The pipeline's pass objects live for the whole process: a detection kept past its
    # compile (once keyed by id(), which a later model can reuse) could route another
    # model's compile through the first one's MoE layers.
    from mapper.driver import PIPELINE
    from mapper.passes.moe.moe_pass import MoePass

    moe_pass = next(p for p in PIPELINE if isinstance(p, MoePass))
    for round_ in range(3):
        placed = compile_model(moe_model, "h100", tmp_path / f"m{round_}",
                               _moe_options(devices=4)).plan
        assert next(p for p in placed["passes"] if p["name"] == "moe")["status"] == "ok"
        assert moe_pass._cache is None
        plain = compile_model(models.build("resnet_small"), "h100", tmp_path / f"r{round_}",
                              _moe_options(devices=4)).plan
        assert next(p for p in plain["passes"] if p["name"] == "moe")["status"] == "skipped"
        assert moe_pass._cache is None


def test_cli_errors_exit_2(tmp_path, moe_model):
    wrong_layers = tmp_path / "three.npz"
    save_trace(synthesize(SynthSpec(layers=3, experts=8, top_k=2, tokens=64)),
               str(wrong_layers))
    for args, message in [
        (("--devices", "3"), "does not divide the 8 experts"),
        (("--devices", "4", "--trace", str(wrong_layers)), "has 3 layers"),
        (("--devices", "4", "--trace", str(tmp_path / "none.npz")), "does not exist"),
    ]:
        result = run_mapper("compile", str(moe_model), "--hw", "h100", "--passes", "moe",
                            "-o", str(tmp_path / "x"), *args)
        assert result.code == 2, (args, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr
        assert not (tmp_path / "x").exists()
