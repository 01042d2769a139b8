"""The CI recipe played end to end: a baseline compile, a change that makes the model slower,
`mapper diff` failing on the right metric, a budget breach exiting 4, the Markdown diff
written; examples/ci/mapper-ci.sh and the GitHub Actions workflow that runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from onnx import TensorProto, helper, numpy_helper

from tests import onnx_builders as build
from tests.conftest import ROOT, run_mapper

SCRIPT = ROOT / "examples" / "ci" / "mapper-ci.sh"


def _mlp(hidden: int) -> object:
    """x[8, 256] -> MatMul -> Relu -> MatMul: a wider hidden layer is a slower model."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((256, hidden)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((hidden, 64)).astype(np.float32), "w2")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
         helper.make_node("Relu", ["h"], ["a"], name="act"),
         helper.make_node("MatMul", ["a", "w2"], ["y"], name="fc2")], "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 64])], initializer=[w1, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _ci(repo: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the recipe in `repo` as a pipeline would, with mapper from this environment."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return subprocess.run(["bash", str(SCRIPT)], cwd=repo, capture_output=True, text=True,
                          env={**os.environ, "PATH": path, **env}, timeout=600, check=False)


def test_a_ci_run_end_to_end(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    base = build.save(_mlp(128), repo / "base.onnx")
    slower = build.save(_mlp(2048), repo / "model.onnx")

    # The main branch: the model meets its budget and its plan is kept as the baseline.
    (repo / "mapper.yaml").write_text("budgets: {latency: 1ms}\n")
    baseline = run_mapper("compile", base, "--hw", "t4", "-o", str(repo / "main"), cwd=repo)
    assert baseline.code == 0, baseline.stderr

    # The change: a wider hidden layer. The diff fails on latency, named.
    new = run_mapper("compile", slower, "--hw", "t4", "-o", str(repo / "pr"), cwd=repo)
    assert new.code == 0, new.stderr
    diff = run_mapper("diff", str(repo / "main" / "plan.json"), str(repo / "pr" / "plan.json"),
                      "--fail-on", "latency+5%", cwd=repo)
    assert diff.code == 4
    assert "latency_s" in diff.stderr and "(limit +5%)" in diff.stderr
    assert "FAILED" in diff.stdout

    # A budget the change breaks exits 4 and says which; the output is still complete.
    (repo / "mapper.yaml").write_text("budgets: {latency: 1ms, weights: 256KiB}\n")
    breach = run_mapper("compile", slower, "--hw", "t4", "-o", str(repo / "pr"), cwd=repo)
    assert breach.code == 4
    assert "weight_bytes" in breach.stderr and "(limit 256KiB)" in breach.stderr
    plan = json.loads((repo / "pr" / "plan.json").read_text())
    assert {b["metric"]: b["ok"] for b in plan["budgets"]} == \
        {"latency_s": True, "weight_bytes": False}

    # The recipe does all of it in one step and leaves the Markdown diff for the pull request.
    result = _ci(repo, MODEL="model.onnx", BASE_MODEL="base.onnx", HW="t4", OUT="ci-out")
    assert result.returncode == 4, result.stdout + result.stderr
    markdown = (repo / "ci-out.diff.md").read_text()
    assert "❌" in markdown and "latency_s" in markdown and "| metric |" in markdown
    assert (repo / "ci-out" / "report.html").is_file()
    assert "weight_bytes" in result.stderr  # the budget breach is reported too


def test_the_recipe_passes_when_nothing_regresses(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    build.save(_mlp(128), repo / "model.onnx")
    build.save(_mlp(128), repo / "base.onnx")
    result = _ci(repo, MODEL="model.onnx", BASE_MODEL="base.onnx", HW="t4")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "✅ no threshold crossed" in (repo / "mapper-out.diff.md").read_text()


def test_the_recipe_reports_bad_input_with_mappers_exit_code(tmp_path):
    result = _ci(tmp_path, MODEL="missing.onnx")
    assert result.returncode == 2
    assert "missing.onnx" in result.stderr


def test_the_github_workflow_runs_the_recipe_and_uploads_the_report():
    workflow = yaml.safe_load((ROOT / "examples" / "ci" / "github-actions.yml").read_text())
    steps = workflow["jobs"]["mapper"]["steps"]
    runs = " ".join(step.get("run", "") for step in steps)
    assert "mapper-ci.sh" in runs and "BASE_MODEL" in runs and "gh pr comment" in runs
    upload = next(step for step in steps if "upload-artifact" in step.get("uses", ""))
    assert "report.html" in upload["with"]["path"] and upload["if"] == "always()"
