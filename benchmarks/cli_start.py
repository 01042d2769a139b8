"""Start-up time of the commands a CI step or a user types first.

`mapper --version`, `mapper --help` and `mapper hw list` must answer without importing ONNX,
onnxruntime, OR-Tools or torch (tests/test_cli_start.py checks the imports); this measures
the wall time of each as a subprocess, median of 7 runs after one warm-up.

    .venv/bin/python -m benchmarks.cli_start
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.results import update_section

COMMANDS = (["--version"], ["--help"], ["hw", "list"])
TARGET_S = 0.5


def _seconds(args: list[str]) -> float:
    mapper = Path(sys.executable).with_name("mapper")
    subprocess.run([str(mapper), *args], capture_output=True, check=True)
    times = []
    for _ in range(7):
        started = time.perf_counter()
        subprocess.run([str(mapper), *args], capture_output=True, check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    """Time each command and write the RESULTS.md section."""
    rows = []
    for args in COMMANDS:
        seconds = _seconds(args)
        rows.append(f"| `mapper {' '.join(args)}` | {seconds:.2f} | "
                    f"{'yes' if seconds < TARGET_S else 'no'} |")
        print(rows[-1], flush=True)
    body = "\n".join([
        "Rerun: `.venv/bin/python -m benchmarks.cli_start`. Wall time of the console script "
        "as a subprocess, median of 7 after a warm-up; the target is 0.5 s.", "",
        "| command | seconds | under 0.5 s |", "|---|---|---|", *rows])
    update_section("cli-start", "CLI start-up time", body)


if __name__ == "__main__":
    main()
