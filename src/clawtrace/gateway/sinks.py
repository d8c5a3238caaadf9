"""Where the pipeline hands accepted events, chosen once at startup.

Embedded mode: ``StoreSink``, the local store writer (the ack waits for the
commit) plus the in-process bus for live tail and metrics.
Scale mode: ``JetStreamSink``, the event stream (the ack waits for JetStream);
workers write the store, and every gateway's in-process bus is fed from NATS.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Protocol

from clawtrace.bus import Bus
from clawtrace.gateway.live import events_subject
from clawtrace.gateway.writer import StoreWriter
from clawtrace.store import AgentInfo, WriteBatch

if TYPE_CHECKING:
    # Only scale mode builds a JetStreamSink: nats-py is an optional dependency.
    from clawtrace.bus.publisher import FramePublisher

log = logging.getLogger("clawtrace.gateway.sinks")


class EventSink(Protocol):
    def submit(self, info: AgentInfo, batch: WriteBatch, lines: list[bytes]) -> asyncio.Future[None]:
        """Take one frame's accepted events (``batch`` rows and their JSON ``lines``, in seq
        order); the future resolves once they are durable, and only then are they acked."""
        ...

    async def durable_seq(self, info: AgentInfo) -> int:
        """The agent's highest seq this sink knows durable beyond what the store has (0: no more)."""
        ...


class StoreSink:
    def __init__(self, writer: StoreWriter, bus: Bus) -> None:
        self.writer = writer
        self.bus = bus
        self._fanout: set[asyncio.Task[None]] = set()

    def submit(self, info: AgentInfo, batch: WriteBatch, lines: list[bytes]) -> asyncio.Future[None]:
        write = self.writer.submit(batch)
        # Fan out at acceptance, in parallel with the store write, so live
        # latency does not include the commit. Should the write fail, the
        # agent resends and viewers may see those events twice (by seq).
        payload = b"[" + b",".join(lines) + b"]"
        task = asyncio.ensure_future(self.bus.publish(events_subject(info.env, info.agent), payload))
        self._fanout.add(task)
        task.add_done_callback(self._fanout.discard)
        return write

    async def durable_seq(self, info: AgentInfo) -> int:
        return 0  # the store is where events are durable: its own last_seq is exact


class JetStreamSink:
    def __init__(self, publisher: FramePublisher) -> None:
        self.publisher = publisher

    def submit(self, info: AgentInfo, batch: WriteBatch, lines: list[bytes]) -> asyncio.Future[None]:
        seqs = [row[1] for row in batch.rows]
        return self.publisher.publish(info.env, info.region, info.agent, lines, seqs)

    async def durable_seq(self, info: AgentInfo) -> int:
        # Workers write the store behind JetStream: what JetStream has is what the welcome may ack,
        # so a reconnecting agent does not resend (and the stream hold twice) what it already has.
        try:
            return await self.publisher.last_seq(info.env, info.region, info.agent)
        except Exception as exc:
            # Only costs resends, which workers drop by (agent, seq).
            log.warning("cannot read %s's last seq from JetStream (%s); using the store's", info.agent, exc)
            return 0
