"""The first commands a user or CI step types import nothing heavy (fast start)."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("onnx", "onnxruntime", "ortools", "torch", "networkx")


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["hw", "list"]])
def test_start_up_commands_import_no_heavy_library(args):
    code = (
        "import sys\n"
        "from mapper.cli import cli\n"
        "try:\n"
        f"    cli.main(args={args!r}, prog_name='mapper', standalone_mode=False)\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=120)
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout
