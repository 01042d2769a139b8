"""Cost of each pass as the graph grows: per-pass seconds of the default pipeline on residual
CNNs of 100 to 2,000 nodes, on a GPU (L2 window managed) and on the edge NPU (1 MiB scratchpad).

The graphs are ResNet-style stacks built here with onnx.helper (Conv -> Relu -> Conv -> Add ->
Relu blocks in four stages of 32/64/128/256 channels, each stage halving the resolution), so
the size can be dialed while the kind of graph stays the same. Seconds are what plan.json
records per pass (median of the runs); `load` is the rest of the in-process compile (loading,
shape inference, graph view, writing and checking the outputs).

    .venv/bin/python -m benchmarks.pass_scaling [--runs 3] [--blocks 20,50,100,200,400]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from benchmarks.results import update_section

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PASSES = ("moe", "tiling", "memory", "arena", "estimate")
READING = (
    "Reading: the passes together stay under half a second up to 2,000 nodes (tiling's cost "
    "is the unique GEMM shapes, not the node count; the memory pass switches to windows of "
    "1,000 steps past 1,000 nodes; the arena search and the estimate grow about linearly). "
    "These stacks are chains: branchy graphs give the memory pass's CP-SAT and order search "
    "more to do (model-zoo ResNet-50 at 1 MiB: 3.5 s, in the memory section). What grows is "
    "`load+emit`, and it follows the weight bytes more than the node count: protobuf parsing "
    "and serialization, the sha256 of the input, the ONNX checker and onnxruntime's load "
    "check each pass over every byte.")
STAGES = (32, 64, 128, 256)


def residual_stack(blocks: int, seed: int = 0) -> onnx.ModelProto:
    """A ResNet-style CNN with `blocks` residual blocks (5 nodes each) spread over 4 stages."""
    rng = np.random.default_rng(seed)
    nodes, weights = [], []

    def conv(name: str, source: str, c_in: int, c_out: int, stride: int) -> str:
        weight = numpy_helper.from_array(
            (rng.standard_normal((c_out, c_in, 3, 3)) * 0.05).astype(np.float32), f"{name}_w")
        weights.append(weight)
        nodes.append(helper.make_node("Conv", [source, weight.name], [name], name=name,
                                      pads=[1, 1, 1, 1], strides=[stride, stride]))
        return name

    current, channels = conv("stem", "x", 3, STAGES[0], 1), STAGES[0]
    per_stage = [blocks // len(STAGES) + (i < blocks % len(STAGES)) for i in range(len(STAGES))]
    for stage, (width, count) in enumerate(zip(STAGES, per_stage, strict=True)):
        if width != channels:
            current = conv(f"down{stage}", current, channels, width, 2)
            channels = width
        for block in range(count):
            tag = f"s{stage}b{block}"
            a = conv(f"{tag}_conv1", current, width, width, 1)
            nodes.append(helper.make_node("Relu", [a], [f"{tag}_relu1"], name=f"{tag}_relu1"))
            b = conv(f"{tag}_conv2", f"{tag}_relu1", width, width, 1)
            nodes.append(helper.make_node("Add", [b, current], [f"{tag}_add"], name=f"{tag}_add"))
            nodes.append(helper.make_node("Relu", [f"{tag}_add"], [f"{tag}_out"],
                                          name=f"{tag}_out"))
            current = f"{tag}_out"
    nodes.append(helper.make_node("GlobalAveragePool", [current], ["y"], name="pool"))
    graph = helper.make_graph(
        nodes, f"residual_{blocks}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, 1, 1])],
        initializer=weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _measure(path: Path, hardware: str, runs: int) -> tuple[dict[str, float], float, int]:
    from mapper.driver import compile_model
    from mapper.options import CompileOptions

    per_pass: dict[str, list[float]] = {name: [] for name in PASSES}
    totals = []
    nodes = 0
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(runs):
            started = time.perf_counter()
            result = compile_model(path, hardware, Path(tmp) / f"out{run}", CompileOptions())
            totals.append(time.perf_counter() - started)
            nodes = result.summary["nodes"]
            for record in result.plan["passes"]:
                per_pass[record["name"]].append(record["seconds"])
    medians = {name: statistics.median(values) for name, values in per_pass.items() if values}
    return medians, statistics.median(totals), nodes


def main() -> None:
    """Measure and write the RESULTS.md section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--blocks", default="20,50,100,200,400")
    parser.add_argument("--hw", default="a100,edge-npu")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for blocks in (int(b) for b in args.blocks.split(",")):
            path = Path(tmp) / f"residual_{blocks}.onnx"
            model = residual_stack(blocks)
            weights_mb = sum(len(t.raw_data) for t in model.graph.initializer) / 2**20
            onnx.save(model, str(path))
            for hardware in args.hw.split(","):
                medians, total, nodes = _measure(path, hardware, args.runs)
                rest = total - sum(medians.values())
                cells = " | ".join(f"{medians.get(name, 0.0):.2f}" for name in PASSES)
                rows.append(f"| {nodes} | {weights_mb:.0f} | {hardware} | {cells} | {rest:.2f} | "
                            f"{total:.2f} |")
                print(rows[-1], flush=True)
    body = ("Default pipeline in process (`mapper.compile`, default time limits), median of "
            f"{args.runs} runs per row, on ResNet-style stacks of residual blocks built by the "
            "script (3x64x64 input, four stages of 32-256 channels; one new conv shape per "
            "stage, so the tiling pass solves a handful of unique problems and reuses them). "
            "Seconds per pass as plan.json records them; `load+emit` is the rest (loading, "
            "shape inference, graph view, writing and checking model.onnx).\n\n"
            f"| nodes | weights MB | hardware | {' | '.join(PASSES)} | load+emit | total |\n"
            "|---:|---:|---|" + "---:|" * (len(PASSES) + 2) + "\n" + "\n".join(rows)
            + "\n\n" + READING + "\n\n"
            "Reproduce: `.venv/bin/python -m benchmarks.pass_scaling`")
    update_section("pass-scaling", "Cost of each pass as the graph grows", body)


if __name__ == "__main__":
    main()
