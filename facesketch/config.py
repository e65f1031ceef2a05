"""Typed configuration: one dataclass per stage, built from plain dicts.

Unknown keys are errors that name the valid ones; values are checked against
the field's type (and its ``choices`` metadata) before any work starts.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value or key is not valid."""


def choices(*values: str, default: str, help: str = "") -> Any:  # noqa: A002 - argparse's word
    """A string field restricted to ``values``."""
    return dataclasses.field(default=default, metadata={"choices": values, "help": help})


def option(default: Any, help: str = "", hidden: bool = False, flag: bool = True) -> Any:  # noqa: A002
    """A field with its command-line help (``add_arguments``); ``hidden``: not listed in
    --help; ``flag=False``: no command-line option (API/config only)."""
    return dataclasses.field(default=default, metadata={"help": help, "hidden": hidden, "flag": flag})


def add_arguments(parser: Any, cls: type, required: tuple[str, ...] = ()) -> None:
    """One argparse option per field of dataclass ``cls`` (``--field-name``): type,
    choices and help from the field; every default None, so ``config_from_args`` keeps
    the dataclass's own defaults for options not given. Booleans are store_true flags."""
    import argparse
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if not meta.get("flag", True):
            continue
        typ = hints[f.name]
        if typing.get_origin(typ) is typing.Union:
            typ = next(a for a in typing.get_args(typ) if a is not type(None))
        text = meta.get("help", "")
        if f.default is not dataclasses.MISSING and f.default is not None and typ is not bool:
            text = f"{text} (default {f.default})" if text else f"default {f.default}"
        kw: dict[str, Any] = {"help": argparse.SUPPRESS if meta.get("hidden") else text or None,
                              "default": None}
        if typ is bool:
            kw["action"] = "store_true"
        else:
            kw["type"] = typ
            if meta.get("choices"):
                kw["choices"] = meta["choices"]
        if f.name in required:
            kw["required"] = True
        parser.add_argument("--" + f.name.replace("_", "-"), **kw)


def config_from_args(cls: type[T], args: Any, base: dict[str, Any] | None = None,
                     **overrides: Any) -> T:
    """The dataclass from parsed ``add_arguments`` options: the options given, then
    ``base`` (e.g. a resumed run's saved options), the dataclass's defaults for the
    rest; ``overrides`` last."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    given = dict(base or {})
    given.update({k: v for k, v in vars(args).items() if k in names and v is not None})
    given.update(overrides)
    return from_dict(cls, given)


def _coerce(name: str, value: Any, typ: Any) -> Any:
    origin = typing.get_origin(typ)
    if origin is typing.Union:  # Optional[X]
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None:
            return None
        return _coerce(name, value, args[0])
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        return value
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        (inner, *_) = typing.get_args(typ) or (Any,)
        return tuple(value) if origin is tuple else list(value)
    return value


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys raise ConfigError."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown {cls.__name__} key(s) {', '.join(unknown)}; "
            f"valid keys: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        value = _coerce(key, value, hints[key])
        allowed = fields[key].metadata.get("choices")
        if allowed and value not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")
        kwargs[key] = value
    return cls(**kwargs)


def check(obj: Any) -> None:
    """Validate ``choices`` on an already-built dataclass instance."""
    for f in dataclasses.fields(obj):
        allowed = f.metadata.get("choices")
        value = getattr(obj, f.name)
        if allowed and value not in allowed:
            raise ConfigError(f"{f.name} must be one of {', '.join(allowed)}; got {value!r}")


def to_dict(obj: Any) -> dict[str, Any]:
    out = dataclasses.asdict(obj)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}
