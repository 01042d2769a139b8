"""`mapper study`: models x hardware x sweeps as cached jobs on a local pool or a Ray cluster,
with results, Pareto front, plots and a report; `mapper compare`."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from mapper.errors import UserError
from mapper.options import CompileOptions, CompressionConfig
from mapper.study import Cache, Sweep, parse_sweep, run_local, run_study
from tests import onnx_builders as build
from tests.conftest import run_mapper


def _mlp(hidden: int, path: Path) -> str:
    rng = np.random.default_rng(hidden)
    w1 = numpy_helper.from_array(rng.standard_normal((64, hidden)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((hidden, 32)).astype(np.float32), "w2")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
         helper.make_node("Relu", ["h"], ["a"], name="act"),
         helper.make_node("MatMul", ["a", "w2"], ["y"], name="fc2")], "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 32])], initializer=[w1, w2])
    return build.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
                      path)


@pytest.fixture(scope="module")
def resnet_small():
    import models

    return str(models.build("resnet_small"))


@pytest.fixture(scope="module")
def three_models(tmp_path_factory, resnet_small):
    folder = tmp_path_factory.mktemp("models")
    return [resnet_small, build.save(build.legacy_ir3_cnn(), folder / "cnn.onnx"),
            _mlp(128, folder / "mlp.onnx")]


def test_parse_sweep_and_what_it_targets():
    assert parse_sweep("memory.l2.size=20MiB, 40MiB") == Sweep("memory.l2.size",
                                                               ("20MiB", "40MiB"))
    assert parse_sweep("memory.l2.size=1MiB").target == "hardware"
    assert parse_sweep("scratchpad=1MiB").target == "option"
    assert parse_sweep("compress.bits=2,4").target == "option"
    assert parse_sweep("memory.objective=offchip,peak").target == "option"
    for bad in ("memory.l2.size", "=1MiB", "scratchpad=", "scratchpad=1MiB,1MiB"):
        with pytest.raises(UserError, match="--sweep"):
            parse_sweep(bad)


def test_every_combination_in_order_and_more_scratchpad_never_slower(resnet_small):
    sweeps = [Sweep("scratchpad", ("64KiB", "256KiB", "2MiB")),
              Sweep("memory.dram.bandwidth", ("17.1GB/s", "34.2GB/s"))]
    rows = run_study([resnet_small], ["edge-npu"], sweeps).rows
    assert [row["settings"] for row in rows] == [
        {"scratchpad": s, "memory.dram.bandwidth": b}
        for s in ("64KiB", "256KiB", "2MiB") for b in ("17.1GB/s", "34.2GB/s")]
    assert [row["scratchpad_bytes"] for row in rows[::2]] == [64 * 1024, 256 * 1024, 2 * 1024**2]
    slow, fast = rows[::2], rows[1::2]
    for series in (slow, fast):
        for column in ("offchip_bytes", "latency_s"):
            values = [row[column] for row in series]
            assert values == sorted(values, reverse=True)
    assert all(f["latency_s"] < s["latency_s"] for f, s in zip(fast, slow, strict=True))


def test_cli_writes_results_pareto_plots_and_report(tmp_path, resnet_small):
    table, out = tmp_path / "study.csv", tmp_path / "study"
    result = run_mapper("study", resnet_small, "--hw", "a100,h100", "--sweep",
                        "memory.l2.size=20MiB,40MiB", "--csv", str(table), "-o", str(out),
                        "--no-cache", "--json")
    assert result.code == 0, result.stderr
    study = json.loads(result.stdout)
    assert [(r["hardware"], r["settings"]["memory.l2.size"]) for r in study["rows"]] == [
        ("a100-80gb", "20MiB"), ("a100-80gb", "40MiB"), ("h100", "20MiB"), ("h100", "40MiB")]
    assert all(r["latency_s"] > 0 and r["fits"] for r in study["rows"])
    assert study["verdict"].startswith("h100 memory.l2.size=")
    rows = list(csv.DictReader(table.open()))
    assert [r["memory.l2.size"] for r in rows] == ["20MiB", "40MiB", "20MiB", "40MiB"]
    assert {"latency_s", "peak_device_bytes", "fits", "quality", "bits_per_weight", "status",
            "cache_hit"} <= set(rows[0])
    for name in ("results.jsonl", "results.csv", "pareto.csv", "report.html",
                 "sweep-memory_l2_size.png", "pareto-latency-memory.png"):
        assert (out / name).is_file(), name
    assert (out / "sweep-memory_l2_size.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.html").read_text()
    assert "Winner." in report and "is fastest" in report and "<img" in report
    pareto = list(csv.DictReader((out / "pareto.csv").open()))
    assert pareto and all(r["hardware"] == "h100" for r in pareto)
    text = run_mapper("study", resnet_small, "--hw", "t4", "--no-cache")
    assert text.code == 0 and text.stdout.splitlines()[0].startswith("HARDWARE")
    assert "1 jobs: 1 ran, 0 cached, 0 failed" in text.stdout


def test_pass_options_are_swept_too(tmp_path):
    mlp = _mlp(256, tmp_path / "mlp.onnx")
    options = CompileOptions(compression=CompressionConfig(method="rtn", eval_samples=4,
                                                           calib_samples=4))
    rows = run_study([mlp], ["a100"], [parse_sweep("compress.bits=2,4,8")], options).rows
    assert [row["status"] for row in rows] == ["ok"] * 3
    bits = [row["bits_per_weight"] for row in rows]
    quality = [row["quality"] for row in rows]
    assert bits == sorted(bits) and quality == sorted(quality)
    assert [row["settings"] for row in rows] == [{"compress.bits": b} for b in ("2", "4", "8")]
    with pytest.raises(UserError, match="compression passes"):
        run_study([mlp], ["a100"], [parse_sweep("compression.bits=2,4")])


def test_a_rerun_reads_the_cache_and_a_change_misses_it(tmp_path, resnet_small):
    cache = Cache(tmp_path / "cache")
    sweeps = [parse_sweep("scratchpad=256KiB,1MiB")]
    first = run_study([resnet_small], ["edge-npu"], sweeps, cache=cache)
    second = run_study([resnet_small], ["edge-npu"], sweeps, cache=cache)
    assert (first.ran, first.cached) == (2, 0) and (second.ran, second.cached) == (0, 2)
    strip = [{k: v for k, v in row.items() if k not in ("cache_hit", "seconds")}
             for row in first.rows]
    assert strip == [{k: v for k, v in row.items() if k not in ("cache_hit", "seconds")}
                     for row in second.rows]
    changed = run_study([resnet_small], ["edge-npu"], sweeps, CompileOptions(seed=1),
                        cache=cache)
    assert (changed.ran, changed.cached) == (2, 0)


def test_a_killed_study_resumes_with_only_the_missing_jobs(tmp_path, resnet_small):
    cache = tmp_path / "cache"
    args = ["study", resnet_small, "--hw", "edge-npu,a100,h100", "--sweep",
            "scratchpad=64KiB,128KiB,256KiB,512KiB,1MiB", "--cache", str(cache), "--jobs", "1"]
    mapper = Path(sys.executable).with_name("mapper")
    process = subprocess.Popen([str(mapper), *args], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while len(list(cache.rglob("*.json"))) < 3 and time.monotonic() < deadline \
            and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = len(list(cache.rglob("*.json")))
    assert 3 <= done < 15, "the study was not interrupted mid-way"
    rerun = run_mapper(*args, "--json")
    assert rerun.code == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert (summary["jobs"], summary["cached"], summary["ran"]) == (15, done, 15 - done)
    assert sorted(r["cache_hit"] for r in summary["rows"]).count(True) == done


def test_a_failing_job_is_recorded_and_fail_fast_exits_with_its_code(tmp_path, resnet_small):
    args = ["study", resnet_small, "--hw", "edge-npu", "--sweep", "scratchpad=256KiB,1MiB",
            "--set", "memory.scratchpad.streaming=false", "--no-cache"]
    recorded = run_mapper(*args, "--json")
    assert recorded.code == 0, recorded.stderr
    summary = json.loads(recorded.stdout)
    assert summary["failed"] == 1
    assert summary["failures"][0]["exit_code"] == 3
    assert summary["failures"][0]["settings"] == {"scratchpad": "256KiB"}
    assert "needs 786432 bytes of scratchpad" in summary["failures"][0]["error"]
    text = run_mapper(*args)
    assert "failed: job 0 edge-npu {'scratchpad': '256KiB'} exit 3" in text.stdout
    stopped = run_mapper(*args, "--fail-fast", "--jobs", "1")
    assert stopped.code == 3
    assert "job 0" in stopped.stderr and "failed" in stopped.stderr


def test_a_study_file_holds_models_hardware_sweeps_and_options(tmp_path, resnet_small):
    study = tmp_path / "study.yaml"
    study.write_text(f"models: [{resnet_small}]\nhardware: [edge-npu]\n"
                     "sweeps: {scratchpad: [256KiB, 1MiB]}\nseed: 2\n")
    result = run_mapper("study", "--config", str(study), "--no-cache", "--json")
    assert result.code == 0, result.stderr
    rows = json.loads(result.stdout)["rows"]
    assert [r["settings"] for r in rows] == [{"scratchpad": "256KiB"}, {"scratchpad": "1MiB"}]


@pytest.mark.parametrize(("args", "names"), [
    (["--hw", "nope"], "nope"),
    (["--hw", "a100", "--sweep", "memory.l2.sise=1MiB"], "sise"),
    (["--hw", "a100", "--sweep", "memory.l2.size=-1MiB"], "memory.l2.size"),
    (["--hw", "a100", "--sweep", "memory.l2.size"], "--sweep"),
    (["--hw", "a100", "--sweep", "memory.objective=fastest"], "--memory-objective"),
    ([], "--hw"),
])
def test_bad_input_exits_2_naming_the_fault(tmp_path, args, names):
    model = build.save(build.legacy_ir3_cnn(), tmp_path / "m.onnx")
    table = tmp_path / "never.csv"
    result = run_mapper("study", model, *args, "--csv", str(table), "--no-cache")
    assert result.code == 2, result.stderr
    assert names in result.stderr and "Traceback" not in result.stderr
    assert not table.exists()


def test_compare_marks_the_winner(resnet_small):
    result = run_mapper("compare", resnet_small, "--hw", "a100,h100,t4")
    assert result.code == 0, result.stderr
    header = result.stdout.splitlines()[0].split()
    assert header == ["a100-80gb", "h100", "*", "t4"]
    assert "* winner: h100 is fastest" in result.stdout
    as_json = json.loads(run_mapper("compare", resnet_small, "--hw", "a100,h100",
                                    "--json").stdout)
    assert as_json["winner"] == "h100"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A real Ray runtime: a head and one worker node, started as separate processes and
    stopped at the end."""
    ray = shutil.which("ray", path=str(Path(sys.executable).parent))
    assert ray is not None, "Ray is part of the dev setup: pip install -e '.[dev]'"
    port = _free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    common = ["--num-cpus", "1", "--object-store-memory", "100000000", "--disable-usage-stats"]
    subprocess.run([ray, "start", "--head", "--port", str(port), "--node-ip-address",
                    "127.0.0.1", "--include-dashboard", "false", *common], env=env, check=True,
                   capture_output=True, timeout=120)
    try:
        subprocess.run([ray, "start", "--address", f"127.0.0.1:{port}", *common], env=env,
                       check=True, capture_output=True, timeout=120)
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, timeout=120,
                       check=False)


