"""The gateway's part in scale mode (``clawtrace up --bus nats://...``).

Accepted frames go to JetStream and are acked once JetStream has them
(``JetStreamSink``); workers store them and compute metrics and alerts. The
fleet's events come back from NATS into the gateway's in-process bus when
its metrics stage runs (live numbers for every agent, whichever gateway holds
its connection); otherwise each live-tail viewer gets just the subjects it
follows. Commands reach an agent through whichever gateway holds it (a
NATS subject per agent), and quarantines set on one gateway are known to all.
Imported only in scale mode: nats-py is an optional dependency.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

import msgspec

from clawtrace.bus import Bus, Subscription
from clawtrace.bus.commands import CommandListener, CommandSender
from clawtrace.bus.publisher import FramePublisher
from clawtrace.bus.scale import EventStreamLink
from clawtrace.gateway.commands import CommandService
from clawtrace.gateway.live import Viewer, ViewerDelivery, events_subject
from clawtrace.gateway.pipeline import Pipeline
from clawtrace.gateway.settings import GatewaySettings
from clawtrace.gateway.sinks import EventSink, JetStreamSink
from clawtrace.store import AgentInfo, QuarantineRecord

log = logging.getLogger("clawtrace.gateway.scale")


class QuarantineNews(msgspec.Struct):
    agent: str
    record: QuarantineRecord | None  # None: lifted


class ScaleMode:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.link: EventStreamLink | None = None
        self.publisher: FramePublisher | None = None
        self._subscriptions: list[Subscription] = []
        self._listener: CommandListener | None = None
        # (agent, listen?) in the order connections came and went, applied by one task.
        self._routes: asyncio.Queue[tuple[str, bool]] = asyncio.Queue()
        self._router: asyncio.Task[None] | None = None

    async def start(self) -> EventSink:
        """Connect to NATS and the event stream; a BusError saying what to do if that fails."""
        name = f"clawtrace-gateway {socket.gethostname()}:{self.settings.port}"
        self.link = await EventStreamLink.open(self.settings.bus, name)
        self.publisher = self.link.publisher()
        self.publisher.start()
        return JetStreamSink(self.publisher)

    async def follow(self, viewer: Viewer, deliver: ViewerDelivery) -> Subscription:
        """``RemoteFeed`` of the live hub: a viewer's events from NATS, the fewest subjects that hold them."""
        assert self.link is not None
        layout = self.link.layout
        if viewer.agent is not None:
            pattern = layout.agent_subjects(viewer.agent, viewer.env or "*")
        elif viewer.env is not None:
            pattern = layout.env_subjects(viewer.env)
        else:
            pattern = layout.all_subjects
        return await self.link.follow(pattern, deliver)

    async def mirror_into(self, bus: Bus) -> None:
        """Once the in-process stages listen: NATS feeds them every gateway's events."""
        assert self.link is not None
        self._subscriptions.append(await self.link.mirror_events(bus, events_subject))

    async def route_commands(self, pipeline: Pipeline, commands: CommandService) -> None:
        """Commands for agents held elsewhere go there; commands for agents held here come here."""
        assert self.link is not None
        link = self.link
        self._listener = CommandListener(link.nats.client, link.layout, pipeline.send_command)
        commands.remote = CommandSender(link.nats.client, link.layout).send

        async def announce(agent: str, record: QuarantineRecord | None) -> None:
            await link.nats.publish(
                link.layout.quarantine_subject, msgspec.json.encode(QuarantineNews(agent, record))
            )

        def heard(_subject: str, data: bytes) -> None:
            news = msgspec.json.decode(data, type=QuarantineNews)
            if news.record is None:
                pipeline.quarantined.pop(news.agent, None)
            else:
                pipeline.quarantined[news.agent] = news.record

        commands.on_quarantine = announce
        self._subscriptions.append(await link.nats.subscribe(link.layout.quarantine_subject, heard))
        pipeline.attach_listeners.append(self._attached)
        pipeline.detach_listeners.append(self._detached)
        self._router = asyncio.create_task(self._apply_routes(), name="clawtrace-command-routes")

    def _attached(self, info: AgentInfo) -> None:
        self._routes.put_nowait((info.agent, True))

    def _detached(self, agent: str) -> None:
        self._routes.put_nowait((agent, False))

    async def _apply_routes(self) -> None:
        assert self._listener is not None
        while True:
            agent, listen = await self._routes.get()
            try:
                if listen:
                    await self._listener.listen(agent)
                else:
                    await self._listener.stop_listening(agent)
            except Exception as exc:
                log.warning("command route for %s not %s: %s", agent, "set" if listen else "removed", exc)

    async def close(self) -> None:
        if self._router is not None:
            self._router.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._router
        if self._listener is not None:
            await self._listener.close()
        for subscription in self._subscriptions:
            await subscription.unsubscribe()
        if self.publisher is not None:
            # Frames still in flight get their acks if JetStream answers in time.
            await self.publisher.close()
        if self.link is not None:
            await self.link.close()
