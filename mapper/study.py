"""What-if studies: one model planned for several hardware models and hardware-field sweeps.

`mapper study model.onnx --hw a100,h100 --sweep memory.l2.size=20MiB,40MiB` loads the model
once, then runs the whole pipeline for every hardware model x every combination of sweep
values (the cartesian product, in the order given), and tabulates the estimates. Nothing is
written but the optional CSV: a study compares plans, it does not deploy one.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mapper.driver import load_for, plan_loaded, resolve_hardware
from mapper.errors import UserError
from mapper.options import CompileOptions
from mapper.units import parse_size

# `--sweep scratchpad=...` sets the managed on-chip level of whichever hardware is studied
# (its path differs: memory.l2.size on GPUs, memory.scratchpad.size on NPUs).
SCRATCHPAD_KEY = "scratchpad"


@dataclass(frozen=True)
class Sweep:
    """One swept hardware field and the values it takes, in order."""

    path: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class StudyPoint:
    """One planned variant: which hardware, which sweep values, and what the plan estimates."""

    hardware: str
    settings: tuple[tuple[str, str], ...]
    latency_s: float | None
    offchip_bytes: int | None
    peak_device_bytes: int | None
    scratchpad_bytes: int | None
    passes: tuple[tuple[str, str], ...]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (one element of `points`)."""
        return {"hardware": self.hardware, "settings": dict(self.settings),
                "latency_s": self.latency_s, "offchip_bytes": self.offchip_bytes,
                "peak_device_bytes": self.peak_device_bytes,
                "scratchpad_bytes": self.scratchpad_bytes,
                "passes": [{"name": name, "status": status} for name, status in self.passes]}


def parse_sweep(text: str) -> Sweep:
    """`PATH=V1,V2,...` -> Sweep; a user error names the malformed flag."""
    path, sep, values = text.partition("=")
    items = tuple(v.strip() for v in values.split(",") if v.strip())
    if not sep or not path.strip() or not items:
        raise UserError(f"--sweep {text!r}: expected PATH=VALUE1,VALUE2,... "
                        "(e.g. memory.l2.size=20MiB,40MiB or scratchpad=256KiB,1MiB)")
    if len(set(items)) != len(items):
        raise UserError(f"--sweep {text!r}: a value is listed twice")
    return Sweep(path.strip(), items)


def _variant(options: CompileOptions, settings: Sequence[tuple[str, str]]) -> CompileOptions:
    overrides = list(options.hardware_overrides)
    scratchpad = options.scratchpad
    for path, value in settings:
        if path == SCRATCHPAD_KEY:
            scratchpad = parse_size(value)
        else:
            overrides.append(f"{path}={value}")
    return options.model_copy(update={"hardware_overrides": tuple(overrides),
                                      "scratchpad": scratchpad})


def run_study(model_path: str | Path, hardware_specs: Sequence[str], sweeps: Sequence[Sweep],
              options: CompileOptions | None = None) -> list[StudyPoint]:
    """Plan `model_path` for every hardware x sweep combination; returns one point each."""
    options = options or CompileOptions()
    if not hardware_specs:
        raise UserError("--hw: name at least one hardware model (e.g. --hw a100,h100)")
    paths = [sweep.path for sweep in sweeps]
    if len(set(paths)) != len(paths):
        raise UserError(f"--sweep: a field is swept twice ({', '.join(paths)})")
    combos = list(itertools.product(*[[(s.path, v) for v in s.values] for s in sweeps]))
    variants = [(spec, combo, _variant(options, combo))
                for spec in hardware_specs for combo in combos]
    # Resolve every variant before the first (slow) plan: a bad value fails at once.
    resolved = [(resolve_hardware(spec, variant), combo, variant)
                for spec, combo, variant in variants]
    loaded = load_for(model_path, options)
    points = []
    for hardware, combo, variant in resolved:
        plan, _ = plan_loaded(loaded, hardware, variant, str(model_path))
        estimate = plan.get("estimate") or {}
        managed = hardware.managed_level
        points.append(StudyPoint(
            hardware=hardware.name, settings=tuple(combo),
            latency_s=estimate.get("latency_s"), offchip_bytes=estimate.get("offchip_bytes"),
            peak_device_bytes=estimate.get("peak_device_bytes"),
            scratchpad_bytes=managed[1].size if managed else None,
            passes=tuple((p["name"], p["status"]) for p in plan["passes"])))
    return points


def points_jsonl(points: Sequence[StudyPoint]) -> str:
    """The study as JSON lines: one object per point."""
    return "".join(json.dumps(p.to_dict(), sort_keys=True) + "\n" for p in points)


def points_csv(points: Sequence[StudyPoint]) -> str:
    """The study as CSV text: one row per point, one column per swept field."""
    fields = list(dict.fromkeys(path for p in points for path, _ in p.settings))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["hardware", *fields, "latency_s", "offchip_bytes", "peak_device_bytes",
                     "scratchpad_bytes", "passes"])
    for p in points:
        settings = dict(p.settings)
        writer.writerow([p.hardware, *(settings.get(f, "") for f in fields), p.latency_s,
                         p.offchip_bytes, p.peak_device_bytes, p.scratchpad_bytes,
                         " ".join(f"{name}:{status}" for name, status in p.passes)])
    return buffer.getvalue()
