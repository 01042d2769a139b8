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


@pytest.fixture(scope="session", autouse=True)
def every_plan_validates_against_the_published_schema(tmp_path_factory):
    """After the session, every plan.json a test wrote under its temporary directories must
    validate against `mapper schema plan` (an independent JSON Schema validator)."""
    yield
    import json

    import jsonschema

    from mapper.plan_schema import plan_json_schema

    validator = jsonschema.Draft202012Validator(plan_json_schema())
    problems = []
    checked = 0
    for path in sorted(tmp_path_factory.getbasetemp().rglob("plan.json")):
        try:
            plan = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # tests that write broken plans on purpose (verify-plan's)
        if not isinstance(plan, dict) or plan.get("schema") != "mapper.plan/1":
            continue
        checked += 1
        errors = sorted(validator.iter_errors(plan), key=lambda e: list(e.path))
        if errors:
            problems.append(f"{path}: {errors[0].json_path}: {errors[0].message}")
    assert not problems, f"{len(problems)} of {checked} plans break the schema:\n" + \
        "\n".join(problems[:10])
