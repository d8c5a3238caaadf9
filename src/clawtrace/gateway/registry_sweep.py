"""Scale mode: the agents of a gateway that died are not connected.

A gateway that is killed (``kill -9``, a lost machine) cannot mark its agents
disconnected, and the registry would show them connected until they
reconnect elsewhere: fleet views would count them, rollouts would wait for
them. The gateway leading the ``registry`` duty compares the gateways the
registry names for connected agents with the live ones (presence keys with a
TTL, ``cluster_nats.py``) every ``SWEEP_SECONDS``; one missing in two looks
in a row is gone, and its agents are marked disconnected. An agent that
reconnects to another gateway is registered there (``agents.gateway``), so a
late sweep does not touch it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from functools import partial

from clawtrace.gateway.cluster_nats import NatsCluster
from clawtrace.gateway.writer import StoreWriter
from clawtrace.store import Store

log = logging.getLogger("clawtrace.gateway.registry")

SWEEP_SECONDS = 10.0
DUTY = "registry"


class RegistrySweep:
    def __init__(
        self,
        cluster: NatsCluster,
        writer: StoreWriter,
        clock: Callable[[], float] = time.time,
        every: float = SWEEP_SECONDS,
    ) -> None:
        self.cluster = cluster
        self.writer = writer
        self.clock = clock
        self.every = every
        # Gateways missing at the last look: gone if still missing at the next.
        self._suspects: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.cluster.campaign(DUTY)
        self._task = asyncio.create_task(self._loop(), name="clawtrace-registry-sweep")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            try:
                await self.sweep()
            except Exception as exc:
                # NATS or the store away: nothing is decided on half an answer.
                self._suspects.clear()
                log.warning("could not check for dead gateways: %s", exc)

    async def sweep(self) -> list[str]:
        """Mark the agents of gateways gone since the last look disconnected; returns those gateways."""
        if not self.cluster.leads(DUTY):
            self._suspects.clear()
            return []
        live = await self.cluster.live_gateways()
        named = await self.writer.call(lambda store: store.connected_gateways())
        missing = {gateway for gateway in named if gateway not in live}
        gone, self._suspects = missing & self._suspects, missing - self._suspects
        now = self.clock()
        for gateway in sorted(gone):
            count = await self.writer.call(partial(_mark_gone, gateway=gateway, now=now))
            log.warning("gateway %s is gone: its %d agents are marked disconnected", gateway, count)
        return sorted(gone)


def _mark_gone(store: Store, *, gateway: str, now: float) -> int:
    return store.mark_gateway_gone(gateway, now)
