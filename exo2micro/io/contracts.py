"""Typed JSON contracts: the JSON Schema of a file from its Python types, and validation of the
JSON read back against them.

A contract's types are JSON types: ``str``, ``int``, ``float`` (an integer is accepted where a
float is expected; ``NaN`` and infinities too, which :func:`json.dumps` writes), ``bool``,
``None``, ``list[T]``, ``dict[str, T]``, unions (``T | None``), :data:`typing.Any` and
:class:`typing.TypedDict` classes (nested objects). A TypedDict's keys are optional unless it
is ``total``; keys it does not declare are allowed, so a newer writer's additions do not stop
an older reader. ``Annotated[T, "text"]`` documents a key: the text becomes its JSON Schema
``description``.

The top level of a file is a dataclass (see :func:`load_fields`): fields without a default are
required keys; ``extra`` (a ``dict``; another name with ``rest=``), when the class has it, keeps
the keys the class does not declare, in their order.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Annotated, Any, Union

#: JSON Schema dialect of :func:`json_schema`.
DIALECT = "https://json-schema.org/draft/2020-12/schema"
#: Name of the dataclass field that keeps undeclared keys.
EXTRA = "extra"

_SCALARS: dict[type, tuple[str, str]] = {  # Python type -> (JSON Schema type, words)
    str: ("string", "a string"), int: ("integer", "an integer"), float: ("number", "a number"),
    bool: ("boolean", "true or false"), type(None): ("null", "null"),
}


class ContractError(ValueError):
    """JSON that does not match its contract; the message names the key (``a.b[2]``), what
    was expected and what was found."""


def _strip(tp: Any) -> tuple[Any, str | None]:
    """``tp`` without ``Annotated``, and its description (``None`` when it has none)."""
    if typing.get_origin(tp) is Annotated:
        inner, *extras = typing.get_args(tp)
        return inner, next((e for e in extras if isinstance(e, str)), None)
    return tp, None


def _hints(cls: Any) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _describe(tp: Any) -> str:
    """``tp`` in words, for error messages."""
    tp, _ = _strip(tp)
    if tp in _SCALARS:
        return _SCALARS[tp][1]
    if _is_union(tp):
        return " or ".join(_describe(t) for t in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return "an array"
    if typing.get_origin(tp) is dict or typing.is_typeddict(tp) or dataclasses.is_dataclass(tp):
        return "an object"
    return "any value"


def _found(value: Any) -> str:
    """What ``value`` is, for error messages: its JSON type and a short repr."""
    kind = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")
    text = repr(value)
    return f"{kind} ({text[:37]}...)" if len(text) > 40 else f"{kind} ({text})"


def _matches(value: Any, tp: type) -> bool:
    """Whether ``value`` is of the JSON scalar type ``tp`` (bool is not a number)."""
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def check(value: Any, tp: Any, where: str) -> None:
    """Raise :class:`ContractError` unless ``value`` (parsed JSON) is of type ``tp``;
    ``where`` names it in the message (``alignment.stage2``)."""
    tp, _ = _strip(tp)
    if tp is Any:
        return
    if tp in _SCALARS:
        if not _matches(value, tp):
            raise ContractError(f"{where}: expected {_describe(tp)}, found {_found(value)}")
        return
    if _is_union(tp):
        errors = []
        for option in typing.get_args(tp):
            try:
                check(value, option, where)
                return
            except ContractError as exc:
                errors.append(exc)
        # one option is an object or array of the right kind: its own, more precise message
        deeper = [e for e, o in zip(errors, typing.get_args(tp))
                  if o not in _SCALARS and not str(e).startswith(f"{where}: expected")]
        if deeper:
            raise deeper[0]
        raise ContractError(f"{where}: expected {_describe(tp)}, found {_found(value)}")
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list:
        if not isinstance(value, list):
            raise ContractError(f"{where}: expected an array, found {_found(value)}")
        for i, item in enumerate(value):
            check(item, args[0], f"{where}[{i}]")
        return
    if origin is dict:
        if not isinstance(value, dict):
            raise ContractError(f"{where}: expected an object, found {_found(value)}")
        for key, item in value.items():
            check(item, args[1], f"{where}.{key}")
        return
    if typing.is_typeddict(tp):
        if not isinstance(value, dict):
            raise ContractError(f"{where}: expected an object, found {_found(value)}")
        missing = sorted(tp.__required_keys__ - value.keys())
        if missing:
            raise ContractError(f"{where} has no {missing[0]}")
        for key, hint in _hints(tp).items():
            if key in value:
                check(value[key], hint, f"{where}.{key}")
        return
    raise TypeError(f"no JSON contract for {tp!r}")


def load_fields(cls: Any, data: Any, what: str, rest: str = EXTRA) -> dict[str, Any]:
    """The keyword arguments of dataclass ``cls`` from the JSON object ``data``, checked
    against the field types; ``what`` names the file in messages (``result.json``). Keys the
    class does not declare go to its field named ``rest`` (else they are dropped)."""
    if not isinstance(data, dict):
        raise ContractError(f"{what} is not a JSON object (a {type(data).__name__})")
    hints = _hints(cls)
    declared = [f for f in dataclasses.fields(cls) if f.name != rest]
    out: dict[str, Any] = {}
    for f in declared:
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ContractError(f"{what} has no {f.name}")
            continue
        check(data[f.name], hints[f.name], f"{what}: {f.name}")
        out[f.name] = data[f.name]
    if any(f.name == rest for f in dataclasses.fields(cls)):
        names = {f.name for f in declared}
        out[rest] = {k: v for k, v in data.items() if k not in names}
    return out


def check_version(version: int, newest: int, what: str) -> None:
    """Raise :class:`ContractError` unless ``version`` (a file's ``schema_version``) is one
    this reader knows: 1 … ``newest``; ``what`` names the file in the message."""
    if version > newest:
        raise ContractError(f"{what} has schema version {version}, written by a newer "
                            f"exo2micro; this one reads up to {newest}")
    if version < 1:
        raise ContractError(f"{what} has schema version {version}; versions start at 1")


def _schema(tp: Any) -> dict[str, Any]:
    """The JSON Schema of one type."""
    tp, doc = _strip(tp)
    described: dict[str, Any] = {"description": doc} if doc else {}
    if tp is Any:
        return described
    if tp in _SCALARS:
        return {**described, "type": _SCALARS[tp][0]}
    if _is_union(tp):
        options = [_schema(t) for t in typing.get_args(tp)]
        if all(set(o) == {"type"} for o in options):
            return {**described, "type": [o["type"] for o in options]}
        return {**described, "anyOf": options}
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list:
        return {**described, "type": "array", "items": _schema(args[0])}
    if origin is dict:
        return {**described, "type": "object", "additionalProperties": _schema(args[1])}
    if typing.is_typeddict(tp):
        if not described and tp.__doc__:
            described = {"description": tp.__doc__.strip()}
        out = {**described, "type": "object",
               "properties": {k: _schema(h) for k, h in _hints(tp).items()}}
        if tp.__required_keys__:
            out["required"] = [k for k in _hints(tp) if k in tp.__required_keys__]
        return out
    raise TypeError(f"no JSON contract for {tp!r}")


def json_schema(cls: Any, title: str, description: str, rest: str = EXTRA) -> dict[str, Any]:
    """The JSON Schema (:data:`DIALECT`) of the files of dataclass ``cls``: its fields but
    ``rest`` (the undeclared keys, see :func:`load_fields`), in order, as properties; fields
    without a default are required."""
    hints = _hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.name != rest]
    return {
        "$schema": DIALECT, "title": title, "description": description, "type": "object",
        "properties": {f.name: _schema(hints[f.name]) for f in fields},
        "required": [f.name for f in fields if f.default is dataclasses.MISSING
                     and f.default_factory is dataclasses.MISSING],
    }


def format_json(value: Any, width: int = 96, indent: int = 0, lead: int = 0) -> str:
    """``value`` as JSON, indented by 2 per level, each value that fits in ``width`` columns
    on one line (``lead``: columns before it on its first line, a key): a schema that reads
    like a table."""
    flat = json.dumps(value, ensure_ascii=False)
    if indent + lead + len(flat) <= width or not isinstance(value, (dict, list)) or not value:
        return flat
    pad = " " * (indent + 2)
    if isinstance(value, dict):
        items = []
        for k, v in value.items():
            key = json.dumps(k, ensure_ascii=False) + ": "
            items.append(pad + key + format_json(v, width, indent + 2, len(key)))
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    items = [pad + format_json(v, width, indent + 2) for v in value]
    return "[\n" + ",\n".join(items) + "\n" + " " * indent + "]"
