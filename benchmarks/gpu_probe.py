"""The built-in model of a GPU against the one `mapper hw probe --device cuda` writes.

Needs a CUDA GPU and torch built with CUDA; without them it prints that it skipped and
exits 0 (RESULTS.md is left as it is). On a GPU it probes the device, then prints and
records, side by side: every field the probe reads or measures, the built-in model's value
and the probed one; and GEMMs of every shape class (small, skinny, large) timed with torch
(`torch.matmul`, back to back between CUDA events, the mean per call) next to the time the
tiling cost model predicts for them on each of the two models, plus one kernel overhead.

    python -m benchmarks.gpu_probe [--like NAME] [--seconds 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

# (dtype, M, N, K): small, skinny and large GEMMs, the classes of the tiling calibration.
SHAPES = (("fp16", 1024, 1024, 1024), ("bf16", 512, 512, 512), ("fp16", 16, 4096, 4096),
          ("bf16", 64, 8192, 8192), ("bf16", 4096, 4096, 4096), ("fp16", 8192, 8192, 8192))
CALLS = 20
TOLERANCE = 0.25


def _skip(reason: str) -> None:
    print(f"gpu_probe: skipped: {reason}")
    sys.exit(0)


def _timed_gemm(torch: Any, dtype: str, m: int, n: int, k: int) -> float:
    """Mean seconds per torch.matmul over CALLS back-to-back calls (median of 5 repeats)."""
    torch_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    a = torch.randn((m, k), device="cuda", dtype=torch_dtype)
    b = torch.randn((k, n), device="cuda", dtype=torch_dtype)
    c = torch.empty((m, n), device="cuda", dtype=torch_dtype)
    for _ in range(3):
        torch.matmul(a, b, out=c)
    times = []
    for _ in range(5):
        begin = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(CALLS):
            torch.matmul(a, b, out=c)
        end.record()
        end.synchronize()
        times.append(begin.elapsed_time(end) / 1e3 / CALLS)
    return statistics.median(times)


def _predicted(hw: Any, dtype: str, m: int, n: int, k: int) -> float:
    """The tiling model's time for the GEMM plus the model's per-kernel overhead (calls run
    back to back, as the estimate prices a GEMM op)."""
    from mapper.options import TilingConfig
    from mapper.passes.tiling import tile_problem
    from mapper.passes.tiling.problems import GemmProblem

    record = tile_problem(hw, GemmProblem.dense(m, n, k, dtype), TilingConfig())
    return record["est_time_s"] + hw.compute.op_overhead_s


def _fields(builtin: Any, probed: Any) -> list[tuple[str, str, str, str]]:
    """(field, built-in, probed, probed / built-in) of every figure the probe sets."""
    main_b, main_p = builtin.main_memory[1], probed.main_memory[1]
    rows = [("compute.units", builtin.compute.units, probed.compute.units, 1.0),
            ("compute.sustained_clock (GHz)", builtin.compute.sustained_clock_hz
             or builtin.compute.clock_hz, probed.compute.sustained_clock_hz, 1e9),
            ("compute.op_overhead (us)", builtin.compute.op_overhead_s,
             probed.compute.op_overhead_s, 1e-6),
            ("main memory size (GiB)", main_b.size, main_p.size, 2**30),
            ("main memory bandwidth (GB/s)", main_b.bandwidth, main_p.bandwidth, 1e9)]
    if "l2" in builtin.memory and "l2" in probed.memory:
        rows.append(("l2 size (MiB)", builtin.memory["l2"].size, probed.memory["l2"].size,
                     2**20))
    return [(name, f"{b / scale:.4g}", f"{p / scale:.4g}", f"{p / b:.2f}")
            for name, b, p, scale in rows]


def main() -> None:
    """Probe the GPU, compare with its built-in model, write the RESULTS.md section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--like", help="built-in model to start from (default: by name)")
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        _skip("torch is not installed")
    if not torch.cuda.is_available():
        _skip(f"no CUDA GPU is available (torch {torch.__version__}, CUDA "
              f"{torch.version.cuda or 'none'})")
    from mapper.hwmodels.loader import hardware_file, load_hardware
    from mapper.probe_gpu import probe_gpu, render_gpu_yaml

    result = probe_gpu(args.like, args.seconds)
    builtin = load_hardware(result.template)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "probed.yaml"
        path.write_text(render_gpu_yaml(result, hardware_file(result.template).read_text(),
                                        builtin.main_memory[0], "probed"))
        probed = load_hardware(str(path))
    lines = [f"Device: {result.facts.name} (compute capability {result.facts.capability}, "
             f"torch {result.facts.torch_version}, CUDA {result.facts.cuda_version}); built-in "
             f"model {result.template}; probe {result.seconds:.1f} s. Rerun: `.venv/bin/python "
             "-m benchmarks.gpu_probe` (skips without a CUDA GPU).", "",
             f"Sustained clock: {result.clock_method}.", "",
             "| field | built-in | probed | probed / built-in |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in _fields(builtin, probed)]
    lines += ["", f"GEMMs timed with torch.matmul ({CALLS} back-to-back calls between CUDA "
              "events, median of 5) against the tiling model's time plus the per-kernel "
              "overhead, on each model; error = predicted / measured - 1.", "",
              "| dtype | M x N x K | measured us | built-in us | error | probed us | error |",
              "|---|---|---|---|---|---|---|"]
    within = {"built-in": 0, "probed": 0}
    shapes = [shape for shape in SHAPES if shape[0] in builtin.compute.peak_ops]
    for dtype, m, n, k in shapes:
        measured = _timed_gemm(torch, dtype, m, n, k)
        cells = []
        for label, hw in (("built-in", builtin), ("probed", probed)):
            predicted = _predicted(hw, dtype, m, n, k)
            error = predicted / measured - 1
            within[label] += abs(error) <= TOLERANCE
            cells += [f"{predicted * 1e6:.1f}", f"{error:+.0%}"]
        lines.append(f"| {dtype} | {m} x {n} x {k} | {measured * 1e6:.1f} | "
                     + " | ".join(cells) + " |")
    lines += ["", f"Within {TOLERANCE:.0%}: built-in {within['built-in']}, probed "
              f"{within['probed']} of {len(shapes)} shapes."]
    body = "\n".join(lines)
    print(body)
    from benchmarks.results import update_section

    update_section("gpu-probe", "GPU: the built-in hardware model against the probed one",
                   body)


if __name__ == "__main__":
    main()
