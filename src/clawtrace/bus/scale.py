"""A scale-mode process's handle on NATS: the connection, JetStream, and the event stream.

Gateways publish accepted frames through it (``publisher``) and mirror the
fleet's events into their in-process bus (``mirror_events``: live tail and
live numbers for any agent, whichever gateway holds its connection);
workers consume the stream's shards through it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from nats.js import JetStreamContext

from clawtrace.bus.base import Bus, Subscription
from clawtrace.bus.layout import StreamLayout, ensure_stream
from clawtrace.bus.nats import NatsBus
from clawtrace.bus.publisher import FramePublisher
from clawtrace.bus.url import NatsTarget, parse_bus_url

log = logging.getLogger("clawtrace.bus.scale")


@dataclass
class EventStreamLink:
    nats: NatsBus
    js: JetStreamContext
    layout: StreamLayout
    target: NatsTarget

    @classmethod
    async def open(cls, url: str, name: str) -> EventStreamLink:
        """Connect, check JetStream, create or adopt the stream; a BusError saying what to do otherwise."""
        target = parse_bus_url(url)
        nats = NatsBus(target.server, name=name)
        await nats.start()
        try:
            await nats.require_jetstream()
            js = nats.jetstream(max_in_flight=target.max_in_flight)
            layout = await ensure_stream(js, target.layout)
        except BaseException:
            await nats.close()
            raise
        if layout.shards != target.layout.shards:
            log.info(
                "stream %s has %d shards (kept; the URL asked for %d)",
                layout.name,
                layout.shards,
                target.layout.shards,
            )
        return cls(nats, js, layout, target)

    def publisher(self) -> FramePublisher:
        return FramePublisher(
            self.js, self.layout, self.nats.client.max_payload, ack_timeout=self.target.ack_timeout_seconds
        )

    async def mirror_events(self, local: Bus, local_subject: Callable[[str, str], str]) -> Subscription:
        """Re-publish every event of the stream on ``local``, as ``local_subject(env, agent)``.

        Core NATS: what gateways publish reaches here as they publish it,
        without waiting for JetStream (and a frame republished after a
        failure may arrive twice, as live events may in embedded mode).
        """
        layout = self.layout

        async def forward(subject: str, data: bytes) -> None:
            try:
                where = layout.parse(subject)
            except ValueError:
                log.warning("ignoring a message on %s: not an event subject", subject)
                return
            await local.publish(local_subject(where.env, where.agent), data)

        return await self.nats.subscribe(layout.all_subjects, forward)

    async def follow(self, pattern: str, deliver: Callable[[str, str, bytes], None]) -> Subscription:
        """Deliver the events of the stream's subjects matching ``pattern`` as (env, agent, data)."""
        layout = self.layout

        def forward(subject: str, data: bytes) -> None:
            try:
                where = layout.parse(subject)
            except ValueError:
                return
            deliver(where.env, where.agent, data)

        return await self.nats.subscribe(pattern, forward)

    async def close(self) -> None:
        await self.nats.close()
