"""Errors that carry the exit code the CLI returns for them (CONTRACTS.md section 8)."""

from __future__ import annotations


class MapperError(Exception):
    """Base of every error mapper reports to a user; `exit_code` is what the CLI exits with."""

    exit_code: int = 1


class UserError(MapperError):
    """Bad input or usage: an unreadable model, unknown hardware, a bad flag (exit 2)."""

    exit_code = 2


class InfeasibleError(MapperError):
    """Proven infeasible, e.g. an operator that cannot fit the memory it must use (exit 3)."""

    exit_code = 3


class QualityGateError(MapperError):
    """A numerical quality gate failed (`verify`, `--max-degradation`) (exit 4)."""

    exit_code = 4


class TimeLimitError(MapperError):
    """A time limit ran out before any solution and no heuristic could stand in (exit 5)."""

    exit_code = 5
