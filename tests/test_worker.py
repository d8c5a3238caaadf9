"""``clawtrace worker``: JetStream's events into the store, each (agent, seq) once; shards by lease."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import msgspec
import nats.js.errors
import pytest
from click.testing import CliRunner

from clawtrace.bus.layout import StreamLayout, ensure_stream
from clawtrace.bus.nats import NatsBus
from clawtrace.bus.publisher import FramePublisher
from clawtrace.cli.main import cli
from clawtrace.store import AgentInfo, EventQuery, Store, open_store
from clawtrace.worker.service import Worker, WorkerSettings
from clawtrace.worker.shard import ConsumerSettings
from nats_server import PrivateNats, delete_stream, require_shared_nats, scale_bus_url, unique_name
from postgres import CuttableLink, fresh_database, fresh_schema
from worker_process import WorkerProcess

TS = "2026-03-01T12:00:00Z"


def log_event(agent: str, seq: int) -> bytes:
    return msgspec.json.encode(
        {
            "kind": "log",
            "seq": seq,
            "ts": TS,
            "session": "s1",
            "agent": agent,
            "received": TS,
            "stream": "stdout",
            "line": f"line {seq}",
        }
    )


def tool_result(agent: str, seq: int) -> bytes:
    return msgspec.json.encode(
        {
            "kind": "tool_result",
            "seq": seq,
            "ts": TS,
            "session": "s1",
            "agent": agent,
            "received": TS,
            "call_id": f"c{seq}",
            "ok": False,
            "duration_ms": 5.0,
        }
    )


class Stream:
    """A stream of this test's own on the shared NATS, and a publisher to play the gateways."""

    def __init__(self, name: str, bus: NatsBus, layout: StreamLayout, publisher: FramePublisher) -> None:
        self.name = name
        self.bus = bus
        self.layout = layout
        self.publisher = publisher

    @property
    def url(self) -> str:
        return scale_bus_url(require_shared_nats(), self.name, shards=self.layout.shards)

    async def frame(
        self, agent: str, seqs: range | list[int], make: Callable[[str, int], bytes] = log_event
    ) -> None:
        seqs = list(seqs)
        await self.publisher.publish("dev", "eu-west-1", agent, [make(agent, s) for s in seqs], seqs)


@pytest.fixture
async def stream() -> AsyncIterator[Stream]:
    name = unique_name("wk")
    bus = NatsBus(require_shared_nats(), name="test_worker")
    await bus.start()
    layout = await ensure_stream(
        bus.jetstream(), StreamLayout(name=name.upper(), prefix=f"{name}.events", shards=4)
    )
    publisher = FramePublisher(bus.jetstream(), layout, bus.client.max_payload)
    publisher.start()
    try:
        yield Stream(name, bus, layout, publisher)
    finally:
        await publisher.close()
        with contextlib.suppress(Exception):
            await bus.jetstream().delete_key_value(f"{layout.name}_LEASES")
        await bus.close()
        await delete_stream(require_shared_nats(), layout.name)


