"""`mapper hw probe`: a hardware model of this host that mapper itself accepts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mapper.probe import isa_of, parse_cpuinfo, read_caches, read_clock, read_memory
from tests.conftest import run_mapper
from tests.onnx_builders import dynamic_mlp, save


@pytest.fixture(scope="module")
def probed(tmp_path_factory) -> tuple[Path, dict]:
    """One short probe for the whole module (the microbenchmarks are the slow part)."""
    path = tmp_path_factory.mktemp("probe") / "host.yaml"
    result = run_mapper("hw", "probe", "-o", str(path), "--seconds", "1", "--json")
    assert result.code == 0, result.stderr
    return path, json.loads(result.stdout)


def test_probe_writes_a_valid_cpu_model_with_a_source_on_every_figure(probed):
    path, payload = probed
    check = run_mapper("hw", "validate", str(path), "--json")
    assert check.code == 0, check.stderr
    assert json.loads(check.stdout) == {"path": str(path), "valid": True, "name": "host",
                                        "kind": "cpu"}
    text = path.read_text()
    doc = yaml.safe_load(text)
    assert doc["kind"] == "cpu" and doc["schema"] == "mapper.hw/1"
    assert set(doc["compute"]["peak_ops"]) >= {"fp32"}
    # Every figure says where it came from: read, measured, derived or assumed.
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if line.startswith("#") or not value.strip() or key.strip() in (
                "schema", "name", "kind", "vendor", "description", "unit_name", "link"):
            continue
        assert "# read:" in line or "# measured:" in line or "# assumption:" in line \
            or "# derived:" in line, line
    assert "# measured: onnxruntime MatMul 960^3 fp32" in text
    measurements = payload["measurements"]
    assert {"fp32_gemm", "fp32_gemm_1t", "bandwidth", "op_overhead",
            "run_overhead"} <= set(measurements)
    assert "# measured: onnxruntime session.run of one Add" in text
    assert all(m["runs"] >= 5 and m["value"] > 0 for m in measurements.values())


def test_the_probed_model_compiles_a_model(probed, tmp_path):
    path, _ = probed
    model = save(dynamic_mlp(), tmp_path / "mlp.onnx")
    result = run_mapper("compile", model, "--hw", str(path), "--dim", "batch=2", "--dim", "seq=4",
                        "-o", str(tmp_path / "out"), "--no-config", "--json")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["hardware"] == "host"


def test_probe_never_overwrites_a_file_it_did_not_write(probed, tmp_path):
    foreign = tmp_path / "mine.yaml"
    foreign.write_text("precious: true\n")
    result = run_mapper("hw", "probe", "-o", str(foreign), "--seconds", "0.1", "--json")
    assert result.code == 2
    assert json.loads(result.stdout)["exit_code"] == 2
    assert foreign.read_text() == "precious: true\n"
    not_yaml = run_mapper("hw", "probe", "-o", str(tmp_path / "host.txt"))
    assert not_yaml.code == 2 and ".yaml" in not_yaml.stderr


def test_a_stated_cpu_peak_may_be_below_the_theoretical_one_never_above(probed, tmp_path):
    path, _ = probed
    doc = yaml.safe_load(path.read_text())
    compute = doc["compute"]
    cpu = compute["cpu"]
    clock = float(str(compute["clock"]).removesuffix("GHz")) * 1e9
    theoretical = (compute["units"] * clock * cpu["fma_units_per_core"]
                   * cpu["simd_width_bits"] // 32 * 2)
    compute["peak_ops"]["fp32"] = f"{theoretical * 1.5 / 1e9:.4g}GFLOPS"
    too_fast = tmp_path / "too_fast.yaml"
    too_fast.write_text(yaml.safe_dump(doc))
    result = run_mapper("hw", "validate", str(too_fast))
    assert result.code == 2 and "compute.peak_ops.fp32" in result.stderr
    for builtin in ("epyc-9654", "graviton3"):
        assert run_mapper("hw", "show", builtin).code == 0


def test_static_facts_parse_linux_texts(tmp_path):
    info = parse_cpuinfo("processor\t: 0\nmodel name\t: Test CPU\ncpu MHz\t\t: 2600.000\n"
                         "flags\t\t: fpu avx2 avx512f avx512_vnni\n\nprocessor\t: 1\n"
                         "model name\t: other\n")
    assert info["model name"] == "Test CPU"
    assert isa_of(frozenset(info["flags"].split()), "x86_64") == ("x86-64 AVX-512 + VNNI", 512)
    assert isa_of(frozenset({"asimd", "asimddp"}), "aarch64") == (
        "aarch64 NEON + dot product", 128)
    assert isa_of(frozenset({"avx2", "fma"}), "x86_64")[1] == 256
    hz, source = read_clock(info, tmp_path / "missing")
    assert hz == 2.6e9 and "cpu MHz" in source
    (tmp_path / "max").write_text("3500000\n")
    assert read_clock(info, tmp_path / "max") == (3.5e9, f"read: {tmp_path / 'max'} "
                                                         "(maximum clock)")
    assert read_memory("MemTotal:       1024 kB\nMemFree: 1 kB\n") == 1024 * 1024
    for index, (level, kind, size, shared) in enumerate(
            [(1, "Data", "48K", "0"), (1, "Instruction", "32K", "0"), (2, "Unified", "2048K", "0"),
             (3, "Unified", "32M", "0-3")]):
        folder = tmp_path / "cache" / f"index{index}"
        folder.mkdir(parents=True)
        for name, value in (("level", level), ("type", kind), ("size", size),
                            ("shared_cpu_list", shared)):
            (folder / name).write_text(f"{value}\n")
    caches = read_caches(tmp_path / "cache")
    assert [(c.level, c.size, c.shared_cpus) for c in caches] == [
        (1, 48 * 2**10, 1), (2, 2 * 2**20, 1), (3, 32 * 2**20, 4)]
