"""A study's jobs: models x hardware x sweep values, each a pure function of its inputs.

A sweep names a hardware field (`memory.l2.size=20MiB,40MiB`), the managed level of whichever
device is studied (`scratchpad=256KiB,1MiB`), or a compile option by its config path
(`compression.bits=2,3,4`, `compress.bits` for short, `memory.objective=offchip,peak`). Every
job carries its fully resolved inputs and a content key: the model's bytes, the resolved
hardware model, the options (with the bytes of any calibration or trace file), the seed and
the mapper version, so a cached result is reused exactly when nothing it depends on changed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mapper import __version__, flags
from mapper.errors import UserError
from mapper.options import CompileOptions
from mapper.units import parse_size

# `scratchpad=...` sets the managed on-chip level of whichever hardware is studied (its path
# differs: memory.l2.size on GPUs, memory.scratchpad.size on NPUs).
SCRATCHPAD_KEY = "scratchpad"
_OPTION_ALIASES = {"compress": "compression"}

Target = Literal["hardware", "option"]


@dataclass(frozen=True)
class Sweep:
    """One swept field and the values it takes, in order."""

    path: str
    values: tuple[str, ...]

    @property
    def target(self) -> Target:
        """Whether the path names a compile option (or the scratchpad) or a hardware field."""
        if self.path == SCRATCHPAD_KEY:
            return "option"
        # `memory.objective` is the memory pass's option, `memory.l2.size` a hardware field:
        # an option only when every part of the path names a config field.
        parts = self.path.split(".")
        parts[0] = _OPTION_ALIASES.get(parts[0], parts[0])
        model: Any = CompileOptions
        for part in parts:
            fields = getattr(model, "model_fields", None)
            if not fields or part not in fields:
                return "hardware"
            model = fields[part].annotation
        return "option"


@dataclass(frozen=True)
class Job:
    """One plan to make: a model, a hardware spec, the sweep values and the resulting options."""

    index: int
    model: str
    model_path: str
    model_sha256: str
    hardware: str
    settings: tuple[tuple[str, str], ...]
    options: CompileOptions
    key: str


def parse_sweep(text: str) -> Sweep:
    """`PATH=V1,V2,...` -> Sweep; a user error names the malformed flag."""
    path, sep, values = text.partition("=")
    items = tuple(v.strip() for v in values.split(",") if v.strip())
    if not sep or not path.strip() or not items:
        raise UserError(f"--sweep {text!r}: expected PATH=VALUE1,VALUE2,... (e.g. "
                        "memory.l2.size=20MiB,40MiB, scratchpad=256KiB,1MiB or "
                        "compression.bits=2,3,4)", subject={"flag": "--sweep"})
    if len(set(items)) != len(items):
        raise UserError(f"--sweep {text!r}: a value is listed twice", subject={"flag": "--sweep"})
    return Sweep(path.strip(), items)


def _set_path(tree: dict[str, Any], path: Sequence[str], value: Any) -> None:
    node = tree
    for key in path[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise UserError(f"--sweep {'.'.join(path)}: {key!r} is not a group of settings "
                            "(`mapper schema config` lists them)", subject={"flag": "--sweep"})
        node = child
    node[path[-1]] = value


def apply_settings(options: CompileOptions, settings: Sequence[tuple[str, str]]
                   ) -> CompileOptions:
    """`options` with the sweep values set: hardware fields become `--set` overrides, option
    paths are read by their flags' own parsers (so `compression.bits=4` means what
    `--bits 4` means) and checked like a config file."""
    overrides = list(options.hardware_overrides)
    # Only what was set: a pass's settings count as given exactly when the user gave them.
    tree = options.model_dump(exclude_unset=True)
    tree.setdefault("scratchpad", options.scratchpad)
    option_paths = []
    for path, value in settings:
        sweep = Sweep(path, (value,))
        if path == SCRATCHPAD_KEY:
            tree["scratchpad"] = parse_size(value)
        elif sweep.target == "option":
            parts = path.split(".")
            parts[0] = _OPTION_ALIASES.get(parts[0], parts[0])
            _set_path(tree, parts, value)
            option_paths.append(path)
        else:
            overrides.append(f"{path}={value}")
    tree["hardware_overrides"] = tuple(overrides)
    if not option_paths:
        return options.model_copy(update={"hardware_overrides": tuple(overrides),
                                          "scratchpad": tree["scratchpad"]})
    where = f"--sweep {', '.join(option_paths)}"
    flags.check_keys(CompileOptions, tree, where)
    return flags.validate(CompileOptions, flags.parse_config(CompileOptions, tree), where)


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes; a missing file is a user error naming it."""
    digest = hashlib.sha256()
    try:
        with Path(path).open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as error:
        raise UserError(f"model file {str(path)!r} cannot be read: "
                        f"{error.strerror or error}", subject={"file": str(path)}) from None
    return digest.hexdigest()


