"""One shard's messages into the store, each (agent, seq) once, then on to metrics.

A worker owns all of an agent's events (its shard), so it keeps, per agent,
the highest seq it handed to the store: events above it are new. An event at
or below it is usually a resend (a reconnect, a republished frame) but may
fill a gap: a frame lost in a NATS reconnect while a later one got through,
then resent. For those the store itself is asked which seqs it has, so
nothing is dropped and nothing is stored or counted twice. Only new events
go on to the metrics stage (the in-process bus, as in embedded mode).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import msgspec
from nats.aio.msg import Msg

from clawtrace.bus import Bus
from clawtrace.bus.layout import EventSubject, StreamLayout
from clawtrace.gateway.live import events_subject
from clawtrace.gateway.writer import StoreWriter
from clawtrace.store import AgentInfo, AgentRecord, EventQuery, WriteBatch
from clawtrace.worker.decode import StoredEvent, decode_message

log = logging.getLogger("clawtrace.worker.ingest")

# The most seqs looked up in the store at once when checking a resend for gaps.
_MAX_GAP_QUERY = 100_000


@dataclass
class _Agent:
    info: AgentInfo
    # Highest seq handed to the store writer: above it, an event is new.
    stored_seq: int


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

    def __init__(self, layout: StreamLayout, writer: StoreWriter, bus: Bus) -> None:
        self.layout = layout
        self.writer = writer
        self.bus = bus
        self.agents: dict[str, _Agent] = {}
        self.stats = IngestStats()
        # Told when an agent's registry entry was (re)read (the metrics stage then re-reads it).
        self.on_agent_loaded: Callable[[str], None] | None = None

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

        Retrying with the same messages after a failure is safe: what did not
        make it to the store is found missing and written then.
        """
        batch = WriteBatch()
        fresh: dict[tuple[str, str], list[bytes]] = {}
        in_batch: dict[str, set[int]] = {}
        now = time.time()
        decoded: list[tuple[EventSubject, list[StoredEvent]]] = []
        for msg in msgs:
            self.stats.messages += 1
            try:
                where = self.layout.parse(msg.subject)
                events = decode_message(where.agent, msg.data, now)
            except (ValueError, msgspec.DecodeError) as exc:
                # Not something a gateway published: nothing to store, nothing to retry.
                self.stats.undecodable += 1
                log.error("dropping an undecodable message on %s: %s", msg.subject, exc)
                continue
            if events:
                decoded.append((where, events))
        await self._load_agents([where for where, _ in decoded])
        for where, events in decoded:
            known = self.agents[where.agent]
            taken = in_batch.setdefault(where.agent, set())
            resent = [e.row[1] for e in events if e.row[1] <= known.stored_seq and e.row[1] not in taken]
            missing = await self._missing(where.agent, resent) if resent else set()
            lines = fresh.setdefault((known.info.env, where.agent), [])
            for event in events:
                seq = event.row[1]
                if seq in taken or (seq <= known.stored_seq and seq not in missing):
                    self.stats.duplicates += 1
                    continue
                if seq <= known.stored_seq:
                    self.stats.gap_fills += 1
                taken.add(seq)
                self._add(batch, event)
                lines.append(event.row[6])
                known.stored_seq = max(known.stored_seq, seq)
        if not batch.rows:
            return
        await self.writer.submit(batch)
        self.stats.new_events += len(batch.rows)
        for (env, agent), lines in fresh.items():
            if lines:
                await self.bus.publish(events_subject(env, agent), b"[" + b",".join(lines) + b"]")

    @staticmethod
    def _add(batch: WriteBatch, event: StoredEvent) -> None:
        batch.add(event.row, heartbeat=event.heartbeat, lifecycle=event.lifecycle)

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
