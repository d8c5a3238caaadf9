"""Commands to node agents across gateways: a core NATS subject per agent, request/reply.

The gateway holding an agent's connection listens on the agent's command
subject and answers whether it handed the command over; whoever sends
(another gateway's API, a worker's remediation) learns at once when no
gateway holds the agent (NATS answers "no responders").
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from clawtrace.bus.layout import StreamLayout

log = logging.getLogger("clawtrace.bus.commands")

DELIVERED = b"delivered"
NOT_HERE = b""


class CommandSender:
    def __init__(self, client: NatsClient, layout: StreamLayout, timeout: float = 5.0) -> None:
        self.client = client
        self.layout = layout
        self.timeout = timeout

    async def send(self, agent: str, data: bytes) -> bool:
        """Whether a gateway handed ``data`` (an encoded Command) to the agent's connection."""
        try:
            reply = await self.client.request(self.layout.command_subject(agent), data, timeout=self.timeout)
        except nats.errors.NoRespondersError:
            return False  # no gateway holds the agent
        except (nats.errors.TimeoutError, TimeoutError, nats.errors.ConnectionClosedError) as exc:
            log.warning("command for %s: no gateway answered (%s)", agent, type(exc).__name__)
            return False
        return reply.data == DELIVERED


class CommandListener:
    """A gateway's listening posts: one subscription per agent whose connection it holds."""

    def __init__(
        self,
        client: NatsClient,
        layout: StreamLayout,
        deliver: Callable[[str, bytes], Awaitable[bool]],
    ) -> None:
        self.client = client
        self.layout = layout
        self.deliver = deliver
        self._subscriptions: dict[str, Subscription] = {}

    async def listen(self, agent: str) -> None:
        if agent in self._subscriptions:
            return

        async def on_command(msg: Msg) -> None:
            delivered = await self.deliver(agent, msg.data)
            if msg.reply:
                await msg.respond(DELIVERED if delivered else NOT_HERE)

        subject = self.layout.command_subject(agent)
        self._subscriptions[agent] = await self.client.subscribe(subject, cb=on_command)

    async def stop_listening(self, agent: str) -> None:
        subscription = self._subscriptions.pop(agent, None)
        if subscription is not None:
            # Already gone with the connection, or unsubscribed: either way, nothing listens now.
            with contextlib.suppress(nats.errors.ConnectionClosedError, nats.errors.BadSubscriptionError):
                await subscription.unsubscribe()

    async def close(self) -> None:
        for agent in list(self._subscriptions):
            await self.stop_listening(agent)
