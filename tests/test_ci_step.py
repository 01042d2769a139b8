"""mapper as a deployment-CI step: fits, budgets, the published schema, config files, and one
JSON object from every command (success or error)."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from mapper.budgets import evaluate, parse_budget
from mapper.errors import UserError
from mapper.metrics import find_metric
from mapper.plan_schema import plan_json_schema
from tests import onnx_builders as build
from tests.conftest import ROOT, run_mapper


def _wide_mlp(width: int = 1024) -> object:
    """x[1, width] -> MatMul(width x width) -> Relu: 4 MiB of fp32 weights at 1024."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((width, width)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
         helper.make_node("Relu", ["m"], ["y"], name="relu")], "wide",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])], initializer=[w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    return build.save(_wide_mlp(), tmp_path_factory.mktemp("wide") / "wide.onnx")


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    return build.save(build.legacy_ir3_cnn(), tmp_path_factory.mktemp("cnn") / "cnn.onnx")


def _plan(out) -> dict:
    return json.loads((out / "plan.json").read_text())


def _without_seconds(plan: dict) -> dict:
    for record in plan["passes"]:
        record.pop("seconds")
    return plan


# --- fits ----------------------------------------------------------------------------------

def test_weights_in_flash_that_is_too_small_do_not_fit(tmp_path, wide):
    out = tmp_path / "o"
    result = run_mapper("compile", wide, "--hw", "ethos-u55", "--set", "memory.flash.size=1MiB",
                        "-o", str(out))
    assert result.code == 0, result.stderr  # not fitting is a warning without a budget
    assert "warning: the model does not fit ethos-u55: weights need 4.0 MiB, its flash holds " \
        "1.0 MiB" in result.stderr
    assert "fits             NO: weights 4.0 MiB of 1.0 MiB flash" in result.stdout
    estimate = _plan(out)["estimate"]
    assert estimate["fits"] is False
    rows = {row["memory"]: row for row in estimate["memory_fit"]}
    assert rows["flash"] == {"memory": "flash", "holds": ["weights"], "bytes": 4 * 2**20,
                             "capacity": 2**20, "fits": False}
    assert rows["sram"]["holds"] == ["activations"] and rows["sram"]["fits"]
    assert "does not fit" in (out / "report.html").read_text()


def test_a_gpu_holds_everything_in_main_memory(tmp_path, wide):
    out = tmp_path / "o"
    assert run_mapper("compile", wide, "--hw", "a100", "-o", str(out)).code == 0
    estimate = _plan(out)["estimate"]
    assert estimate["fits"] is True
    assert [row["memory"] for row in estimate["memory_fit"]] == ["hbm"]
    assert estimate["memory_fit"][0]["holds"] == ["weights", "activations"]
    assert estimate["device_memory_bytes"] == estimate["memory_fit"][0]["capacity"]


def test_a_level_may_not_share_what_it_holds(tmp_path):
    text = (ROOT / "hwmodels" / "ethos-u55.yaml").read_text().replace(
        "holds: [activations]", "holds: [weights, activations]")
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    result = run_mapper("hw", "validate", str(path))
    assert result.code == 2
    assert "weights may be held by one level only" in result.stderr


# --- budgets -------------------------------------------------------------------------------

def test_budgets_parse_in_the_metric_unit():
    assert parse_budget("latency=5ms").limit == pytest.approx(0.005)
    assert parse_budget("offchip=300MB").limit == 300e6
    assert parse_budget("device_memory=16MiB").limit == 16 * 2**20
    assert parse_budget("device_memory=fit").is_fit
    assert parse_budget("estimate.moe_alltoall_s=2ms").limit == pytest.approx(0.002)
    for bad, said in (("latency", "METRIC=LIMIT"), ("latncy=5ms", "did you mean 'latency'"),
                      ("latency=fast", "cannot read 'fast'"), ("offchip=fit", "'fit'")):
        with pytest.raises(UserError, match=said):
            parse_budget(bad)


def test_quality_is_better_higher_for_cosine_and_lower_for_perplexity():
    plan = {"compression": {"quality": {"metric": "cosine", "mean": 0.98}}}
    assert evaluate(plan, [parse_budget("quality=0.99")])[0]["ok"] is False
    assert evaluate(plan, [parse_budget("quality=0.95")])[0]["ok"] is True
    plan = {"compression": {"quality": {"metric": "perplexity", "mean": 30.0}}}
    assert evaluate(plan, [parse_budget("quality=25")])[0]["ok"] is False
    assert find_metric("quality").direction(plan) == "lower"


def test_a_violated_budget_exits_4_after_writing_everything(tmp_path, cnn):
    out = tmp_path / "o"
    result = run_mapper("compile", cnn, "--hw", "ethos-u55", "-o", str(out),
                        "--budget", "latency=1us", "--budget", "offchip=1GB")
    assert result.code == 4, result.stderr
    assert "1 budget(s) exceeded: latency_s" in result.stderr and "(limit 1us)" in result.stderr
    assert "latency_s" in result.stdout and "EXCEEDED" in result.stdout
    plan = _plan(out)
    assert [(b["metric"], b["ok"]) for b in plan["budgets"]] == \
        [("latency_s", False), ("offchip_bytes", True)]
    assert plan["budgets"][0]["limit"] == pytest.approx(1e-6)
    assert plan["budgets"][0]["value"] == plan["estimate"]["latency_s"]
    assert (out / "model.onnx").is_file() and "Budgets" in (out / "report.html").read_text()


def test_budget_failure_with_json_is_one_error_object(tmp_path, cnn):
    result = run_mapper("compile", cnn, "--hw", "a100", "-o", str(tmp_path / "o"),
                        "--budget", "device_memory=1KiB", "--json")
    assert result.code == 4
    payload = json.loads(result.stdout)
    assert payload["error"] == "budget" and payload["exit_code"] == 4
    assert payload["budgets"][0]["metric"] == "peak_device_bytes"
    assert payload["summary"]["budgets"] == payload["budgets"]


def test_device_memory_fit_follows_each_level(tmp_path, wide):
    result = run_mapper("compile", wide, "--hw", "ethos-u55", "--set", "memory.flash.size=1MiB",
                        "-o", str(tmp_path / "o"), "--budget", "device_memory=fit")
    assert result.code == 4
    assert "does not fit the device memory" in result.stderr
    ok = run_mapper("compile", wide, "--hw", "ethos-u55", "-o", str(tmp_path / "p"),
                    "--budget", "device_memory=fit")
    assert ok.code == 0, ok.stderr


def test_a_compression_budget_without_compression_is_a_usage_error(tmp_path, cnn):
    result = run_mapper("compile", cnn, "--hw", "a100", "-o", str(tmp_path / "o"),
                        "--budget", "quality=0.99")
    assert result.code == 2
    assert "add --compress METHOD" in result.stderr
    assert not (tmp_path / "o").exists()


# --- the published schema ------------------------------------------------------------------

def test_schema_command_prints_the_plan_schema_and_a_plan_validates(tmp_path, cnn):
    result = run_mapper("schema", "plan")
    assert result.code == 0
    schema = json.loads(result.stdout)
    assert schema == plan_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    out = tmp_path / "o"
    assert run_mapper("compile", cnn, "--hw", "h100", "-o", str(out), "--budget",
                      "latency=1s").code == 0
    jsonschema.validate(_plan(out), schema)
    broken = _plan(out)
    broken["estimate"]["fits"] = "yes"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_the_committed_schema_is_the_generated_one():
    committed = json.loads((ROOT / "schemas" / "plan.schema.json").read_text())
    assert committed == plan_json_schema(), "regenerate: mapper schema plan > " \
        "schemas/plan.schema.json"


@pytest.mark.parametrize("subject", ["hardware", "config"])
def test_schemas_of_inputs_are_valid_json_schema(subject):
    result = run_mapper("schema", subject)
    assert result.code == 0
    jsonschema.Draft202012Validator.check_schema(json.loads(result.stdout))


# --- config files --------------------------------------------------------------------------

CONFIG = """\
seed: 3
time_limit_s: 20
scratchpad: 256KiB
skip: [moe]
memory: {objective: peak, search_order: false}
budgets: {latency: 50ms, device_memory: fit}
"""
FLAGS = ["--seed", "3", "--time-limit", "20", "--scratchpad", "256KiB", "--skip", "moe",
         "--memory-objective", "peak", "--no-order-search", "--budget", "latency=50ms",
         "--budget", "device_memory=fit"]


def test_a_config_file_and_the_same_flags_give_identical_plans(tmp_path, cnn):
    config = tmp_path / "deploy.yaml"
    config.write_text(CONFIG)
    by_file, by_flags = tmp_path / "file", tmp_path / "flags"
    assert run_mapper("compile", cnn, "--hw", "edge-npu", "--config", str(config), "-o",
                      str(by_file)).code == 0
    assert run_mapper("compile", cnn, "--hw", "edge-npu", *FLAGS, "-o", str(by_flags)).code == 0
    first, second = _without_seconds(_plan(by_file)), _without_seconds(_plan(by_flags))
    assert first == second
    assert [b["metric"] for b in first["budgets"]] == ["latency_s", "peak_device_bytes"]
    assert first["memory"]["capacity"] == 256 * 1024


def test_mapper_yaml_in_the_working_directory_is_picked_up(tmp_path, cnn):
    (tmp_path / "mapper.yaml").write_text("budgets: [latency=1us]\n")
    picked = run_mapper("compile", cnn, "--hw", "a100", "-o", str(tmp_path / "a"), cwd=tmp_path)
    assert picked.code == 4 and "settings from mapper.yaml" in picked.stderr
    ignored = run_mapper("compile", cnn, "--hw", "a100", "-o", str(tmp_path / "b"),
                         "--no-config", cwd=tmp_path)
    assert ignored.code == 0, ignored.stderr
    # flags override the file
    over = run_mapper("compile", cnn, "--hw", "a100", "-o", str(tmp_path / "c"), "--budget",
                      "latency=1s", cwd=tmp_path)
    assert over.code == 0, over.stderr


def test_an_unknown_config_key_names_the_nearest(tmp_path, cnn):
    (tmp_path / "mapper.yaml").write_text("budget: {latency: 5ms}\n")
    result = run_mapper("compile", cnn, "--hw", "a100", "-o", str(tmp_path / "a"), cwd=tmp_path)
    assert result.code == 2
    assert "unknown key 'budget'; did you mean 'budgets'?" in result.stderr


# --- one JSON object from every command ----------------------------------------------------

ARENA_CSV = "id,lower,upper,size\nb1,0,3,4\nb2,3,9,4\nb3,0,9,4\n"


def _commands(tmp_path, cnn) -> list[tuple[str, list[str], list[str]]]:
    """(name, a succeeding command line, a failing one) for every command."""
    out = tmp_path / "c"
    problem = tmp_path / "p.csv"
    problem.write_text(ARENA_CSV)
    hw = tmp_path / "hw.yaml"
    hw.write_text((ROOT / "hwmodels" / "t4.yaml").read_text())
    routes = tmp_path / "routes.npz"
    return [
        ("compile", ["compile", cnn, "--hw", "a100", "-o", str(out)],
         ["compile", cnn, "--hw", "a100", "-o", str(tmp_path / "x"), "--bits", "3"]),
        ("verify", ["verify", cnn, str(out / "model.onnx")],
         ["verify", cnn, str(tmp_path / "missing.onnx")]),
        ("verify-plan", ["verify-plan", str(out / "model.onnx"), str(out / "plan.json")],
         ["verify-plan", str(out / "model.onnx"), str(tmp_path / "none.json")]),
        ("study", ["study", cnn, "--hw", "a100,t4"], ["study", cnn, "--hw", "a100,nope"]),
        ("tile", ["tile", "--m", "64", "--n", "64", "--k", "64", "--hw", "h100"],
         ["tile", "--m", "64", "--n", "64", "--k", "64", "--hw", "h100", "--dtype", "int4"]),
        ("hw list", ["hw", "list"], ["hw", "list", "--bogus"]),
        ("hw show", ["hw", "show", "a100"], ["hw", "show", "a1000"]),
        ("hw validate", ["hw", "validate", str(hw)], ["hw", "validate", str(problem)]),
        ("moe synth", ["moe", "synth", "--layers", "2", "--experts", "4", "--tokens", "64",
                       "-o", str(routes)], ["moe", "synth", "--layers", "0", "-o", str(routes)]),
        ("moe place", ["moe", "place", "--trace", str(routes), "--devices", "2",
                       "--time-limit", "2"],
         ["moe", "place", "--trace", str(problem), "--devices", "2"]),
        ("arena solve", ["arena", "solve", str(problem), "--capacity", "12", "-o",
                         str(tmp_path / "s.csv")],
         ["arena", "solve", str(problem), "--capacity", "4", "-o", str(tmp_path / "t.csv")]),
        ("diff", ["diff", str(out / "plan.json"), str(out / "plan.json")],
         ["diff", str(out / "plan.json"), str(problem)]),
        ("schema", ["schema", "plan"], ["schema", "planet"]),
        ("measure", ["measure", cnn, "--runs", "2", "--warmup", "1", "--hw", "a100"],
         ["measure", str(tmp_path / "missing.onnx")]),
        ("hw probe", ["hw", "probe", "-o", str(tmp_path / "host.yaml"), "--seconds", "2"],
         ["hw", "probe", "-o", str(problem)]),
    ]


def test_every_command_prints_one_json_object_on_success_and_on_error(tmp_path, cnn):
    for name, good, bad in _commands(tmp_path, cnn):
        ok = run_mapper(*good, "--json")
        assert ok.code == 0, (name, ok.stdout, ok.stderr)
        assert isinstance(json.loads(ok.stdout), dict | list), name
        failed = run_mapper(*bad, "--json")
        assert failed.code in (2, 3, 4), (name, failed.code, failed.stderr)
        payload = json.loads(failed.stdout)
        assert payload["exit_code"] == failed.code, name
        assert payload["error"] and payload["message"], name
        assert "Traceback" not in failed.stderr, name


def test_json_errors_name_the_flag_or_file_at_fault(tmp_path, cnn):
    flag = json.loads(run_mapper("compile", cnn, "--hw", "a100", "-o", str(tmp_path / "o"),
                                 "--time-limit", "-1", "--json").stdout)
    assert flag["flag"] == "--time-limit"
    missing = json.loads(run_mapper("compile", str(tmp_path / "no.onnx"), "--hw", "a100", "-o",
                                    str(tmp_path / "o"), "--json").stdout)
    assert missing["file"] == str(tmp_path / "no.onnx")
    unknown = json.loads(run_mapper("compile", cnn, "--hw", "a10", "-o", str(tmp_path / "o"),
                                    "--json").stdout)
    assert unknown["flag"] == "--hw" and "did you mean 'a100'" in unknown["message"]
    option = json.loads(run_mapper("compile", cnn, "--hw", "a100", "-o", str(tmp_path / "o"),
                                   "--frobnicate", "--json").stdout)
    assert option["flag"] == "--frobnicate" and option["exit_code"] == 2
