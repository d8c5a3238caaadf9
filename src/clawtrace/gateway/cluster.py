"""What a gateway shares with the other gateways: notices of changes, and who leads.

Embedded mode has one gateway: notices have no one to reach and it leads
everything (``Solo``). In scale mode (``cluster_nats.NatsCluster``) a change
made through one gateway's API (a policy bundle applied, say) is announced on
a core NATS subject so every gateway reloads it from the store at once, and
work that must happen once per fleet (moving rollouts on) is done by whichever
gateway holds a lease.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

NoticeHandler = Callable[[bytes], Awaitable[None]]


class Cluster(Protocol):
    @property
    def shared(self) -> bool:
        """Whether other gateways share the store (state may change under this one)."""
        ...

    async def announce(self, topic: str, data: bytes) -> None:
        """Tell every gateway (this one included) that ``topic`` changed; best effort."""
        ...

    async def listen(self, topic: str, handler: NoticeHandler) -> None: ...

    async def campaign(self, duty: str) -> None:
        """Compete for ``duty``: from now on this gateway leads it whenever no live gateway does."""
        ...

    def leads(self, duty: str) -> bool:
        """Whether this gateway does ``duty`` for the fleet now."""
        ...

    async def close(self) -> None: ...


class Solo:
    """The only gateway: it hears its own changes as it makes them and leads every duty."""

    shared = False

    async def announce(self, topic: str, data: bytes) -> None:
        return None

    async def listen(self, topic: str, handler: NoticeHandler) -> None:
        return None

    async def campaign(self, duty: str) -> None:
        return None

    def leads(self, duty: str) -> bool:
        return True

    async def close(self) -> None:
        return None
