"""The JSON codec of sheesh's wire records (bottom layer, no internal imports but ``errors``).

``to_wire`` turns a record (a dataclass of str, int, float, bool, None, enums, paths, datetimes (ISO 8601),
tuples, lists, dicts and nested records) into plain JSON data; ``from_wire`` checks such data against the
record's type hints and builds the record. Records with a ``version`` field refuse another version than
``WIRE_VERSION``. The node contract and the store (firewall rules and port forwards in a VM's row, the rerobots
records) use it: one encoding of each record.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import types
import typing
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from sheesh.errors import InvalidInputError

WIRE_VERSION = 1
T = TypeVar("T")


class WireError(InvalidInputError):
    """Data that does not fit a record (wrong shape, unknown version)."""


def to_wire(obj: Any) -> Any:
    """Plain JSON data (dicts, lists, str, numbers, bools, None) for a contract object."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_wire(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, list | tuple):
        return [to_wire(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_wire(v) for k, v in obj.items()}
    return obj


def from_wire(cls: type[T], raw: Any) -> T:
    """The contract object of type ``cls`` that ``raw`` (from ``to_wire``) describes.

    :raise WireError: ``raw`` does not fit ``cls`` or names an unknown contract version
    """
    try:
        value: T = _decode(cls, raw)
    except (TypeError, ValueError, KeyError) as exc:
        raise WireError(f"not a valid {cls.__name__}: {exc}") from None
    return value


@functools.cache
def _field_hints(cls: type) -> dict[str, Any]:
    """The type hint of each field of the record ``cls`` (resolving hints costs more than decoding a record)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _decode(hint: Any, raw: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if raw is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _decode(option, raw)
            except (TypeError, ValueError, KeyError) as exc:
                errors.append(str(exc))
        raise ValueError("; ".join(errors))
    if origin in (tuple, list):
        if not isinstance(raw, list):
            raise TypeError(f"expected a list, got {type(raw).__name__}")
        item = typing.get_args(hint)[0]
        items = [_decode(item, v) for v in raw]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(raw, dict):
            raise TypeError(f"expected an object, got {type(raw).__name__}")
        _, val = typing.get_args(hint)
        return {str(k): _decode(val, v) for k, v in raw.items()}
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if not isinstance(raw, dict):
            raise TypeError(f"expected an object for {hint.__name__}, got {type(raw).__name__}")
        hints = _field_hints(hint)
        if "version" in hints and raw.get("version", WIRE_VERSION) != WIRE_VERSION:
            raise ValueError(f"contract version {raw.get('version')!r} (this side speaks {WIRE_VERSION})")
        unknown = raw.keys() - hints.keys()
        if unknown:
            raise KeyError(f"unknown fields {sorted(unknown)}")
        return hint(**{name: _decode(hints[name], v) for name, v in raw.items()})
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint(raw)
    if hint is Path:
        if not isinstance(raw, str):
            raise TypeError("expected a path string")
        return Path(raw)
    if hint is datetime:
        if not isinstance(raw, str):
            raise TypeError("expected an ISO 8601 date string")
        return datetime.fromisoformat(raw)
    if hint is float:
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise TypeError(f"expected a number, got {raw!r}")
        return float(raw)
    if hint in (str, int, bool):
        if not isinstance(raw, hint) or (hint is int and isinstance(raw, bool)):
            raise TypeError(f"expected {hint.__name__}, got {raw!r}")
        return raw
    if hint is object or hint is Any:
        return raw
    raise TypeError(f"no wire form for {hint!r}")
