"""End-to-end CLI behaviour: outputs, exit codes, messages, atomicity, determinism."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tests import onnx_builders as build
from tests.conftest import run_mapper


def _plan_without_seconds(path) -> dict:
    plan = json.loads(path.read_text())
    for record in plan["passes"]:
        record.pop("seconds")
    return plan


def test_compile_writes_model_plan_report(tmp_path):
    model = build.save(build.legacy_ir3_cnn(), tmp_path / "legacy.onnx")
    out = tmp_path / "out"
    result = run_mapper("compile", model, "--hw", "a100", "-o", str(out))
    assert result.code == 0, result.stderr
    assert "latency" in result.stdout and "report" in result.stdout
    onnx.checker.check_model(str(out / "model.onnx"), full_check=True)
    optimized = onnx.load(str(out / "model.onnx"))
    plan = json.loads((out / "plan.json").read_text())
    assert plan["schema"] == "mapper.plan/1"
    names = [n.name for n in optimized.graph.node]
    assert sorted(plan["schedule"]["order"]) == sorted(names)
    assert plan["schedule"]["order"] == names
    assert plan["hardware"]["name"] == "a100-80gb"
    assert plan["estimate"]["latency_s"] > 0
    statuses = {p["name"]: p["status"] for p in plan["passes"]}
    assert list(statuses) == ["simplify", "moe", "tiling", "memory", "arena", "estimate"]
    assert statuses["moe"] == "skipped"  # not an MoE model, and --devices not given
    assert all(statuses[name] == "ok"
               for name in ("simplify", "tiling", "memory", "arena", "estimate"))
    assert "<svg" in (out / "report.html").read_text()
    verify = run_mapper("verify", model, str(out / "model.onnx"))
    assert verify.code == 0, verify.stderr + verify.stdout


def test_same_input_same_plan(tmp_path):
    model = build.save(build.legacy_ir3_cnn(), tmp_path / "legacy.onnx")
    for name in ("a", "b"):
        assert run_mapper("compile", model, "--hw", "h100", "-o", str(tmp_path / name)).code == 0
    assert _plan_without_seconds(tmp_path / "a" / "plan.json") == \
        _plan_without_seconds(tmp_path / "b" / "plan.json")


def test_json_summary_is_one_object_on_stdout(tmp_path):
    model = build.save(build.dynamic_mlp(), tmp_path / "dyn.onnx")
    result = run_mapper("compile", model, "--hw", "t4", "--dim", "batch=1",
                        "--input-shape", "x=1x7x16", "-o", str(tmp_path / "o"), "--json")
    assert result.code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["hardware"] == "t4" and summary["latency_s"] > 0


def test_recompile_replaces_mapper_files_and_keeps_the_users(tmp_path):
    model = build.save(build.legacy_ir3_cnn(), tmp_path / "legacy.onnx")
    out = tmp_path / "out"
    assert run_mapper("compile", model, "--hw", "a100", "-o", str(out)).code == 0
    (out / "notes.txt").write_text("written by the user")
    assert run_mapper("compile", model, "--hw", "v100", "-o", str(out)).code == 0
    assert (out / "notes.txt").read_text() == "written by the user"
    assert json.loads((out / "plan.json").read_text())["hardware"]["name"].startswith("v100")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["legacy.onnx", "out"]


def _bad_inputs(tmp_path):
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    noise = tmp_path / "noise.onnx"
    noise.write_bytes(bytes(np.random.default_rng(1).integers(0, 256, 2048, dtype=np.uint8)))
    data = build.legacy_ir3_cnn().SerializeToString()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) * 2 // 3])
    good = build.save(build.legacy_ir3_cnn(), tmp_path / "good.onnx")
    cycle = build.save(build.cyclic_model(), tmp_path / "cycle.onnx")
    dynamic = build.save(build.dynamic_mlp(), tmp_path / "dyn.onnx")
    dup = tmp_path / "dup.yaml"
    dup.write_text((build_hw_yaml()).replace("kind: npu", "kind: npu\nkind: gpu"))
    negative = tmp_path / "negative.yaml"
    negative.write_text(build_hw_yaml().replace("size: 1MiB", "size: -1MiB"))
    return {
        "empty": ([str(empty), "--hw", "a100"], "empty"),
        "noise": ([str(noise), "--hw", "a100"], "not"),
        "truncated": ([str(truncated), "--hw", "a100"], "not"),
        "cycle": ([str(cycle), "--hw", "a100"], "cycle"),
        "unknown-hw": ([good, "--hw", "a1000"], "a1000"),
        "duplicate-key": ([good, "--hw", str(dup)], "kind"),
        "negative-size": ([good, "--hw", str(negative)], "size"),
        "missing-dim": ([dynamic, "--hw", "a100"], "seq"),
        "bad-set": ([good, "--hw", "a100", "--set", "memory.nope.size=1MiB"], "nope"),
        "bad-pass": ([good, "--hw", "a100", "--passes", "nope"], "nope"),
        "bad-scratchpad": ([good, "--hw", "a100", "--scratchpad", "lots"], "lots"),
    }


def build_hw_yaml() -> str:
    """A small valid NPU hardware file to corrupt in tests."""
    return """schema: mapper.hw/1
