"""A JetStream event message (a JSON array of one agent's events) back into store rows."""

from __future__ import annotations

from datetime import datetime

import msgspec

from clawtrace.protocol import PROCESS_STATES
from clawtrace.store import EventRow


class _Stored(msgspec.Struct):
    """What a row needs of an event, whatever its kind (the rest stays in its JSON)."""

    seq: int
    ts: datetime
    session: str
    kind: str
    received: datetime | None = None
    cpu_percent: float | None = None
    rss_bytes: int | None = None
    state: str | None = None


_fields = msgspec.json.Decoder(list[_Stored])
_raw = msgspec.json.Decoder(list[msgspec.Raw])


class StoredEvent(msgspec.Struct, array_like=True):
    row: EventRow
    heartbeat: tuple[float | None, int | None] | None
    lifecycle: str | None


def decode_message(agent: str, data: bytes, fallback_received: float) -> list[StoredEvent]:
    """The events of one message as rows, in the message's (ascending seq) order.

    Raises msgspec.DecodeError for a message that is not what gateways publish.
    """
    fields = _fields.decode(data)
    raws = _raw.decode(data)
    out: list[StoredEvent] = []
    for event, raw in zip(fields, raws, strict=True):
        received = event.received.timestamp() if event.received is not None else fallback_received
        row = (agent, event.seq, event.session, event.kind, event.ts.timestamp(), received, bytes(raw))
        heartbeat = (event.cpu_percent, event.rss_bytes) if event.kind == "heartbeat" else None
        lifecycle = event.state if event.kind == "lifecycle" and event.state in PROCESS_STATES else None
        out.append(StoredEvent(row, heartbeat, lifecycle))
    return out
