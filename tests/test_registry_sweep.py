"""Scale mode: the agents of a gateway that died are marked disconnected (gateway/registry_sweep.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from clawtrace.bus.scale import EventStreamLink
from clawtrace.gateway.cluster_nats import NatsCluster, gateway_key
from clawtrace.gateway.registry_sweep import RegistrySweep
from clawtrace.gateway.writer import StoreWriter
from clawtrace.store import AgentInfo, Store, open_store
from nats_server import delete_stream, require_shared_nats, scale_bus_url, unique_name

TTL = 1.0


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[NatsCluster, EventStreamLink]]:
    name = unique_name("sweep")
    link = await EventStreamLink.open(scale_bus_url(require_shared_nats(), name), "test")
    cluster = NatsCluster(link, "gw-live", ttl_seconds=TTL)
    try:
        await cluster.start()
        yield cluster, link
    finally:
        await cluster.close()
        await link.close()
        await delete_stream(require_shared_nats(), name.upper())


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = open_store(f"sqlite:///{tmp_path / 'store.db'}", tmp_path)
    yield opened
    opened.close()


def connected(store: Store) -> dict[str, bool]:
    return {a.agent: a.connected for a in store.list_agents()}


async def test_a_dead_gateways_agents_are_disconnected_after_two_looks(
    cluster: tuple[NatsCluster, EventStreamLink], store: Store
) -> None:
    live, link = cluster
    for agent, gateway in (("a-1", "gw-dead"), ("a-2", "gw-dead"), ("a-3", "gw-live")):
        store.register_agent(AgentInfo(agent, "dev", "", {}, None), time.time(), gateway=gateway)
    # The dead gateway was alive once: its presence key lapses after the TTL, as after kill -9.
    kv = await link.js.key_value(f"{link.layout.name}_GATEWAYS")
    await kv.put(gateway_key("gw-dead"), b"")
    writer = StoreWriter(store, 100)
    writer.start()
    try:
        sweep = RegistrySweep(live, writer)
        await live.campaign("registry")
        deadline = time.monotonic() + 5
        while not live.leads("registry"):
            assert time.monotonic() < deadline, "the only gateway did not get the registry duty"
            await asyncio.sleep(0.05)
        assert await live.live_gateways() == {"gw-live", "gw-dead"}
        assert await sweep.sweep() == []
        await asyncio.sleep(TTL * 2)  # the key expires
        assert await live.live_gateways() == {"gw-live"}
        # One look is not enough (a NATS hiccup must not disconnect a fleet) ...
        assert await sweep.sweep() == []
        assert connected(store) == {"a-1": True, "a-2": True, "a-3": True}
        # ... two are.
        assert await sweep.sweep() == ["gw-dead"]
        assert connected(store) == {"a-1": False, "a-2": False, "a-3": True}
        assert await sweep.sweep() == []
    finally:
        writer.stop()

