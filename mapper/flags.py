"""Command-line flags made from typed config fields: a field's name, type, default and
description make its flag, so a flag is declared once, where its setting lives.

A config field opts into a flag with `Annotated[type, Flag("--name", ...)]`. `click_options`
turns every such field of a pydantic model (nested configs included) into a click option;
`collect` turns what the user gave (and only that) into the nested dict the model validates,
so `model_fields_set` on every config says exactly what the user set.
"""

from __future__ import annotations

import copy
import difflib
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import click
from pydantic import BaseModel

from mapper.errors import UserError
from mapper.units import parse_size


@dataclass(frozen=True)
class Flag:
    """How a config field appears on the command line.

    `parse` turns one given string into the field's value (each one, for `multiple`, and
    `collect` then combines them); `invert` makes a boolean flag that sets False.
    """

    name: str
    metavar: str | None = None
    parse: Callable[[str], Any] | None = None
    multiple: bool = False
    collect: Callable[[list[Any]], Any] | None = None
    invert: bool = False
    help: str | None = None


@dataclass(frozen=True)
class FlagField:
    """One flag and the config field it sets (`path`: field names from the root model)."""

    flag: Flag
    path: tuple[str, ...]
    annotation: Any
    default: Any
    description: str

    @property
    def param(self) -> str:
        """The click parameter name (a Python identifier)."""
        return "__".join(self.path)


def _flag_of(metadata: Sequence[Any]) -> Flag | None:
    return next((item for item in metadata if isinstance(item, Flag)), None)


