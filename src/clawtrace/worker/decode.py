"""A JetStream event message (a JSON array of one agent's events) back into store rows.

One decode gives both what the store needs of each event and what the
metrics stage reads (its own event types, with the row's fields added), so
the stage need not decode the events again; a second, raw decode gives each
event's JSON as stored. One pass of Python over the events then builds the
rows and what the store bookkeeps per agent and session (``WriteBatch``'s
agents and sessions), so that a message whose events are all new (the usual
case: gateways publish an agent's frames in seq order) joins a batch without
any more work per event.
"""

from __future__ import annotations

from datetime import datetime
from itertools import repeat

import msgspec

from clawtrace.metrics.agent import (
    AnyMetricEvent,
    MHeartbeat,
    MLifecycle,
    MLlmCall,
    MLog,
    MPolicy,
    MThought,
    MToolCall,
    MToolResult,
)
from clawtrace.protocol import PROCESS_STATES
from clawtrace.store import EventRow, WriteBatch
from clawtrace.store.base import AgentProgress, SessionProgress

# Each event kind as the metrics stage reads it, plus what a row needs besides (gc=False: these
# hold no containers, so the cyclic collector need not track the thousands alive in a pass).


class _LogRow(MLog, tag="log", kw_only=True, gc=False):
    session: str
    received: datetime | None = None


class _ThoughtRow(MThought, tag="thought", kw_only=True, gc=False):
    session: str
    received: datetime | None = None


class _LlmCallRow(MLlmCall, tag="llm_call", kw_only=True, gc=False):
    session: str
    received: datetime | None = None


class _ToolCallRow(MToolCall, tag="tool_call", kw_only=True, gc=False):
    session: str
    received: datetime | None = None


class _ToolResultRow(MToolResult, tag="tool_result", kw_only=True, gc=False):
    session: str
    received: datetime | None = None


class _HeartbeatRow(MHeartbeat, tag="heartbeat", kw_only=True, gc=False):
    session: str
    received: datetime | None = None


class _LifecycleRow(MLifecycle, tag="lifecycle", kw_only=True, gc=False):
    session: str
    received: datetime | None = None


class _PolicyRow(MPolicy, tag="policy", kw_only=True, gc=False):
    session: str
    received: datetime | None = None


_Row = (
    _LogRow
    | _ThoughtRow
    | _LlmCallRow
    | _ToolCallRow
    | _ToolResultRow
    | _HeartbeatRow
    | _LifecycleRow
    | _PolicyRow
)
_KIND: dict[type, str] = {
    cls: str(cls.__struct_config__.tag)
    for cls in (
        _LogRow,
        _ThoughtRow,
        _LlmCallRow,
        _ToolCallRow,
        _ToolResultRow,
        _HeartbeatRow,
        _LifecycleRow,
        _PolicyRow,
    )
}


class _Stored(msgspec.Struct, gc=False):
    """What a row needs of an event of any kind: for a kind the metrics stage does not know."""

    seq: int
    ts: datetime
    session: str
    kind: str
    received: datetime | None = None
    cpu_percent: float | None = None
    rss_bytes: int | None = None
    state: str | None = None


_HEARTBEATS = (_HeartbeatRow, _Stored)
_LIFECYCLES = (_LifecycleRow, _Stored)
_typed = msgspec.json.Decoder(list[_Row])
_fields = msgspec.json.Decoder(list[_Stored])
_raw = msgspec.json.Decoder(list[msgspec.Raw])

Heartbeat = tuple[float | None, int | None]


