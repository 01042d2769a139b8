"""`mapper hw probe --device cuda`: a hardware model of the CUDA GPU this machine holds.

The file starts from the built-in model of the same GPU (matched by the device's name, or
`--like`): its datasheet peaks, on-chip levels and kernel limits stay, with their sources.
What the device reports through torch (SM count, memory size, L2 size) is read; what it
sustains is measured with torch on the device, each the median of repeated runs between
CUDA events after a warm-up:
- main-memory bandwidth, from a copy of a large buffer (read + written bytes);
- the per-kernel overhead, from a chain of tiny kernels less a chain of one;
- the sustained clock under matrix load, from a large GEMM per tensor-core dtype: the clock
  at which the tiling pass's cost model (compute-bound at that size, so its time scales with
  1 / clock) gives the measured time. Power-limited parts hold far below their boost clock.
Needs torch built with CUDA (the `compress` extra installs the CPU build only).
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from mapper import __version__
from mapper.errors import UserError
from mapper.probe import PROBE_HEADER, Measurement, _kib, _line, _quoted

# Device-name markers of the built-in GPU models, most specific first.
DEVICE_MODELS = (("H200", "h200"), ("H100", "h100"), ("A100", "a100-80gb"), ("L40S", "l40s"),
                 ("L4", "l4"), ("V100", "v100"), ("T4", "t4"), ("B200", "b200"),
                 ("MI300X", "mi300x"))
# The sustained clock is derived from GEMMs this large: compute-bound on every built-in GPU.
GEMM_SIZE = 8192
# The tensor-core dtypes whose GEMMs give the sustained clock (those the template lists).
CLOCK_DTYPES = ("bf16", "fp16")
CHAIN_LENGTH = 200
MIN_RUNS = 5
MAX_RUNS = 200
_WARMUP_RUNS = 3
_COPY_BYTES = 2**30


@dataclass(frozen=True)
class GpuFacts:
    """What torch reports about device 0."""

    name: str
    units: int
    memory_bytes: int
    l2_bytes: int | None
    capability: str
    torch_version: str
    cuda_version: str


@dataclass(frozen=True)
class GpuProbeResult:
    """The device's facts, its measurements, the derived sustained clock, the template."""

    facts: GpuFacts
    template: str
    measurements: tuple[Measurement, ...]
    sustained_clock_hz: float
    clock_method: str
    seconds: float

    def get(self, name: str) -> Measurement | None:
        """The measurement called `name`, or None when it did not run."""
        return next((m for m in self.measurements if m.name == name), None)


def hardware_for(device_name: str, total_bytes: int) -> str | None:
    """The built-in model of a device from its name (None: no built-in matches)."""
    upper = device_name.upper()
    for marker, name in DEVICE_MODELS:
        if marker in upper:
            return "a100-40gb" if name == "a100-80gb" and total_bytes < 60 * 2**30 else name
    return None


def cuda_torch() -> Any:
    """torch, when it is installed with a usable CUDA device; else a UserError naming the flag."""
    try:
        import torch
    except ImportError:
        raise UserError("--device cuda measures the GPU with torch, which is not installed: "
                        "install torch built for your CUDA version (pip install torch), then "
                        "run the probe again", subject={"flag": "--device"}) from None
    if not torch.cuda.is_available():
        built = torch.version.cuda or "no CUDA (a CPU build)"
        raise UserError(f"--device cuda: torch {torch.__version__} sees no CUDA device (built "
                        f"with {built}); run the probe on the GPU machine with a CUDA build of "
                        "torch, or probe this host's CPU without --device",
                        subject={"flag": "--device"})
    return torch


def read_gpu(torch: Any) -> GpuFacts:
    """Device 0's facts as torch reports them."""
    properties = torch.cuda.get_device_properties(0)
    l2 = getattr(properties, "L2_cache_size", None)
    return GpuFacts(name=properties.name, units=int(properties.multi_processor_count),
                    memory_bytes=int(properties.total_memory),
                    l2_bytes=int(l2) if l2 else None,
                    capability=f"{properties.major}.{properties.minor}",
                    torch_version=torch.__version__,
                    cuda_version=str(torch.version.cuda or torch.version.hip or "unknown"))


def _event_times(torch: Any, run: Callable[[], None], budget_s: float) -> list[float]:
    """Device seconds of each run between two CUDA events, after a warm-up: at least
    MIN_RUNS, more while the budget lasts."""
    for _ in range(_WARMUP_RUNS):
        run()
    torch.cuda.synchronize()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < MIN_RUNS or (time.perf_counter() - started < budget_s
                                    and len(times) < MAX_RUNS):
        begin = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        begin.record()
        run()
        end.record()
        end.synchronize()
        times.append(begin.elapsed_time(end) / 1e3)
    return times


def _summary(name: str, value: float, unit: str, times: Sequence[float], method: str
             ) -> Measurement:
    return Measurement(name=name, value=value, unit=unit, runs=len(times),
                       median_s=statistics.median(times), min_s=min(times), max_s=max(times),
                       method=f"{method}, median of {len(times)} between CUDA events after "
                       f"{_WARMUP_RUNS} warm-up")