@pytest.mark.slow
def test_local_pool_and_ray_give_identical_results(three_models, ray_cluster):
    args = ["study", *three_models, "--hw", "a100,h100,edge-npu", "--sweep",
            "scratchpad=256KiB,1MiB", "--no-cache", "--json"]
    local = run_mapper(*args, "--jobs", "2")
    assert local.code == 0, local.stderr
    on_ray = run_mapper(*args, "--executor", "ray", "--address", ray_cluster)
    assert on_ray.code == 0, on_ray.stderr

    def strip(text: str) -> list[dict]:
        return [{k: v for k, v in row.items() if k != "seconds"}
                for row in json.loads(text)["rows"]]

    rows = strip(local.stdout)
    assert len(rows) == 3 * 3 * 2 and all(r["status"] == "ok" for r in rows)
    assert rows == strip(on_ray.stdout)


def test_local_pool_matches_one_process(tmp_path, three_models):
    sweeps = [parse_sweep("scratchpad=256KiB,1MiB")]
    alone = run_study(three_models[1:], ["edge-npu"], sweeps, runner=run_local(1)).rows
    pooled = run_study(three_models[1:], ["edge-npu"], sweeps, runner=run_local(2)).rows
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in alone] == \
        [{k: v for k, v in r.items() if k != "seconds"} for r in pooled]
