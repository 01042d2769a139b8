"""Compile time of the default pipeline on ResNet-50-sized graphs (issue: under 10 s here).

Runs `mapper compile` as a user would (a fresh process each time, imports included) on the
torch-exported reference ResNet-50 and on the model-zoo-style opset-9 ResNet-50 of the corpus,
and records the median of several runs in benchmarks/RESULTS.md.

    .venv/bin/python -m benchmarks.compile_time [--runs 5] [--hw a100]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnx

from benchmarks.results import update_section

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _models() -> list[tuple[str, Path]]:
    import models
    from models import corpus

    found = [("resnet50 (torch export)", models.build("resnet50")),
             ("resnet50 (model-zoo style)", corpus.fetch("resnet50")),
             ("densenet121 (onnx-caffe2, model zoo)", corpus.fetch("zoo_light_densenet121"))]
    return found


def _time_compile(model: Path, hardware: str, runs: int) -> tuple[float, list[float]]:
    mapper = Path(sys.executable).with_name("mapper")
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(runs):
            started = time.perf_counter()
            subprocess.run([str(mapper), "compile", str(model), "--hw", hardware, "-o",
                            f"{tmp}/out{index}"], check=True, capture_output=True)
            times.append(time.perf_counter() - started)
    return statistics.median(times), times


def main() -> None:
    """Measure and write the RESULTS.md section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--hw", default="a100")
    args = parser.parse_args()
    rows = []
    for label, path in _models():
        model = onnx.load(str(path), load_external_data=False)
        opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        median, times = _time_compile(path, args.hw, args.runs)
        rows.append(f"| {label} | {opset} | {model.ir_version} | {len(model.graph.node)} | "
                    f"{median:.2f} | {min(times):.2f} | {max(times):.2f} |")
        print(rows[-1])
    body = (f"`mapper compile MODEL --hw {args.hw}` with the default pipeline, a fresh process "
            f"per run (imports included), {args.runs} runs. Target: under 10 s.\n\n"
            "| model | opset | IR | nodes in file | median s | min s | max s |\n"
            "|---|---|---|---|---|---|---|\n"
            + "\n".join(rows)
            + "\n\nReproduce: `.venv/bin/python -m benchmarks.compile_time`")
    update_section("compile-time", "Compile time, default pipeline (foundation)", body)


if __name__ == "__main__":
    main()
