"""A scale-mode bus URL: the NATS server, plus how the event stream is laid out and published to.

    nats://HOST:PORT[?stream=CLAWTRACE_EVENTS&prefix=ct.events&shards=16&...]

Everything about the bus travels in its URL (as a store URL carries its own
options), so ``clawtrace up --bus`` and ``clawtrace worker --bus`` agree by
being given the same string. Query parameters, all optional:

- ``stream``, ``prefix``, ``shards``: the stream's name, its subject prefix and,
  when the stream is created, its shard count (an existing stream keeps its own);
- ``max_age_hours``, ``replicas``, ``duplicate_window_seconds``: the stream's
  retention, replication and duplicate window, when it is created;
- ``max_in_flight``: JetStream publish acks a gateway waits for at once;
- ``ack_timeout_seconds``: how long a gateway waits for them before giving up on a frame.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from clawtrace.bus.errors import BusError
from clawtrace.bus.layout import StreamLayout

DEFAULT_MAX_IN_FLIGHT = 4000
DEFAULT_ACK_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class NatsTarget:
    server: str
    layout: StreamLayout = field(default_factory=StreamLayout)
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    ack_timeout_seconds: float = DEFAULT_ACK_TIMEOUT


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError("must be 1 or more")
    return number


def _positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise ValueError("must be above 0")
    return number


def _token(value: str) -> str:
    if not value or any(c in value for c in " *>\t"):
        raise ValueError("must be non-empty, without spaces, * or >")
    return value


# parameter -> (parser, which field of what it sets)
_PARAMETERS: dict[str, tuple[Callable[[str], Any], str, str]] = {
    "stream": (_token, "layout", "name"),
    "prefix": (_token, "layout", "prefix"),
    "shards": (_positive_int, "layout", "shards"),
    "max_age_hours": (_positive_float, "layout", "max_age_seconds"),
    "replicas": (_positive_int, "layout", "replicas"),
    "duplicate_window_seconds": (_positive_float, "layout", "duplicate_window_seconds"),
    "max_in_flight": (_positive_int, "target", "max_in_flight"),
    "ack_timeout_seconds": (_positive_float, "target", "ack_timeout_seconds"),
}


def parse_bus_url(url: str) -> NatsTarget:
    """The server and options of a ``nats://`` bus URL; a BusError saying what is wrong otherwise."""
    parts = urlsplit(url)
    layout_fields: dict[str, Any] = {}
    target_fields: dict[str, Any] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        known = _PARAMETERS.get(key)
        if known is None:
            raise BusError(
                f"bus URL {url!r}: unknown parameter {key!r}; known: {', '.join(sorted(_PARAMETERS))}"
            )
        parser, owner, name = known
        try:
            parsed = parser(value)
        except ValueError as exc:
            raise BusError(f"bus URL {url!r}: {key}={value!r}: {exc}") from None
        if key == "max_age_hours":
            parsed *= 3600.0
        (layout_fields if owner == "layout" else target_fields)[name] = parsed
    server = urlunsplit(parts._replace(query="", fragment=""))
    return NatsTarget(server=server, layout=replace(StreamLayout(), **layout_fields), **target_fields)
