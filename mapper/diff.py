"""`mapper diff OLD_PLAN NEW_PLAN`: the regression gate between two plans.

A deployment CI step compiles the model it ships, keeps the plan.json, and on the next change
compares the new plan with it: every headline metric (mapper.metrics) side by side, the
operators whose estimated time or bytes moved most, and rules (`--fail-on latency+5%`) that
turn a worsening into exit 4. Text is for logs, Markdown for a pull-request comment, JSON for
machines.

A rule is `METRIC+X%` or `METRIC+AMOUNT` (in the metric's unit: `latency+0.5ms`,
`device_memory+1MiB`) for metrics where lower is better, `METRIC-X%` / `METRIC-AMOUNT`
(`quality-0.01`) where higher is better: the sign names the worsening direction, and the
amount is how much worsening is allowed. `fits` alone fails when the old plan fit the device
memory and the new one does not.

This module is imported when the CLI starts, so it imports only the standard library, click
and mapper's light modules at module level.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import click

from mapper.errors import QualityGateError, UserError
from mapper.metrics import METRICS, Metric, find_metric
from mapper.units import format_size, format_time

PLAN_SCHEMA = "mapper.plan/1"
DIFF_SCHEMA = "mapper.diff/1"
Format = Literal["text", "md", "json"]

# `estimate.fits` is a yes/no, not a number with a threshold: a metric of its own here (not in
# mapper.metrics, where `--budget fits=...` would make no sense). Higher (true) is better.
FITS = Metric("fits", ("estimate", "fits"), "count",
              "the weights plus peak activations fit the device memory", better="higher")

_RULE = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(?:([+-])\s*(.*?))?\s*")
_PERCENT = re.compile(r"([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*%")
# Float noise between two compiles (sums in another order) must not read as a worsening.
_EPSILON = 1e-9


# ---------------------------------------------------------------------------------------------
# rules


@dataclass(frozen=True)
class Rule:
    """One `--fail-on` rule: a metric, the worsening direction the user wrote, and how much
    worsening is allowed (a fraction of the old value when `relative`, else in the unit)."""

    text: str
    metric: Metric
    sign: Literal["+", "-", ""]
    amount: float
    relative: bool
    given: str = ""  # the amount as written (`5%`, `0.5ms`), for messages

    @property
    def limit_text(self) -> str:
        """The allowance as written back for humans: `+5%`, `+500 us`, `-0.01`."""
        if self.metric.name == FITS.name:
            return "must keep fitting"
        if self.relative:
            return f"{self.sign}{self.amount * 100:g}%"
        return f"{self.sign}{self.metric.format(self.amount)}"


def _rule_error(text: str, why: str) -> UserError:
    return UserError(f"--fail-on {text!r}: {why}; rules read METRIC+X% or METRIC+AMOUNT for "
                     "metrics where lower is better (latency+5%, device_memory+1MiB), METRIC-X "
                     "where higher is better (quality-0.01), or fits",
                     subject={"flag": "--fail-on"})


def parse_rule(text: str) -> Rule:
    """`latency+5%`, `device_memory+1MiB`, `quality-0.01`, `fits` -> Rule (exit 2 if bad)."""
    match = _RULE.fullmatch(text)
    if not match:
        raise _rule_error(text, "cannot read this rule")
    name, sign, amount_text = match.group(1), match.group(2) or "", match.group(3)
    if name in (FITS.name, "estimate.fits"):
        if sign:
            raise _rule_error(text, "fits takes no threshold (it fails when the old plan fit "
                              "and the new one does not)")
        return Rule(text.strip(), FITS, "", 0.0, relative=False)
    metric = find_metric(name, f"--fail-on {text.strip()!r}: metric")
    if not sign:
        raise _rule_error(text, f"no threshold after {name!r} (e.g. {name}+5% or {name}+0%)")
    if not amount_text:
        raise _rule_error(text, f"no amount after {sign!r}")
    percent = _PERCENT.fullmatch(amount_text)
    if percent:
        amount, relative = float(percent.group(1)) / 100.0, True
    elif "%" in amount_text:
        raise _rule_error(text, f"cannot read {amount_text!r} as a percentage")
    else:
        try:
            amount, relative = metric.parse(amount_text, "--fail-on"), False
        except UserError:
            example = {"s": "0.5ms", "bytes": "1MiB"}.get(metric.unit, "0.01")
            raise _rule_error(text, f"cannot read {amount_text!r} as an amount of {metric.name} "
                              f"({metric.unit}): give a percentage ({name}{sign}5%) or an "
                              f"amount in its unit ({name}{sign}{example})") from None
    if not math.isfinite(amount) or amount < 0:
        raise _rule_error(text, f"the allowed worsening {amount_text!r} must be a non-negative "
                          "amount (the sign before it names the direction)")
    return Rule(text.strip(), metric, sign, amount, relative,  # type: ignore[arg-type]
                amount_text)


def parse_rules(values: Sequence[str]) -> tuple[Rule, ...]:
    """Every rule of repeated, comma-separated `--fail-on` values, in the order given."""
    rules = []
    for value in values:
        for part in value.split(","):
            if part.strip():
                rules.append(parse_rule(part))
    return tuple(rules)


# ---------------------------------------------------------------------------------------------
# plans


@dataclass(frozen=True)
class PlanInfo:
    """Where a plan came from and what it was compiled from, for the header line."""

    path: str
    model_sha256: str | None
    hardware: str | None
    mapper_version: str | None


def load_plan(path: Path) -> dict[str, Any]:
    """The plan at `path` (a plan.json, or a compile output directory holding one); exit 2
    when it is missing, not JSON, or not a mapper plan."""
    if path.is_dir() and (path / "plan.json").is_file():
        path = path / "plan.json"
    subject = {"file": str(path)}
    try:
        text = path.read_text()
    except IsADirectoryError:
        raise UserError(f"plan path {str(path)!r} is a directory without a plan.json",
                        subject=subject) from None
    except OSError as error:
        raise UserError(f"cannot read plan file {str(path)!r}: {error.strerror}",
                        subject=subject) from None
    except UnicodeDecodeError:
        raise UserError(f"plan file {str(path)!r} is not text (expected the plan.json that "
                        "mapper compile writes)", subject=subject) from None
    try:
        plan = json.loads(text)
    except ValueError as error:
        raise UserError(f"plan file {str(path)!r} is not JSON ({error}); expected the plan.json "
                        "that mapper compile writes", subject=subject) from None
    if not isinstance(plan, dict) or plan.get("schema") != PLAN_SCHEMA:
        raise UserError(f"file {str(path)!r} is not a mapper plan (no \"schema\": "
                        f"\"{PLAN_SCHEMA}\"); expected the plan.json that mapper compile writes",
                        subject=subject)
    return plan


def plan_info(path: Path, plan: Mapping[str, Any]) -> PlanInfo:
    """The header facts of `plan`."""
    model = plan.get("model") if isinstance(plan.get("model"), Mapping) else {}
    hardware = plan.get("hardware") if isinstance(plan.get("hardware"), Mapping) else {}
    return PlanInfo(str(path), model.get("sha256"), hardware.get("name"),
                    plan.get("mapper_version"))


# ---------------------------------------------------------------------------------------------
# the comparison


@dataclass(frozen=True)
class RuleVerdict:
    """A rule checked on the two plans: the values, the change, and whether it held."""

    rule: Rule
    old: float | None
    new: float | None
    ok: bool
    change: str
    problem: str | None = None

    @property
    def message(self) -> str:
        """One line for the verdict: `latency_s +12.3% exceeds +5%`."""
        name = self.rule.metric.name
        if self.problem:
            return f"{name}: {self.problem} (rule {self.rule.text})"
        if self.rule.metric.name == FITS.name:
            return f"{name}: {self.change}"
        return f"{name} {self.change} {'within' if self.ok else 'exceeds'} {self.rule.limit_text}"

    @property
    def short(self) -> str:
        """The failure as the exit-4 message names it: `latency_s +12.3% (limit +5%)`."""
        name = self.rule.metric.name
        if self.problem or self.rule.metric.name == FITS.name:
            return self.message
        return f"{name} {self.change} (limit {self.rule.limit_text})"


@dataclass(frozen=True)
class MetricChange:
    """One headline metric in both plans (None where a plan does not state it)."""

    metric: Metric
    better: str
    old: float | None
    new: float | None
    verdict: Literal["ok", "FAILED"] | None

    @property
    def delta(self) -> float | None:
        """new - old, where both are stated."""
        if self.old is None or self.new is None:
            return None
        return self.new - self.old

    @property
    def relative(self) -> float | None:
        """(new - old) / |old|, where both are stated and old is not zero."""
        delta = self.delta
        if delta is None or self.old == 0:
            return None
        return delta / abs(self.old)  # type: ignore[arg-type]

    def format(self, value: float | None) -> str:
        """A value of this metric for humans (`yes`/`no` for fits)."""
        if self.metric.name == FITS.name and value is not None:
            return "yes" if value else "no"
        return self.metric.format(value)

    @property
    def change_text(self) -> str:
        """`+22.4 us (+9.8%)`, `added`, `removed`, or `-` where nothing changed."""
        if self.old is None and self.new is None:
            return "-"
        if self.old is None:
            return "added"
        if self.new is None:
            return "removed"
        if self.metric.name == FITS.name:
            return "-" if self.old == self.new else f"{self.format(self.old)} -> " \
                f"{self.format(self.new)}"
        return _signed_change(self.metric, self.old, self.new)


@dataclass(frozen=True)
class OpChange:
    """One operator's estimated time and bytes in both plans (None where it is absent)."""

    node: str
    op: str
    old_time_s: float | None
    new_time_s: float | None
    old_bytes: float | None
    new_bytes: float | None

    @property
    def status(self) -> Literal["added", "removed", "matched"]:
        """Whether the node is in both plans or only one."""
        if self.old_time_s is None and self.old_bytes is None:
            return "added"
        if self.new_time_s is None and self.new_bytes is None:
            return "removed"
        return "matched"

    @property
    def delta_time_s(self) -> float:
        """The change in estimated time (an absent op counts 0)."""
        return (self.new_time_s or 0.0) - (self.old_time_s or 0.0)

    @property
    def delta_bytes(self) -> float:
        """The change in bytes moved (an absent op counts 0)."""
        return (self.new_bytes or 0.0) - (self.old_bytes or 0.0)

    def to_dict(self) -> dict[str, Any]:
        """The JSON record of this change."""
        return {"node": self.node, "op": self.op, "status": self.status,
                "old_time_s": self.old_time_s, "new_time_s": self.new_time_s,
                "delta_time_s": self.delta_time_s, "old_bytes": self.old_bytes,
                "new_bytes": self.new_bytes, "delta_bytes": self.delta_bytes}


