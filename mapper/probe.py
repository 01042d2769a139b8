"""`mapper hw probe`: a hardware model (kind cpu) of the machine mapper runs on.

Static facts are read from Linux (/proc/cpuinfo, sysfs caches, /proc/meminfo, the affinity
mask); sustained rates are measured with tiny onnxruntime models on the CPU provider, each
the median of repeated runs after a warm-up. Every figure of the written YAML carries a
comment saying whether it was read, measured (and how) or assumed.
"""

from __future__ import annotations

import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from mapper import __version__
from mapper.errors import UserError

# The first line of every file the probe writes: `-o` replaces only files that start with it.
PROBE_HEADER = "# Hardware model of a host, written by `mapper hw probe`"
DEFAULT_SECONDS = 20.0
# Share of the time budget each microbenchmark may spend repeating itself (the rest covers
# session creation and allocating the streaming arrays).
_SHARES = {"fp32_gemm_1t": 0.17, "fp32_gemm": 0.17, "int8_gemm": 0.14, "bandwidth": 0.30,
           "op_overhead": 0.12}
# Not a power of two: a 4 KiB row stride aliases in the caches of some CPUs (an AMD EPYC
# host ran 1024^3 at 0.75x of 960^3 or 1152^3 on one thread); 960 tiles MLAS's 6-, 12-
# and 16-wide register blocks evenly.
GEMM_SIZE = 960
CHAIN_LENGTH = 200
MIN_RUNS = 5
MAX_RUNS = 400
_WARMUP_RUNS = 2
_MIN_STREAM_BYTES = 64 * 2**20


@dataclass(frozen=True)
class CacheLevel:
    """One data (or unified) cache level as sysfs describes it for cpu0."""

    level: int
    size: int
    shared_cpus: int  # how many logical CPUs share one instance


@dataclass(frozen=True)
class HostFacts:
    """What the OS says about this machine, with where each fact came from."""

    cpu_name: str
    vendor: str
    arch: str
    flags: frozenset[str]
    isa: str
    simd_width_bits: int
    fma_units_per_core: int
    fma_source: str
    cores: int
    clock_hz: float | None
    clock_source: str
    caches: tuple[CacheLevel, ...]
    memory_bytes: int


@dataclass(frozen=True)
class Measurement:
    """One measured rate: its value (ops/s, bytes/s or seconds) and how it was obtained."""

    name: str
    value: float
    unit: str
    runs: int
    median_s: float
    min_s: float
    max_s: float
    method: str

    def to_dict(self) -> dict[str, Any]:
        """The JSON record of `hw probe --json`."""
        return {"value": self.value, "unit": self.unit, "runs": self.runs,
                "median_s": self.median_s, "min_s": self.min_s, "max_s": self.max_s,
                "method": self.method}


@dataclass(frozen=True)
class ProbeResult:
    """The host's facts, every measurement, and the probe's own wall time."""

    facts: HostFacts
    measurements: tuple[Measurement, ...]
    skipped: tuple[str, ...]
    seconds: float
    onnxruntime_version: str

    def get(self, name: str) -> Measurement | None:
        """The measurement called `name`, or None when it could not run."""
        return next((m for m in self.measurements if m.name == name), None)


# ---------------------------------------------------------------- static facts


