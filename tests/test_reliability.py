"""Reliability: the same answer twice across processes and hash seeds on every built-in
hardware model; solvers out of time fall back to their heuristics with valid plans; a
proven-infeasible problem exits 3 with the reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mapper.hwmodels.loader import builtin_names
from mapper.verify_plan import verify_plan
from tests import onnx_builders as build
from tests.conftest import ROOT, run_mapper

# Compiles the model for every built-in hardware model in one fresh process and prints
# {hardware: plan without timings}; run twice under different PYTHONHASHSEEDs.
_PLANS_SCRIPT = """
import json, sys, tempfile
from pathlib import Path
from mapper.driver import compile_model
from mapper.options import CompileOptions
plans = {}
with tempfile.TemporaryDirectory() as folder:
    for name in sys.argv[2:]:
        result = compile_model(sys.argv[1], name, Path(folder) / name, CompileOptions())
        plan = result.plan
        for record in plan["passes"]:
            record.pop("seconds")
        plans[name] = plan
print(json.dumps(plans, sort_keys=True))
"""


def _plans(model: str, seed: str) -> dict:
    env = {**os.environ, "PYTHONHASHSEED": seed}
    done = subprocess.run([sys.executable, "-c", _PLANS_SCRIPT, model, *builtin_names()],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=900,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@pytest.mark.slow
def test_same_plan_across_processes_and_hash_seeds_on_every_hardware(tmp_path):
    import models

    model = str(models.build("resnet_small"))
    first, second = _plans(model, "1"), _plans(model, "4242")
    assert sorted(first) == sorted(builtin_names())
    for name in first:
        assert first[name] == second[name], f"plan for {name} differs between processes"


@pytest.mark.parametrize(("model", "flags"), [
    ("resnet_small", ["--hw", "edge-npu", "--scratchpad", "128KiB"]),
    ("moe_transformer", ["--hw", "h100", "--devices", "4"]),
    ("inception_v1", ["--hw", "edge-npu", "--scratchpad", "256KiB"]),
])
def test_a_tiny_time_limit_falls_back_to_valid_plans(tmp_path, model, flags):
    import models
    import models.corpus as corpus

    path = str(models.build(model) if model in models.REFERENCE_MODELS
               else corpus.fetch(model))
    out = tmp_path / "o"
    result = run_mapper("compile", path, *flags, "--time-limit", "0.01", "-o", str(out))
    assert result.code == 0, result.stderr
    plan = json.loads((out / "plan.json").read_text())
    statuses = {p["name"]: p["status"] for p in plan["passes"]}
    assert set(statuses.values()) <= {"ok", "fallback", "skipped"}
    for record in plan["passes"]:
        solver = record["solver"]
        if record["status"] == "ok" and solver is not None:
            # An answer kept as ok without a heuristic standing in is proven or found
            # by the solver, and says what for.
            assert solver["status"] in ("OPTIMAL", "FEASIBLE"), record
            assert solver["scope"], record
        if record["status"] == "fallback":
            assert solver is not None and solver["status"] != "OPTIMAL", record
    check = verify_plan(out / "model.onnx", out / "plan.json")
    assert check.ok, check.violations[:5]


def test_a_proven_infeasible_problem_exits_3_with_the_reason(tmp_path):
    model = build.save(build.legacy_ir3_cnn(), tmp_path / "cnn.onnx")
    out = tmp_path / "o"
    result = run_mapper("compile", model, "--hw", "edge-npu", "--scratchpad", "1KiB",
                        "--set", "memory.scratchpad.streaming=false", "-o", str(out))
    assert result.code == 3, result.stderr
    assert "needs" in result.stderr and "bytes of scratchpad" in result.stderr
    assert "Give it at least --scratchpad" in result.stderr
    assert not Path(out).exists()
