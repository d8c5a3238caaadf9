"""The ingest pipeline: validate order, dedupe, redact, then hand over to the event sink.

receivers (WebSocket, NDJSON) -> ``Pipeline.ingest`` -> event sink (gateway/sinks.py; then acks)
                                                          '-> policy decisions -> audit log, approvals
embedded mode: sink = store writer + bus ``events.<env>.<agent>`` -> live hub, metrics
               (a JSON array of events per message)
scale mode:    sink = JetStream; workers store, and NATS feeds every gateway's live hub
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from clawtrace.bus import Bus
from clawtrace.gateway.redaction import Redactor
from clawtrace.gateway.sinks import EventSink, StoreSink
from clawtrace.gateway.writer import StoreWriter
from clawtrace.protocol import (
    EVENT_TYPES,
    PROCESS_STATES,
    Command,
    Error,
    ErrorCode,
    Event,
    Heartbeat,
    Lifecycle,
    Log,
    PolicyDecision,
    Thought,
    ToolCall,
    ToolResult,
    encode,
    utc_now,
)
from clawtrace.store import AgentEnvMismatch, AgentInfo, QuarantineRecord, Store, WriteBatch

log = logging.getLogger("clawtrace.gateway.pipeline")

_KIND_OF: dict[type, str] = {cls: kind for kind, cls in EVENT_TYPES.items()}


class AgentLink(Protocol):
    """What the pipeline needs of an agent's live connection."""

    async def replaced(self) -> None: ...

    async def send_command(self, data: bytes) -> None: ...


@dataclass(eq=False)
class AgentState:
    info: AgentInfo
    # Highest seq handed to the writer: anything at or below is a duplicate.
    accepted_seq: int
    link: AgentLink | None = None
    last_write: asyncio.Future[None] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass(slots=True)
class IngestResult:
    write: asyncio.Future[None] | None
    errors: list[Error]
    highest_seq: int
    accepted: int
    duplicates: int


@dataclass
class PipelineStats:
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0


