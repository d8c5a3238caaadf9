"""A worker process: owns some of the event stream's shards, stores their events, runs their
metrics and evaluates their alerts (worker/alerts.py).

Every ``renew_every`` (a third of the lease TTL) it renews its leases, counts
the live workers and takes or gives back shards so that each holds about
``shards / workers``: a worker that joins gets its share from the others, one
that dies has its shards taken over once its leases expire. What a worker
computed about a shard's agents goes with the shard: their open metrics
minutes are written out, their alerts are left in the store for the next owner.
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

from clawtrace.alerts.settings import AlertSettings
from clawtrace.bus import MemoryBus
from clawtrace.bus.layout import shard_of
from clawtrace.bus.scale import EventStreamLink
from clawtrace.gateway.writer import StoreWriter
from clawtrace.metrics import DEFAULT_PRICES_FILE, MetricsSettings, MetricsStage, PriceTable, RollupRow
from clawtrace.store import AgentInfo, Store, open_store
from clawtrace.worker.alerts import WorkerAlerts
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
    # The gateways' [gateway.alerts]: rules, receivers, remediation (alerts need the metrics stage).
    alerts: AlertSettings = field(default_factory=AlertSettings)
    # Links in notifications: the address people reach the gateways at ([gateway] public_url).
    external_url: str = ""
    # Silences and acknowledgements are also read from the store this often (a notice may be missed).
    alerts_reload_seconds: float = 5.0

    @property
    def rules_path(self) -> Path:
        """As a gateway's: ``rules_dir``, else ``<data_dir>/alerts``."""
        return Path(self.alerts.rules_dir) if self.alerts.rules_dir else Path(self.data_dir) / "alerts"


class Worker:
    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.consumers: dict[int, ShardConsumer] = {}
        self.ingest: ShardIngest | None = None
        self.leases: ShardLeases | None = None
        self.metrics: MetricsStage | None = None
        self.alerts: WorkerAlerts | None = None
        self.ready = asyncio.Event()
        self._shards = 1
        self._writer: StoreWriter | None = None
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Until ``stop()``: connect, take shards, store their events. Raises BusError / StoreError
        (saying what to do) if NATS or the store cannot be reached at startup."""
        settings = self.settings
        link = await EventStreamLink.open(settings.bus, f"clawtrace-worker {settings.worker_id}")
        self._shards = link.layout.shards
        store: Store | None = None
        writer: StoreWriter | None = None
        metrics: MetricsStage | None = None
        try:
            store = await asyncio.to_thread(open_store, settings.store, Path(settings.data_dir))
            writer = self._writer = StoreWriter(store, settings.writer_max_batch_rows)
            writer.start()
            local = MemoryBus()
            self.ingest = ShardIngest(link.layout, writer, local)
            if settings.metrics_enabled:
                metrics = self.metrics = self._metrics(self.ingest)
                self.ingest.on_agent_loaded = metrics.refresh_agent
                await metrics.start(local, self._rollup_sink(writer))
                if settings.alerts.enabled:
                    self.alerts = WorkerAlerts.build(
                        settings.alerts,
                        settings.rules_path,
                        settings.external_url,
                        store,
                        writer,
                        metrics,
                        link,
                        self._owns,
                        self._hello,
                        settings.alerts_reload_seconds,
                    )
                    await self.alerts.start()
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

    def _owns(self, shard: int) -> bool:
        return self.leases is not None and self.leases.owns(shard)

    def _hello(self, info: AgentInfo) -> None:
        """An agent of ours connected (presence news): its labels may be new."""
        if self.ingest is not None and self.ingest.update_info(info) and self.metrics is not None:
            self.metrics.refresh_agent(info.agent)

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
        alerts = self.alerts

        async def prepare() -> None:
            assert alerts is not None
            await alerts.take(shard)

        consumer = ShardConsumer(
            shard,
            link.nats.client,
            link.js,
            link.layout,
            self.ingest,
            self.leases.owns,
            self.settings.consumer,
            prepare=prepare if alerts is not None else None,
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
        agents: set[str] = set() if consumer is None else set(consumer.agents)
        if self.alerts is not None:
            try:
                agents |= await self.alerts.drop(shard, graceful)
            except Exception:
                log.exception("shard %d: handing its alerts over failed", shard)
        shards = self._shards
        if self.ingest is not None:
            # Whoever takes the shard now writes its agents: what we cached about them goes stale.
            agents |= {a for a in self.ingest.agents if shard_of(a, shards) == shard}
            self.ingest.forget(agents)
        if self.metrics is not None:
            await self._detach_metrics({a for a in self.metrics.agents if shard_of(a, shards) == shard})
        if graceful:
            await self.leases.release(shard)
        else:
            self.leases.held.pop(shard, None)

    async def _detach_metrics(self, agents: set[str]) -> None:
        """Take these agents out of the metrics stage, their open minutes written out as rollups:
        the next owner counts their events from where it takes over (a shard taken back later
        starts afresh, not from stale numbers)."""
        stage = self.metrics
        if stage is None or not agents:
            return
        leaving = MetricsStage(stage.prices, lambda _agent: None, stage.settings, stage.clock)
        for agent in agents:
            metrics = stage.agents.pop(agent, None)
            if metrics is not None:
                leaving.agents[agent] = metrics
            known = stage.known.pop(agent, None)
            if known is not None:
                leaving.known[agent] = known
        rows = leaving.flush_all()
        if rows and self._writer is not None:
            try:
                await self._rollup_sink(self._writer)(rows)
            except Exception as exc:
                log.warning("rollups of %d agents handed over not written: %s", len(leaving.agents), exc)

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
        if self.alerts is not None:
            # Notifications already decided go out (within a few seconds); the rest is in the store.
            await self.alerts.close()
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
