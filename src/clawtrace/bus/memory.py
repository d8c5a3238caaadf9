"""In-process bus for embedded mode: delivery is a function call."""

from __future__ import annotations

import inspect
import logging

from clawtrace.bus.base import Bus, Handler, Subscription, subject_matches

log = logging.getLogger("clawtrace.bus")


class _MemorySubscription(Subscription):
    def __init__(self, bus: MemoryBus, pattern: str, handler: Handler) -> None:
        self.bus = bus
        self.pattern = pattern
        self.handler = handler

    async def unsubscribe(self) -> None:
        if self in self.bus._subscriptions:
            self.bus._subscriptions.remove(self)


class MemoryBus(Bus):
    def __init__(self) -> None:
        self._subscriptions: list[_MemorySubscription] = []

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._subscriptions.clear()

    async def publish(self, subject: str, data: bytes) -> None:
        for sub in list(self._subscriptions):
            if not subject_matches(sub.pattern, subject):
                continue
            try:
                result = sub.handler(subject, data)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                # One broken subscriber must not stop delivery to the others.
                log.exception("bus handler for %s failed on %s", sub.pattern, subject)

    async def subscribe(self, pattern: str, handler: Handler) -> Subscription:
        sub = _MemorySubscription(self, pattern, handler)
        self._subscriptions.append(sub)
        return sub
