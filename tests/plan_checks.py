"""Shared assertion for tests: a compiled plan passes the independent `verify-plan` checker."""

from __future__ import annotations

from pathlib import Path

from mapper.verify_plan import PlanCheck, verify_plan


def assert_plan_valid(model_path: str | Path, plan_path: str | Path) -> PlanCheck:
    """Fail the test with every violation listed unless PLAN honours CONTRACTS.md 2-4 for
    MODEL (the compile's OUT/model.onnx); returns the recomputed numbers otherwise."""
    check = verify_plan(model_path, plan_path)
    assert check.ok, f"{plan_path} breaks the contract:\n  " + "\n  ".join(check.violations[:20])
    return check


def assert_output_valid(output_dir: str | Path) -> PlanCheck:
    """`assert_plan_valid` for a compile's output directory (model.onnx + plan.json)."""
    out = Path(output_dir)
    return assert_plan_valid(out / "model.onnx", out / "plan.json")
