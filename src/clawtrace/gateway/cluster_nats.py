"""The gateways of one scale-mode deployment, through NATS (see ``cluster.py``).

Notices are core NATS messages under the stream's control prefix
(``<prefix>.control.notice.<topic>``): at most once, so whoever listens also
re-reads the store now and then. Leadership of a duty is a key in a JetStream
key-value bucket with a TTL: created by one gateway, renewed every third of
the TTL, taken over by another once a dead leader's key expires. Every
gateway also keeps a presence key there (``gateway.<id>``), so that the live
ones can be told from the dead (``registry_sweep.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time

import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue

from clawtrace.bus import Subscription
from clawtrace.bus.scale import EventStreamLink
from clawtrace.gateway.cluster import NoticeHandler

log = logging.getLogger("clawtrace.gateway.cluster")

LEASE_TTL_SECONDS = 10.0
_UNSAFE_KEY = re.compile(r"[^-_=a-zA-Z0-9]")


def gateway_key(gateway_id: str) -> str:
    return f"gateway.{gateway_id}"


class NatsCluster:
    shared = True

    def __init__(
        self, link: EventStreamLink, gateway_id: str, ttl_seconds: float = LEASE_TTL_SECONDS
    ) -> None:
        self.link = link
        # Also a key of the bucket and the registry's agents.gateway: only characters keys allow.
        self.gateway_id = _UNSAFE_KEY.sub("_", gateway_id)
        self.ttl_seconds = ttl_seconds
        self._subscriptions: list[Subscription] = []
        self._kv: KeyValue | None = None
        # duty -> (revision of our key, monotonic time until which it surely holds)
        self._held: dict[str, tuple[int, float]] = {}
        self._campaigns: list[asyncio.Task[None]] = []

    def _subject(self, topic: str) -> str:
        return f"{self.link.layout.control_prefix}.notice.{topic}"

    async def announce(self, topic: str, data: bytes) -> None:
        try:
            await self.link.nats.publish(self._subject(topic), data)
        except (nats.errors.Error, OSError) as exc:
            # The others catch up on their next look at the store.
            log.warning("could not announce %s to the other gateways: %s", topic, exc)

    async def listen(self, topic: str, handler: NoticeHandler) -> None:
        async def deliver(_subject: str, data: bytes) -> None:
            await handler(data)

        self._subscriptions.append(await self.link.nats.subscribe(self._subject(topic), deliver))

    def leads(self, duty: str) -> bool:
        held = self._held.get(duty)
        return held is not None and time.monotonic() < held[1]

    async def start(self) -> None:
        """Open the gateways' bucket and keep this gateway's presence key in it."""
        bucket = f"{self.link.layout.name}_GATEWAYS"
        try:
            self._kv = await self.link.js.key_value(bucket)
        except nats.js.errors.BucketNotFoundError:
            self._kv = await self.link.js.create_key_value(
                bucket=bucket, ttl=self.ttl_seconds, history=1, replicas=self.link.layout.replicas
            )
        self._campaigns.append(asyncio.create_task(self._present(self._kv), name="clawtrace-presence"))

    async def live_gateways(self) -> set[str]:
        """The gateways whose presence key has not expired; raises if NATS cannot say."""
        assert self._kv is not None, "start() first"
        try:
            keys = await self._kv.keys()
        except nats.js.errors.NoKeysError:
            return set()
        return {key.removeprefix("gateway.") for key in keys if key.startswith("gateway.")}

    async def _present(self, kv: KeyValue) -> None:
        while True:
            try:
                await kv.put(gateway_key(self.gateway_id), b"")
            except (nats.errors.Error, OSError, TimeoutError) as exc:
                log.warning("presence of gateway %s not renewed: %s", self.gateway_id, exc)
            await asyncio.sleep(self.ttl_seconds / 3)

    async def campaign(self, duty: str) -> None:
        assert self._kv is not None, "start() first"
        self._campaigns.append(asyncio.create_task(self._hold(self._kv, duty), name=f"clawtrace-lead-{duty}"))

    async def _hold(self, kv: KeyValue, duty: str) -> None:
        key, value = f"lead.{duty}", self.gateway_id.encode()
        while True:
            started = time.monotonic()
            held = self._held.get(duty)
            try:
                if held is None:
                    revision = await kv.create(key, value)
                    log.info("gateway %s now leads %s", self.gateway_id, duty)
                else:
                    revision = await kv.update(key, value, last=held[0])
                # A margin before the TTL: the bucket's clock and ours do not tick together.
                self._held[duty] = (revision, started + self.ttl_seconds * 0.8)
            except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.KeyNotFoundError):
                # Another gateway leads (or our key expired and may be taken): follow until it lapses.
                if held is not None:
                    log.warning("gateway %s no longer leads %s", self.gateway_id, duty)
                self._held.pop(duty, None)
            except (nats.errors.Error, OSError, TimeoutError) as exc:
                # NATS away: the lease runs out by itself (leads() says so) unless renewed in time.
                log.warning("leadership of %s not renewed: %s", duty, exc)
            await asyncio.sleep(self.ttl_seconds / 3)

    async def close(self) -> None:
        for task in self._campaigns:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._kv is not None:
            for duty, (revision, _) in list(self._held.items()):
                # Handing over at once instead of after the TTL; an error: it is someone else's already.
                with contextlib.suppress(nats.errors.Error, OSError, TimeoutError):
                    await self._kv.delete(f"lead.{duty}", last=revision)
            with contextlib.suppress(nats.errors.Error, OSError, TimeoutError):
                await self._kv.delete(gateway_key(self.gateway_id))
        self._held.clear()
        for subscription in self._subscriptions:
            await subscription.unsubscribe()