def parse_cpuinfo(text: str) -> dict[str, str]:
    """The first processor's `key: value` lines of /proc/cpuinfo (plus global ARM lines)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip()
        if sep and key and key not in fields:
            fields[key] = value.strip()
    return fields


def isa_of(flags: frozenset[str], arch: str) -> tuple[str, int]:
    """A readable ISA string and the SIMD width in bits the flags imply."""
    if "avx512f" in flags:
        base, width = "x86-64 AVX-512", 512
    elif "avx2" in flags:
        base, width = "x86-64 AVX2", 256
    elif "avx" in flags:
        base, width = "x86-64 AVX", 256
    elif "asimd" in flags or "neon" in flags:
        base, width = f"{arch} NEON", 128
    else:
        base, width = f"{arch} (no SIMD flag recognised)", 128
    extras = [label for flag, label in (
        ("fma", "FMA"), ("avx512_vnni", "VNNI"), ("avx_vnni", "AVX-VNNI"),
        ("avx512_bf16", "BF16"), ("avx512_fp16", "FP16"), ("amx_tile", "AMX"),
        ("sve", "SVE"), ("asimddp", "dot product"), ("i8mm", "I8MM"), ("asimdhp", "FP16"))
        if flag in flags]
    return " + ".join([base, *dict.fromkeys(extras)]), width


def fma_units(flags: frozenset[str], arch: str) -> tuple[int, str]:
    """FMA pipes per core: not readable from the OS, so an assumption stated as one."""
    if arch in ("x86_64", "AMD64") and ("avx2" in flags or "avx512f" in flags):
        return 2, "assumption: 2 FMA pipes per core (x86 with AVX2/AVX-512; not readable)"
    return 2 if "asimd" in flags else 1, ("assumption: FMA pipes per core are not readable "
                                          "from the OS")


def read_caches(root: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> tuple[CacheLevel, ...]:
    """cpu0's data and unified caches from sysfs, nearest first (index*/level,type,size)."""
    found: dict[int, CacheLevel] = {}
    for index in sorted(root.glob("index*")):
        try:
            kind = (index / "type").read_text().strip()
            level = int((index / "level").read_text())
            size = _sysfs_size((index / "size").read_text())
            shared = _cpu_count((index / "shared_cpu_list").read_text())
        except (OSError, ValueError):
            continue
        if kind in ("Data", "Unified") and size > 0:
            found[level] = CacheLevel(level, size, shared)
    return tuple(found[level] for level in sorted(found))


def _sysfs_size(text: str) -> int:
    match = re.fullmatch(r"(\d+)\s*([KMG]?)", text.strip())
    if not match:
        raise ValueError(text)
    return int(match.group(1)) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[match.group(2)]


def _cpu_count(cpu_list: str) -> int:
    """Logical CPUs in a sysfs list such as `0-3,8`."""
    count = 0
    for part in cpu_list.strip().split(","):
        if part:
            low, _, high = part.partition("-")
            count += int(high or low) - int(low) + 1
    return count


def read_clock(cpuinfo: dict[str, str], sysfs: Path = Path(
        "/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")) -> tuple[float | None, str]:
    """The peak clock from cpufreq's maximum (kHz), else /proc/cpuinfo's `cpu MHz`."""
    try:
        return int(sysfs.read_text()) * 1e3, f"read: {sysfs} (maximum clock)"
    except (OSError, ValueError):
        pass
    if "cpu MHz" in cpuinfo:
        try:
            return float(cpuinfo["cpu MHz"]) * 1e6, ("read: /proc/cpuinfo 'cpu MHz' (the "
                                                     "current clock; no cpufreq maximum here)")
        except ValueError:
            pass
    return None, "no clock readable"


def read_memory(meminfo: str) -> int:
    """MemTotal of /proc/meminfo in bytes."""
    match = re.search(r"^MemTotal:\s+(\d+)\s*kB", meminfo, re.MULTILINE)
    if not match:
        raise UserError("cannot read MemTotal from /proc/meminfo")
    return int(match.group(1)) * 1024


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as error:
        raise UserError(f"mapper hw probe reads {path}, which is not readable here "
                        f"({error.strerror}); the probe needs Linux") from None


def read_host() -> HostFacts:
    """Every static fact the probe needs, from the running Linux system."""
    info = parse_cpuinfo(_read_text("/proc/cpuinfo"))
    arch = platform.machine() or "unknown"
    flags = frozenset((info.get("flags") or info.get("Features") or "").split())
    isa, width = isa_of(flags, arch)
    fma, fma_source = fma_units(flags, arch)
    clock, clock_source = read_clock(info)
    vendor = {"GenuineIntel": "Intel", "AuthenticAMD": "AMD"}.get(
        info.get("vendor_id", ""), "Arm" if info.get("CPU implementer") == "0x41"
        else info.get("vendor_id") or "unknown")
    name = info.get("model name") or info.get("Hardware") or platform.processor() or arch
    return HostFacts(cpu_name=name, vendor=vendor, arch=arch, flags=flags, isa=isa,
                     simd_width_bits=width, fma_units_per_core=fma, fma_source=fma_source,
                     cores=len(os.sched_getaffinity(0)), clock_hz=clock,
                     clock_source=clock_source, caches=read_caches(),
                     memory_bytes=read_memory(_read_text("/proc/meminfo")))