@dataclass(frozen=True)
class PlanDiff:
    """Everything `mapper diff` found: headline metrics, rule verdicts, per-op changes."""

    old: PlanInfo
    new: PlanInfo
    metrics: tuple[MetricChange, ...]
    verdicts: tuple[RuleVerdict, ...]
    ops_by_time: tuple[OpChange, ...]
    ops_by_bytes: tuple[OpChange, ...]
    ops_counts: Mapping[str, int]
    ops_note: str | None
    top: int

    @property
    def ok(self) -> bool:
        """Whether every rule held."""
        return all(verdict.ok for verdict in self.verdicts)

    @property
    def failures(self) -> tuple[RuleVerdict, ...]:
        """The rules that failed."""
        return tuple(verdict for verdict in self.verdicts if not verdict.ok)

    @property
    def differences(self) -> tuple[tuple[str, str | None, str | None], ...]:
        """(what, old, new) for model sha256, hardware and mapper version."""
        return (("model sha256", self.old.model_sha256, self.new.model_sha256),
                ("hardware", self.old.hardware, self.new.hardware),
                ("mapper", self.old.mapper_version, self.new.mapper_version))


def _pct(fraction: float) -> str:
    """A signed percentage with about three significant digits: +12.3%, -0.0412%."""
    percent = fraction * 100.0
    if percent == 0:
        return "0%"
    if abs(percent) >= 1000:
        return f"{percent:+.0f}%"
    return f"{percent:+.3g}%"


