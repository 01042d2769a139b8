"""Load hardware models in stages: parse YAML -> apply --set overrides -> schema -> cross-checks.

Every stage reports all of its problems at once, each with its YAML path, in one UserError.
"""

from __future__ import annotations

import copy
import os
import types
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from mapper.errors import UserError
from mapper.units import parse_size

from .checks import check_hardware
from .schema import Hardware

BUILTIN_DIR = Path(__file__).resolve().parent
_YAML_SUFFIXES = (".yaml", ".yml")


# ---------------------------------------------------------------- stage (a): parse YAML


class _DuplicateKeyError(yaml.YAMLError):
    def __init__(self, key: Any, line: int, first_line: int) -> None:
        super().__init__(f"duplicate key {key!r} at line {line} (first defined at line "
                         f"{first_line})")


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key repeated in one mapping instead of keeping the last."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<:` merges are allowed to be overridden by explicit keys
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:
                continue  # unhashable key: SafeLoader reports it below
            if first is not None:
                raise _DuplicateKeyError(key, line, first)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: safe
    except _DuplicateKeyError as exc:
        raise UserError(f"invalid hardware model {source}: {exc}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = exc.problem or exc.context or "unreadable"
        raise UserError(f"invalid hardware model {source}: not valid YAML{where}: {what}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"invalid hardware model {source}: not valid YAML: {exc}") from None


def _read_document(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot read hardware file {path}: {exc.strerror or exc}") from None
    doc = _parse_yaml(text, str(path))
    if not isinstance(doc, dict):
        raise UserError(f"invalid hardware model {path}: expected a mapping of fields at the "
                        f"top level, got {type(doc).__name__}")
    return doc


# ---------------------------------------------------------------- schema walking


def _unwrap(annotation: Any) -> Any:
    """Strip Annotated[...] and `| None` so the walker sees the structural type."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _unwrap(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        args = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(args) == 1:
            return _unwrap(args[0])
    return annotation


def _model_fields(model: type[BaseModel]) -> dict[str, Any]:
    return {field.alias or name: field.annotation for name, field in model.model_fields.items()}


def _child(annotation: Any, key: Any, raw: Any) -> tuple[Any, list[str] | None]:
    """The type under `key` of a node of type `annotation`, or (None, valid keys) if invalid.

    `raw` is the current YAML value at that node: for free-form mappings (memory levels)
    the valid keys are the ones the file defines; with `raw` None any key is accepted.
    """
    tp = _unwrap(annotation)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        fields = _model_fields(tp)
        return (fields[key], None) if key in fields else (None, sorted(fields))
    origin = get_origin(tp)
    if origin is dict:
        key_type, value_type = get_args(tp)
        key_type = _unwrap(key_type)
        if get_origin(key_type) is Literal:
            allowed = [str(arg) for arg in get_args(key_type)]
        elif raw is None:
            return value_type, None  # walking the schema alone: any name is a valid level
        else:
            allowed = sorted(str(k) for k in raw) if isinstance(raw, dict) else []
        return (value_type, None) if key in allowed else (None, allowed)
    if origin in (tuple, list):
        args = [arg for arg in get_args(tp) if arg is not Ellipsis]
        length = len(raw) if isinstance(raw, list) else len(args)
        valid = [str(i) for i in range(length)]
        if isinstance(key, int) or (isinstance(key, str) and key.isdigit()):
            index = int(key)
            if index < length:
                return (args[min(index, len(args) - 1)] if args else Any), None
        return None, valid
    return None, []


def _valid_keys_at(loc: Sequence[Any]) -> list[str]:
    annotation: Any = Hardware
    for key in loc:
        annotation, _ = _child(annotation, key, None)
        if annotation is None:
            return []
    _, valid = _child(annotation, "\0", None)  # a key no schema has: yields the valid ones
    return valid or []


# ---------------------------------------------------------------- stage (b): --set overrides


def _apply_overrides(doc: dict[str, Any], overrides: Sequence[str]) -> tuple[dict, list[str]]:
    """A copy of `doc` with each `PATH=VALUE` applied, and the problems with the overrides."""
    doc = copy.deepcopy(doc)
    problems: list[str] = []
    for item in overrides:
        problem = _apply_one(doc, item)
        if problem:
            problems.append(f"--set {item}: {problem}")
    return doc, problems


def _apply_one(doc: dict[str, Any], item: str) -> str | None:
    path_text, sep, value_text = item.partition("=")
    path_text = path_text.strip()
    if not sep or not path_text:
        return "expected PATH=VALUE, e.g. memory.l2.size=80MiB"
    keys = path_text.split(".")
    if any(not key for key in keys):
        return f"empty key in path '{path_text}'"
    try:
        value = yaml.load(value_text, Loader=_StrictLoader)  # SafeLoader subclass: safe
    except yaml.YAMLError as exc:
        return f"cannot read value {value_text!r}: {exc}"

    annotation: Any = Hardware
    node: Any = doc
    for depth, key in enumerate(keys):
        where = ".".join(keys[:depth]) or "the top level"
        if not isinstance(node, dict | list):
            return f"'{'.'.join(keys[:depth])}' is a value, not a mapping; cannot set '{key}'"
        child, valid = _child(annotation, key, node)
        if child is None:
            listed = ", ".join(valid) if valid else "none"
            return f"unknown key '{key}' at {where}; valid keys: {listed}"
        last = depth == len(keys) - 1
        if isinstance(node, list):
            index = int(key)
            if last:
                node[index] = value
            node, annotation = node[index], child
            continue
        if last:
            node[key] = value
            return None
        if not isinstance(node.get(key), dict | list):
            here = ".".join(keys[: depth + 1])
            if node.get(key) is not None:
                return f"'{here}' is a value, not a mapping; cannot set '{keys[depth + 1]}'"
            if get_origin(_unwrap(child)) in (tuple, list):
                return f"'{here}' is not set; give the whole value, e.g. {here}=[128, 128]"
            node[key] = {}  # an optional block the file leaves out (e.g. matrix_shapes)
        node, annotation = node[key], child
    return None


# ---------------------------------------------------------------- stage (c) and (d)


def _format_loc(loc: Sequence[Any]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _translate(error: dict[str, Any]) -> str:
    """One pydantic error as `yaml.path: message`, without pydantic's boilerplate."""
    loc = list(error["loc"])
    kind = error["type"]
    message = error["msg"]
    if kind == "extra_forbidden":
        valid = _valid_keys_at(loc[:-1])
        return f"{_format_loc(loc)}: unknown field; valid fields here: {', '.join(valid)}"
    if kind == "missing":
        return f"{_format_loc(loc)}: required field is missing"
    if loc and loc[-1] == "[key]":
        return f"{_format_loc(loc[:-1])}: not a valid key: {message}"
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    value = error.get("input")
    if kind not in ("value_error", "assertion_error") and isinstance(
        value, str | int | float | bool | type(None)
    ):
        message += f", got {value!r}"
    return f"{_format_loc(loc)}: {message}"


def _validate(doc: dict[str, Any]) -> tuple[Hardware | None, list[str]]:
    try:
        hw = Hardware.model_validate(doc)
    except ValidationError as exc:
        return None, [_translate(dict(error)) for error in exc.errors(include_url=False)]
    return hw, check_hardware(hw)


def _fail(source: str, overrides: Sequence[str], problems: list[str]) -> UserError:
    with_sets = f" with {' '.join('--set ' + o for o in overrides)}" if overrides else ""
    count = f"{len(problems)} problem" + ("s" if len(problems) > 1 else "")
    lines = "\n".join(f"  - {problem}" for problem in problems)
    return UserError(f"invalid hardware model {source}{with_sets} ({count}):\n{lines}")


# ---------------------------------------------------------------- built-ins and public API


@lru_cache(maxsize=1)
def _builtin_index() -> dict[str, Path]:
    """Lower-cased name and every alias of each built-in YAML -> its file."""
    index: dict[str, Path] = {}
    for path in sorted(BUILTIN_DIR.glob("*.yaml")):
        doc = _read_document(path)
        index[path.stem.lower()] = path
        for alias in doc.get("aliases") or ():
            index.setdefault(str(alias).lower(), path)
    return index


def builtin_names() -> list[str]:
    """Canonical names of the built-in hardware models, sorted."""
    return sorted(path.stem for path in set(_builtin_index().values()))


def builtin_catalog() -> list[Hardware]:
    """Every built-in hardware model, loaded and validated, sorted by name."""
    return [load_hardware(name) for name in builtin_names()]


def hardware_file(name: str) -> Path:
    """The YAML file of a built-in model given its name or an alias (case-insensitive)."""
    path = _builtin_index().get(name.strip().lower())
    if path is None:
        raise _unknown(name)
    return path


def _unknown(spec: str) -> UserError:
    import difflib

    index = _builtin_index()
    aliases = sorted(key for key, path in index.items() if key != path.stem.lower())
    close = difflib.get_close_matches(str(spec).strip().lower(), list(index), n=1, cutoff=0.6)
    hint = ""
    if close:
        stem = index[close[0]].stem
        hint = f"did you mean {close[0]!r}" + (f" ({stem})" if stem != close[0] else "") + "? "
    return UserError(f"unknown hardware {spec!r}. {hint}Built-in models: "
                     f"{', '.join(builtin_names())}"
                     f" (aliases: {', '.join(aliases)}); a path to a .yaml hardware file also "
                     "works", subject={"flag": "--hw"})


def _resolve(spec: str | os.PathLike[str]) -> Path:
    text = os.fspath(spec).strip()
    path = Path(text).expanduser()
    looks_like_path = path.suffix.lower() in _YAML_SUFFIXES or "/" in text or "\\" in text
    if looks_like_path:
        if not path.is_file():
            raise UserError(f"hardware file not found: {text}", subject={"file": text})
        return path
    builtin = _builtin_index().get(text.lower())
    if builtin is not None:
        return builtin
    if path.is_file():
        return path
    raise _unknown(spec)


def load_hardware(spec: str | os.PathLike[str], overrides: Sequence[str] = ()) -> Hardware:
    """Load a built-in model (name or alias) or a YAML file, apply `--set` overrides, validate."""
    path = _resolve(spec)
    doc = _read_document(path)
    source = str(path)
    overrides = tuple(overrides)
    if overrides:
        doc, problems = _apply_overrides(doc, overrides)
        if problems:
            raise _fail(source, (), problems)
    hw, problems = _validate(doc)
    if problems or hw is None:
        raise _fail(source, overrides, problems)
    return hw


def set_managed_capacity(hw: Hardware, size: int | str) -> Hardware:
    """A copy of `hw` whose managed on-chip level holds `size` bytes (the `--scratchpad` flag)."""
    managed = hw.managed_level
    if managed is None:
        levels = ", ".join(hw.memory)
        raise UserError(f"hardware '{hw.name}' has no managed on-chip memory level (levels: "
                        f"{levels}), so --scratchpad cannot set its capacity; mark one level "
                        "`managed: true` in a copy of its YAML")
    capacity = parse_size(size)
    if capacity <= 0:
        raise UserError(f"--scratchpad must be > 0 bytes, got {size!r}")
    name, level = managed
    memory = dict(hw.memory)
    memory[name] = level.model_copy(update={"size": capacity})
    updated = hw.model_copy(update={"memory": memory})
    problems = check_hardware(updated)
    if problems:
        raise UserError(f"--scratchpad {size}: " + "; ".join(problems))
    return updated
