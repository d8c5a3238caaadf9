"""The gateway's part in scale mode (``clawtrace up --bus nats://...``).

Accepted frames go to JetStream and are acked once JetStream has them
(``JetStreamSink``); workers store them and compute metrics and alerts. The
fleet's events come back from NATS into the gateway's in-process bus when
its metrics stage runs (live numbers for every agent, whichever gateway holds
its connection); otherwise each live-tail viewer gets just the subjects it
follows. Commands reach an agent through whichever gateway holds it (a
NATS subject per agent), and quarantines set on one gateway are known to all.
Agents connecting and disconnecting here are announced to the worker that
evaluates their alerts (``<control>.presence.<shard>``), and the alerts API's
acknowledgements and silences to every worker (``<control>.alerts``); see
bus/control.py. Imported only in scale mode: nats-py is an optional dependency.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import time

from clawtrace.bus import Bus, Subscription
from clawtrace.bus.commands import CommandListener, CommandSender
from clawtrace.bus.control import AlertNotice, PresenceNews, QuarantineNews, decode_quarantine, encode
from clawtrace.bus.layout import shard_of
from clawtrace.bus.publisher import FramePublisher
from clawtrace.bus.scale import EventStreamLink
from clawtrace.gateway.alerting import SharedAlerts
from clawtrace.gateway.commands import CommandService
from clawtrace.gateway.live import Viewer, ViewerDelivery, events_subject
from clawtrace.gateway.pipeline import Pipeline
from clawtrace.gateway.settings import GatewaySettings
from clawtrace.gateway.sinks import EventSink, JetStreamSink
from clawtrace.gateway.writer import StoreWriter
from clawtrace.store import AgentInfo, QuarantineRecord, Store

log = logging.getLogger("clawtrace.gateway.scale")

__all__ = ["QuarantineNews", "ScaleMode"]


class ScaleMode:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.link: EventStreamLink | None = None
        self.publisher: FramePublisher | None = None
        self._subscriptions: list[Subscription] = []
        self._listener: CommandListener | None = None
        # (agent, its hello if it connected else None, connection) in the order connections came
        # and went, applied (command routes) and announced (presence) by one task.
        self._routes: asyncio.Queue[tuple[str, AgentInfo | None, str]] = asyncio.Queue()
        self._router: asyncio.Task[None] | None = None
        # The connection id of each agent connected here.
        self._connections: dict[str, str] = {}

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
            await link.nats.publish(link.layout.quarantine_subject, encode(QuarantineNews(agent, record)))

        def heard(_subject: str, data: bytes) -> None:
            news = decode_quarantine(data)
            if news.record is None:
                pipeline.quarantined.pop(news.agent, None)
            else:
                pipeline.quarantined[news.agent] = news.record

        commands.on_quarantine = announce
        self._subscriptions.append(await link.nats.subscribe(link.layout.quarantine_subject, heard))
        pipeline.attach_listeners.append(self._attached)
        pipeline.detach_listeners.append(self._detached)
        self._router = asyncio.create_task(self._apply_routes(), name="clawtrace-command-routes")

    def shared_alerts(self, settings: GatewaySettings, store: Store, writer: StoreWriter) -> SharedAlerts:
        """The alerts API's view in scale mode: the store, and notices to the workers."""
        assert self.link is not None
        link = self.link

        async def announce(notice: AlertNotice) -> None:
            await link.nats.publish(link.layout.alerts_subject, encode(notice))
            # Out before the API answers: whoever acts next finds the workers told.
            await link.nats.client.flush(timeout=5)

        return SharedAlerts(settings, store, writer, announce)

    def _attached(self, info: AgentInfo) -> None:
        connection = f"{socket.gethostname()}:{self.settings.port}/{secrets.token_hex(6)}"
        self._connections[info.agent] = connection
        self._routes.put_nowait((info.agent, info, connection))

    def _detached(self, agent: str) -> None:
        connection = self._connections.pop(agent, "")
        self._routes.put_nowait((agent, None, connection))

    async def _apply_routes(self) -> None:
        assert self._listener is not None
        while True:
            agent, info, connection = await self._routes.get()
            listen = info is not None
            try:
                if listen:
                    await self._listener.listen(agent)
                else:
                    await self._listener.stop_listening(agent)
            except Exception as exc:
                log.warning("command route for %s not %s: %s", agent, "set" if listen else "removed", exc)
            try:
                await self._announce_presence(agent, info, connection)
            except Exception as exc:
                log.warning("presence of %s not announced: %s", agent, exc)

    async def _announce_presence(self, agent: str, info: AgentInfo | None, connection: str) -> None:
        """Tell the worker evaluating the agent's alerts (dead node) that it came or went."""
        assert self.link is not None
        layout = self.link.layout
        news = PresenceNews(agent=agent, connected=info is not None, connection=connection, at=time.time())
        if info is not None:
            news.env, news.region, news.labels = info.env, info.region, dict(info.labels)
            news.release, news.role = info.release, info.role
        await self.link.nats.publish(layout.presence_subject(shard_of(agent, layout.shards)), encode(news))

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