def _signed(metric: Metric, delta: float) -> str:
    """A signed change in the metric's unit: +22.4 us, -1.0 MiB, +0.0123."""
    if delta == 0:
        return metric.format(0.0)
    return ("+" if delta > 0 else "-") + metric.format(abs(delta))


def _signed_change(metric: Metric, old: float, new: float) -> str:
    """`+22.4 us (+9.8%)`, relative to old where old is not zero."""
    delta = new - old
    if delta == 0:
        return "no change"
    relative = f" ({_pct(delta / abs(old))})" if old != 0 else " (from 0)"
    return _signed(metric, delta) + relative


def check_rule(rule: Rule, old_plan: Mapping[str, Any], new_plan: Mapping[str, Any]
               ) -> RuleVerdict:
    """Check one rule on the two plans. A metric absent from either plan fails the rule (the
    gate cannot vouch for what it cannot see); a sign against the metric's direction is a
    usage error (exit 2)."""
    metric = rule.metric
    old, new = metric.value(old_plan), metric.value(new_plan)
    if metric.name == FITS.name:
        if old is None or new is None:
            where = "old" if old is None else "new"
            return RuleVerdict(rule, old, new, False, "-",
                               f"the {where} plan does not state estimate.fits")
        broke = bool(old) and not bool(new)
        change = ("the new plan no longer fits the device memory" if broke
                  else "still fits" if new and old else "fits now (did not before)" if new
                  else "did not fit before either")
        return RuleVerdict(rule, old, new, not broke, change)
    # Quality's direction depends on what the plan measured: ask a plan that states it.
    better = metric.direction(new_plan if new is not None else old_plan)
    worse_sign = "+" if better == "lower" else "-"
    if rule.sign != worse_sign:
        way = "an increase" if worse_sign == "+" else "a decrease"
        written = rule.text.partition(rule.sign)[0].strip()
        raise UserError(f"--fail-on {rule.text!r}: {metric.name} is better {better}, so a "
                        f"worsening is {way}: write {written}{worse_sign}{rule.given}",
                        subject={"flag": "--fail-on"})
    if old is None or new is None:
        where = ("either plan" if old is None and new is None
                 else "the old plan" if old is None else "the new plan")
        return RuleVerdict(rule, old, new, False, "-", f"not stated in {where}")
    if metric.direction(old_plan) != better:
        return RuleVerdict(rule, old, new, False, "-",
                           "measured differently in the two plans (cosine vs perplexity): "
                           "not comparable")
    worsening = (new - old) if better == "lower" else (old - new)
    allowed = rule.amount * abs(old) if rule.relative else rule.amount
    noise = _EPSILON * max(abs(old), abs(new))
    ok = worsening <= allowed + noise
    if rule.relative:
        change = _pct((new - old) / abs(old)) if old != 0 else \
            ("no change" if new == old else f"{_signed(metric, new - old)} (from 0)")
    else:
        change = _signed(metric, new - old)
    return RuleVerdict(rule, old, new, ok, change)


