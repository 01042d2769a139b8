"""Errors that carry the exit code the CLI returns for them (CONTRACTS.md section 8)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class MapperError(Exception):
    """Base of every error mapper reports to a user; `exit_code` is what the CLI exits with.

    `subject` names what is at fault where one thing is (`{"flag": "--bits"}`, `{"file":
    "m.onnx"}`, `{"field": "memory.l2.size"}`); `details` carries data for `--json` errors.
    """

    exit_code: int = 1
    kind: str = "internal"

    def __init__(self, message: str, *, subject: Mapping[str, str] | None = None,
                 details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.subject = dict(subject or {})
        self.details = dict(details or {})


class UserError(MapperError):
    """Bad input or usage: an unreadable model, unknown hardware, a bad flag (exit 2)."""

    exit_code = 2
    kind = "usage"


class InfeasibleError(MapperError):
    """Proven infeasible, e.g. an operator that cannot fit the memory it must use (exit 3)."""

    exit_code = 3
    kind = "infeasible"


class QualityGateError(MapperError):
    """A numerical quality gate failed (`verify`, `--max-degradation`) (exit 4)."""

    exit_code = 4
    kind = "quality_gate"


class BudgetError(QualityGateError):
    """A `--budget` was exceeded (exit 4); the complete output was written all the same."""

    kind = "budget"


class TimeLimitError(MapperError):
    """A time limit ran out before any solution and no heuristic could stand in (exit 5)."""

    exit_code = 5
    kind = "time_limit"


class JobFailedError(MapperError):
    """A study job failed under `--fail-fast`: the study exits with that job's own code."""

    kind = "study_job"

    def __init__(self, message: str, exit_code: int, *,
                 details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message, details=details)
        self.exit_code = exit_code
