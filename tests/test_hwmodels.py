"""Tests for mapper.hwmodels: built-in models, staged loading, overrides and the schema."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pydantic
import pytest
import yaml

from mapper.errors import UserError
from mapper.hwmodels import (
    Compute,
    Hardware,
    Interconnect,
    KernelLimits,
    MemoryLevel,
    builtin_catalog,
    builtin_names,
    hardware_file,
    load_hardware,
    set_managed_capacity,
)

EXPECTED_BUILTINS = {
    "v100", "t4", "a100-40gb", "a100-80gb", "l4", "l40s", "h100", "h200", "b200", "mi300x",
    "tpu-v4", "tpu-v5e", "eyeriss", "ethos-u55", "edge-npu", "epyc-9654", "graviton3",
}

# A small, complete model in human units; tests edit it to provoke each kind of error.
MINIMAL = """\
schema: mapper.hw/1
name: toy
kind: npu
vendor: test
description: a toy NPU
compute:
  units: 4
  unit_name: PE
  clock: 1.41GHz
  peak_ops:
    int8: 312TFLOPS
  op_overhead: 5us
memory:
  spad:
    size: 40MiB
    bandwidth: 1555GB/s
    managed: true
  dram:
    size: 1GiB
    bandwidth: 100GB/s
interconnect:
  devices_per_node: 1
  intra_node_bandwidth: 200Gb/s
  inter_node_bandwidth: 1GB/s
  link: none