class Pipeline:
    def __init__(
        self, store: Store, writer: StoreWriter, bus: Bus, redactor: Redactor, sink: EventSink | None = None
    ) -> None:
        self.store = store
        self.writer = writer
        self.bus = bus
        self.redactor = redactor
        # Accepted events go here; the store writer (embedded mode) unless told otherwise.
        self.sink: EventSink = sink if sink is not None else StoreSink(writer, bus)
        self.agents: dict[str, AgentState] = {}
        self.stats = PipelineStats()
        self._locks: dict[str, asyncio.Lock] = {}
        # Called with the new AgentInfo whenever an agent (re)connects, ...
        self.attach_listeners: list[Callable[[AgentInfo], None]] = []
        # ... and when it disconnects.
        self.detach_listeners: list[Callable[[str], None]] = []
        # Asked after every welcome for commands that bring the node agent up to date
        # (its environment's policy bundle, its role's desired release).
        self.welcome_commands: list[Callable[[AgentInfo], Command | None]] = []
        # Agents under quarantine (see gateway/commands.py): their welcome says so.
        self.quarantined: dict[str, QuarantineRecord] = {}
        # Takes the policy decisions of each accepted frame once they are stored
        # (gateway/policies.py: audit log, approvals); resolves when it is done with them.
        self.policy_sink: Callable[[AgentInfo, Sequence[PolicyDecision]], asyncio.Future[None]] | None = None
        # Scale mode: this gateway's name in the registry (agents.gateway) and among the gateways.
        self.gateway_id: str | None = None

    def _lock(self, agent: str) -> asyncio.Lock:
        lock = self._locks.get(agent)
        if lock is None:
            lock = self._locks[agent] = asyncio.Lock()
        return lock

    async def _settle(self, state: AgentState | None) -> None:
        """Wait until everything already accepted for an agent is written."""
        if state is not None and state.last_write is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(state.last_write)

    async def attach(self, info: AgentInfo, link: AgentLink) -> AgentState:
        """A node agent said hello: register it and return its state.

        A previous connection of the same agent is closed first, and its
        writes are allowed to finish, so the ``welcome`` ack is exact.
        Raises ``AgentEnvMismatch`` when the id belongs to another environment.
        """
        async with self._lock(info.agent):
            previous = self.agents.get(info.agent)
            if previous is not None and previous.link is not None and previous.link is not link:
                old_link, previous.link = previous.link, None
                await old_link.replaced()
            await self._settle(previous)
            gateway = self.gateway_id
            last_seq = await self.writer.call(
                lambda store: store.register_agent(info, time.time(), gateway=gateway)
            )
            # In scale mode the store lags JetStream, where the sink knows better.
            last_seq = max(last_seq, await self.sink.durable_seq(info))
            state = AgentState(info=info, accepted_seq=last_seq, link=link)
            self.agents[info.agent] = state
            for listener in self.attach_listeners:
                listener(info)
            return state

    async def detach(self, state: AgentState, link: AgentLink) -> None:
        if state.link is not link:
            return  # replaced by a newer connection, which owns the registry row now
        state.link = None
        agent = state.info.agent
        for listener in self.detach_listeners:
            listener(agent)
        gateway = self.gateway_id
        await self.writer.call(lambda store: store.mark_disconnected(agent, time.time(), gateway))

    async def agent_for_post(self, agent: str, env: str) -> AgentState:
        """The state of an agent that posts over HTTP instead of holding a socket."""
        async with self._lock(agent):
            state = self.agents.get(agent)
            if state is not None:
                if state.info.env != env:
                    raise AgentEnvMismatch(
                        f"agent {agent!r} is registered in environment {state.info.env!r}, not {env!r}"
                    )
                return state
            existing = await self.writer.call(lambda store: store.get_agent(agent))
            if existing is not None:
                info = AgentInfo(
                    agent, existing.env, existing.region, existing.labels, existing.release, existing.role
                )
            else:
                info = AgentInfo(agent, env, "", {}, None)
            if info.env != env:
                raise AgentEnvMismatch(
                    f"agent {agent!r} is registered in environment {info.env!r}, not {env!r}"
                )
            last_seq = await self.writer.call(
                lambda store: store.register_agent(info, time.time(), connected=False)
            )
            last_seq = max(last_seq, await self.sink.durable_seq(info))
            state = AgentState(info=info, accepted_seq=last_seq)
            self.agents[agent] = state
            return state

    def ingest(
        self, state: AgentState, events: list[Event], last_seen: int, frame: bytes | str | None = None
    ) -> IngestResult:
        """Accept events that follow ``last_seen`` on this connection.

        Events must arrive in increasing seq order per connection; seqs at or
        below what is already stored are duplicates (a resend after
        reconnect) and are dropped silently. The write future resolves once
        the accepted events are durable (committed, or acknowledged by
        JetStream in scale mode). ``frame``, the raw bytes the
        events came in, lets redaction skip frames that hold no secrets.
        """
        agent = state.info.agent
        received_at = utc_now()
        received = received_at.timestamp()
        batch = WriteBatch()
        errors: list[Error] = []
        lines: list[bytes] = []
        decisions: list[PolicyDecision] = []
        duplicates = 0
        redact = self.redactor.plan(frame)
        redacting = redact.active
        for event in events:
            seq = event.seq
            if seq <= last_seen:
                errors.append(
                    Error(
                        code=ErrorCode.SEQ_NOT_INCREASING,
                        message=f"seq {seq} is not above the previous seq {last_seen} on this connection",
                        seq=seq,
                    )
                )
                continue
            last_seen = seq
            if event.agent is not None and event.agent != agent:
                errors.append(
                    Error(
                        code=ErrorCode.INVALID_EVENT,
                        message=f"event names agent {event.agent!r} but this connection is agent {agent!r}",
                        seq=seq,
                    )
                )
                continue
            if seq <= state.accepted_seq:
                duplicates += 1
                continue
            state.accepted_seq = seq
            if not redacting:
                pass
            elif isinstance(event, Log):
                event.line = redact.text(event.line)
            elif isinstance(event, Thought):
                event.text = redact.text(event.text)
            elif isinstance(event, ToolCall):
                event.args = redact.value(event.args)
            elif isinstance(event, ToolResult):
                if event.error is not None:
                    event.error = redact.text(event.error)
                if event.output is not None:
                    event.output = redact.value(event.output)
            elif isinstance(event, PolicyDecision) and event.command is not None:
                # A denied `curl -H "Authorization: ..."` must not leak through the audit log.
                event.command = redact.text(event.command)
            event.agent = agent
            event.received = received_at
            if type(event) is PolicyDecision:
                decisions.append(event)
            data = encode(event)
            lines.append(data)
            heartbeat = None
            if isinstance(event, Heartbeat):
                heartbeat = (event.cpu_percent, event.rss_bytes)
                if event.release is not None and event.release != state.info.release:
                    self._release_changed(state, event.release)
            batch.add(
                (agent, seq, event.session, _KIND_OF[type(event)], event.ts.timestamp(), received, data),
                heartbeat=heartbeat,
                lifecycle=event.state
                if isinstance(event, Lifecycle) and event.state in PROCESS_STATES
                else None,
            )
        self.stats.duplicates += duplicates
        self.stats.rejected += len(errors)
        self.stats.accepted += len(lines)
        write: asyncio.Future[None] | None = None
        if lines:
            write = self.sink.submit(state.info, batch, lines)
            if decisions and self.policy_sink is not None:
                # The ack then also covers the decisions' audit entries.
                write = asyncio.ensure_future(self._audit_after(write, state.info, decisions))
            state.last_write = write
        return IngestResult(write, errors, last_seen, len(lines), duplicates)

    def _release_changed(self, state: AgentState, release: str) -> None:
        """A node agent now runs another release (a deploy took effect): the registry follows."""
        state.info = dataclasses.replace(state.info, release=release)
        agent = state.info.agent
        self.writer.call(lambda store: store.set_agent_release(agent, release)).add_done_callback(
            _log_failure
        )

    async def _audit_after(
        self, write: asyncio.Future[None], info: AgentInfo, decisions: list[PolicyDecision]
    ) -> None:
        # Only once the events are stored: a failed write is resent, and audited then.
        await write
        assert self.policy_sink is not None
        await self.policy_sink(info, decisions)

    async def send_command(self, agent: str, data: bytes) -> bool:
        state = self.agents.get(agent)
        if state is None or state.link is None:
            return False
        await state.link.send_command(data)
        return True


def _log_failure(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("recording an agent's release failed: %s", future.exception())
