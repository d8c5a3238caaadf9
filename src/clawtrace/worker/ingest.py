"""One shard's messages into the store, each (agent, seq) once, then on to metrics.

A worker owns all of an agent's events (its shard), so it keeps, per agent,
the highest seq it handed to the store: events above it are new. An event at
or below it is usually a resend (a reconnect, a republished frame) but may
fill a gap: a frame lost in a NATS reconnect while a later one got through,
then resent. For those the store itself is asked which seqs it has, so
nothing is dropped and nothing is stored or counted twice. Only new events
go on to the metrics stage (the in-process bus, as in embedded mode), as a
``DecodedPayload``: the stage takes the events as decoded here.

What the shards hand in within ``linger_seconds`` of each other is taken in
one pass and written in one transaction: every pass and every transaction
has a fixed cost (about 1 ms of CPU in all), which at 50 events per message
and one message per shard at a time was most of the worker's CPU per event.
Gateways ack node agents once JetStream has the events, so the linger only
delays storage, metrics and alerts, by at most that much.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from operator import itemgetter

import msgspec
from nats.aio.msg import Msg

from clawtrace.bus import Bus
from clawtrace.bus.layout import EventSubject, StreamLayout
from clawtrace.gateway.live import events_subject
from clawtrace.gateway.writer import StoreWriter
from clawtrace.metrics.agent import AnyMetricEvent
from clawtrace.metrics.stage import DecodedPayload
from clawtrace.store import AgentInfo, AgentRecord, EventQuery, WriteBatch
from clawtrace.worker.decode import DecodedMessage, decode_message

log = logging.getLogger("clawtrace.worker.ingest")

# The most seqs looked up in the store at once when checking a resend for gaps.
_MAX_GAP_QUERY = 100_000
# How long messages handed in wait for more (from any shard) to share their pass and transaction.
LINGER_SECONDS = 0.05
# A pass takes at most about this many bytes of messages (~8,000 events of ~250 bytes: the
# size of the store writer's transactions); this much waiting ends the linger at once.
PASS_MAX_BYTES = 2 << 20
# Passes at once: one can decode and queue its batch while the one before is being written.
_PASSES_IN_FLIGHT = 2


@dataclass
class _Agent:
    info: AgentInfo
    # Highest seq handed to the store writer: above it, an event is new.
    stored_seq: int


@dataclass(slots=True)
class _Waiting:
    msgs: list[Msg]
    done: asyncio.Future[None]
    size: int
    since: float


@dataclass(slots=True)
class _Fresh:
    """An agent's new events in a pass, for the metrics stage: their JSON and, unless one of
    them is of a kind the stage does not know (None), their decoded form."""

    lines: list[bytes]
    events: list[AnyMetricEvent] | None

    def add(self, lines: Iterable[bytes], events: list[AnyMetricEvent] | None) -> None:
        self.lines.extend(lines)
        if self.events is not None:
            if events is None:
                self.events = None
            else:
                self.events.extend(events)

    def payload(self) -> bytes:
        data = b"[" + b",".join(self.lines) + b"]"
        return data if self.events is None else DecodedPayload.of(data, self.events)


@dataclass
class IngestStats:
    messages: int = 0
    new_events: int = 0
    duplicates: int = 0
    # Resent events that were in fact missing from the store (a gap closed).
    gap_fills: int = 0
    undecodable: int = 0


class ShardIngest:
    """Shared by the shards a worker owns (an agent lives in exactly one of them)."""

    def __init__(
        self, layout: StreamLayout, writer: StoreWriter, bus: Bus, linger_seconds: float = LINGER_SECONDS
    ) -> None:
        self.layout = layout
        self.writer = writer
        self.bus = bus
        self.linger_seconds = linger_seconds
        self.agents: dict[str, _Agent] = {}
        self.stats = IngestStats()
        # Told when an agent's registry entry was (re)read (the metrics stage then re-reads it).
        self.on_agent_loaded: Callable[[str], None] | None = None
        # Calls waiting for a pass: their messages, future, bytes and when they came.
        self._waiting: deque[_Waiting] = deque()
        self._waiting_bytes = 0
        self._full = asyncio.Event()
        self._passes = asyncio.Semaphore(_PASSES_IN_FLIGHT)
        self._gatherer: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()

    def directory(self, agent: str) -> AgentInfo | None:
        """What the metrics stage asks about an agent it meets for the first time."""
        known = self.agents.get(agent)
        return None if known is None else known.info

    def forget(self, agents: Iterable[str]) -> None:
        """Drop what is cached about these agents (their shard went to another worker)."""
        for agent in agents:
            self.agents.pop(agent, None)

    def update_info(self, info: AgentInfo) -> bool:
        """What an agent's new hello said (environment, region, labels, release), if it is known
        here; whether it was. Its events keep going where the gateway publishes them."""
        known = self.agents.get(info.agent)
        if known is None:
            return False
        known.info = info
        return True

    async def ingest(self, msgs: list[Msg]) -> None:
        """Store the new events of ``msgs``; returns once committed, raises what the store raised.

        Messages that other shards hand in meanwhile go in the same pass. A
        caller that stops waiting (cancelled) before its pass starts has its
        messages left out. Retrying with the same messages after a failure is
        safe: what did not make it to the store is found missing and written then.
        """
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        size = sum(len(msg.data) for msg in msgs)
        self._waiting.append(_Waiting(msgs, done, size, time.monotonic()))
        self._waiting_bytes += size
        if self._waiting_bytes >= PASS_MAX_BYTES:
            self._full.set()
        if self._gatherer is None or self._gatherer.done():
            self._gatherer = asyncio.create_task(self._gather(), name="clawtrace-ingest-passes")
        await done

    async def _gather(self) -> None:
        """Start passes over what is waiting, each once it lingered (or enough waits), until none is."""
        while self._waiting:
            linger = self._waiting[0].since + self.linger_seconds - time.monotonic()
            if linger > 0 and self._waiting_bytes < PASS_MAX_BYTES:
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), linger)
            await self._passes.acquire()
            taken = self._take()
            if not taken:
                self._passes.release()
                continue
            task = asyncio.create_task(self._pass(taken))
            self._running.add(task)
            task.add_done_callback(self._pass_done)

    def _pass_done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._passes.release()

    def _take(self) -> list[_Waiting]:
        """The oldest waiting calls, about PASS_MAX_BYTES of them (at least one), whose callers still wait."""
        taken: list[_Waiting] = []
        size = 0
        while self._waiting and (not taken or size < PASS_MAX_BYTES):
            waiting = self._waiting.popleft()
            self._waiting_bytes -= waiting.size
            if not waiting.done.done():
                taken.append(waiting)
                size += waiting.size
        return taken

    async def _pass(self, taken: list[_Waiting]) -> None:
        try:
            await self._ingest([msg for waiting in taken for msg in waiting.msgs])
        except asyncio.CancelledError:
            for waiting in taken:
                waiting.done.cancel()
            raise
        except Exception as exc:
            for waiting in taken:
                if not waiting.done.done():
                    waiting.done.set_exception(exc)
        else:
            for waiting in taken:
                if not waiting.done.done():
                    waiting.done.set_result(None)

    async def _ingest(self, msgs: list[Msg]) -> None:
        batch = WriteBatch()
        fresh: dict[tuple[str, str], _Fresh] = {}
        in_batch: dict[str, set[int]] = {}
        now = time.time()
        decoded: list[tuple[EventSubject, DecodedMessage]] = []
        for msg in msgs:
            self.stats.messages += 1
            try:
                where = self.layout.parse(msg.subject)
                message = decode_message(where.agent, msg.data, now)
            except (ValueError, msgspec.DecodeError) as exc:
                # Not something a gateway published: nothing to store, nothing to retry.
                self.stats.undecodable += 1
                log.error("dropping an undecodable message on %s: %s", msg.subject, exc)
                continue
            if message is not None:
                decoded.append((where, message))
        await self._load_agents([where for where, _ in decoded])
        for where, message in decoded:
            known = self.agents[where.agent]
            taken = in_batch.setdefault(where.agent, set())
            new = fresh.get((known.info.env, where.agent))
            if new is None:
                new = fresh[(known.info.env, where.agent)] = _Fresh([], [])
            rows = message.rows
            if message.ascending and rows[0][1] > known.stored_seq:
                # All new (nothing in this pass is above what was handed to the writer).
                message.add_all_to(batch)
                taken.update(map(itemgetter(1), rows))
                new.add(map(itemgetter(6), rows), message.metric_events())
                known.stored_seq = rows[-1][1]
                continue
            resent = [row[1] for row in rows if row[1] <= known.stored_seq and row[1] not in taken]
            missing = await self._missing(where.agent, resent) if resent else set()
            accepted: list[int] = []
            for index, row in enumerate(rows):
                seq = row[1]
                if seq in taken or (seq <= known.stored_seq and seq not in missing):
                    self.stats.duplicates += 1
                    continue
                if seq <= known.stored_seq:
                    self.stats.gap_fills += 1
                taken.add(seq)
                heartbeat, lifecycle = message.extras(index)
                batch.add(row, heartbeat=heartbeat, lifecycle=lifecycle)
                accepted.append(index)
                known.stored_seq = max(known.stored_seq, seq)
            new.add((rows[index][6] for index in accepted), message.metric_events(accepted))
        if not batch.rows:
            return
        await self.writer.submit(batch)
        self.stats.new_events += len(batch.rows)
        for (env, agent), new in fresh.items():
            if new.lines:
                await self.bus.publish(events_subject(env, agent), new.payload())

    async def _load_agents(self, subjects: list[EventSubject]) -> None:
        """Read the registry entries of agents met for the first time (or in another environment),
        all in one trip to the writer thread: it is busy writing, and each trip waits its turn."""
        unknown: dict[str, EventSubject] = {}
        for where in subjects:
            known = self.agents.get(where.agent)
            if known is None or known.info.env != where.env:
                unknown[where.agent] = where
        if not unknown:
            return
        names = list(unknown)
        records = await self.writer.call(lambda store: [store.get_agent(name) for name in names])
        for name, record in zip(names, records, strict=True):
            self._loaded(unknown[name], record)

    def _loaded(self, where: EventSubject, record: AgentRecord | None) -> None:
        agent = where.agent
        known = self.agents.get(agent)
        if record is not None:
            labels = dict(record.labels)
            info = AgentInfo(agent, record.env, record.region, labels, record.release, record.role)
            stored = record.last_seq
        else:
            # Gateways register an agent before publishing its events; an agent only in the stream
            # (its registry row lost) still gets its events stored under the subject's names.
            info = AgentInfo(agent, where.env, where.region, {}, None)
            stored = 0
        if known is not None:
            stored = max(stored, known.stored_seq)
        self.agents[agent] = _Agent(info, stored)
        if self.on_agent_loaded is not None:
            self.on_agent_loaded(agent)

    async def _missing(self, agent: str, seqs: list[int]) -> set[int]:
        """Which of these seqs (all at or below what was handed to the writer) the store lacks.

        The query goes through the writer, after every write submitted before it.
        """
        low, high = min(seqs), max(seqs)
        query = EventQuery(agent=agent, after_seq=low - 1, limit=min(high - low + 1, _MAX_GAP_QUERY))
        stored = await self.writer.call(lambda store: {seq for seq, _ in store.query_events(query)})
        return {seq for seq in seqs if seq not in stored}
