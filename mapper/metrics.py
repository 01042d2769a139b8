"""The headline metrics of a plan, by name: what `--budget` limits and `mapper diff` compares.

One table says where each metric lives in plan.json, its unit (which decides how a limit is
read: `5ms`, `300MB`, `0.99`), and which direction is better. Any other number under
`plan.estimate` or `plan.compression` is a metric too (by its key, lower is better), so a
budget can name whatever a plan states.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from mapper.errors import UserError
from mapper.units import format_size, format_time, parse_size, parse_time

Unit = Literal["s", "bytes", "ratio", "bits", "count"]
Better = Literal["lower", "higher"]


@dataclass(frozen=True)
class Metric:
    """One plan metric: its canonical name, the names users may give it, where it lives."""

    name: str
    path: tuple[str, ...]
    unit: Unit
    description: str
    aliases: tuple[str, ...] = ()
    better: Better = "lower"

    def value(self, plan: Mapping[str, Any]) -> float | None:
        """The metric's value in `plan` (None where the plan does not state it)."""
        node: Any = plan
        for key in self.path:
            if not isinstance(node, Mapping) or node.get(key) is None:
                return None
            node = node[key]
        if isinstance(node, list):  # a list counts its items (the schedule's operators)
            return float(len(node))
        if isinstance(node, bool):
            return float(node)
        return float(node) if isinstance(node, int | float) else None

    def direction(self, plan: Mapping[str, Any]) -> Better:
        """Which way is better; quality is higher-better for cosine, lower for perplexity."""
        if self.name == "quality" or self.name == "quality_min":
            quality = (plan.get("compression") or {}).get("quality") or {}
            return "lower" if quality.get("metric") == "perplexity" else "higher"
        return self.better

    def parse(self, text: str, what: str) -> float:
        """A limit or an absolute change of this metric from text (`5ms`, `300MB`, `0.99`)."""
        try:
            if self.unit == "s":
                return parse_time(text)
            if self.unit == "bytes":
                return float(parse_size(text))
            return float(text)
        except (UserError, ValueError):
            example = {"s": "5ms", "bytes": "300MB", "bits": "4.25", "ratio": "0.99",
                       "count": "100"}[self.unit]
            raise UserError(f"{what}: cannot read {text!r} as a value of {self.name} "
                            f"({self.unit}), e.g. {self.name}={example}") from None

    def format(self, value: float | None) -> str:
        """The value for humans, in this metric's unit."""
        if value is None:
            return "-"
        if self.unit == "s":
            return format_time(value)
        if self.unit == "bytes":
            return format_size(value)
        if self.unit == "count":
            return f"{value:.0f}"
        return f"{value:.6g}"


METRICS: tuple[Metric, ...] = (
    Metric("latency_s", ("estimate", "latency_s"), "s", "estimated latency of one inference",
           aliases=("latency",)),
    Metric("peak_device_bytes", ("estimate", "peak_device_bytes"), "bytes",
           "weights + inputs + peak activations on the device (`fit`: the memory that holds "
           "them)", aliases=("device_memory", "memory", "peak_memory")),
    Metric("offchip_bytes", ("estimate", "offchip_bytes"), "bytes",
           "off-chip traffic of one inference", aliases=("offchip", "traffic")),
    Metric("weight_bytes", ("estimate", "weight_bytes"), "bytes", "stored weight bytes",
           aliases=("weights",)),
    Metric("moe_alltoall_s", ("estimate", "moe_alltoall_s"), "s",
           "all-to-all time of the expert placement", aliases=("alltoall",)),
    Metric("arena_bytes", ("arena", "size"), "bytes", "activation arena size",
           aliases=("arena",)),
    Metric("bits_per_weight", ("compression", "bits_per_weight"), "bits",
           "stored bits per weight of the compressed weights", aliases=("bits",)),
    Metric("quality", ("compression", "quality", "mean"), "ratio",
           "mean output quality against the original (cosine: higher is better; perplexity: "
           "lower)", aliases=("cosine",), better="higher"),
    Metric("quality_min", ("compression", "quality", "min"), "ratio",
           "worst held-out sample's quality", better="higher"),
    Metric("nodes", ("schedule", "order"), "count", "operators in the emitted model"),
)
_BY_NAME = {name: metric for metric in METRICS for name in (metric.name, *metric.aliases)}


def _guess_unit(key: str) -> Unit:
    if key.endswith("_s"):
        return "s"
    if key.endswith("_bytes"):
        return "bytes"
    return "ratio"


def find_metric(name: str, what: str = "metric") -> Metric:
    """The metric called `name` (canonical, alias, or a key of plan.estimate/compression,
    optionally as `estimate.KEY`); a user error naming the nearest known name otherwise."""
    key = name.strip()
    if key in _BY_NAME:
        return _BY_NAME[key]
    section, _, rest = key.partition(".")
    if rest and section in ("estimate", "compression") and rest.replace("_", "").isalnum():
        return Metric(key, (section, *rest.split(".")), _guess_unit(rest), f"plan.{key}")
    near = difflib.get_close_matches(key, list(_BY_NAME), n=1, cutoff=0.5)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    raise UserError(f"{what} {name!r} is not a plan metric{hint} (known: "
                    f"{', '.join(m.name for m in METRICS)}, their aliases, or "
                    "estimate.KEY / compression.KEY)")


def metric_names() -> tuple[str, ...]:
    """Every canonical metric name, in table order."""
    return tuple(metric.name for metric in METRICS)


def headline(plan: Mapping[str, Any]) -> dict[str, float | None]:
    """Every table metric's value in `plan` (None where absent)."""
    return {name: _BY_NAME[name].value(plan) for name in metric_names()}