"""


def write(tmp_path: Path, text: str, name: str = "hw.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load_error(spec: str | Path, overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(UserError) as info:
        load_hardware(str(spec), overrides)
    return str(info.value)


# ------------------------------------------------------------------ built-ins


def test_builtin_names_are_the_expected_devices():
    assert set(builtin_names()) == EXPECTED_BUILTINS
    assert builtin_names() == sorted(builtin_names())


@pytest.mark.parametrize("name", sorted(EXPECTED_BUILTINS))
def test_every_builtin_loads_and_is_consistent(name):
    hw = load_hardware(name)
    assert hw.name == name
    assert hardware_file(name).name == f"{name}.yaml"
    main_name, main = hw.main_memory
    assert main.scope == "device" and not main.managed
    if hw.kind == "cpu":
        # CPU caches are not software-managed: the memory pass has nothing to plan.
        assert hw.managed_level is None and hw.compute.cpu is not None
    else:
        assert hw.managed_level is not None, "every built-in accelerator has a managed level"
        assert hw.managed_level[0] != main_name
    assert hw.compute.peak_ops
    if hw.kind == "gpu":
        assert hw.kernel_limits is not None
        assert hw.compute.matrix_shapes
    else:
        assert hw.kernel_limits is None
    for dtype in hw.compute.matrix_shapes:
        assert hw.peak(dtype) is not None


def test_builtin_catalog_is_sorted_and_complete():
    catalog = builtin_catalog()
    assert [hw.name for hw in catalog] == builtin_names()
    assert all(isinstance(hw, Hardware) for hw in catalog)


@pytest.mark.parametrize("name", sorted(EXPECTED_BUILTINS))
def test_every_numeric_builtin_field_names_its_source(name):
    """Each line that sets a number carries a comment naming a document or an assumption."""
    text_keys = {"schema", "name", "aliases", "kind", "vendor", "description", "unit_name",
                 "dataflow", "link", "scope", "managed"}
    for number, line in enumerate(hardware_file(name).read_text().splitlines(), 1):
        match = re.match(r"\s*([A-Za-z0-9_]+):\s*(\S.*)?$", line)
        if not match or match.group(1) in text_keys or not match.group(2):
            continue
        value = match.group(2).split("#")[0].strip()
        if value and re.search(r"\d", value):
            assert "#" in line, f"{name}.yaml line {number} has no source comment: {line!r}"


def test_published_figures_survive_unit_parsing():
    a100 = load_hardware("a100-40gb")
    assert a100.memory["l2"].size == 40 * 2**20
    assert a100.memory["hbm"].bandwidth == pytest.approx(1555e9)
    assert a100.peak("fp16") == pytest.approx(312e12)
    assert a100.compute.clock_hz == pytest.approx(1.41e9)
    assert a100.compute.op_overhead_s == pytest.approx(4e-6)
    assert a100.kernel_limits.shared_memory_per_block == 163 * 1024
    assert load_hardware("h100").kernel_limits.shared_memory_per_block == 227 * 1024
    assert load_hardware("mi300x").kernel_limits.warp_size == 64
    assert load_hardware("eyeriss").memory["glb"].size == 108 * 1024
    assert load_hardware("edge-npu").managed_level[1].size == 2**20


# ------------------------------------------------------------------ names and aliases


@pytest.mark.parametrize(
    ("spec", "name"),
    [("a100", "a100-80gb"), ("A100", "a100-80gb"), ("h100-sxm", "h100"), ("H100-SXM5", "h100"),
     (" tpu-v5e ", "tpu-v5e"), ("ethos-u55-256", "ethos-u55")],
)
def test_aliases_are_case_insensitive(spec, name):
    assert load_hardware(spec).name == name
    assert hardware_file(spec).stem == name


def test_unknown_name_lists_builtins_and_mentions_yaml_paths():
    message = load_error("a1000")
    assert "a1000" in message
    assert "a100-80gb" in message and "tpu-v5e" in message
    assert ".yaml" in message
    with pytest.raises(UserError):
        hardware_file("a1000")


def test_a_typo_gets_the_nearest_name_suggested():
    assert "did you mean 'h100'" in load_error("h10")
    assert "did you mean 'tpu-v5e'" in load_error("tpu-v5f")
    assert "did you mean" not in load_error("zzzzzz")


def test_path_to_yaml_file_loads(tmp_path):
    for suffix in (".yaml", ".yml"):
        hw = load_hardware(str(write(tmp_path, MINIMAL, f"toy{suffix}")))
        assert hw.name == "toy"


def test_missing_file_is_a_user_error(tmp_path):
    assert "not found" in load_error(tmp_path / "nope.yaml")


# ------------------------------------------------------------------ stage errors


def test_duplicate_key_names_the_key_and_line(tmp_path):
    text = MINIMAL.replace("    size: 40MiB\n", "    size: 40MiB\n    size: 20MiB\n")
    message = load_error(write(tmp_path, text))
    assert "duplicate key 'size'" in message
    assert "line 16" in message and "line 15" in message


def test_negative_size_reports_its_path(tmp_path):
    message = load_error(write(tmp_path, MINIMAL.replace("size: 1GiB", "size: -1")))
    assert "memory.dram.size: must be > 0, got -1" in message
    assert str(tmp_path / "hw.yaml") in message


def test_unknown_field_is_an_error_listing_the_valid_ones(tmp_path):
    text = MINIMAL.replace("  units: 4\n", "  units: 4\n  colour: 3\n")
    message = load_error(write(tmp_path, text))
    assert "compute.colour: unknown field" in message
    assert "clock" in message and "peak_ops" in message


def test_unknown_field_in_a_memory_level_lists_the_level_fields(tmp_path):
    text = MINIMAL.replace("    size: 40MiB\n", "    size: 40MiB\n    latency: 3\n")
    message = load_error(write(tmp_path, text))
    expected = ("memory.spad.latency: unknown field; valid fields here: bandwidth, holds, "
                "managed, scope")
    assert expected in message


def test_builtin_names_and_aliases_do_not_collide():
    seen: dict[str, str] = {}
    for hw in builtin_catalog():
        for key in (hw.name, *hw.aliases):
            assert key.lower() not in seen, f"{key} names {seen.get(key.lower())} and {hw.name}"
            seen[key.lower()] = hw.name


def test_path_objects_are_accepted(tmp_path):
    assert load_hardware(write(tmp_path, MINIMAL)).name == "toy"


def test_all_schema_problems_come_in_one_message(tmp_path):
    text = (MINIMAL.replace("kind: npu", "kind: fpga")
            .replace("clock: 1.41GHz", "clock: 1.41GFoo")
            .replace("size: 1GiB", "size: -1")
            .replace("    int8: 312TFLOPS", "    int9: 312TFLOPS")
            .replace("  link: none", "  lnk: none\n  link: none"))
    message = load_error(write(tmp_path, text))
    assert "(5 problems)" in message
    for expected in ("kind:", "compute.clock:", "memory.dram.size: must be > 0",
                     "compute.peak_ops.int9:", "interconnect.lnk: unknown field"):
        assert expected in message
    assert "pydantic" not in message and "https://" not in message


def test_all_cross_field_problems_come_in_one_message(tmp_path):
    text = MINIMAL.replace("bandwidth: 100GB/s\n", "bandwidth: 100GB/s\n    managed: true\n")
    message = load_error(write(tmp_path, text))
    assert "at most one level may be managed" in message
    assert "memory.dram.managed: the last level is main memory" in message


def test_kernel_limit_relations_are_checked():
    message = load_error("a100", (
        "kernel_limits.warp_size=48",
        "kernel_limits.shared_memory_per_block=1MiB",
    ))
    assert "kernel_limits.max_threads_per_block: must be a multiple of warp_size (48)" in message
    assert "kernel_limits.shared_memory_per_block: 1.0 MiB exceeds" in message
    assert "--set kernel_limits.warp_size=48" in message


def test_gpu_needs_kernel_limits(tmp_path):
    message = load_error(write(tmp_path, MINIMAL.replace("kind: npu", "kind: gpu")))
    assert "kernel_limits: required for kind 'gpu'" in message


def test_invalid_yaml_and_non_mapping_documents(tmp_path):
    assert "not valid YAML at line" in load_error(write(tmp_path, "a: [\n", "bad.yaml"))
    assert "expected a mapping" in load_error(write(tmp_path, "- 1\n- 2\n", "list.yaml"))


# ------------------------------------------------------------------ --set overrides


def test_overrides_apply_with_units_and_yaml_scalars():
    hw = load_hardware("a100", (
        "memory.l2.size=80MiB",
        "compute.peak_ops.fp16=400TFLOPS",
        "interconnect.devices_per_node=4",
        "compute.clock=1.5e9",
        "compute.array=[16, 16]",
    ))
    assert hw.memory["l2"].size == 80 * 2**20
    assert hw.peak("fp16") == pytest.approx(400e12)
    assert hw.interconnect.devices_per_node == 4
    assert hw.compute.clock_hz == pytest.approx(1.5e9)
    assert hw.compute.array == (16, 16)
    assert load_hardware("a100").memory["l2"].size == 40 * 2**20, "built-in left unchanged"


def test_override_may_add_an_optional_entry():
    hw = load_hardware("eyeriss", ("compute.matrix_shapes.int8=[1, 14, 12]",
                                   "compute.peak_ops.fp16=10GFLOPS"))
    assert hw.compute.matrix_shapes["int8"] == (1, 14, 12)
    assert hw.peak("fp16") == pytest.approx(10e9)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("memory.l3.size=1MiB", "unknown key 'l3' at memory; valid keys: hbm, l2, registers"),
        ("memory.l2.sise=1MiB",
         "unknown key 'sise' at memory.l2; valid keys: bandwidth, holds, managed"),
        ("compute.peak_ops.fp12=1TFLOPS", "unknown key 'fp12' at compute.peak_ops"),
        ("name.first=x", "'name' is a value, not a mapping"),
        ("memory.l2.size", "expected PATH=VALUE"),
        ("colour=red", "unknown key 'colour' at the top level"),
    ],
)
def test_bad_override_paths_are_rejected(override, expected):
    message = load_error("a100", (override,))
    assert f"--set {override}" in message
    assert expected in message


def test_override_values_are_validated_with_their_path():
    message = load_error("h100", ("memory.hbm.size=-5", "interconnect.devices_per_node=true"))
    assert "memory.hbm.size: must be > 0, got -5" in message
    assert "interconnect.devices_per_node: Input should be a valid integer" in message


def test_override_into_an_on_chip_level_larger_than_main_memory():
    message = load_error("t4", ("memory.l2.size=1TB",))
    assert "memory.l2.size: on-chip level" in message and "gddr6" in message


# ------------------------------------------------------------------ units


def test_units_are_parsed_to_plain_numbers(tmp_path):
    hw = load_hardware(str(write(tmp_path, MINIMAL)))
    assert hw.memory["spad"].size == 40 * 2**20
    assert hw.memory["spad"].bandwidth == pytest.approx(1555e9)
    assert hw.peak("int8") == pytest.approx(312e12)
    assert hw.compute.op_overhead_s == pytest.approx(5e-6)
    assert hw.compute.clock_hz == pytest.approx(1.41e9)
    assert hw.interconnect.intra_node_bandwidth == pytest.approx(25e9)  # 200 Gb/s in bytes
    assert isinstance(hw.memory["spad"].size, int)


def test_plain_numbers_are_accepted(tmp_path):
    text = (MINIMAL.replace("size: 40MiB", "size: 1048576").replace("clock: 1.41GHz", "clock: 1e9")
            .replace("op_overhead: 5us", "op_overhead: 0"))
    hw = load_hardware(str(write(tmp_path, text)))
    assert hw.memory["spad"].size == 2**20
    assert hw.compute.clock_hz == 1e9
    assert hw.compute.op_overhead_s == 0


def test_bad_unit_reports_the_path(tmp_path):
    message = load_error(write(tmp_path, MINIMAL.replace("bandwidth: 1555GB/s", "bandwidth: fast")))
    assert "memory.spad.bandwidth: cannot read bandwidth 'fast'" in message


# ------------------------------------------------------------------ the Hardware object


def test_properties_and_peak_lookup():
    hw = load_hardware("tpu-v5e")
    assert hw.main_memory[0] == "hbm"
    assert hw.managed_level[0] == "vmem"
    assert hw.peak("bf16") == pytest.approx(197e12)
    assert hw.peak("fp64") is None, "no fallback to another dtype"
    assert hw.compute.array == (128, 128)


def test_hardware_is_frozen():
    hw = load_hardware("a100")
    with pytest.raises(pydantic.ValidationError):
        hw.name = "other"
    with pytest.raises(pydantic.ValidationError):
        hw.memory["l2"].size = 1


def test_every_schema_field_has_a_description():
    for model in (Hardware, Compute, MemoryLevel, KernelLimits, Interconnect):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"


# ------------------------------------------------------------------ set_managed_capacity


def test_set_managed_capacity_returns_a_changed_copy():
    hw = load_hardware("edge-npu")
    smaller = set_managed_capacity(hw, 512 * 1024)
    assert smaller.managed_level[1].size == 512 * 1024
    assert hw.managed_level[1].size == 2**20, "the original is unchanged"
    assert set_managed_capacity(hw, "2MiB").managed_level[1].size == 2 * 2**20
    assert list(smaller.memory) == list(hw.memory), "level order kept"


def test_set_managed_capacity_rejects_bad_sizes_and_unmanaged_hardware():
    hw = load_hardware("a100")
    with pytest.raises(UserError, match="> 0"):
        set_managed_capacity(hw, 0)
    with pytest.raises(UserError, match="smaller than main memory"):
        set_managed_capacity(hw, "1TB")
    unmanaged = load_hardware("a100", ("memory.l2.managed=false",))
    with pytest.raises(UserError, match="no managed on-chip memory level"):
        set_managed_capacity(unmanaged, 1024)


# ------------------------------------------------------------------ to_plan_dict


@pytest.mark.parametrize("name", ["a100", "tpu-v4", "eyeriss", "mi300x"])
def test_plan_dict_is_json_deterministic_and_round_trips(name, tmp_path):
    hw = load_hardware(name)
    first = json.dumps(hw.to_plan_dict())
    second = json.dumps(load_hardware(name).to_plan_dict())
    assert first == second
    plan = hw.to_plan_dict()
    assert list(plan) == sorted(plan)
    assert list(plan["compute"]) == sorted(plan["compute"])
    assert list(plan["memory"]) == list(hw.memory), "memory keeps nearest-to-farthest order"
    assert plan["schema"] == "mapper.hw/1"
    # The plan's hardware block is itself a loadable hardware file.
    path = write(tmp_path, yaml.safe_dump(json.loads(first), sort_keys=False), "plan_hw.yaml")
    assert load_hardware(str(path)) == hw


# ------------------------------------------------------------------ CPUs

CPU = (MINIMAL.replace("kind: npu", "kind: cpu")
       .replace("    int8: 312TFLOPS\n", "    fp32: 0.9TFLOPS\n")
       .replace("  unit_name: PE\n", "  unit_name: core\n  cpu:\n    isa: test\n"
                "    simd_width_bits: 256\n    fma_units_per_core: 2\n")
       .replace("    managed: true\n", ""))


def test_a_cpu_needs_no_kernel_limits_and_its_peak_follows_its_cores(tmp_path):
    hw = load_hardware(write(tmp_path, CPU.replace("0.9TFLOPS", "0.18048TFLOPS")))
    # 4 cores x 1.41 GHz x 2 FMA pipes x 8 fp32 lanes x 2
    assert hw.kind == "cpu" and hw.kernel_limits is None and hw.managed_level is None
    message = load_error(write(tmp_path, CPU))
    assert "compute.peak_ops.fp32: 0.9 TFLOPS disagrees" in message and "0.1805" in message


def test_a_cpu_needs_its_cores_described(tmp_path):
    text = CPU.replace("  cpu:\n    isa: test\n    simd_width_bits: 256\n"
                       "    fma_units_per_core: 2\n", "")
    assert "compute.cpu: required for kind 'cpu'" in load_error(write(tmp_path, text))
    npu = MINIMAL.replace("  unit_name: PE\n", "  unit_name: PE\n  cpu:\n    isa: x\n"
                          "    simd_width_bits: 128\n    fma_units_per_core: 1\n")
    assert "compute.cpu: only for kind 'cpu'" in load_error(write(tmp_path, npu))


@pytest.mark.parametrize("name", ["epyc-9654", "graviton3"])
def test_builtin_cpus_state_the_peak_their_cores_give(name):
    hw = load_hardware(name)
    cpu = hw.compute.cpu
    lanes = cpu.simd_width_bits // 32
    derived = hw.compute.units * hw.compute.clock_hz * cpu.fma_units_per_core * lanes * 2
    assert hw.peak("fp32") == pytest.approx(derived, rel=1e-3)
    # int8 dot products (VNNI, SDOT) at four times the fp32 rate
    assert hw.peak("int8") == pytest.approx(4 * derived, rel=1e-3)


def test_sustained_clock_slows_matrix_work_only_and_may_not_exceed_the_boost_clock():
    from mapper.costs.roofline import peak_for

    l4 = load_hardware("l4")
    assert l4.compute.sustained_clock_hz is not None
    share = l4.compute.sustained_clock_hz / l4.compute.clock_hz
    assert l4.sustained_share == pytest.approx(share)
    assert peak_for(l4, "fp16", True)[0] == pytest.approx(l4.peak("fp16") * share)
    assert peak_for(l4, "fp32", False)[0] == pytest.approx(l4.peak("fp32"))
    boosted = load_hardware("l4", ("compute.sustained_clock=2.04GHz",))
    assert boosted.sustained_share == 1.0
    with pytest.raises(UserError, match="sustained_clock"):
        load_hardware("l4", ("compute.sustained_clock=3GHz",))