def _ops(plan: Mapping[str, Any]) -> dict[str, Mapping[str, Any]] | None:
    """`plan.estimate.ops` by node name (None without a per-op estimate)."""
    estimate = plan.get("estimate")
    rows = estimate.get("ops") if isinstance(estimate, Mapping) else None
    if not isinstance(rows, list):
        return None
    return {str(row["node"]): row for row in rows
            if isinstance(row, Mapping) and row.get("node") is not None}


def _number(row: Mapping[str, Any] | None, key: str) -> float | None:
    value = row.get(key) if row is not None else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) \
        else None


def op_changes(old_plan: Mapping[str, Any], new_plan: Mapping[str, Any]
               ) -> tuple[list[OpChange], str | None]:
    """Every operator of either plan matched by node name, and a note when a plan has no
    per-op estimate to compare."""
    old_ops, new_ops = _ops(old_plan), _ops(new_plan)
    if old_ops is None or new_ops is None:
        missing = " and ".join(which for which, ops in (("old", old_ops), ("new", new_ops))
                               if ops is None)
        return [], f"no per-op estimate in the {missing} plan"
    changes = []
    # Old plan's order first, then the added ops in the new plan's order: stable output.
    for node in [*old_ops, *(name for name in new_ops if name not in old_ops)]:
        before, after = old_ops.get(node), new_ops.get(node)
        op = str((after or before or {}).get("op", "?"))
        changes.append(OpChange(node, op, _number(before, "time_s"), _number(after, "time_s"),
                                _number(before, "bytes"), _number(after, "bytes")))
    return changes, None


