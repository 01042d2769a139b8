"""`mapper tile` and the tiling pass inside `mapper compile`: records, exit codes, wiring."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mapper.hwmodels.loader import load_hardware
from mapper.passes.tiling.constraints import check_record
from tests import onnx_builders as build
from tests.conftest import ROOT, run_mapper

_CONTRACT_KEYS = ["node", "op", "dtype", "problem", "tile", "smem_bytes", "regs_per_thread",
                  "blocks_per_unit", "est_time_s", "bound", "solve_s"]


def test_tile_json_prints_one_contract_record():
    result = run_mapper("tile", "--m", "4096", "--n", "4096", "--k", "4096", "--dtype", "fp16",
                        "--hw", "h100", "--json")
    assert result.code == 0, result.stderr
    record = json.loads(result.stdout)
    assert list(record)[:len(_CONTRACT_KEYS)] == _CONTRACT_KEYS
    assert record["problem"] == {"batch": 1, "M": 4096, "N": 4096, "K": 4096}
    assert record["solver"]["status"] == "OPTIMAL"
    assert check_record(record, load_hardware("h100")) == []
    human = run_mapper("tile", "--m", "64", "--n", "768", "--k", "768", "--batch", "12",
                       "--dtype", "int8", "--hw", "tpu-v5e")
    assert human.code == 0 and "stationary" in human.stdout and "12x64x768x768" in human.stdout


@pytest.mark.slow
def test_tile_exit_codes_explain():
    lacking = run_mapper("tile", "--m", "512", "--n", "512", "--k", "512", "--dtype", "fp8",
                         "--hw", "v100")
    assert lacking.code == 3
    assert "v100 cannot run a fp8 GEMM" in lacking.stderr
    assert "nearest supported dtype is fp16" in lacking.stderr and "Traceback" not in lacking.stderr
    fallback = run_mapper("tile", "--m", "512", "--n", "512", "--k", "512", "--dtype", "fp8",
                          "--hw", "v100", "--allow-fallback", "--json")
    assert fallback.code == 0, fallback.stderr
    record = json.loads(fallback.stdout)
    assert record["dtype"] == "fp16" and record["fallback"]["requested_dtype"] == "fp8"
    no_room = run_mapper("tile", "--m", "512", "--n", "512", "--k", "512", "--dtype", "int8",
                         "--hw", "edge-npu", "--set", "memory.scratchpad.size=1KiB")
    assert no_room.code == 3 and "scratchpad capacity" in no_room.stderr
    assert run_mapper("tile", "--m", "0", "--n", "8", "--k", "8", "--hw", "a100").code == 2
    assert run_mapper("tile", "--m", "8", "--n", "8", "--k", "8", "--dtype", "fp7",
                      "--hw", "a100").code == 2
    assert run_mapper("tile", "--m", "8", "--n", "8", "--k", "8", "--hw", "nope").code == 2


@pytest.mark.slow
def test_compile_plans_kernels_feeding_the_estimate(tmp_path):
    model = build.save(build.legacy_ir3_cnn(), tmp_path / "cnn.onnx")
    out = tmp_path / "out"
    result = run_mapper("compile", model, "--hw", "h100", "--precision", "fp8", "-o", str(out))
    assert result.code == 0, result.stderr
    plan = json.loads((out / "plan.json").read_text())
    tiling = next(p for p in plan["passes"] if p["name"] == "tiling")
    assert tiling["status"] == "ok" and tiling["solver"]["status"] == "OPTIMAL"
    kernels = {k["node"]: k for k in plan["kernels"]}
    assert set(plan["schedule"]["order"]) >= set(kernels)
    assert {k["op"] for k in kernels.values()} == {"Conv", "Gemm"}
    assert all(k["dtype"] == "fp8" for k in kernels.values())
    overhead = plan["hardware"]["compute"]["op_overhead"]
    rows = {r["node"]: r for r in plan["estimate"]["ops"]}
    for name, kernel in kernels.items():
        assert rows[name]["source"] == "tiling"
        assert abs(rows[name]["time_s"] - (kernel["est_time_s"] + overhead)) < 1e-12
    assert "Kernels (tiling)" in (out / "report.html").read_text()
    # The same model on a GPU without fp8: the plan records the dtype fallback, exit 0.
    v100 = tmp_path / "v100"
    result = run_mapper("compile", model, "--hw", "v100", "--precision", "fp8", "-o", str(v100))
    assert result.code == 0, result.stderr
    plan = json.loads((v100 / "plan.json").read_text())
    assert all(k["dtype"] == "fp16" and k["fallback"]["requested_dtype"] == "fp8"
               for k in plan["kernels"])
    tiling = next(p for p in plan["passes"] if p["name"] == "tiling")
    assert any("tiled as fp16" in note for note in tiling["notes"])
    skipped = run_mapper("compile", model, "--hw", "h100", "--skip", "tiling", "-o",
                         str(tmp_path / "skipped"))
    assert skipped.code == 0
    assert json.loads((tmp_path / "skipped" / "plan.json").read_text())["kernels"] == []


def test_gpu_benchmark_skips_without_a_gpu():
    completed = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "tiling_triton_gpu.py")],
                               capture_output=True, text=True, timeout=300, check=False)
    assert completed.returncode == 0, completed.stderr
    assert "skipped" in completed.stdout
