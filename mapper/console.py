"""What every command prints for machines: one JSON object on stdout, in one layout."""

from __future__ import annotations

import json
import math
from typing import Any

import click


def _finite(value: Any) -> Any:
    # JSON has no NaN/inf; every strict reader must parse what a command prints.
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def emit_json(payload: Any) -> None:
    """Print `payload` as exactly one JSON document on stdout (the `--json` of every command)."""
    click.echo(json.dumps(_finite(payload), indent=1, allow_nan=False))
