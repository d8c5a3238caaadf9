"""A worker process: owns some of the event stream's shards, stores their events, runs their metrics.

Every ``renew_every`` (a third of the lease TTL) it renews its leases, counts
the live workers and takes or gives back shards so that each holds about
``shards / workers``: a worker that joins gets its share from the others, one
that dies has its shards taken over once its leases expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from clawtrace.bus import MemoryBus
from clawtrace.bus.scale import EventStreamLink
from clawtrace.gateway.writer import StoreWriter
from clawtrace.metrics import DEFAULT_PRICES_FILE, MetricsSettings, MetricsStage, PriceTable, RollupRow
from clawtrace.store import Store, open_store
from clawtrace.worker.ingest import ShardIngest
from clawtrace.worker.leases import ShardLeases
from clawtrace.worker.shard import ConsumerSettings, ShardConsumer

log = logging.getLogger("clawtrace.worker")


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, kw_only=True)
class WorkerSettings:
    bus: str
    store: str
    data_dir: str = ".clawtrace"
    worker_id: str = field(default_factory=default_worker_id)
    # A dead worker's shards move after this; the bucket keeps the TTL it was created with.
    lease_ttl_seconds: float = 10.0
    consumer: ConsumerSettings = field(default_factory=ConsumerSettings)
    writer_max_batch_rows: int = 10_000
    metrics_enabled: bool = True
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    prices_file: str | None = None


class Worker:
    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.consumers: dict[int, ShardConsumer] = {}
        self.ingest: ShardIngest | None = None
        self.leases: ShardLeases | None = None
        self.metrics: MetricsStage | None = None
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Until ``stop()``: connect, take shards, store their events. Raises BusError / StoreError
        (saying what to do) if NATS or the store cannot be reached at startup."""
        settings = self.settings
        link = await EventStreamLink.open(settings.bus, f"clawtrace-worker {settings.worker_id}")
        store: Store | None = None
        writer: StoreWriter | None = None
        metrics: MetricsStage | None = None
        try:
            store = await asyncio.to_thread(open_store, settings.store, Path(settings.data_dir))
            writer = StoreWriter(store, settings.writer_max_batch_rows)
            writer.start()
            local = MemoryBus()
            self.ingest = ShardIngest(link.layout, writer, local)
            if settings.metrics_enabled:
                metrics = self.metrics = self._metrics(self.ingest)
                self.ingest.on_agent_loaded = metrics.refresh_agent
                await metrics.start(local, self._rollup_sink(writer))
            self.leases = await ShardLeases.open(
                link.js, link.layout, settings.worker_id, settings.lease_ttl_seconds
            )
            log.info(
                "worker %s on stream %s (%d shards), store %s",
                settings.worker_id,
                link.layout.name,
                link.layout.shards,
                store.url,
            )
            await self._balance_loop(link)
        finally:
            await self._shutdown(link, writer, store, metrics)

    def _metrics(self, ingest: ShardIngest) -> MetricsStage:
        prices_file = Path(self.settings.prices_file) if self.settings.prices_file else DEFAULT_PRICES_FILE
        return MetricsStage(PriceTable.load(prices_file, {}), ingest.directory, self.settings.metrics)

    @staticmethod
    def _rollup_sink(writer: StoreWriter) -> Callable[[list[RollupRow]], asyncio.Future[None]]:
        def persist(rows: list[RollupRow]) -> asyncio.Future[None]:
            return writer.call(lambda store: store.write_rollups(rows))

        return persist

    async def _balance_loop(self, link: EventStreamLink) -> None:
        assert self.leases is not None
        leases = self.leases
        while not self._stop.is_set():
            try:
                await self._balance(link, leases)
                self.ready.set()
            except Exception as exc:
                # NATS away: leases may run out meanwhile; consumers stop by themselves then.
                log.warning(
                    "worker %s: lease round failed (%s: %s)", leases.worker_id, type(exc).__name__, exc
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), leases.renew_every)

    async def _balance(self, link: EventStreamLink, leases: ShardLeases) -> None:
        await leases.announce()
        for shard in list(leases.held):
            if not await leases.renew(shard):
                await self._drop(shard, graceful=False)
        # Consumers that ended by themselves (their lease ran out between rounds).
        for shard, consumer in list(self.consumers.items()):
            if not consumer.running:
                await self._drop(shard, graceful=False)
        shards = link.layout.shards
        share = math.ceil(shards / max(1, await leases.live_workers()))
        if len(leases.held) > share:
            for shard in sorted(leases.held)[share:]:
                await self._drop(shard, graceful=True)
            return
        # Start from a place of our own, so workers starting together do not all fight over shard 0.
        offset = zlib.crc32(leases.worker_id.encode()) % shards
        for step in range(shards):
            if len(leases.held) >= share:
                break
            shard = (offset + step) % shards
            if shard not in leases.held and await leases.acquire(shard):
                self._start(link, shard)

    def _start(self, link: EventStreamLink, shard: int) -> None:
        assert self.ingest is not None and self.leases is not None
        consumer = ShardConsumer(
            shard, link.js, link.layout, self.ingest, self.leases.owns, self.settings.consumer
        )
        self.consumers[shard] = consumer
        consumer.start()

    async def _drop(self, shard: int, graceful: bool) -> None:
        """Stop consuming a shard; with ``graceful``, finish its batch and give the lease back."""
        consumer = self.consumers.pop(shard, None)
        assert self.leases is not None
        if consumer is not None:
            if graceful:
                await consumer.stop()
            else:
                consumer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await consumer.stop()
            if self.ingest is not None:
                # Whoever takes the shard now writes its agents: what we cached about them goes stale.
                self.ingest.forget(consumer.agents)
        if graceful:
            await self.leases.release(shard)
        else:
            self.leases.held.pop(shard, None)

    async def _shutdown(
        self,
        link: EventStreamLink,
        writer: StoreWriter | None,
        store: Store | None,
        metrics: MetricsStage | None,
    ) -> None:
        # All at once: each finishes the fetch it waits on (up to a second) and its batch.
        await asyncio.gather(
            *(self._drop(shard, graceful=True) for shard in list(self.consumers)), return_exceptions=True
        )
        if self.leases is not None:
            with contextlib.suppress(Exception):
                await self.leases.leave()
        if metrics is not None:
            await metrics.close()
            rows = metrics.flush_all()
            if rows and writer is not None:
                with contextlib.suppress(Exception):
                    await self._rollup_sink(writer)(rows)
        if writer is not None:
            await asyncio.to_thread(writer.stop)
        if store is not None:
            store.close()
        await link.close()
