"""Whole-model and per-op fidelity of the CPU estimate against onnxruntime on this host.

Probes the host once (`mapper.probe`: the hardware file `mapper hw probe` writes, plus a
1-core variant: units 1, the 1-thread fp32 GEMM rate as the fp32 peak, and the streaming
bandwidth and per-op overhead measured at one thread), then, for every reference model and
a set of corpus models, measures onnxruntime (CPU provider, optimization level ALL as
deployed, median of 20 runs after 3 warm-up, per-node times from the profiler) at 1 and 2
intra-op threads, and prices the same loaded graph with the estimate for the matching host
model. Two estimates per model:

- **before**: today's estimate before issue 16 item 5: every node of the loaded graph priced
  on its own by `mapper.costs.op_time` (roofline + per-op overhead, main-memory bandwidth,
  no fusion), summed;
- **after**: the estimate pass as it is now (`mapper measure`'s estimate).

Target: predicted / measured within 25% (0.75 <= ratio <= 1.25, read as |ratio - 1| <= 25%)
on every model at 1 and 2 threads; per-op Spearman rank correlation >= 0.8 over all models'
ops above 1% of their model's measured kernel time.

    .venv/bin/python -m benchmarks.cpu_fidelity             # measure and write RESULTS.md
    .venv/bin/python -m benchmarks.cpu_fidelity --reuse     # re-price the last measurements
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from benchmarks.results import update_section

TARGET = 0.25
SPEARMAN_TARGET = 0.8
OP_SHARE = 0.01  # per-op fidelity covers ops above 1% of their model's measured kernel time
BIG_KERNEL_S = 100e-6  # outliers are listed among kernels of at least this measured time
RUNS, WARMUP = 20, 3
THREADS = (1, 2)
REFERENCE = ("resnet_small", "resnet50", "gpt_decoder", "minilm_l6", "moe_transformer",
             "smollm2_135m")
CORPUS = ("squeezenet1_1", "mobilenet_v1", "resnet50", "inception_v1", "densenet121",
          "ppocr_mobile_v2_cls", "ppocrv4_rec", "magika_standard_v3_3", "zoo_light_shufflenet",
          "q_ort_static_cnn", "q_ort_dynamic_mlp", "torch03_batchnorm2d", "zoo_light_squeezenet")
CACHE = Path(__file__).resolve().parent.parent / ".cache" / "cpu_fidelity"


# ---------------------------------------------------------------- the host models


def probe_host(directory: Path) -> dict[int, Path]:
    """The probed host's hardware file per thread count (2: as `hw probe` writes it; 1: its
    one-core variant from the 1-thread measurements)."""
    from mapper import probe
    from mapper.units import parse_rate

    result = probe.probe()
    full = directory / "host.yaml"
    full.write_text(probe.render_yaml(result, "host"))
    one_core = dataclasses.replace(result.facts, cores=1)
    bandwidth_1t = probe.measure_bandwidth(one_core, 4.0)
    overhead_1t, run_1t = probe.measure_dispatch(1, 3.0)
    doc = yaml.safe_load(full.read_text())
    cores = result.facts.cores
    doc["name"] = "host-1t"
    doc["compute"]["units"] = 1
    gemm_1t = result.get("fp32_gemm_1t")
    assert gemm_1t is not None
    doc["compute"]["peak_ops"]["fp32"] = f"{gemm_1t.value / 1e9:.6g}GFLOPS"
    # One core may turbo above the all-core clock the probe derived: raise the clock to what
    # the 1-thread rate implies (a stated peak may not exceed clock x FMA x lanes x 2).
    facts = result.facts
    per_hz = facts.fma_units_per_core * (facts.simd_width_bits // 32) * 2
    clock_ghz = float(str(doc["compute"]["clock"]).removesuffix("GHz"))
    doc["compute"]["clock"] = f"{max(clock_ghz, gemm_1t.value / per_hz / 1e9 * 1.001):.6g}GHz"
    int8 = result.get("int8_gemm")
    if int8 is not None:  # no 1-thread int8 rate is measured: the all-core one per core
        doc["compute"]["peak_ops"]["int8"] = f"{int8.value / cores / 1e9:.6g}GOPS"
    doc["compute"]["op_overhead"] = f"{overhead_1t.value * 1e6:.6g}us"
    doc["compute"]["run_overhead"] = f"{run_1t.value * 1e6:.6g}us"
    for name, level in doc["memory"].items():
        if name == "dram":
            level["bandwidth"] = f"{bandwidth_1t.value / 1e9:.6g}GB/s"
        elif level.get("scope") != "unit":  # a shared level: one core's share of it
            level["bandwidth"] = f"{parse_rate(level['bandwidth']) / 1e9 / cores:.6g}GB/s"
    one = directory / "host-1t.yaml"
    one.write_text(yaml.safe_dump(doc, sort_keys=False))
    summary = {
        "cpu": result.facts.cpu_name, "cores": cores,
        "fp32_1t_gflops": gemm_1t.value / 1e9,
        "fp32_gflops": result.get("fp32_gemm").value / 1e9,  # type: ignore[union-attr]
        "bandwidth_gbps": result.get("bandwidth").value / 1e9,  # type: ignore[union-attr]
        "bandwidth_1t_gbps": bandwidth_1t.value / 1e9,
        "op_overhead_us": result.get("op_overhead").value * 1e6,  # type: ignore[union-attr]
        "op_overhead_1t_us": overhead_1t.value * 1e6,
    }
    (directory / "probe.json").write_text(json.dumps(summary))
    return {1: one, 2: full}


# ---------------------------------------------------------------- models and measurements


def model_list() -> list[tuple[str, Path, dict[str, tuple[int, ...]]]]:
    """(label, path, input shapes) of every model the benchmark runs."""
    import models
    from models import corpus

    found = []
    for name in REFERENCE:
        feeds = models.sample_inputs(name)
        found.append((name, models.build(name), {k: v.shape for k, v in feeds.items()}))
    for name in CORPUS:
        feeds = corpus.sample_inputs(name)
        found.append((f"corpus:{name}", corpus.fetch(name),
                      {k: tuple(v.shape) for k, v in feeds.items()}))
    return found


def measure_all(found: list[tuple[str, Path, dict[str, tuple[int, ...]]]]) -> dict[str, Any]:
    """Per model and thread count: the median latency and per-node measured seconds
    (`mapper measure` gives the nodes onnxruntime made to the model node they came from)."""
    from mapper.measure import measure_model

    out: dict[str, Any] = {}
    for label, path, shapes in found:
        out[label] = {}
        for threads in THREADS:
            started = time.perf_counter()
            try:
                result = measure_model(path, input_shapes=shapes, runs=RUNS, warmup=WARMUP,
                                       threads=threads, ort_level="all")
            except Exception as error:  # a model onnxruntime cannot run on random inputs
                print(f"{label}: skipped: {error}", flush=True)
                out.pop(label)
                break
            nodes = {n.node: n.measured_s for n in result.nodes
                     if n.in_model and n.measured_s is not None}
            unattributed = sum(n.measured_s or 0.0 for n in result.nodes if not n.in_model)
            out[label][str(threads)] = {"median_s": result.median_s, "nodes": nodes,
                                        "unattributed_s": unattributed}
            print(f"{label} {threads}T: {result.median_s * 1e3:.2f} ms "
                  f"({time.perf_counter() - started:.1f} s)", flush=True)
    return out


# ---------------------------------------------------------------- the two estimates


def estimates(path: Path, shapes: dict[str, tuple[int, ...]], hardware: Path
              ) -> dict[str, Any]:
    """{"before": (latency, per node), "after": (latency, per node), "kernel": node -> the
    anchor of the fused group it runs in (itself when alone)} for one model."""
    from mapper.costs import dequant_ops, op_time
    from mapper.driver import load_for, plan_loaded, resolve_hardware
    from mapper.graph import GraphView
    from mapper.options import CompileOptions
    from mapper.passes.estimate import _rows

    options = CompileOptions(input_shapes=dict(shapes), passes=("estimate",))
    loaded = load_for(path, options)
    hw = resolve_hardware(str(hardware), options)
    view = GraphView.from_model(loaded.model, options.precision)
    _, main = hw.main_memory
    before = {}
    for name, node in view.nodes.items():
        dequant = sum(dequant_ops(view.formats[w], _rows(view, name))
                      for w in node.weights if view.formats[w].quantized)
        before[name] = op_time(node, hw, main.bandwidth, None, None, dequant).time_s
    plan, _ = plan_loaded(loaded, hw, options, str(path))
    rows = plan["estimate"]["ops"]
    after = {row["node"]: float(row["time_s"]) for row in rows}
    kernel = {row["node"]: row.get("fused_into", row["node"]) for row in rows}
    return {"before": (sum(before.values()), before),
            "after": (float(plan["estimate"]["latency_s"]), after), "kernel": kernel}


def ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    order = np.argsort(values, kind="mergesort")
    ranked = np.empty(len(values))
    ranked[order] = np.arange(1, len(values) + 1)
    for value in np.unique(values):
        tied = values == value
        if tied.sum() > 1:
            ranked[tied] = ranked[tied].mean()
    return ranked


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman rank correlation (Pearson of the ranks), numpy only."""
    if len(x) < 3:
        return float("nan")
    a, b = ranks(np.asarray(x, float)), ranks(np.asarray(y, float))
    a, b = a - a.mean(), b - b.mean()
    denominator = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denominator) if denominator else float("nan")


def evaluate(measured: dict[str, Any], priced: dict[str, Any]) -> dict[str, Any]:
    """Per estimate kind: model rows, per-op pairs, Spearman, worst model, outliers."""
    report: dict[str, Any] = {}
    for kind in ("before", "after"):
        rows, pairs = [], []
        for label, by_threads in measured.items():
            row: dict[str, Any] = {"model": label}
            for threads in THREADS:
                key = str(threads)
                m = by_threads[key]
                latency, per_node = priced[label][key][kind]
                row[f"measured_{key}"] = m["median_s"]
                row[f"predicted_{key}"] = latency
                row[f"ratio_{key}"] = latency / m["median_s"]
                total = sum(m["nodes"].values()) + m["unattributed_s"]
                # Compared per kernel: the nodes of one fused group (as the estimate now
                # fuses them) summed, measured and predicted alike.
                kernel_of = priced[label][key]["kernel"]
                measured_k: dict[str, float] = {}
                predicted_k: dict[str, float] = {}
                for node, seconds in m["nodes"].items():
                    anchor = kernel_of.get(node, node)
                    measured_k[anchor] = measured_k.get(anchor, 0.0) + seconds
                for node, seconds in per_node.items():
                    anchor = kernel_of.get(node, node)
                    predicted_k[anchor] = predicted_k.get(anchor, 0.0) + seconds
                for anchor, seconds in measured_k.items():
                    if seconds > OP_SHARE * total and anchor in predicted_k:
                        pairs.append((label, key, anchor, seconds, predicted_k[anchor]))
            rows.append(row)
        op_rho = {key: spearman([p[3] for p in pairs if p[1] == key],
                                [p[4] for p in pairs if p[1] == key]) for key in map(str, THREADS)}
        worst = max(rows, key=lambda r: max(abs(math.log(r[f"ratio_{t}"])) for t in THREADS))
        ranked = sorted(pairs, key=lambda p: -abs(math.log(max(p[4], 1e-12) / p[3])))
        # The largest misses among kernels long enough to matter to a model's latency.
        outliers = [p for p in ranked if p[3] >= BIG_KERNEL_S][:8]
        report[kind] = {"rows": rows, "pairs": len(pairs), "spearman": op_rho,
                        "worst": worst["model"], "outliers": outliers}
    return report


