"""`mapper measure`: run a model in onnxruntime on this CPU; latency and per-op times.

The model runs as mapper loads it (dims fixed, nodes named), so the profiler's node names are
the plan's node names. Latency comes from a plain session (median, min and max of the timed
runs after the warm-up); per-op times from a second, profiled session over as many runs,
summed per node and divided by the runs. With a hardware model the estimate pass prices the
same graph, op by op, for the predicted/measured comparison.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mapper.errors import UserError

# onnxruntime's graph optimization levels by the names the CLI offers.
ORT_LEVELS = ("none", "basic", "extended", "all")
_KERNEL_SUFFIX = "_kernel_time"


@dataclass(frozen=True)
class NodeTime:
    """One node: its measured time per run (None: onnxruntime fused or removed it) and the
    estimate's (None without a hardware model)."""

    node: str
    op: str
    measured_s: float | None
    estimate_s: float | None
    in_model: bool = True
    ran_as: str | None = None  # the onnxruntime node it ran inside, where fused

    def to_dict(self) -> dict[str, Any]:
        """The JSON row of `measure --json`."""
        return {"node": self.node, "op": self.op, "measured_s": self.measured_s,
                "estimate_s": self.estimate_s, "in_model": self.in_model,
                "ran_as": self.ran_as}


@dataclass(frozen=True)
class OpTypeTime:
    """Every node of one op type together, per run."""

    op: str
    nodes: int
    measured_s: float
    estimate_s: float | None


@dataclass(frozen=True)
class MeasureResult:
    """Latency over the timed runs, per-node and per-op-type times, and the estimate."""

    model: str
    runs: int
    warmup: int
    threads: int
    ort_level: str
    median_s: float
    min_s: float
    max_s: float
    nodes: tuple[NodeTime, ...]
    op_types: tuple[OpTypeTime, ...]
    hardware: str | None
    estimate_s: float | None

    @property
    def ratio(self) -> float | None:
        """Predicted / measured latency of the whole model (None without --hw)."""
        if self.estimate_s is None or self.median_s <= 0:
            return None
        return self.estimate_s / self.median_s

    def to_dict(self) -> dict[str, Any]:
        """The `measure --json` object."""
        kernel = sum(n.measured_s or 0.0 for n in self.nodes)
        return {"model": self.model, "runs": self.runs, "warmup": self.warmup,
                "threads": self.threads, "ort_level": self.ort_level,
                "latency_s": {"median": self.median_s, "min": self.min_s, "max": self.max_s},
                "kernel_s": kernel, "hardware": self.hardware, "estimate_s": self.estimate_s,
                "ratio": self.ratio, "nodes": [n.to_dict() for n in self.nodes],
                "op_types": [{"op": o.op, "nodes": o.nodes, "measured_s": o.measured_s,
                              "estimate_s": o.estimate_s} for o in self.op_types]}


def _session(path: Path, source: str, threads: int, level: str, profile_prefix: str | None,
             optimized: Path | None = None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if optimized is not None:
        # The graph onnxruntime runs, to map its fused and re-laid-out nodes back; weights go
        # to a side file so that models past protobuf's 2 GB still write.
        options.optimized_model_filepath = str(optimized)
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name",
            optimized.name + ".data")
    options.intra_op_num_threads = threads
    options.graph_optimization_level = {
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:
        first = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
        raise UserError(f"onnxruntime cannot load model {source!r}: {first}",
                        subject={"file": source}) from None


def _run(session: Any, feeds: Mapping[str, np.ndarray], source: str) -> None:
    try:
        session.run(None, dict(feeds))
    except Exception as error:
        first = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
        raise UserError(f"onnxruntime failed to run model {source!r} on random inputs: "
                        f"{first}", subject={"file": source}) from None


def time_runs(session: Any, feeds: Mapping[str, np.ndarray], warmup: int, runs: int,
              source: str) -> list[float]:
    """Wall seconds of each of `runs` runs after `warmup` untimed ones."""
    for _ in range(warmup):
        _run(session, feeds, source)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        _run(session, feeds, source)
        times.append(time.perf_counter() - started)
    return times


def kernel_times(events: list[dict[str, Any]], skip_runs: int) -> dict[str, tuple[str, float]]:
    """Per onnxruntime node: (op type, summed kernel seconds) over the model runs after the
    first `skip_runs` (the warm-up) in a profiler trace."""
    windows = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                     if e.get("cat") == "Session" and e.get("name") == "model_run")
    kept = windows[skip_runs:]
    start = kept[0][0] if kept else float("inf")
    found: dict[str, tuple[str, float]] = {}
    for event in events:
        name = event.get("name", "")
        if event.get("cat") != "Node" or not name.endswith(_KERNEL_SUFFIX):
            continue
        if event["ts"] < start:
            continue  # a warm-up run's kernel
        node = name[: -len(_KERNEL_SUFFIX)]
        op = (event.get("args") or {}).get("op_name", "?")
        _, total = found.get(node, (op, 0.0))
        found[node] = (op, total + event["dur"] * 1e-6)  # the trace is in microseconds
    return found