def diff_plans(old_plan: Mapping[str, Any], new_plan: Mapping[str, Any],
               rules: Sequence[Rule] = (), top: int = 10, old_path: str = "old",
               new_path: str = "new") -> PlanDiff:
    """Compare two plans: every headline metric either states (plus fits and any metric a
    rule names), each rule's verdict, and the `top` ops whose time and bytes moved most."""
    verdicts = tuple(check_rule(rule, old_plan, new_plan) for rule in rules)
    shown: list[Metric] = [*METRICS, FITS]
    for rule in rules:
        if all(rule.metric.name != metric.name for metric in shown):
            shown.append(rule.metric)
    rows = []
    for metric in shown:
        old, new = metric.value(old_plan), metric.value(new_plan)
        ruled = [v for v in verdicts if v.rule.metric.name == metric.name]
        if old is None and new is None and not ruled:
            continue
        verdict = None if not ruled else "ok" if all(v.ok for v in ruled) else "FAILED"
        rows.append(MetricChange(metric, metric.direction(new_plan), old, new, verdict))
    changes, note = op_changes(old_plan, new_plan)
    by_time = sorted((c for c in changes if c.delta_time_s != 0),
                     key=lambda c: (-abs(c.delta_time_s), c.node))[:top]
    by_bytes = sorted((c for c in changes if c.delta_bytes != 0),
                      key=lambda c: (-abs(c.delta_bytes), c.node))[:top]
    counts = {status: sum(1 for c in changes if c.status == status)
              for status in ("matched", "added", "removed")}
    # "changed" counts the ops in both plans whose time or bytes moved.
    counts["changed"] = sum(1 for c in changes if c.status == "matched"
                            and (c.delta_time_s != 0 or c.delta_bytes != 0))
    return PlanDiff(plan_info(Path(old_path), old_plan), plan_info(Path(new_path), new_plan),
                    tuple(rows), verdicts, tuple(by_time), tuple(by_bytes), counts, note, top)


# ---------------------------------------------------------------------------------------------
# rendering


def _header_facts(diff: PlanDiff) -> list[str]:
    """`model sha256 1a2b3c4d5e6f`, `hardware a100-80gb -> h100 (differs)`, ..."""
    facts = []
    for what, old, new in diff.differences:
        # A hash prefix names the model well enough in one line; the JSON has it whole.
        length = 12 if what == "model sha256" else None
        first, second = (old or "?")[:length], (new or "?")[:length]
        facts.append(f"{what} {first}" if old == new
                     else f"{what} {first} -> {second} (differs)")
    return facts