# ---------------------------------------------------------------- the section


def _within(ratio: float) -> bool:
    return abs(ratio - 1.0) <= TARGET


def table(report: dict[str, Any], kind: str) -> list[str]:
    """The per-model table of one estimate kind."""
    lines = ["| model | measured 1T ms | predicted 1T ms | ratio 1T | measured 2T ms | "
             "predicted 2T ms | ratio 2T | within 25% (1T/2T) |",
             "|---|---|---|---|---|---|---|---|"]
    for row in report[kind]["rows"]:
        r1, r2 = row["ratio_1"], row["ratio_2"]
        lines.append(f"| {row['model']} | {row['measured_1'] * 1e3:.3g} | "
                     f"{row['predicted_1'] * 1e3:.3g} | {r1:.2f} | {row['measured_2'] * 1e3:.3g} | "
                     f"{row['predicted_2'] * 1e3:.3g} | {r2:.2f} | "
                     f"{'yes' if _within(r1) else 'no'}/{'yes' if _within(r2) else 'no'} |")
    return lines


def summary(report: dict[str, Any], kind: str) -> str:
    """Counts within 25%, per-op Spearman and the worst model of one estimate kind."""
    rows = report[kind]["rows"]
    ok = {t: sum(_within(r[f"ratio_{t}"]) for r in rows) for t in THREADS}
    rho = report[kind]["spearman"]
    return (f"{kind}: within 25% on {ok[1]}/{len(rows)} models at 1 thread, {ok[2]}/{len(rows)} "
            f"at 2 threads; per-op Spearman {rho['1']:.2f} (1T), {rho['2']:.2f} (2T) over "
            f"{report[kind]['pairs']} (model, op, threads) pairs; worst model "
            f"{report[kind]['worst']}")


