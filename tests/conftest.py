"""Shared fixtures: the repo root on sys.path (for `models`), and a CLI runner."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class CliResult:
    """Exit code and the two streams of one `mapper` run."""

    code: int
    stdout: str
    stderr: str


def run_mapper(*args: str, cwd: Path | None = None) -> CliResult:
    """Run the installed `mapper` console script as a user would, in a subprocess."""
    mapper = Path(sys.executable).with_name("mapper")
    completed = subprocess.run([str(mapper), *args], capture_output=True, text=True, cwd=cwd,
                               timeout=600, check=False)
    return CliResult(completed.returncode, completed.stdout, completed.stderr)


@pytest.fixture
def mapper_cli():
    """The `run_mapper` helper as a fixture."""
    return run_mapper