def measure_gemm(torch: Any, dtype: str, budget_s: float) -> Measurement:
    """Sustained rate of one GEMM_SIZE^3 torch.matmul in `dtype` (2 n^3 ops per run)."""
    n = GEMM_SIZE
    torch_dtype = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16,
                   "bf16": torch.bfloat16}[dtype]
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"
    try:
        a = torch.randn((n, n), device="cuda", dtype=torch_dtype)
        b = torch.randn((n, n), device="cuda", dtype=torch_dtype)
        c = torch.empty((n, n), device="cuda", dtype=torch_dtype)
        times = _event_times(torch, lambda: torch.matmul(a, b, out=c), budget_s)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    return _summary(f"{dtype}_gemm", 2 * n**3 / statistics.median(times), "ops/s", times,
                    f"torch.matmul {n}^3 {dtype}")


def measure_bandwidth(torch: Any, facts: GpuFacts, budget_s: float) -> Measurement:
    """Main-memory bandwidth of a device-to-device copy (bytes = read + written)."""
    size = min(_COPY_BYTES, facts.memory_bytes // 8)
    source = torch.empty(size // 4, device="cuda", dtype=torch.float32).fill_(1.0)
    target = torch.empty_like(source)
    times = _event_times(torch, lambda: target.copy_(source), budget_s)
    return _summary("bandwidth", 2 * size / statistics.median(times), "bytes/s", times,
                    f"torch copy_ of a {size / 2**20:.0f} MiB buffer on the device (bytes = 1 "
                    "read + 1 written)")


def measure_kernel_overhead(torch: Any, budget_s: float) -> Measurement:
    """Per-kernel cost: (a chain of CHAIN_LENGTH + 1 in-place adds on one element - a chain
    of 1) / CHAIN_LENGTH, as the device sees them back to back."""
    x = torch.zeros(1, device="cuda")

    def chain(length: int) -> Callable[[], None]:
        def run() -> None:
            for _ in range(length):
                x.add_(1.0)
        return run

    long_run = _event_times(torch, chain(CHAIN_LENGTH + 1), budget_s / 2)
    short_run = _event_times(torch, chain(1), budget_s / 2)
    per_kernel = max((statistics.median(long_run) - statistics.median(short_run))
                     / CHAIN_LENGTH, 1e-9)
    return _summary("op_overhead", per_kernel, "s", long_run,
                    f"torch: a chain of {CHAIN_LENGTH + 1} in-place adds on one element minus "
                    f"a chain of 1, / {CHAIN_LENGTH}")


def sustained_clock(template: Any, measured: Sequence[Measurement]) -> tuple[float, str]:
    """The clock at which the tiling cost model gives the measured GEMM rates (the median
    over the tensor-core dtypes measured), at most the template's boost clock."""
    from mapper.options import TilingConfig
    from mapper.passes.tiling import tile_problem
    from mapper.passes.tiling.problems import GemmProblem

    at_boost = template.model_copy(update={"compute": template.compute.model_copy(
        update={"sustained_clock_hz": None})})
    ratios, parts = [], []
    for item in measured:
        dtype = item.name.removesuffix("_gemm")
        problem = GemmProblem.dense(GEMM_SIZE, GEMM_SIZE, GEMM_SIZE, dtype)
        predicted_s = tile_problem(at_boost, problem, TilingConfig())["est_time_s"]
        ratios.append(predicted_s / item.median_s)
        parts.append(f"{dtype} {problem.flops / item.median_s / 1e12:.1f} TFLOPS "
                     f"({ratios[-1]:.2f})")
    boost = template.compute.clock_hz
    share = min(1.0, statistics.median(ratios))
    return boost * share, (f"derived: measured {GEMM_SIZE}^3 GEMMs ({', '.join(parts)} of "
                           f"what the tiling model gives at {boost / 1e6:.0f} MHz)"
                           + (", capped at the boost clock" if share >= 1.0 else ""))


def probe_gpu(like: str | None = None, seconds: float = 20.0) -> GpuProbeResult:
    """Read device 0's facts and measure what it sustains within about `seconds`."""
    from mapper.hwmodels.loader import load_hardware

    if seconds <= 0:
        raise UserError(f"--seconds must be > 0, got {seconds:g}", subject={"flag": "--seconds"})
    torch = cuda_torch()
    started = time.perf_counter()
    facts = read_gpu(torch)
    template_name = like or hardware_for(facts.name, facts.memory_bytes)
    if template_name is None:
        raise UserError(f"no built-in hardware model matches the GPU {facts.name!r}: pass "
                        "--like NAME (a built-in GPU model whose architecture and limits it "
                        "shares; `mapper hw list`)", subject={"flag": "--like"})
    template = load_hardware(template_name)
    if template.kind != "gpu":
        raise UserError(f"--like {template_name}: a GPU probe starts from a GPU model, not "
                        f"kind {template.kind!r}", subject={"flag": "--like"})
    dtypes = [d for d in CLOCK_DTYPES if d in template.compute.peak_ops]
    gemm_budget = seconds * 0.6 / max(1, len(dtypes))
    gemms = []
    for dtype in dtypes:
        gemms.append(measure_gemm(torch, dtype, gemm_budget))
        torch.cuda.empty_cache()  # the operands are gone: give their memory back
    measured = (*gemms, measure_bandwidth(torch, facts, seconds * 0.25),
                measure_kernel_overhead(torch, seconds * 0.15))
    clock_hz, clock_method = ((sustained_clock(template, gemms)) if gemms else
                              (template.compute.sustained_clock_hz or template.compute.clock_hz,
                               "the template's: no tensor-core dtype to measure"))
    return GpuProbeResult(facts=facts, template=template_name, measurements=measured,
                          sustained_clock_hz=clock_hz, clock_method=clock_method,
                          seconds=time.perf_counter() - started)


# ---------------------------------------------------------------- the YAML file

_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_]+):(?P<rest>.*)$")


def render_gpu_yaml(result: GpuProbeResult, template_text: str, main_memory: str,
                    name: str) -> str:
    """The template's YAML with the read and measured figures written in, a comment on each;
    `main_memory` is the template's last memory level."""
    facts, m = result.facts, {item.name: item for item in result.measurements}
    read = "read: torch.cuda.get_device_properties(0)"
    replaced: dict[tuple[str, ...], tuple[str, str] | None] = {
        ("name",): (name, f"probed {facts.name} (template: built-in {result.template})"),
        ("aliases",): None,
        ("description",): (_quoted(f"{facts.name}, probed by mapper"),
                           f"{read}.name, compute capability {facts.capability}"),
        ("compute", "units"): (str(facts.units), f"{read}.multi_processor_count"),
        ("compute", "sustained_clock"): (f"{result.sustained_clock_hz / 1e9:.4g}GHz",
                                         result.clock_method),
        ("compute", "op_overhead"): (f"{m['op_overhead'].value * 1e6:.3g}us",
                                     f"measured: {m['op_overhead'].method}"),
        ("memory", main_memory, "size"): (_kib(facts.memory_bytes), f"{read}.total_memory"),
        ("memory", main_memory, "bandwidth"): (f"{m['bandwidth'].value / 1e9:.4g}GB/s",
                                               f"measured: {m['bandwidth'].method}"),
    }
    if facts.l2_bytes:
        replaced[("memory", "l2", "size")] = (_kib(facts.l2_bytes), f"{read}.L2_cache_size")
    lines = [
        f"{PROBE_HEADER} {__version__} on {date.today().isoformat()},",
        f"# torch {facts.torch_version} (CUDA {facts.cuda_version}) on {facts.name}, in "
        f"{result.seconds:.1f} s.",
        "# Figures marked `read:`, `measured:` or `derived:` are this device's; every other",
        f"# figure is the built-in model {result.template}'s, with the sources below.",
        *(f"# Measured {item.name}: {item.value / 1e12:.4g} TFLOPS ({item.method})"
          for item in result.measurements if item.name.endswith("_gemm")),
    ]
    stack: list[tuple[int, str]] = []
    wrote_clock = False
    for line in template_text.splitlines():
        match = _KEY.match(line)
        if match is None or line.lstrip().startswith("#"):
            lines.append(line)
            continue
        indent = len(match.group("indent"))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = (*(key for _, key in stack), match.group("key"))
        stack.append((indent, match.group("key")))
        if path not in replaced:
            lines.append(line)
        elif replaced[path] is not None:
            value, comment = replaced[path]  # type: ignore[misc]
            lines.append(_line(path[-1], value, comment, indent))
        wrote_clock = wrote_clock or path == ("compute", "sustained_clock")
        if path == ("compute", "clock") and "sustained_clock:" not in template_text:
            value, comment = replaced[("compute", "sustained_clock")]  # type: ignore[misc]
            lines.append(_line("sustained_clock", value, comment, indent))
            wrote_clock = True
    if not wrote_clock:
        raise ValueError("the template has no compute.clock to put the sustained clock after")
    return "\n".join(lines) + "\n"


def result_dict(result: GpuProbeResult, path: Any, name: str) -> dict[str, Any]:
    """The `hw probe --device cuda --json` object."""
    facts = result.facts
    return {
        "path": str(path), "name": name, "seconds": result.seconds, "template": result.template,
        "device": {"name": facts.name, "units": facts.units, "memory_bytes": facts.memory_bytes,
                   "l2_bytes": facts.l2_bytes, "capability": facts.capability,
                   "torch": facts.torch_version, "cuda": facts.cuda_version,
                   "source": "read: torch.cuda.get_device_properties(0)"},
        "sustained_clock_hz": {"value": result.sustained_clock_hz,
                               "source": result.clock_method},
        "measurements": {item.name: item.to_dict() for item in result.measurements},
    }