def _fused_into(ort_name: str, model_nodes: Mapping[str, str],
                producers: Mapping[str, str]) -> str | None:
    """The model node an onnxruntime node was made from, where its name tells: a node name
    (`fused Conv_0`, `MatMul_3/MatMulAddFusion`) or an output tensor's (`relu_3_nchwc`)."""
    base = ort_name.removeprefix("fused ").split("/")[0].removesuffix("_nchwc")
    if base == ort_name:
        return None
    return base if base in model_nodes else producers.get(base)


def ort_owners(model: Any, optimized: Any) -> dict[str, str]:
    """onnxruntime node of the `optimized` graph -> the node of `model` it was made from:
    the producer of the tensor it writes (NCHWc and fused nodes get new names; their outputs
    keep, or suffix, the model's), else the one reader of a weight it reads (a reordered
    filter), else the owner of the node that reads its output (a ReorderOutput)."""
    producers = {t: node.name for node in model.graph.node for t in node.output}
    initializers = {init.name for init in model.graph.initializer}
    weight_users: dict[str, list[str]] = {}
    for model_node in model.graph.node:
        for tensor in model_node.input:
            if tensor in initializers:
                weight_users.setdefault(tensor, []).append(model_node.name)

    def base(tensor: str) -> str:
        while tensor not in producers and tensor.endswith("_nchwc"):
            tensor = tensor.removesuffix("_nchwc")
        return tensor

    owners = {}
    for node in optimized.node:
        found = [producers[base(t)] for t in node.output if base(t) in producers]
        found += [weight_users[base(t)][0] for t in node.input
                  if len(weight_users.get(base(t), ())) == 1]
        if found:
            owners[node.name] = found[0]
    readers = {t: node.name for node in optimized.node for t in node.input}
    for node in optimized.node:
        if node.name not in owners:
            after = [owners[readers[t]] for t in node.output if readers.get(t) in owners]
            if after:
                owners[node.name] = after[0]
    return owners


def node_rows(model_nodes: Mapping[str, str], measured: Mapping[str, tuple[str, float]],
              runs: int, estimates: Mapping[str, float] | None,
              producers: Mapping[str, str] | None = None,
              owners: Mapping[str, str] | None = None) -> tuple[NodeTime, ...]:
    """One row per model node (model order), then the onnxruntime nodes of no model node;
    `producers` (tensor -> node) attributes fused nodes named after a tensor, `owners`
    (`ort_owners`) the rest of the nodes onnxruntime made; their time joins the owner's."""
    per_run = {name: (op, total / runs) for name, (op, total) in measured.items()}
    attributed: dict[str, tuple[float, str]] = {}
    extra = []
    for name, (op, seconds) in per_run.items():
        if name in model_nodes:
            continue
        owner = _fused_into(name, model_nodes, producers or {}) or (owners or {}).get(name)
        if owner is not None:
            before = attributed.get(owner, (0.0, name))[0]
            attributed[owner] = (before + seconds, name)
        else:
            extra.append(NodeTime(name, op, seconds, None, in_model=False))
    rows = []
    for name, op in model_nodes.items():
        estimate = estimates.get(name) if estimates is not None else None
        if name in per_run:
            helpers = attributed.get(name, (0.0, name))[0]
            rows.append(NodeTime(name, op, per_run[name][1] + helpers, estimate))
        elif name in attributed:
            seconds, ran_as = attributed[name]
            rows.append(NodeTime(name, op, seconds, estimate, ran_as=ran_as))
        else:
            rows.append(NodeTime(name, op, None, estimate))
    return (*rows, *extra)


