"""The bus interface: subjects and byte payloads, NATS-style wildcards.

Embedded mode uses the in-process ``MemoryBus``; scale mode swaps in NATS
JetStream behind the same interface without touching the pipeline.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable

Handler = Callable[[str, bytes], Awaitable[None] | None]


class Subscription(abc.ABC):
    @abc.abstractmethod
    async def unsubscribe(self) -> None: ...


class Bus(abc.ABC):
    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def publish(self, subject: str, data: bytes) -> None:
        """Deliver ``data`` to every subscription matching ``subject``."""

    @abc.abstractmethod
    async def subscribe(self, pattern: str, handler: Handler) -> Subscription:
        """``pattern`` may use ``*`` (one token) and a trailing ``>`` (the rest)."""


def subject_matches(pattern: str, subject: str) -> bool:
    pattern_tokens = pattern.split(".")
    subject_tokens = subject.split(".")
    for index, token in enumerate(pattern_tokens):
        if token == ">":
            return len(subject_tokens) > index
        if index >= len(subject_tokens):
            return False
        if token not in ("*", subject_tokens[index]):
            return False
    return len(pattern_tokens) == len(subject_tokens)
