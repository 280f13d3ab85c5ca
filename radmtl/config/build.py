"""Frozen dataclasses built from plain YAML values, every value checked against its field's type.

An unknown key or a value of the wrong type is a :class:`ConfigError` naming the dotted key
(``train.lr: expected a number, got 'fast'``), so a typo fails before any data is read. Written by
hand because neither dataclasses nor PyYAML check types, and a validation library (pydantic) would
be one more dependency for some eighty lines.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal

from radmtl.errors import RadmtlError


class ConfigError(RadmtlError, ValueError):
    """A configuration value or key is invalid; the message names the dotted key."""


def check_value(key: str, value: Any, hint: Any) -> Any:
    """Return ``value`` converted to ``hint`` or raise ConfigError naming ``key``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return check_value(key, value, arg)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: must be one of {list(args)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(check_value(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)} ({list(value)})")
        return tuple(check_value(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):
            # YAML 1.1 reads "1e-3" (no dot) as a string; users write learning rates that way.
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if dataclasses.is_dataclass(hint):
        return build_dataclass(hint, value, key)
    raise ConfigError(f"{key}: unsupported type {hint!r}")  # pragma: no cover - programming error


def build_dataclass(cls: type, raw: Any, prefix: str = "") -> Any:
    """An instance of the dataclass ``cls`` from the mapping ``raw`` (None: all defaults), each value checked
    by :func:`check_value`; ``prefix`` is the dotted key of ``raw`` in the whole config, for the messages."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"{where}{unknown[0]}: unknown key; valid keys here are {sorted(names)}"
        )
    kwargs = {}
    for name, value in raw.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = check_value(key, value, hints[name])
    return cls(**kwargs)
