"""`mapper diff`: the regression gate between two plans (rules, verdicts, tables, exit codes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mapper.diff import (
    FITS,
    check_rule,
    diff_plans,
    parse_rule,
    parse_rules,
    render_markdown,
    render_text,
    to_dict,
)
from mapper.errors import UserError
from tests.conftest import run_mapper

# ---------------------------------------------------------------------------------------------
# a CI run on real compiles: a baseline, then a change that widens the last layer


def _mlp(width: int, extra_relu: bool) -> onnx.ModelProto:
    """x[8,64] -> fc1 (64x64) -> act [-> act2] -> fc2 (64 x width): the change under review
    widens fc2 (the op that moves most) and adds a small node."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((64, width)).astype(np.float32), "w2")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["a"], name="act")]
    if extra_relu:
        nodes.append(helper.make_node("Sigmoid", ["a"], ["a2"], name="act2"))
    nodes.append(helper.make_node("MatMul", ["a2" if extra_relu else "a", "w2"], ["y"],
                                  name="fc2"))
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, width])],
        initializer=[w1, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def plans(tmp_path_factory) -> tuple[Path, Path]:
    """(baseline plan.json, slower plan.json), compiled by the real console script."""
    root = tmp_path_factory.mktemp("ci")
    out = []
    for name, model in (("base", _mlp(16, extra_relu=False)), ("slow", _mlp(65536, True))):
        path = root / f"{name}.onnx"
        path.write_bytes(model.SerializeToString())
        result = run_mapper("compile", str(path), "--hw", "a100", "-o", str(root / name))
        assert result.code == 0, result.stderr
        out.append(root / name / "plan.json")
    return out[0], out[1]


def test_slower_model_fails_the_latency_rule_naming_it(plans, mapper_cli):
    base, slow = plans
    result = mapper_cli("diff", str(base), str(slow), "--fail-on", "latency+5%,fits")
    assert result.code == 4, result.stderr
    # The error names the failed metric and its limit; fits held, so it is not named.
    assert result.stderr.count("mapper: error:") == 1
    assert "latency_s +" in result.stderr and "(limit +5%)" in result.stderr
    assert "fits" not in result.stderr and "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"mapper diff: {base} -> {slow}"
    assert "model sha256" in lines[1] and "(differs)" in lines[1]
    assert "hardware a100-80gb;" in lines[1]
    latency = next(line for line in lines if line.startswith("latency_s "))
    assert latency.rstrip().endswith("FAILED") and "%)" in latency
    fits = next(line for line in lines if line.startswith("fits "))
    assert fits.split()[1:3] == ["yes", "yes"] and fits.rstrip().endswith("ok")
    assert any(line.startswith("nodes ") for line in lines)
    # The widened layer moved most, in time and in bytes; the new Sigmoid is listed as added.
    by_time = lines.index("  by estimated time (top 10)")
    by_bytes = lines.index("  by bytes (top 10)")
    assert lines[by_time + 1].split()[:2] == ["NODE", "OP"]
    assert lines[by_time + 2].split()[:2] == ["fc2", "MatMul"]
    assert lines[by_bytes + 2].split()[:2] == ["fc2", "MatMul"]
    assert any(line.split()[0] == "act2" and "(added)" in line
               for line in lines[by_time + 2:by_bytes])
    assert lines[-1].startswith("FAILED: latency_s +")


def test_no_threshold_crossed_exits_0(plans, mapper_cli):
    base, slow = plans
    result = mapper_cli("diff", str(base), str(slow), "--fail-on", "latency+100000%",
                        "--fail-on", "device_memory+1GiB")
    assert result.code == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "ok: no threshold crossed (2 rule(s) checked)"
    same = mapper_cli("diff", str(base), str(base), "--fail-on", "latency+0%,offchip+0%,fits")
    assert same.code == 0, same.stderr
    assert "(no op changed)" in same.stdout and "(differs)" not in same.stdout


def test_markdown_for_the_pull_request_is_written_to_a_file(plans, mapper_cli, tmp_path):
    base, slow = plans
    target = tmp_path / "diff.md"
    args = ("diff", str(base), str(slow), "--fail-on", "latency+5%", "--format", "md",
            "-o", str(target))
    result = mapper_cli(*args)
    assert result.code == 4 and result.stdout == ""
    assert "latency_s" in result.stderr
    text = target.read_text()
    lines = text.splitlines()
    assert lines[0] == "### mapper diff"
    assert lines[2].startswith("❌ latency_s +") and "exceeds +5%" in lines[2]
    assert "| metric | old | new | change | verdict |" in lines
    assert any(line.startswith("| `latency_s` |") and "❌ FAILED" in line for line in lines)
    assert "#### Per-op changes" in lines
    first_op = lines[lines.index("**By estimated time (top 10)**") + 4]
    assert first_op.startswith("| `fc2` | MatMul |")
    # An earlier diff is ours to replace; a file mapper did not write is not, unless --force.
    assert mapper_cli(*args).code == 4
    notes = tmp_path / "notes.md"
    notes.write_text("my notes\n")
    refused = mapper_cli("diff", str(base), str(slow), "--format", "md", "-o", str(notes))
    assert refused.code == 2 and "--force" in refused.stderr
    assert notes.read_text() == "my notes\n"
    forced = mapper_cli("diff", str(base), str(slow), "--format", "md", "-o", str(notes),
                        "--force")
    assert forced.code == 0 and notes.read_text().startswith("### mapper diff")


def test_json_is_one_object_with_metrics_rules_and_ops(plans, mapper_cli):
    base, slow = plans
    passed = mapper_cli("diff", str(base), str(slow), "--json", "--fail-on", "nodes+1")
    assert passed.code == 0, passed.stderr
    data = json.loads(passed.stdout)
    assert data["ok"] is True and data["schema"] == "mapper.diff/1"
    assert data["differs"] == ["model sha256"]
    metrics = {row["metric"]: row for row in data["metrics"]}
    assert metrics["nodes"]["old"] == 3 and metrics["nodes"]["new"] == 4
    assert metrics["nodes"]["delta"] == 1 and metrics["nodes"]["verdict"] == "ok"
    assert metrics["latency_s"]["new"] > metrics["latency_s"]["old"]
    assert metrics["latency_s"]["relative"] > 0 and metrics["latency_s"]["verdict"] is None
    assert metrics["fits"]["old"] is True and metrics["fits"]["new"] is True
    assert data["rules"][0]["kind"] == "absolute" and data["rules"][0]["ok"] is True
    assert data["ops"]["by_time"][0]["node"] == "fc2"
    assert data["ops"]["by_bytes"][0]["node"] == "fc2"
    assert data["ops"]["added"] == 1 and data["ops"]["removed"] == 0
    # A crossed threshold is still one object: the error, carrying the whole diff.
    failed = mapper_cli("diff", str(base), str(slow), "--format", "json", "--fail-on",
                        "latency+5%")
    assert failed.code == 4
    error = json.loads(failed.stdout)
    assert error["exit_code"] == 4 and error["ok"] is False
    assert error["failed"][0].startswith("latency_s +") and "latency_s" in error["message"]
    assert error["ops"]["by_time"][0]["node"] == "fc2"


@pytest.mark.parametrize(("args", "expected"), [
    (("--fail-on", "latncy+5%"), "did you mean 'latency'"),
    (("--fail-on", "latency+5"), "cannot read '5' as an amount of latency_s"),
    (("--fail-on", "latency+5%%"), "as a percentage"),
    (("--fail-on", "latency"), "no threshold after 'latency'"),
    (("--fail-on", "latency-5%"), "write latency+5%"),
    (("--fail-on", "quality+1%"), "write quality-1%"),
    (("--fail-on", "fits+0%"), "fits takes no threshold"),
])
def test_bad_rule_exits_2_with_one_message(plans, mapper_cli, args, expected):
    base, slow = plans
    result = mapper_cli("diff", str(base), str(slow), *args)
    assert result.code == 2, result.stdout
    assert expected in result.stderr and result.stdout == ""
    assert result.stderr.count("mapper: error:") == 1 and "Traceback" not in result.stderr


def test_json_and_another_format_contradict(plans, mapper_cli):
    base, slow = plans
    result = mapper_cli("diff", str(base), str(slow), "--json", "--format", "md")
    assert result.code == 2
    error = json.loads(result.stdout)
    assert error["exit_code"] == 2 and "contradict" in error["message"]


def test_a_file_that_is_not_a_plan_exits_2(plans, mapper_cli, tmp_path):
    base, _ = plans
    cases = {"missing.json": None, "noise.json": "not json", "other.json": '{"schema": "x"}',
             "list.json": "[1, 2]"}
    for name, content in cases.items():
        if content is not None:
            (tmp_path / name).write_text(content)
        result = mapper_cli("diff", str(base), str(tmp_path / name))
        assert result.code == 2, (name, result.stdout)
        assert result.stderr.count("mapper: error:") == 1 and name in result.stderr
        assert "Traceback" not in result.stderr
    # --json errors are one object naming the file.
    result = mapper_cli("diff", str(tmp_path / "other.json"), str(base), "--json")
    assert result.code == 2
    assert json.loads(result.stdout)["file"] == str(tmp_path / "other.json")


def test_a_compile_directory_stands_for_its_plan(plans, mapper_cli):
    base, slow = plans
    result = mapper_cli("diff", str(base.parent), str(slow.parent), "--top", "1")
    assert result.code == 0, result.stderr
    assert "fc2" in result.stdout and "act2" not in result.stdout  # --top 1 shows one op


# ---------------------------------------------------------------------------------------------
# unit tests on hand-made plans


def _plan(latency: float = 1e-3, peak: int = 1000, fits: bool | None = True,
          ops: dict[str, tuple[float, int]] | None = None, quality: dict | None = None,
          sha: str = "a" * 64, hardware: str = "a100-80gb") -> dict[str, Any]:
    estimate: dict[str, Any] = {"latency_s": latency, "peak_device_bytes": peak,
                                "offchip_bytes": 500, "device_memory_bytes": 2000}
    if fits is not None:
        estimate["fits"] = fits
    if ops is not None:
        estimate["ops"] = [{"node": node, "op": "MatMul", "time_s": time, "bytes": size}
                           for node, (time, size) in ops.items()]
    plan: dict[str, Any] = {"schema": "mapper.plan/1", "mapper_version": "0.1.0",
                            "model": {"sha256": sha}, "hardware": {"name": hardware},
                            "estimate": estimate}
    if quality is not None:
        plan["compression"] = {"quality": quality}
    return plan


def test_rules_parse_relative_absolute_and_fits():
    relative = parse_rule("latency+5%")
    assert (relative.metric.name, relative.sign, relative.relative) == ("latency_s", "+", True)
    assert relative.amount == pytest.approx(0.05) and relative.limit_text == "+5%"
    absolute = parse_rule(" device_memory + 1MiB ")
    assert absolute.metric.name == "peak_device_bytes" and absolute.amount == 2**20
    assert not absolute.relative
    assert parse_rule("latency+0.5ms").amount == pytest.approx(5e-4)
    assert parse_rule("quality-0.01").sign == "-"
    assert parse_rule("estimate.device_memory_bytes+0%").metric.path == \
        ("estimate", "device_memory_bytes")
    assert parse_rule("fits").metric is FITS
    rules = parse_rules(["latency+5%,device_memory+0%", "fits", " , "])
    assert [rule.metric.name for rule in rules] == ["latency_s", "peak_device_bytes", "fits"]
    for bad in ("latency+", "latency+-5%", "quality--0.1", "+5%", "latency*5%", "fits-1"):
        with pytest.raises(UserError):
            parse_rule(bad)


def test_relative_and_absolute_verdicts():
    old = _plan(latency=1.0e-3, peak=1000)
    assert check_rule(parse_rule("latency+5%"), old, _plan(latency=1.04e-3)).ok
    crossed = check_rule(parse_rule("latency+5%"), old, _plan(latency=1.06e-3))
    assert not crossed.ok and crossed.message == "latency_s +6% exceeds +5%"
    assert crossed.short == "latency_s +6% (limit +5%)"
    # +0% fails on any worsening, never on an improvement or no change.
    assert not check_rule(parse_rule("device_memory+0%"), old, _plan(peak=1001)).ok
    assert check_rule(parse_rule("device_memory+0%"), old, _plan(peak=1000)).ok
    assert check_rule(parse_rule("device_memory+0%"), old, _plan(peak=10)).ok
    assert check_rule(parse_rule("latency+0.1ms"), old, _plan(latency=1.1e-3)).ok
    assert not check_rule(parse_rule("latency+0.1ms"), old, _plan(latency=1.2e-3)).ok
    # From zero, a relative rule allows no worsening.
    zero = check_rule(parse_rule("latency+50%"), _plan(latency=0.0), _plan(latency=1e-6))
    assert not zero.ok and "(from 0)" in zero.message


def test_higher_is_better_worsens_downwards():
    cosine = {"metric": "cosine", "mean": 0.99, "min": 0.95}
    old = _plan(quality=cosine)
    assert check_rule(parse_rule("quality-0.01"), old, _plan(quality={**cosine, "mean": 0.985})).ok
    dropped = check_rule(parse_rule("quality-0.01"), old, _plan(quality={**cosine, "mean": 0.97}))
    assert not dropped.ok and "exceeds -0.01" in dropped.message
    assert not check_rule(parse_rule("quality-1%"), old,
                          _plan(quality={**cosine, "mean": 0.97})).ok
    assert check_rule(parse_rule("quality-1%"), old, _plan(quality={**cosine, "mean": 1.0})).ok
    # Perplexity is better lower: its worsening is an increase, and the sign must say so.
    ppl = {"metric": "perplexity", "mean": 20.0, "min": 19.0}
    with pytest.raises(UserError, match="write quality\\+1%"):
        check_rule(parse_rule("quality-1%"), _plan(quality=ppl), _plan(quality=ppl))
    assert not check_rule(parse_rule("quality+1%"), _plan(quality=ppl),
                          _plan(quality={**ppl, "mean": 21.0})).ok
    # Cosine against perplexity is not comparable: the rule fails and says why.
    odd = check_rule(parse_rule("quality+1%"), _plan(quality=cosine), _plan(quality=ppl))
    assert not odd.ok and "not comparable" in odd.message


def test_missing_metric_fails_the_rule_instead_of_crashing():
    verdict = check_rule(parse_rule("bits+0%"), _plan(), _plan())
    assert not verdict.ok and "not stated in either plan" in verdict.message
    only_new = check_rule(parse_rule("latency+5%"), {"schema": "mapper.plan/1"}, _plan())
    assert not only_new.ok and "not stated in the old plan" in only_new.message
    diff = diff_plans(_plan(), _plan(), parse_rules(["bits+0%"]))
    assert not diff.ok
    assert [row.metric.name for row in diff.metrics if row.verdict == "FAILED"] == \
        ["bits_per_weight"]


def test_fits_going_false_fails_and_shows():
    assert not check_rule(parse_rule("fits"), _plan(fits=True), _plan(fits=False)).ok
    assert check_rule(parse_rule("fits"), _plan(fits=False), _plan(fits=False)).ok
    assert check_rule(parse_rule("fits"), _plan(fits=False), _plan(fits=True)).ok
    assert not check_rule(parse_rule("fits"), _plan(fits=None), _plan(fits=True)).ok
    diff = diff_plans(_plan(fits=True), _plan(fits=False, peak=3000), parse_rules(["fits"]))
    text = render_text(diff)
    row = next(line for line in text.splitlines() if line.startswith("fits "))
    assert row.split()[1:] == ["yes", "no", "yes", "->", "no", "FAILED"]
    assert to_dict(diff)["failed"] == ["fits: the new plan no longer fits the device memory"]
    # Without a rule the change still shows, with no verdict.
    plain = render_text(diff_plans(_plan(fits=True), _plan(fits=False)))
    assert "yes -> no" in plain


def test_per_op_changes_rank_time_and_bytes_separately():
    old = _plan(ops={"a": (1e-6, 100), "b": (5e-6, 100), "gone": (2e-6, 50)})
    new = _plan(ops={"a": (1e-6, 9000), "b": (9e-6, 100), "new": (3e-6, 10)})
    diff = diff_plans(old, new, top=2)
    assert [c.node for c in diff.ops_by_time] == ["b", "new"]
    assert [c.node for c in diff.ops_by_bytes] == ["a", "gone"]
    assert diff.ops_by_bytes[1].status == "removed" and diff.ops_by_time[1].status == "added"
    assert dict(diff.ops_counts) == {"matched": 2, "added": 1, "removed": 1, "changed": 2}
    text = render_text(diff)
    assert "-50 B (removed)" in text and "(added)" in text
    assert "no per-op estimate in the old plan" in render_text(diff_plans(_plan(), new))
    summary_only = render_text(diff_plans(old, new, top=0))
    assert "(2 changed), 1 added, 1 removed" in summary_only and "NODE" not in summary_only


def test_header_names_what_differs():
    diff = diff_plans(_plan(), _plan(sha="b" * 64, hardware="h100"))
    header = render_text(diff).splitlines()[1]
    assert "model sha256 aaaaaaaaaaaa -> bbbbbbbbbbbb (differs)" in header
    assert "hardware a100-80gb -> h100 (differs)" in header and "mapper 0.1.0" in header
    assert to_dict(diff)["differs"] == ["model sha256", "hardware"]


def test_markdown_verdict_lines():
    ok = render_markdown(diff_plans(_plan(), _plan(latency=0.5e-3), parse_rules(["latency+5%"])))
    assert ok.splitlines()[2] == "✅ no threshold crossed (1 rule(s) checked)"
    bad = render_markdown(diff_plans(_plan(), _plan(latency=2e-3, peak=2000),
                                     parse_rules(["latency+5%", "device_memory+0%"])))
    lines = bad.splitlines()
    assert lines[2] == "❌ latency_s +100% exceeds +5%  "
    assert lines[3] == "❌ peak_device_bytes +100% exceeds +0%"
    # A pipe in a node name stays inside its cell.
    piped = render_markdown(diff_plans(_plan(ops={"a|b": (1e-6, 1)}),
                                       _plan(ops={"a|b": (2e-6, 1)})))
    assert "| `a\\|b` |" in piped
