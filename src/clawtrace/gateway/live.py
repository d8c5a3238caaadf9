"""The live hub: pushes stored events to viewers as they arrive.

It listens on the bus for accepted event batches (subject
``events.<env>.<agent>``, payload a JSON array of events) and fans them out
to viewers whose filter matches. A slow viewer loses events (and is told how
many), never slows ingest down.

In scale mode a gateway whose bus does not carry the whole fleet's events
gets each viewer's from NATS instead (``RemoteFeed``, gateway/scale.py): only
the subjects that viewer follows, delivered to that viewer alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import msgspec

from clawtrace.bus import Bus, Subscription

log = logging.getLogger("clawtrace.gateway.live")

EVENTS_SUBJECT = "events"


def events_subject(env: str, agent: str) -> str:
    return f"{EVENTS_SUBJECT}.{env}.{agent}"


class _Kind(msgspec.Struct):
    kind: str = ""


_kinds_decoder = msgspec.json.Decoder(list[_Kind])
_raw_decoder = msgspec.json.Decoder(list[msgspec.Raw])


@dataclass(eq=False)
class Viewer:
    send: Callable[[bytes], Awaitable[None]]
    envs: frozenset[str] | None
    agent: str | None = None
    env: str | None = None
    kinds: frozenset[str] = frozenset()
    max_queued: int = 10_000
    queued: int = 0
    dropped: int = 0
    _chunks: list[list[bytes]] = field(default_factory=list)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)

    def wants(self, env: str, agent: str) -> bool:
        if self.envs is not None and env not in self.envs:
            return False
        if self.env is not None and env != self.env:
            return False
        return self.agent is None or agent == self.agent

    def offer(self, lines: list[bytes]) -> None:
        if self.queued + len(lines) > self.max_queued:
            self.dropped += len(lines)
            return
        self._chunks.append(lines)
        self.queued += len(lines)
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.dropped:
                dropped, self.dropped = self.dropped, 0
                notice = msgspec.json.encode(
                    {
                        "type": "error",
                        "code": "lagging",
                        "message": f"{dropped} events were dropped because this viewer fell behind",
                    }
                )
                await self.send(notice)
            while self._chunks:
                chunks, self._chunks = self._chunks, []
                lines = [line for chunk in chunks for line in chunk]
                self.queued -= len(lines)
                await self.send(b'{"type":"events","events":[' + b",".join(lines) + b"]}")


# (env, agent, JSON array of events) for one viewer.
ViewerDelivery = Callable[[str, str, bytes], None]


class RemoteFeed(Protocol):
    async def follow(self, viewer: Viewer, deliver: ViewerDelivery) -> Subscription:
        """Start delivering the events ``viewer`` may want; unsubscribing stops it."""
        ...


class LiveHub:
    def __init__(self, bus: Bus, remote: RemoteFeed | None = None) -> None:
        self.bus = bus
        self.remote = remote
        self.viewers: set[Viewer] = set()
        self._subscription: Subscription | None = None

    async def start(self) -> None:
        self._subscription = await self.bus.subscribe(f"{EVENTS_SUBJECT}.>", self._on_events)

    async def close(self) -> None:
        if self._subscription is not None:
            await self._subscription.unsubscribe()

    def _on_events(self, subject: str, data: bytes) -> None:
        if not self.viewers:
            return
        _, env, agent = subject.split(".", 2)
        self._offer(self.viewers, env, agent, data)

    @staticmethod
    def _offer(viewers: set[Viewer], env: str, agent: str, data: bytes) -> None:
        lines: list[bytes] | None = None
        kinds: list[str] | None = None
        for viewer in viewers:
            if not viewer.wants(env, agent):
                continue
            if lines is None:
                lines = [bytes(raw) for raw in _raw_decoder.decode(data)]
            if viewer.kinds:
                if kinds is None:
                    kinds = [item.kind for item in _kinds_decoder.decode(data)]
                selected = [line for line, kind in zip(lines, kinds, strict=True) if kind in viewer.kinds]
                if selected:
                    viewer.offer(selected)
            else:
                viewer.offer(lines)

    async def serve(self, viewer: Viewer, until_closed: Awaitable[None]) -> None:
        """Stream to ``viewer`` until ``until_closed`` completes or sending fails."""
        remote: Subscription | None = None
        if self.remote is None:
            self.viewers.add(viewer)
        else:
            only = {viewer}
            remote = await self.remote.follow(
                viewer, lambda env, agent, data: self._offer(only, env, agent, data)
            )
        sender = asyncio.ensure_future(viewer.run())
        closed = asyncio.ensure_future(until_closed)
        try:
            await asyncio.wait({sender, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.viewers.discard(viewer)
            if remote is not None:
                with contextlib.suppress(Exception):
                    await remote.unsubscribe()
            for task in (sender, closed):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
