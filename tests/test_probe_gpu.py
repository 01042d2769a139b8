"""`mapper hw probe --device cuda`: the GPU model it writes, and its answer without a GPU.

No GPU is lent to CI: the measurements are stood in for by figures of a known device, and
what is checked is what the probe derives and writes from them.
"""

from __future__ import annotations

import importlib.util

import pytest

from mapper.hwmodels.loader import hardware_file, load_hardware
from mapper.probe import Measurement
from mapper.probe_gpu import (
    GEMM_SIZE,
    GpuFacts,
    GpuProbeResult,
    hardware_for,
    render_gpu_yaml,
    sustained_clock,
)
from tests.conftest import run_mapper


def _measurement(name: str, value: float, unit: str, median_s: float) -> Measurement:
    return Measurement(name=name, value=value, unit=unit, runs=5, median_s=median_s,
                       min_s=median_s, max_s=median_s, method=f"stand-in {name}")


def _gemm_at_share(template_name: str, dtype: str, share: float) -> Measurement:
    """A GEMM measurement `share` as fast as the tiling model gives at the boost clock."""
    hw = load_hardware(template_name)
    at_boost = hw.model_copy(update={"compute": hw.compute.model_copy(
        update={"sustained_clock_hz": None})})
    from mapper.options import TilingConfig
    from mapper.passes.tiling import tile_problem
    from mapper.passes.tiling.problems import GemmProblem

    problem = GemmProblem.dense(GEMM_SIZE, GEMM_SIZE, GEMM_SIZE, dtype)
    seconds = tile_problem(at_boost, problem, TilingConfig())["est_time_s"] / share
    return _measurement(f"{dtype}_gemm", problem.flops / seconds, "ops/s", seconds)


def test_device_names_pick_their_built_in_models():
    assert hardware_for("NVIDIA H200", 141 * 10**9) == "h200"
    assert hardware_for("NVIDIA A100-SXM4-40GB", 40 * 2**30) == "a100-40gb"
    assert hardware_for("NVIDIA A100-SXM4-80GB", 80 * 2**30) == "a100-80gb"
    assert hardware_for("NVIDIA L40S", 48 * 2**30) == "l40s"
    assert hardware_for("NVIDIA L4", 24 * 2**30) == "l4"
    assert hardware_for("Tesla T4", 16 * 2**30) == "t4"
    assert hardware_for("NVIDIA GeForce RTX 4090", 24 * 2**30) is None


def test_the_sustained_clock_is_where_the_tiling_model_meets_the_measured_gemms():
    t4 = load_hardware("t4")
    clock, method = sustained_clock(t4, [_gemm_at_share("t4", "fp16", 0.5)])
    assert clock == pytest.approx(0.5 * t4.compute.clock_hz, rel=1e-6)
    assert "derived: measured" in method and "fp16" in method
    # Faster than the model at the boost clock: capped there, and said so.
    clock, method = sustained_clock(t4, [_gemm_at_share("t4", "fp16", 1.3)])
    assert clock == t4.compute.clock_hz and "capped" in method


@pytest.mark.parametrize("template", ["h200", "l4"])
def test_the_written_gpu_model_loads_with_what_was_read_and_measured(template, tmp_path):
    hw = load_hardware(template)
    main_name = hw.main_memory[0]
    facts = GpuFacts(name=f"probed {template}", units=hw.compute.units - 2,
                     memory_bytes=hw.main_memory[1].size // 2, l2_bytes=8 * 2**20,
                     capability="9.0", torch_version="2.x", cuda_version="12.x")
    gemm = _gemm_at_share(template, "bf16", 0.6)
    result = GpuProbeResult(
        facts=facts, template=template,
        measurements=(gemm, _measurement("bandwidth", 1.5e12, "bytes/s", 1e-3),
                      _measurement("op_overhead", 4.5e-6, "s", 1e-3)),
        sustained_clock_hz=0.6 * hw.compute.clock_hz, clock_method="derived: stand-in",
        seconds=1.0)
    text = render_gpu_yaml(result, hardware_file(template).read_text(), main_name, "gpu")
    path = tmp_path / "gpu.yaml"
    path.write_text(text)
    probed = load_hardware(str(path))
    assert probed.name == "gpu" and probed.kind == "gpu"
    assert probed.compute.units == hw.compute.units - 2
    assert probed.compute.sustained_clock_hz == pytest.approx(0.6 * hw.compute.clock_hz,
                                                              rel=1e-3)
    assert probed.compute.op_overhead_s == pytest.approx(4.5e-6)
    assert probed.main_memory[1].bandwidth == pytest.approx(1.5e12)
    assert probed.main_memory[1].size == hw.main_memory[1].size // 2
    assert probed.memory["l2"].size == 8 * 2**20
    # The datasheet figures and kernel limits stay the template's.
    assert probed.compute.peak_ops == hw.compute.peak_ops
    assert probed.kernel_limits == hw.kernel_limits
    # One sustained clock, whether the template had one (l4) or not (h200); no aliases.
    assert text.count("sustained_clock:") == 1 and "\naliases:" not in text
    for key in ("units:", "sustained_clock:", "op_overhead:"):
        line = next(line for line in text.splitlines() if line.strip().startswith(key))
        assert "# read:" in line or "# measured:" in line or "# derived:" in line, line


def test_without_a_cuda_device_the_probe_exits_2_naming_the_flag(tmp_path):
    target = tmp_path / "gpu.yaml"
    result = run_mapper("hw", "probe", "--device", "cuda", "-o", str(target))
    assert result.code == 2, result.stderr
    assert "--device" in result.stderr and "Traceback" not in result.stderr
    expected = "not installed" if importlib.util.find_spec("torch") is None else "no CUDA"
    if importlib.util.find_spec("torch") is not None:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a CUDA device")
    assert expected in result.stderr
    assert not target.exists()


def test_like_is_refused_for_a_cpu_probe(tmp_path):
    result = run_mapper("hw", "probe", "--like", "h100", "-o", str(tmp_path / "x.yaml"))
    assert result.code == 2 and "--like" in result.stderr