def job_key(model_sha256: str, hardware: dict[str, Any], options: CompileOptions) -> str:
    """The content key of a job: everything its result depends on, hashed."""
    inputs = {"mapper": __version__, "model": model_sha256, "hardware": hardware,
              "options": options.model_dump(mode="json")}
    for label, path in (("calib", options.calib), ("trace", options.moe.trace)):
        if path is not None:
            inputs[f"{label}_sha256"] = file_sha256(path)
    text = json.dumps(inputs, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def expand(models: Sequence[str], hardware_specs: Sequence[str], sweeps: Sequence[Sweep],
           options: CompileOptions) -> list[Job]:
    """Every job of the study, in order (model, hardware, then sweeps as given); every value
    is resolved first, so a bad one fails at once, before any plan is made."""
    from mapper.driver import PIPELINE, resolve_hardware
    from mapper.pipeline import select_passes

    if not models:
        raise UserError("study: name at least one model (mapper study MODEL... or `models:` in "
                        "the study file)")
    if not hardware_specs:
        raise UserError("--hw: name at least one hardware model (e.g. --hw a100,h100)",
                        subject={"flag": "--hw"})
    paths = [sweep.path for sweep in sweeps]
    if len(set(paths)) != len(paths):
        raise UserError(f"--sweep: a field is swept twice ({', '.join(paths)})",
                        subject={"flag": "--sweep"})
    combos = list(itertools.product(*[[(s.path, v) for v in s.values] for s in sweeps]))
    variants = [apply_settings(options, combo) for combo in combos]
    for variant in variants:
        select_passes(PIPELINE, variant)  # a setting of a pass that will not run fails here
    hashes = {model: file_sha256(model) for model in dict.fromkeys(models)}
    # Workers may run elsewhere (a pool's processes, a Ray node): every path made absolute.
    variants = [_absolute_paths(variant) for variant in variants]
    jobs = []
    for model in models:
        for spec in hardware_specs:
            spec_path = Path(spec).expanduser()
            where = str(spec_path.resolve()) if spec_path.is_file() else spec
            for combo, variant in zip(combos, variants, strict=True):
                resolved = resolve_hardware(where, variant).to_plan_dict()
                jobs.append(Job(index=len(jobs), model=model,
                                model_path=str(Path(model).resolve()),
                                model_sha256=hashes[model], hardware=where,
                                settings=tuple(combo), options=variant,
                                key=job_key(hashes[model], resolved, variant)))
    return jobs


def _absolute_paths(options: CompileOptions) -> CompileOptions:
    """`options` with its calibration and trace files named by absolute paths."""
    update: dict[str, Any] = {}
    if options.calib is not None:
        update["calib"] = options.calib.resolve()
    if options.moe.trace is not None:
        update["moe"] = options.moe.model_copy(update={"trace": options.moe.trace.resolve()})
    return options.model_copy(update=update) if update else options
