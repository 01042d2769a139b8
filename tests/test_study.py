"""`mapper study`: one model planned for several hardware models and hardware-field sweeps."""

from __future__ import annotations

import csv
import json

import pytest

from mapper.errors import UserError
from mapper.study import Sweep, parse_sweep, run_study
from tests import onnx_builders as build
from tests.conftest import run_mapper


@pytest.fixture(scope="module")
def resnet_small():
    import models

    return models.build("resnet_small")


def test_parse_sweep():
    assert parse_sweep("memory.l2.size=20MiB, 40MiB") == Sweep("memory.l2.size",
                                                               ("20MiB", "40MiB"))
    for bad in ("memory.l2.size", "=1MiB", "scratchpad=", "scratchpad=1MiB,1MiB"):
        with pytest.raises(UserError, match="--sweep"):
            parse_sweep(bad)


def test_every_combination_in_order_and_more_scratchpad_never_slower(resnet_small):
    sweeps = [Sweep("scratchpad", ("64KiB", "256KiB", "2MiB")),
              Sweep("memory.dram.bandwidth", ("17.1GB/s", "34.2GB/s"))]
    points = run_study(resnet_small, ["edge-npu"], sweeps)
    assert [dict(p.settings) for p in points] == [
        {"scratchpad": s, "memory.dram.bandwidth": b}
        for s in ("64KiB", "256KiB", "2MiB") for b in ("17.1GB/s", "34.2GB/s")]
    assert [p.scratchpad_bytes for p in points[::2]] == [64 * 1024, 256 * 1024, 2 * 1024**2]
    slow, fast = points[::2], points[1::2]
    # More scratchpad: never more off-chip bytes nor time; twice the bandwidth: less time.
    for series in (slow, fast):
        assert [p.offchip_bytes for p in series] == sorted((p.offchip_bytes for p in series),
                                                           reverse=True)
        assert [p.latency_s for p in series] == sorted((p.latency_s for p in series),
                                                       reverse=True)
    assert all(f.latency_s < s.latency_s for f, s in zip(fast, slow, strict=True))


def test_cli_json_and_csv(tmp_path, resnet_small):
    table = tmp_path / "study.csv"
    result = run_mapper("study", str(resnet_small), "--hw", "a100,h100", "--sweep",
                        "memory.l2.size=20MiB,40MiB", "--csv", str(table), "--json")
    assert result.code == 0, result.stderr
    study = json.loads(result.stdout)
    assert [(p["hardware"], p["settings"]["memory.l2.size"]) for p in study["points"]] == [
        ("a100-80gb", "20MiB"), ("a100-80gb", "40MiB"), ("h100", "20MiB"), ("h100", "40MiB")]
    assert all(p["latency_s"] > 0 for p in study["points"])
    rows = list(csv.DictReader(table.open()))
    assert [r["memory.l2.size"] for r in rows] == ["20MiB", "40MiB", "20MiB", "40MiB"]
    text = run_mapper("study", str(resnet_small), "--hw", "t4")
    assert text.code == 0 and text.stdout.splitlines()[0].startswith("HARDWARE")


@pytest.mark.parametrize(("args", "names"), [
    (["--hw", "nope"], "nope"),
    (["--hw", "a100", "--sweep", "memory.l2.sise=1MiB"], "sise"),
    (["--hw", "a100", "--sweep", "memory.l2.size=-1MiB"], "memory.l2.size"),
    (["--hw", "a100", "--sweep", "memory.l2.size"], "--sweep"),
])
def test_bad_input_exits_2_naming_the_fault(tmp_path, args, names):
    model = build.save(build.legacy_ir3_cnn(), tmp_path / "m.onnx")
    table = tmp_path / "never.csv"
    result = run_mapper("study", model, *args, "--csv", str(table))
    assert result.code == 2, result.stderr
    assert names in result.stderr and "Traceback" not in result.stderr
    assert not table.exists()