def outlier_lines(report: dict[str, Any], kind: str) -> list[str]:
    """The largest per-op outliers (predicted / measured furthest from 1)."""
    return [f"- {label} {threads}T `{node}`: measured {m * 1e6:.0f} us, predicted "
            f"{p * 1e6:.0f} us ({p / m:.2f}x)" for label, threads, node, m, p
            in report[kind]["outliers"]]


# What the tables show, read off the runs this section was written from (2026-12-03 on an
# Intel Xeon host, 2026-12-04 on an AMD EPYC one).
NOTES = [
    "Two CPUs: the constants below were calibrated on a 2-core Intel Xeon (AVX-512) host "
    "(2026-12-03: 17/19 models within 25% at 1 thread, 17/19 at 2; Spearman 0.98 / 0.97); "
    "this run is the first on a second CPU, a 2-core AMD EPYC (AVX2), with none of them "
    "refitted. Two changes before it: the probe's GEMM is 960^3, not 1024^3 (on the EPYC a "
    "1024^3 MatMul ran at 0.75x of 960^3 or 1152^3 on one thread and 0.88x on two: its 4 KiB "
    "row stride aliases in the caches, which had made the stated peak 25% low and every "
    "prediction about 1.2x high: 14/19 and 10/19), and a grouped convolution is priced as "
    "MlasConv threads it, whole groups per thread (zoo_light_shufflenet at 2 threads: 0.73 "
    "on the Xeon run, 1.00 here).",
    "",
    "Per-op fidelity is compared per kernel: the nodes the estimate fuses into one group are "
    "summed, measured and predicted alike (onnxruntime reports a fused kernel under one of "
    "its nodes' names, or a name the benchmark maps back through the optimized graph's "
    "tensors), for the before and the after estimate.",
    "",
    "Why the misses:",
    "- Worst model: corpus:q_ort_static_cnn (a statically quantized CNN on 1x3x32x32): "
    "about 60-70 us measured, 9 us predicted. Its quantized kernels (QLinearConv, QGemm, "
    "QLinearGlobalAveragePool) take 10-90 us each in onnxruntime's profile, far above their "
    "arithmetic (a few microseconds in all: conv0, K = 27, 41 us measured against 0.6 us of "
    "int8 arithmetic at the probed rate); the estimate prices them by their work, plus "
    "the run's fixed cost, and has no term for ORT's per-call cost of these kernels. "
    "corpus:q_ort_dynamic_mlp (three MatMulIntegers with M = 4) missed at 1 thread on the "
    "Xeon (1.4x) and is within 25% here. The "
    "third miss before the Xeon run, corpus:torch03_batchnorm2d (one BatchNormalization on "
    "2x3x6x6, about 5 us measured), is now within 25%: the estimate adds the hardware "
    "model's `run_overhead`, session.run's own cost, which `hw probe` measures (about 4.2 "
    "us here). Integer ops no longer pay weight-decode work (q_ort_dynamic_mlp's "
    "MatMulIntegers were priced 46 us each, 36 of them decoding). Models near the edge can "
    "cross 25% from one run to the next: this shared 2-core host varies 5-10% between runs.",
    "- corpus:zoo_light_shufflenet at 2 threads read 0.73 on the Xeon: its grouped 1x1 "
    "convolutions (3 groups) measured 1.94 ms against 1.31 predicted, because MlasConv "
    "runs min(threads, groups) threads with whole groups each (3 groups on 2 threads take "
    "two groups' time); priced so now. Its depthwise convolutions (0.61 ms against 0.24 on "
    "the Xeon) and its 33 Reshapes (0.18 ms profiled, each carrying the profiler's own "
    "cost, against nothing: they alias their input) are still under-predicted.",
    "- Before: the roofline priced everything at DRAM bandwidth and the fp32 GEMM peak with "
    "no fusion: CNNs were over-predicted (every Relu/BatchNormalization/Clip paid its own "
    "round trip through memory and a launch), inception_v1 under-predicted about 0.6x (its two "
    "LRN nodes are scalar loops in onnxruntime: about 60 cycles per element, 45% of the "
    "model), and transformers at 2 threads under-predicted (every op assumed to split over "
    "both cores for free).",
    "- After, per kernel: Add+LayerNormalization (onnxruntime's SkipLayerNormalization, "
    "which also absorbs the previous MatMul's bias) runs at about 12 cycles per element, "
    "up to 7x the estimate (minilm_l6's `node_add_*` kernels); magika's LayerNorm is exported as "
    "ReduceSum/Sub/Mul/... ops, which onnxruntime fuses into one LayerNormalization and the "
    "estimate (no such pattern rule) prices one by one, so the fused kernel's time lands "
    "on its `Sum` node; the reference resnet50's classifier Gemm (M=1, 8 MB of weights) "
    "measured slower at 2 threads than at 1 (975 vs 615 us); Softmax and Transpose are "
    "under-predicted about 2x. Not investigated: the two zoo_light_shufflenet kernels in "
    "the list (`n193`, `n3`, about 100 us each).",
    "",
    "Calibrated on the Xeon host (mapper/costs/cpu.py, each constant with its reason): the GEMM "
    "shape efficiency's half sizes, the depthwise share (0.35), the vector share of the GEMM "
    "peak (0.1), the in-cache streaming rate (16 bytes per clock per core), LRN's cycles per "
    "element (60) and the thread pool's fork/join (13,000 cycles). The per-kernel outliers "
    "above differ between runs (a single profiled kernel can take a scheduling stall on "
    "this shared host: minilm_l6's `node_matmul_8` at 2 threads); the whole-model medians "
    "are the measure.",
]


