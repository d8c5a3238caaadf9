"""OTLP values as plain Python: attributes, ids, timestamps."""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
# The protocol's identifiers (session, call_id, tool) are at most this long.
MAX_IDENTIFIER: Final = 200
MAX_INT: Final = 2**63 - 1

Attributes = Mapping[str, Any]


def any_value(value: AnyValue) -> Any:
    """An ``AnyValue`` as str / bool / int / float / list / dict / None (bytes as base64 text)."""
    which = value.WhichOneof("value")
    if which == "string_value":
        return value.string_value
    if which == "bool_value":
        return value.bool_value
    if which == "int_value":
        return value.int_value
    if which == "double_value":
        return value.double_value
    if which == "array_value":
        return [any_value(item) for item in value.array_value.values]
    if which == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    if which == "bytes_value":
        return base64.b64encode(value.bytes_value).decode("ascii")
    return None


def attributes(pairs: Iterable[KeyValue]) -> dict[str, Any]:
    return {pair.key: any_value(pair.value) for pair in pairs}


def text(attrs: Attributes, *keys: str) -> str | None:
    """The first of ``keys`` holding a non-empty string (numbers are written out)."""
    for key in keys:
        value = attrs.get(key)
        if isinstance(value, str):
            if value.strip():
                return value
        elif isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
    return None


def number(attrs: Attributes, *keys: str) -> float | None:
    """The first of ``keys`` holding a finite number (or a string of one)."""
    for key in keys:
        value = attrs.get(key)
        if isinstance(value, bool):
            continue
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                continue
        if isinstance(value, int | float) and math.isfinite(value):
            return float(value)
    return None


def count(attrs: Attributes, *keys: str) -> int:
    """A token count: the first of ``keys`` holding a number, as a non-negative int (0 without one).
    ``ValueError`` beyond a signed 64-bit integer (the protocol's integers)."""
    value = number(attrs, *keys)
    if value is None:
        return 0
    if value > MAX_INT:
        raise ValueError(f"{value:g} is not a token count")
    return max(0, int(value))


def hex_id(raw: bytes) -> str:
    """A trace or span id as OTLP JSON writes it; "" for an absent (all-zero) id."""
    return raw.hex() if any(raw) else ""


def timestamp(nanos: int) -> datetime | None:
    """Nanoseconds since the epoch as an aware datetime (microseconds); None for 0 (unset)."""
    if nanos <= 0:
        return None
    return _EPOCH + timedelta(microseconds=nanos // 1000)


def identifier(value: str) -> str:
    """A value cut to the protocol's identifier length."""
    return value[:MAX_IDENTIFIER]


def structured(value: Any) -> Any:
    """A JSON document held in a string attribute, decoded; anything else as it is."""
    if isinstance(value, str):
        stripped = value.strip()
        if stripped[:1] in ("{", "["):
            try:
                return json.loads(stripped)
            except (ValueError, RecursionError):
                return value
    return value