def sqlite_store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture(scope="module")
def postgres_database() -> Iterator[str]:
    with fresh_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The same worker tests on both stores."""
    if request.param == "sqlite":
        yield sqlite_store(tmp_path)
        return
    with fresh_schema(request.getfixturevalue("postgres_database")) as url:
        yield url


def register(url: str, data_dir: Path, *agents: str) -> None:
    """What a gateway does on hello, before any event of the agent is published."""
    store = open_store(url, data_dir)
    try:
        for agent in agents:
            store.register_agent(AgentInfo(agent, "dev", "eu-west-1", {"team": "t"}, None), time.time())
    finally:
        store.close()


def stored_seqs(store: Store, agent: str) -> list[int]:
    return [seq for seq, _ in store.query_events(EventQuery(agent=agent, limit=100_000))]


async def until(condition: Callable[[], bool], within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s")
        await asyncio.sleep(0.1)


def settings(
    stream: Stream, store_url: str, data_dir: Path, worker_id: str, **extra: object
) -> WorkerSettings:
    return WorkerSettings(
        bus=stream.url,
        store=store_url,
        data_dir=str(data_dir),
        worker_id=worker_id,
        lease_ttl_seconds=3.0,
        consumer=ConsumerSettings(fetch_batch=64, ack_wait_seconds=3.0),
        **extra,  # type: ignore[arg-type]
    )


async def test_each_event_is_stored_once_and_metrics_see_only_new_ones(
    stream: Stream, store_url: str, tmp_path: Path
) -> None:
    url = store_url
    register(url, tmp_path, "a-1", "a-2")
    await stream.frame("a-1", range(1, 11))
    await stream.frame("a-1", range(11, 21))
    await stream.frame("a-1", range(11, 21))  # the same frame again (deduped by JetStream)
    await stream.frame("a-1", range(5, 16))  # a resend cut differently (deduped by the worker)
    # A frame lost in a NATS reconnect while the next got through, then resent.
    await stream.frame("a-1", range(31, 41))
    await stream.frame("a-1", range(21, 41))
    await stream.frame("a-2", range(1, 6), make=tool_result)
    worker = Worker(settings(stream, url, tmp_path, "w-1"))
    task = asyncio.create_task(worker.run())
    try:
        await until(lambda: worker.ingest is not None and worker.ingest.stats.new_events == 45)
        await stream.frame("a-2", range(6, 8), make=tool_result)  # after the worker caught up
        await until(lambda: worker.ingest is not None and worker.ingest.stats.new_events == 47)
        assert worker.ingest is not None
        assert worker.ingest.stats.gap_fills == 10
        assert worker.ingest.stats.duplicates == 11 + 10  # 5-15 again, then 31-40 again
        assert worker.metrics is not None
        await until(lambda: worker.metrics is not None and worker.metrics.events_observed == 47)
        # The metrics stage counted each failed tool result once.
        assert worker.metrics.agents["a-2"].consecutive_failures == 7
    finally:
        worker.stop()
        await task
    store = open_store(url, tmp_path)
    try:
        assert stored_seqs(store, "a-1") == list(range(1, 41))
        assert stored_seqs(store, "a-2") == list(range(1, 8))
        record = store.get_agent("a-1")
        assert record is not None and record.last_seq == 40
    finally:
        store.close()


async def owners(stream: Stream) -> dict[int, str]:
    """Which worker holds each shard's lease now."""
    out: dict[int, str] = {}
    try:
        kv = await stream.bus.jetstream().key_value(f"{stream.layout.name}_LEASES")
    except nats.js.errors.BucketNotFoundError:
        return out  # no worker has started yet
    for shard in range(stream.layout.shards):
        with contextlib.suppress(nats.js.errors.KeyNotFoundError):
            entry = await kv.get(f"shard.{shard}")
            if entry.value:
                out[shard] = entry.value.decode()
    return out


async def until_async(condition: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within}s")
        await asyncio.sleep(0.2)


async def test_workers_share_the_shards_and_a_killed_ones_are_taken_over(
    stream: Stream, tmp_path: Path
) -> None:
    url = sqlite_store(tmp_path)
    agents = [f"a-{i}" for i in range(20)]
    register(url, tmp_path, *agents)
    store = open_store(url, tmp_path)
    first = WorkerProcess("w-a", stream.url, url, tmp_path)
    second: WorkerProcess | None = None
    try:

        async def held_by(*workers: str, each: int) -> bool:
            now = await owners(stream)
            return len(now) == stream.layout.shards and all(
                sum(1 for w in now.values() if w == worker) == each for worker in workers
            )

        await until_async(lambda: held_by("w-a", each=4), 30, "the first worker takes every shard")
        second = WorkerProcess("w-b", stream.url, url, tmp_path)
        await until_async(lambda: held_by("w-a", "w-b", each=2), 30, "the second worker gets its share")
        for agent in agents:
            for start in range(1, 101, 10):
                await stream.frame(agent, range(start, start + 10))
        await until(lambda: store.count_events() == 2000, 30)

        first.kill()
        for agent in agents:
            for start in range(101, 201, 10):
                await stream.frame(agent, range(start, start + 10))
        # Its leases run out (3 s), the survivor takes them, JetStream redelivers what was unacked (3 s).
        await until_async(lambda: held_by("w-b", each=4), 30, "the survivor takes over every shard")
        await until(lambda: store.count_events() == 4000, 30)
        for agent in agents:
            assert stored_seqs(store, agent) == list(range(1, 201)), agent
    finally:
        store.close()
        first.kill()
        if second is not None:
            assert second.stop() == 0, second.log()
            assert "Traceback" not in second.log(), second.log()


