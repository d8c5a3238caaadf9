"""One shard's durable JetStream consumer: fetch, store, ack; only while this worker holds its lease.

The consumer (``shard-<k>`` on the event stream, filtered to the shard's
subjects) is durable and shared by whichever worker owns the shard: a new
owner carries on where the last acknowledged message left off. Messages are
acked one by one (explicit acks) after their events are committed: with
"ack all", acking a later message after a takeover would also ack earlier
ones a dead worker had fetched and never stored.

Messages come by pull requests kept in force (``_Pull``): JetStream delivers
them as they are published, up to ``fetch_batch`` not yet taken, and one
request a second is all an idle shard costs. A fetch per batch (nats-py's
``fetch``) cost two requests and a round trip per message at moderate rates,
in the worker and in NATS alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import DEFAULT_PREFIX, AckPolicy, ConsumerConfig, DeliverPolicy

from clawtrace.bus.layout import StreamLayout
from clawtrace.worker.ingest import ShardIngest

log = logging.getLogger("clawtrace.worker.shard")

# How long a pull request stays in force (an idle shard sends one this often).
FETCH_WAIT_SECONDS = 1.0
RETRY_MIN_SECONDS = 0.5
RETRY_MAX_SECONDS = 10.0
# A request is taken for ended this long after it expired even if JetStream's word of it got lost.
_REQUEST_GRACE_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class ConsumerSettings:
    # The most messages delivered to the shard and not yet stored (and taken in one go).
    fetch_batch: int = 256
    # How long JetStream waits for an ack before redelivering (to the shard's next owner, after a crash).
    ack_wait_seconds: float = 30.0


def consumer_name(shard: int) -> str:
    return f"shard-{shard}"


class ConsumerGone(Exception):
    """JetStream ended pull requests for a reason other than their expiry (the consumer deleted,
    a leader change): bind to the consumer again."""


class _Pull:
    """A durable pull consumer's messages, by requests kept in force on an inbox of our own.

    At most one request at a time, for as many messages as ``batch`` leaves
    room for beside those delivered and not taken yet: a worker that stops
    taking (the store down) holds at most ``batch`` messages whose ack wait
    runs, as a fetch would.
    """

    def __init__(self, nc: NatsClient, api_prefix: str, stream: str, consumer: str, batch: int) -> None:
        self.nc = nc
        self.next_subject = f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self.batch = batch
        self.inbox = nc.new_inbox()
        self.msgs: list[Msg] = []
        self.arrived = asyncio.Event()
        self.gone: str | None = None
        self._sub: Subscription | None = None
        # The request in force: messages it may still bring, and when it is surely over.
        self._owed = 0
        self._over_at = 0.0

    async def open(self) -> None:
        self._sub = await self.nc.subscribe(self.inbox, cb=self._on_msg)

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
            self._sub = None

    @property
    def requesting(self) -> bool:
        """Whether a request is in force (more messages may come without asking)."""
        return self._owed > 0 and asyncio.get_running_loop().time() < self._over_at

    async def _on_msg(self, msg: Msg) -> None:
        status = msg.headers.get("Status") if msg.headers else None
        if status is None:
            self.msgs.append(msg)
            self._owed -= 1
        elif status == "100":
            return  # idle heartbeat or flow control: not asked for
        else:
            # 404 nothing there, 408 expired: the request is over. 409 (and others): so is the
            # consumer as we knew it (deleted, a new leader, too many waiting requests).
            self._owed = 0
            if status not in ("404", "408"):
                description = msg.headers.get("Description", "") if msg.headers else ""
                self.gone = f"{status} {description}".strip()
        self.arrived.set()

    async def take(self, ask: bool) -> list[Msg]:
        """Up to ``batch`` delivered messages, waiting up to FETCH_WAIT_SECONDS for the first;
        with ``ask``, a new request first if none is in force. Raises ConsumerGone."""
        loop = asyncio.get_running_loop()
        if ask and not self.requesting and self.gone is None:
            room = self.batch - len(self.msgs)
            if room > 0:
                request = {"batch": room, "expires": int(FETCH_WAIT_SECONDS * 1e9)}
                self._owed = room
                self._over_at = loop.time() + FETCH_WAIT_SECONDS + _REQUEST_GRACE_SECONDS
                await self.nc.publish(self.next_subject, json.dumps(request).encode(), reply=self.inbox)
        if not self.msgs and self.gone is None and (ask or self.requesting):
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), FETCH_WAIT_SECONDS)
        if self.gone is not None and not self.msgs:
            # What was delivered before goes to the store first.
            gone, self.gone = self.gone, None
            raise ConsumerGone(gone)
        taken, self.msgs = self.msgs[: self.batch], self.msgs[self.batch :]
        return taken


class ShardConsumer:
    def __init__(
        self,
        shard: int,
        nc: NatsClient,
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
        self.nc = nc
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

    async def _bind(self) -> _Pull:
        """The shard's durable consumer (created if it is not there yet) and our inbox for it."""
        name = consumer_name(self.shard)
        try:
            await self.js.consumer_info(self.layout.name, name)
        except nats.js.errors.NotFoundError:
            await self.js.add_consumer(
                self.layout.name,
                ConsumerConfig(
                    name=name,
                    durable_name=name,
                    filter_subject=self.layout.shard_subjects(self.shard),
                    ack_policy=AckPolicy.EXPLICIT,
                    deliver_policy=DeliverPolicy.ALL,
                    ack_wait=self.settings.ack_wait_seconds,
                    max_deliver=-1,
                ),
            )
        # nats-py's JetStream context keeps its connection and API prefix to itself.
        # Our JetStream contexts use the default API prefix (no domain).
        pull = _Pull(self.nc, DEFAULT_PREFIX, self.layout.name, name, self.settings.fetch_batch)
        await pull.open()
        return pull

    async def _run(self) -> None:
        pull: _Pull | None = None
        if not await self._prepare():
            return
        try:
            while self.owns(self.shard):
                # Stopping: no new requests; what the one in force still brings is stored first,
                # or it would wait out the ack wait before the shard's next owner got it.
                if self._stopping and (pull is None or not (pull.msgs or pull.requesting)):
                    break
                try:
                    if pull is None:
                        pull = await self._bind()
                    msgs = await pull.take(ask=not self._stopping)
                except (ConsumerGone, nats.errors.Error, nats.js.errors.Error, OSError) as exc:
                    log.warning(
                        "shard %d: fetching from JetStream failed (%s: %s); retrying",
                        self.shard,
                        type(exc).__name__,
                        exc,
                    )
                    if pull is not None:
                        await pull.close()
                        pull = None
                    await asyncio.sleep(RETRY_MIN_SECONDS)
                    continue
                if msgs and await self._store(msgs):
                    await self._ack(msgs)
        finally:
            if pull is not None:
                # The durable consumer stays: the shard's next owner binds to it.
                await pull.close()

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
