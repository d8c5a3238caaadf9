"""The bus on NATS (scale mode): core NATS subjects behind the ``Bus`` interface.

Publish/subscribe are core NATS (at most once, like the in-memory bus);
JetStream, for what must not be lost, is reached through ``jetstream()``
(bus/layout.py lays out the event stream, bus/publisher.py publishes to it).
The connection reconnects forever once it is up: a NATS restart costs a pause,
never the process.
"""

from __future__ import annotations

import inspect
import logging
from urllib.parse import urlsplit

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription
from nats.js import JetStreamContext

from clawtrace.bus import NATS_SCHEMES
from clawtrace.bus.base import Bus, Handler, Subscription
from clawtrace.bus.errors import BusError

log = logging.getLogger("clawtrace.bus.nats")

DEFAULT_NATS_PORT = 4222
# How many times the first connect is tried (a second apart) before giving up with a clear error.
STARTUP_ATTEMPTS = 3


def check_nats_url(url: str) -> str:
    """``url`` if it names a NATS server (nats://HOST:PORT, or tls://), else a BusError saying how."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise BusError(f"bad bus URL {url!r} ({exc}): use nats://HOST:PORT") from None
    if parts.scheme not in NATS_SCHEMES or not parts.hostname:
        raise BusError(f"bad bus URL {url!r}: use nats://HOST:PORT (or tls://HOST:PORT)")
    if parts.path not in ("", "/") or parts.query:
        raise BusError(
            f"bad bus URL {url!r}: a NATS server URL has no path or query"
            " (bus/url.py takes the options off first); use nats://HOST:PORT"
        )
    netloc = parts.netloc if port is not None else f"{parts.netloc}:{DEFAULT_NATS_PORT}"
    return f"{parts.scheme}://{netloc}"


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@")


class _NatsSubscription(Subscription):
    def __init__(self, subscription: NatsSubscription) -> None:
        self._subscription = subscription

    async def unsubscribe(self) -> None:
        try:
            await self._subscription.unsubscribe()
        except nats.errors.ConnectionClosedError:
            pass  # closing the connection already ended it
        except nats.errors.BadSubscriptionError:
            pass  # already unsubscribed


class NatsBus(Bus):
    def __init__(
        self,
        url: str,
        name: str = "clawtrace",
        connect_timeout: float = 5.0,
        startup_attempts: int = STARTUP_ATTEMPTS,
    ) -> None:
        self.url = check_nats_url(url)
        self.name = name
        self.connect_timeout = connect_timeout
        self.startup_attempts = startup_attempts
        self._client: NatsClient | None = None
        self._closing = False

    @property
    def client(self) -> NatsClient:
        if self._client is None:
            raise BusError("the NATS bus is not started: call start() first")
        return self._client

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.is_connected

    async def start(self) -> None:
        if self._client is not None:
            return
        shown = _redacted(self.url)
        try:
            client = await nats.connect(
                self.url,
                name=self.name,
                connect_timeout=self.connect_timeout,
                reconnect_time_wait=1.0,
                # nats-py reads 0 as "forever": at least 1 (two attempts).
                max_reconnect_attempts=max(self.startup_attempts - 1, 1),
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
            )
        except (nats.errors.NoServersError, OSError, TimeoutError) as exc:
            raise BusError(
                f"cannot reach NATS at {shown} ({type(exc).__name__}: {exc or 'no server answered'}):"
                " is nats-server running there, with JetStream (nats-server -js)?"
            ) from None
        # Only the first connect gives up: once up, a NATS restart must cost a pause, not the process.
        client.options["max_reconnect_attempts"] = -1
        self._client = client
        log.info("connected to NATS at %s", shown)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is None or client.is_closed:
            return
        self._closing = True
        try:
            # Sends what is buffered and lets subscriptions finish what they hold.
            await client.drain()
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            log.warning("draining the NATS connection failed (%s); closing it", exc)
            await client.close()

    async def publish(self, subject: str, data: bytes) -> None:
        await self.client.publish(subject, data)

    async def subscribe(self, pattern: str, handler: Handler) -> Subscription:
        async def deliver(msg: Msg) -> None:
            try:
                result = handler(msg.subject, msg.data)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                # As on the memory bus: a broken handler must not end the subscription.
                log.exception("bus handler for %s failed on %s", pattern, msg.subject)

        return _NatsSubscription(await self.client.subscribe(pattern, cb=deliver))

    def jetstream(self, max_in_flight: int = 4000, timeout: float = 5.0) -> JetStreamContext:
        """A JetStream context whose ``publish_async`` keeps at most ``max_in_flight`` acks pending."""
        return self.client.jetstream(timeout=timeout, publish_async_max_pending=max_in_flight)

    async def require_jetstream(self) -> None:
        """A BusError unless the server has JetStream enabled for this account."""
        try:
            await self.client.jetstream().account_info()
        except (nats.js.errors.ServiceUnavailableError, nats.errors.NoRespondersError):
            raise BusError(
                f"NATS at {_redacted(self.url)} has JetStream disabled: start nats-server with -js"
                " (or a jetstream {} block in its configuration)"
            ) from None
        except nats.errors.TimeoutError:
            raise BusError(
                f"NATS at {_redacted(self.url)} did not answer a JetStream request in time:"
                " is JetStream enabled (nats-server -js) and the server healthy?"
            ) from None

    async def _on_error(self, error: Exception) -> None:
        log.warning("NATS connection error: %s: %s", type(error).__name__, error)

    async def _on_disconnected(self) -> None:
        if self._closing:
            return
        log.warning("disconnected from NATS at %s; reconnecting", _redacted(self.url))

    async def _on_reconnected(self) -> None:
        log.warning("reconnected to NATS at %s", _redacted(self.url))