def _owners(model: Any, optimized: Path) -> dict[str, str]:
    """`ort_owners` from the graph onnxruntime wrote; none where it wrote nothing."""
    import onnx

    if not optimized.is_file():
        return {}
    return ort_owners(model, onnx.load(str(optimized), load_external_data=False).graph)


def op_type_rows(nodes: tuple[NodeTime, ...], with_estimate: bool) -> tuple[OpTypeTime, ...]:
    """Nodes summed per op type, the most measured time first."""
    groups: dict[str, list[NodeTime]] = {}
    for node in nodes:
        groups.setdefault(node.op, []).append(node)
    rows = [OpTypeTime(op, len(items), sum(n.measured_s or 0.0 for n in items),
                       sum(n.estimate_s or 0.0 for n in items) if with_estimate else None)
            for op, items in groups.items()]
    return tuple(sorted(rows, key=lambda row: (-row.measured_s, row.op)))


def _estimate(loaded: Any, hardware: str, options: Any, model_path: str
              ) -> tuple[str, dict[str, float], float]:
    """The estimate pass alone on the loaded graph: hardware name, per-node time, latency."""
    from mapper.driver import plan_loaded, resolve_hardware

    hw = resolve_hardware(hardware, options)
    plan, _ = plan_loaded(loaded, hw, options, model_path)
    estimate = plan.get("estimate") or {}
    rows = {row["node"]: float(row["time_s"]) for row in estimate.get("ops", ())}
    return hw.name, rows, float(estimate.get("latency_s") or sum(rows.values()))


def measure_model(model_path: Path, *, hardware: str | None = None,
                  input_shapes: Mapping[str, tuple[int, ...]] | None = None,
                  dims: Mapping[str, int] | None = None, runs: int = 20, warmup: int = 3,
                  threads: int = 0, ort_level: str = "all", seed: int = 0) -> MeasureResult:
    """Time `model_path` in onnxruntime (CPU) and profile it per node; with `hardware`,
    price the same graph with the estimate pass."""
    from mapper.driver import load_for
    from mapper.emit import save_model
    from mapper.options import CompileOptions
    from mapper.verify import random_inputs

    if runs < 1 or warmup < 0:
        raise UserError("--runs must be >= 1 and --warmup >= 0")
    if ort_level not in ORT_LEVELS:
        raise UserError(f"--ort-level must be one of {', '.join(ORT_LEVELS)}")
    source = str(model_path)
    options = CompileOptions(input_shapes=dict(input_shapes or {}), dims=dict(dims or {}),
                             passes=("estimate",))
    loaded = load_for(model_path, options)
    model_nodes = {node.name: node.op_type for node in loaded.model.graph.node}
    producers = {tensor: node.name for node in loaded.model.graph.node for tensor in node.output}
    feeds = random_inputs(loaded.model, seed)
    with tempfile.TemporaryDirectory(prefix="mapper-measure-") as tmp:
        path = Path(tmp) / "model.onnx"
        save_model(loaded.model, path)
        optimized = Path(tmp) / "optimized.onnx"
        plain = _session(path, source, threads, ort_level, None, optimized)
        owners = _owners(loaded.model, optimized)
        wanted = {i.name for i in plain.get_inputs()}
        feeds = {name: value for name, value in feeds.items() if name in wanted}
        latencies = time_runs(plain, feeds, warmup, runs, source)
        del plain
        profiled = _session(path, source, threads, ort_level, str(Path(tmp) / "profile"))
        time_runs(profiled, feeds, warmup, runs, source)
        trace = Path(profiled.end_profiling())
        events = json.loads(trace.read_text())
        del profiled
    measured = kernel_times(events, warmup)
    hw_name, estimates, estimate_s = (None, None, None)
    if hardware is not None:
        hw_name, estimates, estimate_s = _estimate(loaded, hardware, options, source)
    nodes = node_rows(model_nodes, measured, runs, estimates, producers, owners)
    return MeasureResult(model=source, runs=runs, warmup=warmup, threads=threads,
                         ort_level=ort_level, median_s=statistics.median(latencies),
                         min_s=min(latencies), max_s=max(latencies), nodes=nodes,
                         op_types=op_type_rows(nodes, estimates is not None),
                         hardware=hw_name, estimate_s=estimate_s)
