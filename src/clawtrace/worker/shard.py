"""One shard's durable JetStream consumer: fetch, store, ack; only while this worker holds its lease.

The consumer (``shard-<k>`` on the event stream, filtered to the shard's
subjects) is durable and shared by whichever worker owns the shard: a new
owner carries on where the last acknowledged message left off. Messages are
acked one by one (explicit acks) after their events are committed: with
"ack all", acking a later message after a takeover would also ack earlier
ones a dead worker had fetched and never stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from clawtrace.bus.layout import StreamLayout
from clawtrace.worker.ingest import ShardIngest

log = logging.getLogger("clawtrace.worker.shard")

FETCH_WAIT_SECONDS = 1.0
RETRY_MIN_SECONDS = 0.5
RETRY_MAX_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class ConsumerSettings:
    fetch_batch: int = 256
    # How long JetStream waits for an ack before redelivering (to the shard's next owner, after a crash).
    ack_wait_seconds: float = 30.0


def consumer_name(shard: int) -> str:
    return f"shard-{shard}"


class ShardConsumer:
    def __init__(
        self,
        shard: int,
        js: JetStreamContext,
        layout: StreamLayout,
        ingest: ShardIngest,
        owns: Callable[[int], bool],
        settings: ConsumerSettings,
        prepare: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.shard = shard
        # Run (until it works) before the first fetch: the shard's alert state taken over.
        self.prepare = prepare
        self.js = js
        self.layout = layout
        self.ingest = ingest
        self.owns = owns
        self.settings = settings
        self.agents: set[str] = set()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"clawtrace-shard-{self.shard}")

    async def stop(self) -> None:
        """Finish the batch in hand (stored and acked), then stop fetching."""
        self._stopping = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _prepare(self) -> bool:
        """Whether the shard is ready to be consumed (False: the lease ran out or we are stopping)."""
        delay = RETRY_MIN_SECONDS
        while self.prepare is not None and not self._stopping and self.owns(self.shard):
            try:
                await self.prepare()
                return True
            except Exception as exc:
                log.warning(
                    "shard %d: taking over its alert state failed (%s: %s); retrying in %.1f s",
                    self.shard,
                    type(exc).__name__,
                    exc,
                    delay,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)
        return self.prepare is None

    async def _run(self) -> None:
        settings = self.settings
        subscription = None
        if not await self._prepare():
            return
        while not self._stopping and self.owns(self.shard):
            try:
                if subscription is None:
                    subscription = await self.js.pull_subscribe(
                        self.layout.shard_subjects(self.shard),
                        durable=consumer_name(self.shard),
                        stream=self.layout.name,
                        config=ConsumerConfig(
                            ack_policy=AckPolicy.EXPLICIT,
                            deliver_policy=DeliverPolicy.ALL,
                            ack_wait=settings.ack_wait_seconds,
                            max_deliver=-1,
                        ),
                    )
                msgs = await subscription.fetch(settings.fetch_batch, timeout=FETCH_WAIT_SECONDS)
            except (nats.errors.TimeoutError, TimeoutError):
                continue  # nothing new in this shard
            except (nats.errors.Error, nats.js.errors.Error, OSError) as exc:
                log.warning(
                    "shard %d: fetching from JetStream failed (%s: %s); retrying",
                    self.shard,
                    type(exc).__name__,
                    exc,
                )
                await asyncio.sleep(RETRY_MIN_SECONDS)
                continue
            if await self._store(msgs):
                await self._ack(msgs)
        if subscription is not None:
            # The durable consumer stays: the shard's next owner binds to it.
            with contextlib.suppress(nats.errors.Error):
                await subscription.unsubscribe()

    async def _store(self, msgs: list[Msg]) -> bool:
        """Store until it works; False if the lease ran out first (the next owner gets them again)."""
        delay = RETRY_MIN_SECONDS
        for msg in msgs:
            where = msg.subject.rpartition(".")[2]
            self.agents.add(where)
        while True:
            try:
                await self.ingest.ingest(msgs)
                return True
            except Exception as exc:
                log.warning(
                    "shard %d: storing %d messages failed (%s: %s); retrying in %.1f s",
                    self.shard,
                    len(msgs),
                    type(exc).__name__,
                    exc,
                    delay,
                )
            if not self.owns(self.shard):
                return False
            # Tell JetStream these are still being worked on, so it does not redeliver them meanwhile.
            for msg in msgs:
                with contextlib.suppress(nats.errors.Error):
                    await msg.in_progress()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)

    async def _ack(self, msgs: list[Msg]) -> None:
        for msg in msgs:
            try:
                await msg.ack()
            except nats.errors.Error as exc:
                # Stored already: a redelivery is found duplicate and only acked then.
                log.warning("shard %d: ack failed (%s); the message will come again", self.shard, exc)
                return