def _config_type(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model a field holds (a nested config), if it is one."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def flag_fields(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> Iterator[FlagField]:
    """Every field of `model` (and of its nested configs) that has a flag."""
    for name, info in model.model_fields.items():
        nested = _config_type(info.annotation)
        if nested is not None:
            yield from flag_fields(nested, (*prefix, name))
            continue
        flag = _flag_of(info.metadata)
        if flag is None:
            continue
        default = None if info.default_factory is not None else info.default
        yield FlagField(flag, (*prefix, name), info.annotation, default,
                        info.description or "")


def _unwrap_optional(annotation: Any) -> Any:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return annotation


def _click_type(item: FlagField) -> click.ParamType | None:
    if item.flag.parse is not None:
        return click.STRING
    annotation = _unwrap_optional(item.annotation)
    if typing.get_origin(annotation) is Literal:
        return click.Choice([str(a) for a in typing.get_args(annotation)])
    if annotation is int:
        return click.INT
    if annotation is float:
        return click.FLOAT
    if annotation is Path:
        return click.Path(path_type=Path)
    if annotation is bool:
        return None
    return click.STRING


def _help(item: FlagField) -> str:
    text = item.flag.help or (item.description[:1].upper() + item.description[1:])
    text = text.rstrip(".") + "."
    if len(item.path) > 1 and not item.flag.help:
        text = f"{item.path[0]}: {text}"
    default = item.default
    if item.flag.invert or default is None or default is False or default in ((), "") \
            or isinstance(default, dict):
        return text
    shown = default.name if isinstance(default, Path) else default
    return f"{text} [default: {shown}]"


def click_options(model: type[BaseModel]) -> list[Callable[[Any], Any]]:
    """A click option decorator per flagged field of `model`, in field order."""
    options = []
    for item in flag_fields(model):
        click_type = _click_type(item)
        if click_type is None:  # a boolean flag
            options.append(click.option(item.flag.name, item.param, is_flag=True,
                                        default=None, help=_help(item)))
            continue
        options.append(click.option(
            item.flag.name, item.param, type=click_type, multiple=item.flag.multiple,
            default=None, metavar=item.flag.metavar, help=_help(item)))
    return options


def params_of(model: type[BaseModel]) -> tuple[str, ...]:
    """The click parameter names `click_options(model)` adds."""
    return tuple(item.param for item in flag_fields(model))


def validate(model: type[BaseModel], tree: Mapping[str, Any], where: str) -> Any:
    """`model` built from `tree`; a validation error becomes one user error per field,
    naming the flag (or config key) at fault."""
    from pydantic import ValidationError

    check_keys(model, tree, where)
    try:
        return model.model_validate(tree)
    except ValidationError as error:
        details = []
        for problem in error.errors():
            path = ".".join(str(p) for p in problem["loc"] if not isinstance(p, int))
            name = flag_name(model, path)
            label = name if name.startswith("--") else f"{path!r}"
            message = problem["msg"].removeprefix("Value error, ")
            details.append(f"{label}: {message}" if path else message)
        raise UserError(f"invalid {where}: " + "; ".join(details)) from None


def _set(tree: dict[str, Any], path: Sequence[str], value: Any) -> None:
    node = tree
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value


def collect(model: type[BaseModel], values: Mapping[str, Any],
            given: Callable[[str], bool]) -> dict[str, Any]:
    """The nested settings of the flags the user gave (`given(param)`), parsed."""
    tree: dict[str, Any] = {}
    for item in flag_fields(model):
        if item.param not in values or not given(item.param):
            continue
        raw = values[item.param]
        flag = item.flag
        if _click_type(item) is None:
            value: Any = (not raw) if flag.invert else bool(raw)
        elif flag.multiple:
            parsed = [flag.parse(v) if flag.parse else v for v in raw]
            value = flag.collect(parsed) if flag.collect else tuple(parsed)
        else:
            value = flag.parse(raw) if flag.parse else raw
        _set(tree, item.path, value)
    return tree


def parse_config(model: type[BaseModel], tree: Mapping[str, Any]) -> dict[str, Any]:
    """A config file's settings with every flag's own parser applied to what the file wrote
    as text or numbers (`scratchpad: 256KiB`, `max_degradation: 0.01`), so a file holds
    everything its flags hold, in the same words."""
    result = copy.deepcopy(dict(tree))
    for item in flag_fields(model):
        parse = item.flag.parse
        node: Any = result
        for key in item.path[:-1]:
            node = node.get(key) if isinstance(node, Mapping) else None
        if parse is None or not isinstance(node, dict) or item.path[-1] not in node:
            continue
        value = node[item.path[-1]]
        if item.flag.multiple and isinstance(value, list | tuple) \
                and all(isinstance(v, str | int | float) for v in value):
            parsed = [parse(str(v)) for v in value]
            node[item.path[-1]] = item.flag.collect(parsed) if item.flag.collect \
                else tuple(parsed)
        elif isinstance(value, str | int | float) and not isinstance(value, bool):
            parsed_one = parse(str(value))
            node[item.path[-1]] = (item.flag.collect([parsed_one]) if item.flag.collect
                                   else (parsed_one,)) if item.flag.multiple else parsed_one
    return result


def flag_name(model: type[BaseModel], path: str) -> str:
    """The flag that sets the dotted field `path` of `model` (the path itself if none)."""
    wanted = tuple(path.split("."))
    for item in flag_fields(model):
        if item.path == wanted:
            return item.flag.name
    return path


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `override` laid over it, nested dicts merged key by key."""
    result = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = merge(result[key], value)
        else:
            result[key] = value
    return result


def check_keys(model: type[BaseModel], data: Mapping[str, Any], where: str,
               prefix: str = "") -> None:
    """Unknown keys of `data` for `model` are user errors naming the nearest valid key."""
    fields = model.model_fields
    for key, value in data.items():
        if key not in fields:
            near = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            hint = f"; did you mean {prefix + near[0]!r}?" if near else \
                f"; valid keys here: {', '.join(fields)}"
            raise UserError(f"{where}: unknown key {prefix + str(key)!r}{hint}")
        nested = _config_type(fields[key].annotation)
        if nested is not None and isinstance(value, Mapping):
            check_keys(nested, value, where, f"{prefix}{key}.")


# --- parsers of flag values ---------------------------------------------------------------

def parse_shape(text: str, flag: str = "--input-shape") -> tuple[str, tuple[int, ...]]:
    """`x=1x3x224x224` or `x:1,3,224,224` (onnxsim/Polygraphy) -> ("x", (1, 3, 224, 224))."""
    if "=" in text:
        name, _, dims = text.partition("=")
    else:
        name, _, dims = text.rpartition(":")
    try:
        if not name or not dims:
            raise ValueError
        shape = tuple(int(d) for d in dims.lower().replace(",", "x").split("x"))
        if any(d <= 0 for d in shape):
            raise ValueError
    except ValueError:
        raise UserError(
            f"{flag} {text!r}: expected NAME=D0xD1x... (or NAME:D0,D1,...) with positive "
            "integers, e.g. x=1x3x224x224") from None
    return name, shape


def parse_dim(text: str) -> tuple[str, int]:
    """`seq=128` -> ("seq", 128)."""
    name, sep, value = text.partition("=")
    try:
        if not sep or not name:
            raise ValueError
        number = int(value)
        if number <= 0:
            raise ValueError
    except ValueError:
        raise UserError(f"--dim {text!r}: expected NAME=VALUE with a positive integer, e.g. "
                        "seq=128") from None
    return name, number


def parse_names(text: str) -> tuple[str, ...]:
    """`a,b` -> ("a", "b")."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


def parse_size_flag(text: str) -> int:
    """A size such as `512KiB` or `2MiB`, in bytes."""
    return parse_size(text)


def as_dict(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Repeated NAME=VALUE flags as one mapping (the last one of a name wins)."""
    return dict(pairs)
