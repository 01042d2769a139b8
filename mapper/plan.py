"""plan.json: assembling the contract's top-level object (CONTRACTS.md section 2) and writing it."""

from __future__ import annotations

import json
import math
from typing import Any

from mapper import __version__
from mapper.hwmodels.schema import Hardware
from mapper.loader import LoadedModel
from mapper.pipeline import PipelineOutcome

PLAN_SCHEMA = "mapper.plan/1"
# Sections of the contract that a pass fills; absent passes leave them null ([] for kernels).
_SECTIONS = ("simplify", "memory", "arena", "moe", "kernels", "compression", "estimate")


def build_plan(loaded: LoadedModel, hardware: Hardware, outcome: PipelineOutcome,
               model_path: str) -> dict[str, Any]:
    """The whole plan in the contract's key order."""
    plan: dict[str, Any] = {
        "schema": PLAN_SCHEMA,
        "mapper_version": __version__,
        "model": {"path": model_path, "sha256": loaded.sha256,
                  "input_shapes": loaded.input_shapes, "precision": outcome.view.precision,
                  "load_notes": list(loaded.notes)},
        "hardware": hardware.to_plan_dict(),
        "passes": [record.to_dict() for record in outcome.records],
        "schedule": {"order": list(outcome.order)},
    }
    for section in _SECTIONS:
        default: Any = [] if section == "kernels" else None
        plan[section] = outcome.sections.get(section, default)
    return plan


def _clean(value: Any) -> Any:
    # JSON has no NaN/inf; a plan must parse in every strict reader.
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {key: _clean(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(item) for item in value]
    return value


def dumps(plan: dict[str, Any]) -> str:
    """Deterministic JSON text of a plan (same plan, same bytes)."""
    return json.dumps(_clean(plan), indent=1, allow_nan=False) + "\n"