async def test_the_store_away_for_a_while_costs_nothing(
    stream: Stream, postgres_database: str, tmp_path: Path
) -> None:
    link = CuttableLink()
    with fresh_schema(postgres_database) as direct:
        register(direct, tmp_path, "a-1", "a-2")
        worker = Worker(settings(stream, link.url(direct), tmp_path, "w-pg", metrics_enabled=False))
        task = asyncio.create_task(worker.run())
        store = open_store(direct, tmp_path)
        try:
            await stream.frame("a-1", range(1, 51))
            await until(lambda: store.count_events() == 50)
            link.cut()
            for start in range(51, 201, 10):
                await stream.frame("a-1", range(start, start + 10))
                await stream.frame("a-2", range(start, start + 10))
            await asyncio.sleep(4)  # longer than the ack wait (3 s): redeliveries meet the retries
            assert store.count_events() == 50
            link.restore()
            await until(lambda: store.count_events() == 50 + 150 * 2, 30)
            assert stored_seqs(store, "a-1") == list(range(1, 201))
            assert stored_seqs(store, "a-2") == list(range(51, 201))
        finally:
            worker.stop()
            await task
            store.close()
            link.close()


@pytest.mark.parametrize(
    ("bus", "message"),
    [
        ("memory://", r"a worker consumes NATS JetStream; use nats://HOST:PORT"),
        ("nats://127.0.0.1:1", r"cannot reach NATS at nats://127.0.0.1:1 .*is nats-server running there"),
    ],
)
def test_worker_refuses_a_bus_it_cannot_use(tmp_path: Path, bus: str, message: str) -> None:
    result = CliRunner().invoke(cli, ["worker", "--bus", bus, "--data-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert re.search(message, result.output), result.output


async def test_a_nats_restart_longer_than_the_lease_ttl_costs_nothing(tmp_path: Path) -> None:
    server = PrivateNats(tmp_path / "nats")
    server.start()
    bus = NatsBus(server.url, name="test_worker_restart")
    await bus.start()
    layout = await ensure_stream(
        bus.jetstream(), StreamLayout(name="RESTART", prefix="restart.events", shards=2)
    )
    publisher = FramePublisher(bus.jetstream(), layout, bus.client.max_payload)
    publisher.start()
    stream = Stream("restart", bus, layout, publisher)
    url = sqlite_store(tmp_path)
    register(url, tmp_path, "a-1", "a-2")
    worker_settings = settings(stream, url, tmp_path, "w-restart")
    worker = Worker(
        dataclasses.replace(worker_settings, bus=f"{server.url}?stream=RESTART&prefix=restart.events")
    )
    task = asyncio.create_task(worker.run())
    store = open_store(url, tmp_path)
    try:
        for agent in ("a-1", "a-2"):
            await stream.frame(agent, range(1, 51))
        await until(lambda: store.count_events() == 100)
        server.stop()
        await asyncio.sleep(5)  # the leases (3 s) run out meanwhile
        server.start()
        for agent in ("a-1", "a-2"):
            await until_async(lambda: reconnected(bus), 20, "the test's own connection is back")
            await asyncio.wait_for(stream.frame(agent, range(51, 101)), 20)
        await until(lambda: store.count_events() == 200, 30)
        for agent in ("a-1", "a-2"):
            assert stored_seqs(store, agent) == list(range(1, 101))
        assert worker.leases is not None and len(worker.leases.held) == 2
    finally:
        worker.stop()
        await task
        store.close()
        await publisher.close()
        await bus.close()
        server.stop()


async def reconnected(bus: NatsBus) -> bool:
    return bus.connected
