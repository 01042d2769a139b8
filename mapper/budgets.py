"""Budgets (`--budget METRIC=LIMIT`): limits on plan metrics that a deployment must meet.

A budget names any plan metric (mapper.metrics) and a limit in its unit; `device_memory=fit`
limits the device bytes to the memory the hardware model says holds them. Every budget is
recorded in `plan.budgets` with its value and verdict; a violated one makes `mapper compile`
exit 4 after writing its complete output (the plan and report say why).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from mapper.errors import UserError
from mapper.metrics import find_metric
from mapper.units import format_size

FIT = "fit"


class Budget(BaseModel):
    """One budget: a metric's canonical name and its limit (`fit` for the device memory)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    metric: str = Field(description="canonical metric name (mapper.metrics), e.g. latency_s")
    limit: float | None = Field(description="the limit in the metric's unit (seconds, bytes, "
                                "a ratio); null with `fit`")
    given: str = Field(description="the limit as the user wrote it, e.g. 5ms or fit")

    @property
    def is_fit(self) -> bool:
        """Whether the limit is the device memory that holds the model (`fit`)."""
        return self.given == FIT


def parse_budget(text: str) -> Budget:
    """`latency=5ms`, `device_memory=fit`, `quality=0.99` -> Budget."""
    name, sep, value = str(text).partition("=")
    if not sep or not name.strip() or not value.strip():
        raise UserError(f"--budget {text!r}: expected METRIC=LIMIT, e.g. latency=5ms, "
                        "device_memory=fit, offchip=300MB or quality=0.99")
    metric = find_metric(name, "--budget metric")
    value = value.strip()
    if value.lower() == FIT:
        if metric.name != "peak_device_bytes":
            raise UserError(f"--budget {text!r}: 'fit' is a limit of device_memory only "
                            "(the memory the hardware model says holds the model)")
        return Budget(metric=metric.name, limit=None, given=FIT)
    return Budget(metric=metric.name, limit=metric.parse(value, f"--budget {text!r}"),
                  given=value)


def parse_budgets(value: Any) -> tuple[Budget, ...]:
    """Budgets from a config file or the API: `{latency: 5ms}`, `["latency=5ms"]`, or
    Budget objects/dicts."""
    if value is None:
        return ()
    if isinstance(value, Mapping):
        return tuple(parse_budget(f"{key}={limit}") for key, limit in value.items())
    if isinstance(value, str):
        return (parse_budget(value),)
    if isinstance(value, Sequence):
        return tuple(item if isinstance(item, Budget)
                     else Budget.model_validate(item) if isinstance(item, Mapping)
                     else parse_budget(str(item)) for item in value)
    raise UserError(f"budgets: expected METRIC=LIMIT strings or a mapping, got {value!r}")


def limit_of(budgets: Sequence[Budget], metric: str) -> Budget | None:
    """The budget on `metric` (canonical name), if one is set (the last one given wins)."""
    found = [budget for budget in budgets if budget.metric == metric]
    return found[-1] if found else None


def evaluate(plan: Mapping[str, Any], budgets: Sequence[Budget]) -> list[dict[str, Any]]:
    """`plan.budgets`: every budget with the plan's value and whether it holds."""
    rows = []
    for budget in budgets:
        metric = find_metric(budget.metric)
        value = metric.value(plan)
        limit = budget.limit
        if budget.is_fit:
            limit = (plan.get("estimate") or {}).get("device_memory_bytes")
        if value is None or limit is None:
            ok, note = False, "the plan does not state it (the pass that measures it did not run)"
        elif budget.is_fit:
            # Level by level: the total can be under the sum while one level overflows.
            estimate = plan.get("estimate") or {}
            ok = bool(estimate.get("fits"))
            over = [f"{' + '.join(row['holds'])} {format_size(row['bytes'])} > {row['memory']} "
                    f"{format_size(row['capacity'])}" for row in estimate.get("memory_fit", ())
                    if not row["fits"]]
            note = "; ".join(over) or None
        else:
            higher = metric.direction(plan) == "higher"
            ok = value >= limit if higher else value <= limit
            note = None
        row: dict[str, Any] = {"metric": metric.name, "limit": limit, "value": value, "ok": ok,
                               "given": budget.given,
                               "better": metric.direction(plan)}
        if note:
            row["note"] = note
        rows.append(row)
    return rows


def failed(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The violated budgets of `plan.budgets` rows."""
    return [row for row in rows if not row["ok"]]


def table(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, ...]]:
    """Budget rows as a printable table (header first): metric, limit, value, verdict."""
    out: list[tuple[str, ...]] = [("BUDGET", "LIMIT", "VALUE", "")]
    for row in rows:
        metric = find_metric(row["metric"])
        sign = ">=" if row["better"] == "higher" else "<="
        limit = f"{sign} {metric.format(row['limit'])}"
        value = metric.format(row["value"])
        if row["given"] == FIT:
            limit, value = "fits each level", row.get("note") or value
        out.append((metric.name, limit, value,
                    "ok" if row["ok"] else "EXCEEDED" if row["value"] is not None
                    else "NOT MEASURED"))
    return out