class DecodedMessage:
    """One message's events as rows, in the message's order, with their bookkeeping."""

    __slots__ = ("_events", "ascending", "heartbeat", "last_event", "lifecycle", "rows", "sessions")

    def __init__(
        self,
        rows: list[EventRow],
        events: list[_Row] | list[_Stored],
        ascending: bool,
        sessions: dict[str, SessionProgress],
        last_event: float,
        heartbeat: tuple[float, Heartbeat] | None,
        lifecycle: str | None,
    ) -> None:
        self.rows = rows
        self._events = events
        # Seqs strictly increasing through the message.
        self.ascending = ascending
        # For all the rows: each session's progress, the last receive time, the last heartbeat
        # (its receive time and figures) and the last process state.
        self.sessions = sessions
        self.last_event = last_event
        self.heartbeat = heartbeat
        self.lifecycle = lifecycle

    def metric_events(self, indexes: list[int] | None = None) -> list[AnyMetricEvent] | None:
        """The events (all, or those at ``indexes``) as the metrics stage reads them; None if
        one is of a kind the stage does not know (it then decodes and counts the failure itself)."""
        events = self._events
        if events and isinstance(events[0], _Stored):
            return None
        typed: list[AnyMetricEvent] = events  # type: ignore[assignment]
        return typed if indexes is None else [typed[index] for index in indexes]

    def extras(self, index: int) -> tuple[Heartbeat | None, str | None]:
        """Row ``index``'s heartbeat figures and process state, as ``WriteBatch.add`` takes them."""
        event = self._events[index]
        kind = self.rows[index][3]
        if kind == "heartbeat" and isinstance(event, _HEARTBEATS):
            return (event.cpu_percent, event.rss_bytes), None
        if (
            kind == "lifecycle"
            and isinstance(event, _LifecycleRow | _Stored)
            and event.state in PROCESS_STATES
        ):
            return None, event.state
        return None, None

    def add_all_to(self, batch: WriteBatch) -> None:
        """Every row into ``batch``: what ``batch.add`` row by row would do, at the cost of a merge."""
        rows = self.rows
        agent = rows[0][0]
        last_seq = rows[-1][1] if self.ascending else max(row[1] for row in rows)
        progress = AgentProgress(last_seq=last_seq, last_event=self.last_event, lifecycle=self.lifecycle)
        if self.heartbeat is not None:
            progress.last_heartbeat, (progress.cpu_percent, progress.rss_bytes) = self.heartbeat
        sessions = {(agent, session): session_progress for session, session_progress in self.sessions.items()}
        batch.merge(WriteBatch(rows, {agent: progress}, sessions))


def decode_message(agent: str, data: bytes, fallback_received: float) -> DecodedMessage | None:
    """The events of one message as rows (None if it holds none).

    Raises msgspec.DecodeError (or ValueError) for a message that is not what gateways publish.
    """
    raws = _raw.decode(data)
    events: list[_Row] | list[_Stored]
    try:
        events = _typed.decode(data)
    except msgspec.ValidationError:
        # A kind (or a field) the metrics stage does not know: stored all the same.
        events = _fields.decode(data)
    if not events:
        return None
    # Column by column, then zipped into rows: list comprehensions and builtins rather than
    # a Python loop doing everything per event.
    seqs = [event.seq for event in events]
    stamps = [event.ts.timestamp() for event in events]
    received = [
        fallback_received if event.received is None else event.received.timestamp() for event in events
    ]
    sessions_of = [event.session for event in events]
    kinds: list[str]
    if isinstance(events[0], _Stored):
        kinds = [event.kind for event in events]
    else:
        kinds = list(map(_KIND.__getitem__, map(type, events)))
    rows: list[EventRow] = list(
        zip(repeat(agent), seqs, sessions_of, kinds, stamps, received, map(bytes, raws), strict=False)
    )
    if len(rows) != len(raws):
        raise ValueError("the raw and the decoded events differ in number")
    ascending = len(set(seqs)) == len(seqs) and seqs == sorted(seqs)
    sessions: dict[str, SessionProgress] = {}
    if len(set(sessions_of)) == 1:
        sessions[sessions_of[0]] = SessionProgress(min(seqs), max(seqs), min(stamps), max(stamps), len(seqs))
    else:
        for seq, session, ts in zip(seqs, sessions_of, stamps, strict=True):
            progress = sessions.get(session)
            if progress is None:
                sessions[session] = SessionProgress(seq, seq, ts, ts, 1)
            else:
                progress.first_seq = min(progress.first_seq, seq)
                progress.last_seq = max(progress.last_seq, seq)
                progress.started = min(progress.started, ts)
                progress.last_ts = max(progress.last_ts, ts)
                progress.events += 1
    heartbeat: tuple[float, Heartbeat] | None = None
    if "heartbeat" in kinds:
        index = len(kinds) - 1 - kinds[::-1].index("heartbeat")
        event = events[index]
        if isinstance(event, _HEARTBEATS):
            heartbeat = (received[index], (event.cpu_percent, event.rss_bytes))
    lifecycle: str | None = None
    if "lifecycle" in kinds:
        for index in range(len(kinds) - 1, -1, -1):
            event = events[index]
            if (
                kinds[index] == "lifecycle"
                and isinstance(event, _LIFECYCLES)
                and event.state in PROCESS_STATES
            ):
                lifecycle = event.state
                break
    last_event = max(received)
    return DecodedMessage(rows, events, ascending, sessions, last_event, heartbeat, lifecycle)