# ---------------------------------------------------------------- microbenchmarks


def _session(model: Any, threads: int) -> Any:
    """A CPU session pinned to `threads` intra-op threads, graph rewrites off."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # Pinned thread counts and no rewrites: two probes must measure the very same thing.
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def _bound_runner(session: Any, feeds: dict[str, np.ndarray], output: np.ndarray
                  ) -> Callable[[], None]:
    """One run of `session` with inputs and the output bound once (no per-run allocation)."""
    import onnxruntime as ort

    binding = session.io_binding()
    for name, array in feeds.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array))
    binding.bind_ortvalue_output(session.get_outputs()[0].name,
                                 ort.OrtValue.ortvalue_from_numpy(output))
    return lambda: session.run_with_iobinding(binding)


def _repeat(run: Callable[[], None], budget_s: float) -> list[float]:
    """Seconds of each run after a warm-up: at least MIN_RUNS, more while the budget lasts."""
    for _ in range(_WARMUP_RUNS):
        run()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < MIN_RUNS or (time.perf_counter() - started < budget_s
                                    and len(times) < MAX_RUNS):
        begin = time.perf_counter()
        run()
        times.append(time.perf_counter() - begin)
    return times


def _gemm_model(n: int, dtype: str) -> Any:
    """Y = A @ B with A an input and B a constant, n x n x n, fp32 MatMul or u8 x s8
    MatMulInteger (MLAS's quantized GEMM path)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if dtype == "fp32":
        weight = rng.standard_normal((n, n)).astype(np.float32)
        node = helper.make_node("MatMul", ["A", "B"], ["Y"], name="gemm")
        a_type, y_type = TensorProto.FLOAT, TensorProto.FLOAT
    else:
        weight = rng.integers(-128, 128, (n, n)).astype(np.int8)
        node = helper.make_node("MatMulInteger", ["A", "B"], ["Y"], name="gemm")
        a_type, y_type = TensorProto.UINT8, TensorProto.INT32
    graph = helper.make_graph([node], "gemm", [helper.make_tensor_value_info("A", a_type, [n, n])],
                              [helper.make_tensor_value_info("Y", y_type, [n, n])],
                              [numpy_helper.from_array(weight, "B")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _add_model(numel: int) -> Any:
    """C = A + B on two fp32 vectors of `numel` elements (a streaming kernel)."""
    from onnx import TensorProto, helper

    info = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [numel]) for name in "ABC"]
    graph = helper.make_graph([helper.make_node("Add", ["A", "B"], ["C"], name="add")], "stream",
                              info[:2], info[2:])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _chain_model(length: int) -> Any:
    """`length` Adds one after another on a [1] tensor: nothing but per-op dispatch."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Add", ["X" if i == 0 else f"t{i}", "one"],
                              ["Y" if i == length - 1 else f"t{i + 1}"], name=f"add{i}")
             for i in range(length)]
    graph = helper.make_graph(nodes, "chain",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1])],
                              [numpy_helper.from_array(np.ones(1, np.float32), "one")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _summary(name: str, value: float, unit: str, times: list[float], method: str
             ) -> Measurement:
    return Measurement(name=name, value=value, unit=unit, runs=len(times),
                       median_s=statistics.median(times), min_s=min(times), max_s=max(times),
                       method=f"{method}, median of {len(times)} after {_WARMUP_RUNS} warm-up")


def measure_gemm(dtype: str, threads: int, budget_s: float, name: str) -> Measurement:
    """Sustained GEMM rate (2 n^3 ops per run) at `threads` intra-op threads."""
    n = GEMM_SIZE
    session = _session(_gemm_model(n, dtype), threads)
    if dtype == "fp32":
        feed = np.random.default_rng(1).standard_normal((n, n)).astype(np.float32)
        output = np.empty((n, n), np.float32)
    else:
        feed = np.random.default_rng(1).integers(0, 256, (n, n)).astype(np.uint8)
        output = np.empty((n, n), np.int32)
    times = _repeat(_bound_runner(session, {"A": feed}, output), budget_s)
    op = "MatMul" if dtype == "fp32" else "MatMulInteger u8 x s8"
    return _summary(name, 2 * n**3 / statistics.median(times), "ops/s", times,
                    f"onnxruntime {op} {n}^3 {dtype}, {threads} thread"
                    + ("s" if threads > 1 else ""))


def stream_elements(facts: HostFacts) -> int:
    """Elements per array of the bandwidth test: past the last cache level, so each run
    streams from main memory, and a small share of memory."""
    last_cache = max((cache.size for cache in facts.caches), default=0)
    size = max(_MIN_STREAM_BYTES, last_cache)
    size = min(size, facts.memory_bytes // 16)
    return max(1, size // 4)


def measure_bandwidth(facts: HostFacts, budget_s: float) -> Measurement:
    """Streaming bandwidth of an elementwise Add: 2 arrays read + 1 written per run."""
    numel = stream_elements(facts)
    session = _session(_add_model(numel), facts.cores)
    a = np.full(numel, 1.0, np.float32)
    b = np.full(numel, 2.0, np.float32)
    c = np.zeros(numel, np.float32)  # touched now, so no run pays its page faults
    times = _repeat(_bound_runner(session, {"A": a, "B": b}, c), budget_s)
    mib = numel * 4 / 2**20
    return _summary("bandwidth", 3 * numel * 4 / statistics.median(times), "bytes/s", times,
                    f"onnxruntime Add of two {mib:.0f} MiB fp32 arrays (bytes = 2 read + 1 "
                    f"written), {facts.cores} threads")


def measure_dispatch(threads: int, budget_s: float) -> tuple[Measurement, Measurement]:
    """Per-op dispatch cost: (a chain of CHAIN_LENGTH + 1 tiny Adds - a chain of 1) per op,
    so the cost of one session.run call is not charged to the ops; and that per-run cost:
    a plain session.run of the chain of 1 (numpy in, a new array out, as `mapper measure`
    and most users call it) less its one op."""
    x = np.ones(1, np.float32)
    runs: dict[int, list[float]] = {}
    sessions = {}
    for length in (CHAIN_LENGTH + 1, 1):
        sessions[length] = _session(_chain_model(length), threads)
        runs[length] = _repeat(_bound_runner(sessions[length], {"X": x},
                                             np.empty(1, np.float32)), budget_s / 3)
    long_run, short_run = runs[CHAIN_LENGTH + 1], runs[1]
    per_op = max((statistics.median(long_run) - statistics.median(short_run)) / CHAIN_LENGTH,
                 1e-9)
    suffix = f", {threads} thread" + ("s" if threads > 1 else "")
    plain = _repeat(lambda: sessions[1].run(None, {"X": x}), budget_s / 3)
    per_run = max(statistics.median(plain) - per_op, 1e-9)
    return (_summary("op_overhead", per_op, "s", long_run,
                     f"onnxruntime chain of {CHAIN_LENGTH + 1} Adds on [1] tensors minus a "
                     f"chain of 1, / {CHAIN_LENGTH}{suffix}"),
            _summary("run_overhead", per_run, "s", plain,
                     f"onnxruntime session.run of one Add on a [1] tensor (numpy feeds, "
                     f"output allocated) minus one op_overhead{suffix}"))


def probe(seconds: float = DEFAULT_SECONDS) -> ProbeResult:
    """Read the host's facts and measure its sustained rates within about `seconds`."""
    import onnxruntime as ort

    if seconds <= 0:
        raise UserError(f"--seconds must be > 0, got {seconds:g}")
    started = time.perf_counter()
    facts = read_host()
    measured: list[Measurement] = []
    skipped: list[str] = []
    measured.append(measure_gemm("fp32", 1, seconds * _SHARES["fp32_gemm_1t"], "fp32_gemm_1t"))
    measured.append(measure_gemm("fp32", facts.cores, seconds * _SHARES["fp32_gemm"],
                                 "fp32_gemm"))
    try:
        measured.append(measure_gemm("int8", facts.cores, seconds * _SHARES["int8_gemm"],
                                     "int8_gemm"))
    except Exception as error:  # an onnxruntime build without the kernel: no int8 peak
        skipped.append(f"int8_gemm: {str(error).strip().splitlines()[0][:200]}")
    measured.append(measure_bandwidth(facts, seconds * _SHARES["bandwidth"]))
    measured.extend(measure_dispatch(facts.cores, seconds * _SHARES["op_overhead"]))
    return ProbeResult(facts=facts, measurements=tuple(measured), skipped=tuple(skipped),
                       seconds=time.perf_counter() - started,
                       onnxruntime_version=ort.__version__)


# ---------------------------------------------------------------- the YAML file


def _kib(size: int) -> str:
    return f"{size // 2**10}KiB" if size % 2**10 == 0 else f"{size}B"


def _line(key: str, value: str, comment: str, indent: int) -> str:
    text = f"{' ' * indent}{key}: {value}"
    return f"{text.ljust(30)} # {comment}"


def _clock(result: ProbeResult) -> tuple[float, str]:
    """The clock to state: the one read, raised where the measured fp32 rate would exceed
    the theoretical peak at it (turbo above a reported base clock), since a stated peak
    may not exceed cores x clock x FMA x lanes x 2."""
    facts = result.facts
    fp32 = result.get("fp32_gemm")
    per_hz = facts.cores * facts.fma_units_per_core * (facts.simd_width_bits // 32) * 2
    implied = fp32.value / per_hz if fp32 is not None else 0.0
    if facts.clock_hz is None:
        return implied, ("derived: no clock readable; the measured fp32 GEMM rate / (cores x "
                         "FMA x lanes x 2)")
    if implied > facts.clock_hz:
        return implied, (f"derived: {facts.clock_source[len('read: '):]} says "
                         f"{facts.clock_hz / 1e9:.4g} GHz, raised to what the measured fp32 "
                         "GEMM rate implies (turbo)")
    return facts.clock_hz, facts.clock_source


def _level_names(caches: tuple[CacheLevel, ...]) -> list[str]:
    return [("l1d" if cache.level == 1 else f"l{cache.level}") for cache in caches]


def render_yaml(result: ProbeResult, name: str) -> str:
    """The probe as a mapper.hw/1 hardware file, a comment on every figure."""
    facts = result.facts
    m = {item.name: item for item in result.measurements}
    clock, clock_source = _clock(result)
    simd_bytes = facts.simd_width_bits // 8
    theoretical = (facts.cores * clock * facts.fma_units_per_core
                   * (facts.simd_width_bits // 32) * 2)
    one, full = m["fp32_gemm_1t"], m["fp32_gemm"]
    scaling = full.value / one.value
    lines = [
        f"{PROBE_HEADER} {__version__} on {date.today().isoformat()},",
        f"# onnxruntime {result.onnxruntime_version} (CPUExecutionProvider), in "
        f"{result.seconds:.1f} s.",
        "# `read:` figures come from the OS, `measured:` ones from onnxruntime microbenchmarks",
        "# (sustained rates, not datasheet peaks), `assumption:` ones from neither.",
        f"# Thread scaling of the fp32 GEMM: {one.value / 1e9:.4g} GFLOP/s on 1 thread, "
        f"{full.value / 1e9:.4g} GFLOP/s on {facts.cores} ({scaling:.2f}x).",
        f"# Theoretical fp32 peak at the stated clock: {theoretical / 1e9:.4g} GFLOP/s; the "
        f"measured one is {full.value / theoretical:.0%} of it"
        + (" (the clock is raised to it: see clock)." if clock != facts.clock_hz else "."),
    ]
    lines += [f"# Not measured: {item}" for item in result.skipped]
    lines += [
        "schema: mapper.hw/1",
        f"name: {name}",
        "kind: cpu",
        f"vendor: {_quoted(facts.vendor)}",
        f"description: {_quoted(f'{facts.cpu_name}, {facts.cores} cores, probed by mapper')}",
        "compute:",
        _line("units", str(facts.cores), "read: len(os.sched_getaffinity(0)), the logical CPUs "
              "this process may use", 2),
        "  unit_name: core",
        _line("clock", f"{clock / 1e9:.6g}GHz", clock_source, 2),
        "  cpu:",
        _line("isa", _quoted(facts.isa), "read: /proc/cpuinfo flags", 4),
        _line("simd_width_bits", str(facts.simd_width_bits), "read: /proc/cpuinfo flags "
              "(avx512f 512, avx2 256, asimd/neon 128)", 4),
        _line("fma_units_per_core", str(facts.fma_units_per_core), facts.fma_source, 4),
        "  peak_ops:",
        _line("fp32", f"{full.value / 1e9:.4g}GFLOPS", f"measured: {full.method}", 4),
    ]
    if "int8_gemm" in m:
        lines.append(_line("int8", f"{m['int8_gemm'].value / 1e9:.4g}GOPS",
                           f"measured: {m['int8_gemm'].method}", 4))
    overhead = m["op_overhead"]
    lines.append(_line("op_overhead", f"{overhead.value * 1e6:.3g}us",
                       f"measured: {overhead.method}", 2))
    run = m["run_overhead"]
    lines.append(_line("run_overhead", f"{run.value * 1e6:.3g}us", f"measured: {run.method}",
                       2))
    lines.append("memory:")
    for level_name, cache in zip(_level_names(facts.caches), facts.caches, strict=True):
        index = f"read: /sys/devices/system/cpu/cpu0/cache (level {cache.level})"
        # Private to fewer CPUs than the process may use: a per-core level.
        unit_scope = cache.shared_cpus < facts.cores
        per_core, why = ((2 * simd_bytes * clock, f"two {simd_bytes}-byte loads per clock")
                         if cache.level == 1 else (64 * clock, "64 bytes per clock")
                         if cache.level == 2 else (32 * clock, "32 bytes per clock"))
        bandwidth = per_core if unit_scope else per_core * facts.cores
        why = f"assumption: {why} per core" + ("" if unit_scope else ", all cores")
        lines += [f"  {level_name}:",
                  _line("size", _kib(cache.size), index, 4),
                  _line("bandwidth", f"{bandwidth / 1e9:.4g}GB/s", why, 4)]
        if unit_scope:
            lines.append(_line("scope", "unit", f"read: shared by {cache.shared_cpus} logical "
                               "CPU (shared_cpu_list)", 4))
    bandwidth = m["bandwidth"]
    lines += ["  dram:",
              _line("size", _kib(facts.memory_bytes), "read: /proc/meminfo MemTotal", 4),
              _line("bandwidth", f"{bandwidth.value / 1e9:.4g}GB/s",
                    f"measured: {bandwidth.method}", 4),
              "interconnect:",
              _line("devices_per_node", "1", "assumption: one probed host", 2),
              _line("intra_node_bandwidth", "1.25GB/s", "assumption: no peer device probed; "
                    "a 10 Gb/s network stands in", 2),
              _line("inter_node_bandwidth", "1.25GB/s", "assumption: a 10 Gb/s network "
                    "(not probed)", 2),
              "  link: none probed (a single host)"]
    return "\n".join(lines) + "\n"


def _quoted(text: str) -> str:
    """A YAML double-quoted scalar (names with ': ' or '#' stay plain text)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def probe_name(path: Path) -> str:
    """The hardware name for an output file: its stem, in the characters names use."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem).strip("-.")
    return name or "host"


def result_dict(result: ProbeResult, path: Path, name: str) -> dict[str, Any]:
    """The `hw probe --json` object: every fact with its source, every measurement."""
    facts = result.facts
    clock, clock_source = _clock(result)
    return {
        "path": str(path), "name": name, "seconds": result.seconds,
        "onnxruntime": result.onnxruntime_version,
        "facts": {
            "cpu": {"value": facts.cpu_name, "source": "read: /proc/cpuinfo model name"},
            "isa": {"value": facts.isa, "source": "read: /proc/cpuinfo flags"},
            "simd_width_bits": {"value": facts.simd_width_bits,
                                "source": "read: /proc/cpuinfo flags"},
            "fma_units_per_core": {"value": facts.fma_units_per_core,
                                   "source": facts.fma_source},
            "cores": {"value": facts.cores, "source": "read: len(os.sched_getaffinity(0))"},
            "clock_hz": {"value": clock, "source": clock_source},
            "caches": [{"level": c.level, "size": c.size, "shared_cpus": c.shared_cpus,
                        "source": "read: /sys/devices/system/cpu/cpu0/cache"}
                       for c in facts.caches],
            "memory_bytes": {"value": facts.memory_bytes,
                             "source": "read: /proc/meminfo MemTotal"},
        },
        "measurements": {item.name: item.to_dict() for item in result.measurements},
        "skipped": list(result.skipped),
    }
