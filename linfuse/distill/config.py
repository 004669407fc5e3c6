"""YAML configs for ``linfuse distill`` and ``linfuse train-teacher``: nested dataclasses, unknown keys rejected."""

import dataclasses
import types
import typing
from pathlib import Path

import yaml

from ..errors import InvalidArgumentError
from ..fileio import read_text


def read_yaml(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise InvalidArgumentError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(read_text(path, "config file")) or {}
    except yaml.YAMLError as exc:
        raise InvalidArgumentError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidArgumentError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def from_mapping(cls, mapping, section: str):
    """Build dataclass ``cls`` from a mapping; nested dataclass fields take nested mappings."""
    if mapping is None:
        mapping = {}
    if not isinstance(mapping, dict):
        raise InvalidArgumentError(f"{section} must be a mapping, got {type(mapping).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(mapping) - set(fields))
    if unknown:
        raise InvalidArgumentError(f"unknown key(s) {', '.join(unknown)} in {section}; allowed: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in mapping.items():
        kind = hints[name]
        where = f"{section}.{name}"
        if dataclasses.is_dataclass(kind):
            values[name] = from_mapping(kind, value, where)
        else:
            values[name] = _coerce(value, kind, where)
    return cls(**values)


def _coerce(value, kind, where: str):
    """Accept YAML's spellings: 1e-4 read as a string, lists for tuples, ints for floats."""
    origin = typing.get_origin(kind)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in typing.get_args(kind):
            return None
        kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
        origin = typing.get_origin(kind)
    if kind is float and isinstance(value, str | int) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            pass
    if origin is tuple and isinstance(value, list):
        return tuple(_coerce(v, typing.get_args(kind)[0], where) if typing.get_args(kind) else v for v in value)
    expected = origin or kind
    if expected is float and isinstance(value, float) or isinstance(value, expected):
        return value
    raise InvalidArgumentError(f"{where} must be {getattr(expected, '__name__', expected)}, got {value!r}")
