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
from clawtrace.bus.errors import BusError
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
    """Publishes an agent's frames one after the other: each once JetStream has the one before.

    The welcome acks up to the agent's last message in the stream, so the
    stream must never hold a frame above one it lacks. Pipelined, it could:
    a frame written to NATS just before the server died is lost, the next
    one waits in the client's reconnect buffer and lands after the restart,
    the first one's ack times out and the agent, welcomed back with the second
    one's seq, drops the first from its spool. So a frame goes out only once
    the agent's previous frame is acknowledged; once one failed, the agent's
    later frames fail too (without being published) until its next welcome
    (``durable_seq``), from which it resends them all.
    """

    def __init__(self, publisher: FramePublisher) -> None:
        self.publisher = publisher
        # Each agent's last submitted frame (kept while pending, or after it failed).
        self._last: dict[str, asyncio.Future[None]] = {}

    def submit(self, info: AgentInfo, batch: WriteBatch, lines: list[bytes]) -> asyncio.Future[None]:
        agent = info.agent
        seqs = [row[1] for row in batch.rows]
        previous = self._last.get(agent)
        if previous is None:
            done = self.publisher.publish(info.env, info.region, agent, lines, seqs)
        else:
            done = asyncio.get_running_loop().create_future()

            def after_previous(previous: asyncio.Future[None]) -> None:
                if done.done():
                    return
                if previous.cancelled() or previous.exception() is not None:
                    done.set_exception(
                        BusError(
                            f"an earlier frame of agent {agent!r} was not acknowledged by JetStream;"
                            " resend after the last ack"
                        )
                    )
                    return
                published = self.publisher.publish(info.env, info.region, agent, lines, seqs)
                published.add_done_callback(lambda _: _copy_outcome(published, done))

            previous.add_done_callback(after_previous)
        self._last[agent] = done
        done.add_done_callback(lambda _: self._settled(agent, done))
        return done

    def _settled(self, agent: str, done: asyncio.Future[None]) -> None:
        # A failed frame stays, so that the agent's later frames on this connection fail too.
        if self._last.get(agent) is done and not done.cancelled() and done.exception() is None:
            del self._last[agent]

    async def durable_seq(self, info: AgentInfo) -> int:
        # A new welcome: the agent resends from here, whatever failed before.
        self._last.pop(info.agent, None)
        # Workers write the store behind JetStream: what JetStream has is what the welcome may ack,
        # so a reconnecting agent does not resend (and the stream hold twice) what it already has.
        try:
            return await self.publisher.last_seq(info.env, info.region, info.agent)
        except Exception as exc:
            # Only costs resends, which workers drop by (agent, seq).
            log.warning(
                "cannot read %s's last seq from JetStream (%s: %s); using the store's",
                info.agent,
                type(exc).__name__,
                exc,
            )
            return 0


def _copy_outcome(source: asyncio.Future[None], target: asyncio.Future[None]) -> None:
    if target.done():
        return
    if source.cancelled():
        target.cancel()
    elif (error := source.exception()) is not None:
        target.set_exception(error)
    else:
        target.set_result(None)