def _columns(rows: Sequence[Sequence[str]], right: frozenset[int] = frozenset()) -> list[str]:
    """Rows (the first one the header) as aligned columns; `right` columns right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.rjust(width) if i in right else cell.ljust(width)
                      for i, (cell, width) in enumerate(zip(row, widths, strict=True))).rstrip()
            for row in rows]


def _metric_rows(diff: PlanDiff) -> list[list[str]]:
    return [[row.metric.name, row.format(row.old), row.format(row.new), row.change_text,
             row.verdict or ""] for row in diff.metrics]


def _op_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return format_time(value) if unit == "s" else format_size(value)


def _op_delta(change: OpChange, unit: str) -> str:
    delta = change.delta_time_s if unit == "s" else change.delta_bytes
    text = ("+" if delta > 0 else "-") + _op_value(abs(delta), unit)
    old = change.old_time_s if unit == "s" else change.old_bytes
    if change.status != "matched":
        return f"{text} ({change.status})"
    return text + (f" ({_pct(delta / old)})" if old else "")


def _op_rows(changes: Sequence[OpChange], unit: str) -> list[list[str]]:
    return [[c.node, c.op,
             _op_value(c.old_time_s if unit == "s" else c.old_bytes, unit),
             _op_value(c.new_time_s if unit == "s" else c.new_bytes, unit),
             _op_delta(c, unit)] for c in changes]


def _op_sections(diff: PlanDiff) -> list[tuple[str, list[list[str]]]]:
    """(title, rows) of the two per-op tables (none with `--top 0`)."""
    if diff.top == 0:
        return []
    return [(f"by estimated time (top {diff.top})", _op_rows(diff.ops_by_time, "s")),
            (f"by bytes (top {diff.top})", _op_rows(diff.ops_by_bytes, "bytes"))]


def _ops_summary(diff: PlanDiff) -> str:
    counts = diff.ops_counts
    return (f"{counts['matched']} ops in both plans ({counts['changed']} changed), "
            f"{counts['added']} added, {counts['removed']} removed")


def verdict_line(diff: PlanDiff) -> str:
    """The plain verdict: `ok: no threshold crossed` or `FAILED: latency_s ...; ...`."""
    if not diff.verdicts:
        return "ok: no threshold crossed (no --fail-on rules given)"
    if diff.ok:
        return f"ok: no threshold crossed ({len(diff.verdicts)} rule(s) checked)"
    return "FAILED: " + "; ".join(verdict.message for verdict in diff.failures)


def render_text(diff: PlanDiff) -> str:
    """The diff for a terminal or a CI log."""
    lines = [f"mapper diff: {diff.old.path} -> {diff.new.path}",
             "  " + "; ".join(_header_facts(diff)), ""]
    lines += _columns([["METRIC", "OLD", "NEW", "CHANGE", "VERDICT"], *_metric_rows(diff)],
                      frozenset({1, 2}))
    if diff.verdicts:
        lines += ["", "rules"]
        lines += ["  " + line for line in _columns(
            [["RULE", "VERDICT", ""], *([v.rule.text, "ok" if v.ok else "FAILED", v.message]
                                       for v in diff.verdicts)])]
    lines += ["", "per-op changes: " + (diff.ops_note or _ops_summary(diff))]
    if not diff.ops_note:
        for title, rows in _op_sections(diff):
            lines.append(f"  {title}")
            if rows:
                lines += ["    " + line for line in _columns(
                    [["NODE", "OP", "OLD", "NEW", "CHANGE"], *rows], frozenset({2, 3}))]
            else:
                lines.append("    (no op changed)")
    lines += ["", verdict_line(diff)]
    return "\n".join(lines) + "\n"


def _md_cell(text: str) -> str:
    # A pipe would end the table cell (also inside a code span, in GitHub's tables).
    return text.replace("|", "\\|")


def _md_code(text: str) -> str:
    # A backtick inside would close the code span early.
    return "`" + _md_cell(text.replace("`", "'")) + "`"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]],
              right: frozenset[int] = frozenset()) -> list[str]:
    align = ["---:" if i in right else "---" for i in range(len(header))]
    return ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|",
            *("| " + " | ".join(row) + " |" for row in rows)]


def render_markdown(diff: PlanDiff) -> str:
    """The diff as GitHub-flavoured Markdown for a pull-request comment."""
    lines = ["### mapper diff", ""]
    if diff.ok:
        extra = (f" ({len(diff.verdicts)} rule(s) checked)" if diff.verdicts
                 else " (no `--fail-on` rules given)")
        lines.append(f"✅ no threshold crossed{extra}")
    else:
        lines += [f"❌ {verdict.message}  " for verdict in diff.failures]
        lines[-1] = lines[-1].rstrip()
    lines += ["", f"{_md_code(diff.old.path)} → {_md_code(diff.new.path)}: "
              + "; ".join(_header_facts(diff)).replace("->", "→"), ""]
    lines += _md_table(["metric", "old", "new", "change", "verdict"],
                       [[_md_code(r[0]), r[1], r[2], r[3].replace("->", "→"),
                         {"ok": "✅ ok", "FAILED": "❌ FAILED"}.get(r[4], "")]
                        for r in _metric_rows(diff)], frozenset({1, 2, 3}))
    if diff.verdicts:
        lines += ["", "| rule | verdict |", "|---|---|"]
        lines += [f"| {_md_code(v.rule.text)} | {'✅' if v.ok else '❌'} "
                  f"{_md_cell(v.message)} |" for v in diff.verdicts]
    lines += ["", "#### Per-op changes", "", diff.ops_note or _ops_summary(diff)]
    if not diff.ops_note:
        for title, rows in _op_sections(diff):
            lines += ["", f"**{title[0].upper()}{title[1:]}**", ""]
            lines += (_md_table(["node", "op", "old", "new", "change"],
                                [[_md_code(r[0]), *map(_md_cell, r[1:])] for r in rows],
                                frozenset({2, 3, 4}))
                      if rows else ["_no op changed_"])
    return "\n".join(lines) + "\n"


def _json_value(metric: Metric, number: float | None) -> Any:
    """A metric value for JSON: fits as true/false, the rest as numbers."""
    return bool(number) if metric.name == FITS.name and number is not None else number


def to_dict(diff: PlanDiff) -> dict[str, Any]:
    """The diff as one JSON object (`--format json`)."""
    def info(plan: PlanInfo) -> dict[str, Any]:
        return {"path": plan.path, "model_sha256": plan.model_sha256,
                "hardware": plan.hardware, "mapper_version": plan.mapper_version}


    return {
        "schema": DIFF_SCHEMA,
        "ok": diff.ok,
        "old": info(diff.old),
        "new": info(diff.new),
        "differs": [what for what, old, new in diff.differences if old != new],
        "metrics": [{"metric": row.metric.name, "unit": "bool" if row.metric.name == FITS.name
                     else row.metric.unit, "better": row.better,
                     "old": _json_value(row.metric, row.old),
                     "new": _json_value(row.metric, row.new),
                     "delta": None if row.metric.name == FITS.name else row.delta,
                     "relative": None if row.metric.name == FITS.name else row.relative,
                     "verdict": row.verdict.lower() if row.verdict else None}
                    for row in diff.metrics],
        "rules": [{"rule": v.rule.text, "metric": v.rule.metric.name,
                   "kind": "fits" if v.rule.metric.name == FITS.name
                   else "relative" if v.rule.relative else "absolute",
                   "sign": v.rule.sign or None, "allowed": v.rule.amount,
                   "limit": v.rule.limit_text, "old": _json_value(v.rule.metric, v.old),
                   "new": _json_value(v.rule.metric, v.new), "ok": v.ok,
                   "message": v.message}
                  for v in diff.verdicts],
        "failed": [v.short for v in diff.failures],
        "ops": {**dict(diff.ops_counts), "note": diff.ops_note, "top": diff.top,
                "by_time": [c.to_dict() for c in diff.ops_by_time],
                "by_bytes": [c.to_dict() for c in diff.ops_by_bytes]},
    }


def _finite(value: Any) -> Any:
    # Strict JSON (no NaN/inf, which a plan read by Python's json may hold): every reader of a
    # CI artifact must parse it.
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def render(diff: PlanDiff, fmt: Format) -> str:
    """The diff in `fmt` (text, md or json), newline-terminated."""
    if fmt == "md":
        return render_markdown(diff)
    if fmt == "json":
        return json.dumps(_finite(to_dict(diff)), indent=1, allow_nan=False) + "\n"
    return render_text(diff)


def _ours(path: Path) -> bool:
    """Whether `path` is a file `mapper diff -o` wrote (any format), so it may be replaced."""
    with path.open("r", errors="replace") as handle:
        head = handle.read(4096)
    if head.startswith(("mapper diff:", "### mapper diff")):
        return True
    if head.lstrip().startswith("{") and path.stat().st_size < 64 * 2**20:
        data = json.loads(path.read_text())
        return isinstance(data, dict) and data.get("schema") == DIFF_SCHEMA
    return False


# ---------------------------------------------------------------------------------------------
# the command


@click.command("diff")
@click.argument("old_plan", type=click.Path(path_type=Path))
@click.argument("new_plan", type=click.Path(path_type=Path))
@click.option("--fail-on", "fail_on", multiple=True, metavar="RULES",
              help="Exit 4 when a metric worsens by more than allowed: comma-separated rules, "
              "repeatable. METRIC+X% or METRIC+AMOUNT where lower is better (latency+5%, "
              "device_memory+1MiB, offchip+0%), METRIC-X where higher is better "
              "(quality-0.01), or fits (fails when the new plan no longer fits the device).")
@click.option("--top", type=click.IntRange(min=0), default=10, show_default=True,
              help="How many ops to list by change in estimated time, and by change in bytes.")
@click.option("--format", "fmt", type=click.Choice(["text", "md", "json"]), default=None,
              help="Output format: text (default), md (Markdown for a pull-request comment) or "
              "json (one JSON object).")
@click.option("--json", "as_json", is_flag=True, help="Shorthand for --format json.")
@click.option("-o", "--output", "output", type=click.Path(path_type=Path, dir_okay=False),
              help="Write the diff to this file instead of stdout (a file an earlier mapper "
              "diff wrote is replaced; any other needs --force).")
@click.option("--force", is_flag=True,
              help="Let -o replace a file that mapper diff did not write.")
def diff_command(old_plan: Path, new_plan: Path, fail_on: tuple[str, ...], top: int,
                 fmt: str | None, as_json: bool, output: Path | None, force: bool) -> None:
    """Compare two plan.json files (OLD_PLAN -> NEW_PLAN): headline metrics side by side, the
    ops that moved most, and --fail-on rules that exit 4 when crossed."""
    if as_json and fmt not in (None, "json"):
        raise UserError(f"--json and --format {fmt} contradict each other: give one",
                        subject={"flag": "--format"})
    chosen: Format = "json" if as_json else (fmt or "text")  # type: ignore[assignment]
    rules = parse_rules(fail_on)
    if output is not None:
        from mapper.outputs import check_output_file

        check_output_file(output, force=force, ours=_ours, what="diff")
    old, new = load_plan(old_plan), load_plan(new_plan)
    diff = diff_plans(old, new, rules, top, str(old_plan), str(new_plan))
    text = render(diff, chosen)
    failure = None
    if not diff.ok:
        failure = QualityGateError(
            "threshold crossed: " + "; ".join(v.short for v in diff.failures),
            subject={"flag": "--fail-on"},
            # With JSON on stdout the CLI prints this error as the one object: it carries the
            # whole diff, so a machine reads the same fields either way.
            details={key: item for key, item in to_dict(diff).items()
                     if key not in ("error", "exit_code", "message")})
    if output is not None:
        from mapper.outputs import write_output_file

        write_output_file(output, text, force=force, ours=_ours, what="diff")
        click.echo(f"mapper diff: wrote {output} ({chosen})", err=True)
    elif not (failure is not None and chosen == "json"):
        click.echo(text, nl=False)
    if failure is not None:
        raise failure