name: test-npu
kind: npu
vendor: test
description: a tiny NPU for tests
compute:
  units: 1
  unit_name: PE
  clock: 1GHz
  peak_ops: {int8: 4TOPS}
  op_overhead: 1us
memory:
  scratchpad: {size: 1MiB, bandwidth: 100GB/s, managed: true}
  dram: {size: 1GiB, bandwidth: 10GB/s}
interconnect:
  devices_per_node: 1
  intra_node_bandwidth: 1GB/s
  inter_node_bandwidth: 1GB/s
  link: none
"""


def test_hand_written_hardware_file_is_valid(tmp_path):
    path = tmp_path / "npu.yaml"
    path.write_text(build_hw_yaml())
    result = run_mapper("hw", "validate", str(path))
    assert result.code == 0, result.stderr
    model = build.save(build.legacy_ir3_cnn(), tmp_path / "m.onnx")
    assert run_mapper("compile", model, "--hw", str(path), "-o", str(tmp_path / "o")).code == 0


@pytest.mark.parametrize("case", ["empty", "noise", "truncated", "cycle", "unknown-hw",
                                  "duplicate-key", "negative-size", "missing-dim", "bad-set",
                                  "bad-pass", "bad-scratchpad"])
def test_bad_input_exits_2_with_one_clear_message(tmp_path, case):
    args, fragment = _bad_inputs(tmp_path)[case]
    out = tmp_path / "out"
    result = run_mapper("compile", *args, "-o", str(out))
    assert result.code == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert fragment in result.stderr
    assert result.stderr.startswith("mapper: error:") or result.stderr.startswith("Usage")
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_verify_detects_a_changed_model(tmp_path):
    original = build.legacy_ir3_cnn()
    path = build.save(original, tmp_path / "m.onnx")
    tampered = onnx.ModelProto()
    tampered.CopyFrom(original)
    weight = next(i for i in tampered.graph.initializer if i.name == "fc_w")
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.1, "fc_w"))
    other = build.save(tampered, tmp_path / "t.onnx")
    result = run_mapper("verify", path, other, "--json")
    assert result.code == 4
    report = json.loads(result.stdout)
    assert not report["ok"] and report["outputs"][0]["max_abs"] > 0


def test_verify_names_the_inputs_that_differ(tmp_path):
    original = build.legacy_ir3_cnn()
    path = build.save(original, tmp_path / "m.onnx")
    renamed = onnx.ModelProto()
    renamed.CopyFrom(original)
    old = renamed.graph.input[0].name
    renamed.graph.input[0].name = "pixels"
    for node in renamed.graph.node:
        node.input[:] = ["pixels" if name == old else name for name in node.input]
    other = build.save(renamed, tmp_path / "r.onnx")
    result = run_mapper("verify", path, other)
    assert result.code == 2, result.stderr
    assert f"only {str(path)!r} has {old}" in result.stderr
    assert f"only {str(other)!r} has pixels" in result.stderr
    assert "Traceback" not in result.stderr


def test_verify_with_inputs_file(tmp_path):
    path = build.save(build.legacy_ir3_cnn(), tmp_path / "m.onnx")
    inputs = tmp_path / "in.npz"
    np.savez(inputs, x=np.ones((1, 3, 8, 8), np.float32))
    result = run_mapper("verify", path, path, "--inputs", str(inputs))
    assert result.code == 0, result.stderr
    assert "in.npz" in result.stdout


def test_hw_list_and_show(tmp_path):
    listing = run_mapper("hw", "list", "--json")
    assert listing.code == 0
    names = {entry["name"] for entry in json.loads(listing.stdout)}
    assert {"a100-80gb", "h100", "eyeriss", "edge-npu"} <= names
    shown = run_mapper("hw", "show", "a100", "--set", "memory.l2.size=80MiB")
    assert shown.code == 0
    assert json.loads(shown.stdout)["memory"]["l2"]["size"] == 80 * 2**20


def test_every_option_of_every_command_has_help_text():
    import click

    from mapper.cli import cli

    def options(command, path):
        if isinstance(command, click.Group):
            context = click.Context(command)
            for name in command.list_commands(context):
                yield from options(command.get_command(context, name), [*path, name])
        else:
            for param in command.params:
                if isinstance(param, click.Option):
                    yield " ".join(path), param.opts[0], (param.help or "").strip()

    missing = [(path, flag) for path, flag, text in options(cli, []) if not text]
    assert not missing
