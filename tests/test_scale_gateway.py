"""The gateway in scale mode (``clawtrace up --bus nats://...``): acks wait for JetStream, not the store."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from clawtrace.cli.main import cli
from clawtrace.protocol import Hello, Log
from clawtrace.protocol.client import MemoryOutbox, UplinkClient
from gateway_process import GatewayProcess, free_port
from nats_server import (
    PrivateNats,
    delete_stream,
    require_shared_nats,
    scale_bus_url,
    stream_events,
    unique_name,
)
from test_gateway_protocol import agent_conn, frame, log, one_of_each


@pytest.fixture
def stream_name() -> Iterator[str]:
    name = unique_name("gw")
    yield name
    asyncio.run(delete_stream(require_shared_nats(), name.upper()))


@pytest.fixture
def scale_gateway(tmp_path: Path, stream_name: str) -> Iterator[GatewayProcess]:
    bus = scale_bus_url(require_shared_nats(), stream_name)
    gateway = GatewayProcess(tmp_path / "gw", extra_args=["--bus", bus])
    gateway.start()
    try:
        yield gateway
    finally:
        gateway.stop()
        assert "Traceback" not in gateway.log(), gateway.log()[-5000:]


async def test_acks_come_from_jetstream_and_events_wait_there_for_workers(
    scale_gateway: GatewayProcess, stream_name: str
) -> None:
    conn = await agent_conn(scale_gateway, "a-1", region="eu-west-1")
    await conn.send(frame(*one_of_each(1)))
    await conn.send(frame(log(9), log(10)))
    assert await conn.until_ack(10) == []
    await conn.close()
    # The store has nothing yet (no worker), but the welcome acks what JetStream has,
    # and a resend below it is dropped, as in embedded mode.
    conn = await agent_conn(scale_gateway, "a-1", region="eu-west-1")
    assert conn.welcome is not None and conn.welcome["ack"] == 10
    await conn.send(frame(log(9), log(10), log(11)))
    assert await conn.until_ack(11) == []
    await conn.close()
    events = await stream_events(require_shared_nats(), stream_name.upper())
    assert [e["seq"] for e in events] == list(range(1, 12))
    assert {e["agent"] for e in events} == {"a-1"}
    assert all("received" in e for e in events)
    # Acked, yet nothing in the gateway's store: workers write it (clawtrace worker).
    assert await asyncio.to_thread(scale_gateway.events, "a-1") == []


def event(seq: int) -> Log:
    return Log(seq=seq, ts=datetime.now(UTC), session="s1", stream="stdout", line=f"line {seq}")


async def test_nats_down_stops_acks_and_everything_drains_after(tmp_path: Path) -> None:
    nats_server = PrivateNats(tmp_path / "nats")
    nats_server.start()
    bus = scale_bus_url(nats_server.url, "down", ack_timeout_seconds=1)
    gateway = GatewayProcess(tmp_path / "gw", extra_args=["--bus", bus])
    client: UplinkClient | None = None
    runner: asyncio.Task[None] | None = None
    try:
        gateway.start()
        outbox = MemoryOutbox()
        client = UplinkClient(
            gateway.ws_url,
            Hello(agent="a-down", env="dev", region="r1"),
            outbox,
            token=gateway.token("dev", "agent"),
            reconnect_min=0.2,
            reconnect_max=1.0,
        )
        runner = asyncio.create_task(client.run())
        for seq in range(1, 101):
            outbox.append(event(seq))
        client.notify()
        await client.wait_acked(100, 15)

        nats_server.stop()
        for seq in range(101, 201):
            outbox.append(event(seq))
        client.notify()
        await asyncio.sleep(3)
        # Nothing acked while JetStream cannot have it: the agent keeps it all.
        assert client.acked_seq == 100
        assert len(outbox) == 100

        started = time.monotonic()
        nats_server.start()
        await client.wait_acked(200, 30)
        assert len(outbox) == 0
        assert time.monotonic() - started < 20
        stored = {e["seq"] for e in await stream_events(nats_server.url, "DOWN")}
        assert stored == set(range(1, 201))
    finally:
        if client is not None:
            await client.close()
        if runner is not None:
            runner.cancel()
        gateway.stop()
        nats_server.stop()
    log_text = gateway.log()
    assert "Traceback" not in log_text, log_text[-5000:]
    assert "disconnected from NATS" in log_text


@pytest.mark.parametrize(
    ("bus", "message"),
    [
        ("nats://127.0.0.1:1", r"cannot reach NATS at nats://127.0.0.1:1 .*is nats-server running there"),
        ("nats://127.0.0.1:4222?shardz=3", r"unknown parameter 'shardz'; known: .*shards"),
        ("kafka://127.0.0.1:9092", r"unsupported bus URL .*nats://HOST:PORT"),
    ],
)
def test_up_refuses_a_bus_it_cannot_use(tmp_path: Path, bus: str, message: str) -> None:
    result = CliRunner().invoke(
        cli, ["up", "--data-dir", str(tmp_path), "--port", str(free_port()), "--bus", bus]
    )
    assert result.exit_code == 1
    assert re.search(message, result.output), result.output