def main() -> None:
    """Probe, measure (or reuse the last measurements), price, write the section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reuse", action="store_true",
                        help="re-price the measurements saved by the last full run")
    args = parser.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    found = model_list()
    hosts = {1: CACHE / "host-1t.yaml", 2: CACHE / "host.yaml"}
    if args.reuse:
        measured = json.loads((CACHE / "measured.json").read_text())
    else:
        hosts = probe_host(CACHE)
        measured = measure_all(found)
        (CACHE / "measured.json").write_text(json.dumps(measured))
    probe_summary = json.loads((CACHE / "probe.json").read_text())
    priced: dict[str, Any] = {}
    for label, path, shapes in found:
        priced[label] = {str(t): estimates(path, shapes, hosts[t]) for t in THREADS}
    report = evaluate(measured, priced)
    for kind in ("before", "after"):
        print(summary(report, kind), flush=True)
    p = probe_summary
    body = "\n".join([
        "Rerun: `.venv/bin/python -m benchmarks.cpu_fidelity` (about 2 minutes; `--reuse` "
        "re-prices the last measurements). The host is probed once (`mapper hw probe`: "
        f"{p['cpu']}, {p['cores']} cores; fp32 GEMM {p['fp32_1t_gflops']:.0f} GFLOP/s on 1 "
        f"thread, {p['fp32_gflops']:.0f} on {p['cores']}; streaming {p['bandwidth_1t_gbps']:.1f}"
        f" GB/s on 1 thread, {p['bandwidth_gbps']:.1f} on {p['cores']}; per-op overhead "
        f"{p['op_overhead_1t_us']:.2f} us on 1 thread, {p['op_overhead_us']:.2f} us on "
        f"{p['cores']}); the 1-thread host model is its 1-core variant. Measured: onnxruntime "
        f"CPU provider, optimization level ALL, median of {RUNS} runs after {WARMUP} warm-up "
        "at 1 and 2 intra-op threads. Predicted: the estimate of the same loaded graph "
        "(dims fixed, no other pass). Target: ratio within 25%; per-op Spearman >= 0.8 over "
        "ops above 1% of their model's measured kernel time.", "",
        "### Before: today's estimate on the same probed host files (each node priced alone: "
        "roofline + overhead, DRAM "
        "bandwidth, no fusion)", "", summary(report, "before"), "", *table(report, "before"),
        "", "Largest per-kernel outliers (kernels of 100 us or more):",
        *outlier_lines(report, "before"), "",
        "### After: the estimate pass now (CPU fusions as onnxruntime applies them, MLAS "
        "efficiency, cache-resident bandwidth)", "", summary(report, "after"), "",
        *table(report, "after"), "", "Largest per-kernel outliers (kernels of 100 us or more):",
        *outlier_lines(report, "after"), "", *NOTES])
    (CACHE / "report.json").write_text(json.dumps(report, default=str))
    update_section("cpu-fidelity", "CPU estimate against onnxruntime on the probed host", body)


if __name__ == "__main__":
    main()
