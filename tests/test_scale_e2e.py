"""Scale mode end to end: two gateways and a worker on NATS JetStream and PostgreSQL, real processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from clawtrace.access import create_token
from clawtrace.protocol import Hello, Log
from clawtrace.protocol.client import MemoryOutbox, UplinkClient
from clawtrace.store import open_store
from gateway_process import GatewayProcess
from nats_server import delete_stream, require_shared_nats, scale_bus_url, unique_name
from postgres import fresh_database, fresh_schema
from releases import upload, write_release_dir
from test_gateway_protocol import Conn, hello_frame, open_ws
from test_policy_gateway import EXAMPLES, bundle_body
from worker_process import WorkerProcess


@dataclass
class Cluster:
    first: GatewayProcess
    second: GatewayProcess
    worker: WorkerProcess
    agent_token: str
    admin_token: str

    def post(self, gateway: GatewayProcess, path: str, body: dict[str, Any]) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        return httpx.post(f"{gateway.http_url}{path}", json=body, headers=headers, timeout=30)

    async def agent(self, gateway: GatewayProcess, agent: str) -> Conn:
        return await self.agent_with(gateway, agent)

    async def agent_with(self, gateway: GatewayProcess, agent: str, **hello: Any) -> Conn:
        conn = Conn(await open_ws(gateway, self.agent_token))
        await conn.send(hello_frame(agent, "dev", region="eu-west-1", **hello))
        conn.welcome = await conn.recv()
        assert conn.welcome["type"] == "welcome", conn.welcome
        return conn


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Two gateways on one PostgreSQL store and one stream, one worker: shared by this module's tests."""
    tmp_path = tmp_path_factory.mktemp("scale")
    name = unique_name("e2e")
    bus = scale_bus_url(require_shared_nats(), name)
    with fresh_database() as database, fresh_schema(database) as postgres:
        store = open_store(postgres, tmp_path)
        agent_token, _ = create_token(store, env="dev", role="agent")
        admin_token, _ = create_token(store, env="*", role="admin")
        store.close()
        args = ["--bus", bus, "--store", postgres]
        # The second runs no metrics stage: its live tail takes each viewer's subjects from NATS
        # instead of every event (the first gets them all, for its live numbers).
        no_metrics = tmp_path / "no-metrics.toml"
        no_metrics.write_text("[gateway]\nmetrics_enabled = false\n")
        first = GatewayProcess(tmp_path / "gw-1", extra_args=args)
        second = GatewayProcess(tmp_path / "gw-2", extra_args=[*args, "--config", str(no_metrics)])
        worker = WorkerProcess("w-e2e", bus, postgres, tmp_path)
        try:
            with ThreadPoolExecutor(2) as pool:
                list(pool.map(GatewayProcess.start, (first, second)))
            yield Cluster(first, second, worker, agent_token, admin_token)
        finally:
            worker_code = worker.stop()
            first.stop()
            second.stop()
            asyncio.run(delete_stream(require_shared_nats(), name.upper()))
        assert worker_code == 0, worker.log()
        for process in (first, second):
            assert "Traceback" not in process.log(), process.log()[-5000:]


def event(seq: int) -> Log:
    return Log(seq=seq, ts=datetime.now(UTC), session="s1", stream="stdout", line=f"line {seq}")


async def stored_seqs(gateway: GatewayProcess, agent: str, token: str) -> list[int]:
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as client:
        response = await client.get(
            f"{gateway.http_url}/api/v1/agents/{agent}/events", params={"limit": 5000}, timeout=30
        )
    response.raise_for_status()
    return [e["seq"] for e in response.json()["events"]]


async def live_seqs(viewer: ClientConnection, count: int) -> list[int]:
    seen: list[int] = []
    deadline = time.monotonic() + 15
    while len(seen) < count and time.monotonic() < deadline:
        message = json.loads(await asyncio.wait_for(viewer.recv(), 15))
        if message["type"] == "events":
            seen.extend(e["seq"] for e in message["events"])
    return seen


async def test_events_through_one_gateway_are_live_on_both_and_stored_by_the_worker(
    cluster: Cluster,
) -> None:
    query = f"/api/v1/live?agent=a-e2e&token={cluster.admin_token}"
    client: UplinkClient | None = None
    runner: asyncio.Task[None] | None = None
    try:
        async with (
            connect(f"ws://127.0.0.1:{cluster.first.port}{query}", open_timeout=15) as here,
            connect(f"ws://127.0.0.1:{cluster.second.port}{query}", open_timeout=15) as elsewhere,
        ):
            outbox = MemoryOutbox()
            hello = Hello(agent="a-e2e", env="dev", region="eu-west-1")
            client = UplinkClient(cluster.first.ws_url, hello, outbox, token=cluster.agent_token)
            runner = asyncio.create_task(client.run())
            for seq in range(1, 301):
                outbox.append(event(seq))
            client.notify()
            await client.wait_acked(300, 20)
            # Connected to the first gateway, tailed live on both (through NATS: the first's
            # mirror of every event, the second's subscription for this viewer).
            assert await live_seqs(here, 300) == list(range(1, 301))
            assert await live_seqs(elsewhere, 300) == list(range(1, 301))
    finally:
        if client is not None:
            await client.close()
        if runner is not None:
            runner.cancel()
    # Stored by the worker, read through either gateway.
    deadline = time.monotonic() + 30
    while await stored_seqs(cluster.second, "a-e2e", cluster.admin_token) != list(range(1, 301)):
        assert time.monotonic() < deadline, "the worker did not store every event in time"
        await asyncio.sleep(0.3)
    assert await stored_seqs(cluster.first, "a-e2e", cluster.admin_token) == list(range(1, 301))


async def test_commands_reach_the_agent_through_whichever_gateway_holds_it(cluster: Cluster) -> None:
    conn = await cluster.agent(cluster.first, "a-cmd")
    try:
        response = await asyncio.to_thread(
            cluster.post,
            cluster.second,
            "/api/v1/agents/a-cmd/commands",
            {"action": "restart", "reason": "t"},
        )
        assert response.status_code == 202, response.text
        assert response.json()["delivered"] is True
        command = await conn.recv()
        assert (command["type"], command["action"], command["reason"]) == ("command", "restart", "t")

        response = await asyncio.to_thread(
            cluster.post,
            cluster.second,
            "/api/v1/agents/a-cmd/commands",
            {"action": "quarantine", "reason": "q"},
        )
        assert response.status_code == 202 and response.json()["delivered"] is True, response.text
        assert (await conn.recv())["action"] == "quarantine"
    finally:
        await conn.close()
    # The quarantine set through the second gateway is known to the first: its welcome says so.
    again = await cluster.agent(cluster.first, "a-cmd")
    await again.close()
    assert again.welcome is not None and again.welcome.get("quarantine") == "q"
    # Nobody holds the agent now: said at once, not after a timeout.
    started = time.monotonic()
    response = await asyncio.to_thread(
        cluster.post, cluster.second, "/api/v1/agents/a-cmd/commands", {"action": "restart"}
    )
    assert response.status_code == 409 and response.json()["error"]["code"] == "not_connected"
    assert time.monotonic() - started < 3


async def next_command(conn: Conn, action: str) -> dict[str, Any]:
    """The next command with ``action`` the agent gets (others, acks included, passed over)."""
    deadline = time.monotonic() + 20
    while True:
        message = await conn.recv(max(0.1, deadline - time.monotonic()))
        if message["type"] == "command" and message["action"] == action:
            return message


async def test_a_bundle_applied_through_one_gateway_reaches_the_others_agents_and_decisions(
    cluster: Cluster,
) -> None:
    conn = await cluster.agent(cluster.second, "a-policy")
    try:
        headers = {"Authorization": f"Bearer {cluster.admin_token}"}
        applied = await asyncio.to_thread(
            httpx.put,
            f"{cluster.first.http_url}/api/v1/policies/dev",
            json=bundle_body(EXAMPLES / "dev"),
            headers=headers,
            timeout=30,
        )
        assert applied.status_code == 200, applied.text
        version = applied.json()["version"]
        # The second gateway holds the agent: it heard of the bundle and pushed it.
        command = await next_command(conn, "policy")
        assert command["payload"]["version"] == version
        decided = await asyncio.to_thread(
            cluster.post, cluster.second, "/v1/authorize", {"agent": "a-policy", "tool": "search"}
        )
        assert decided.status_code == 200 and decided.json()["policy_version"] == version, decided.text
    finally:
        await conn.close()
    # A later connection to either gateway gets it with its welcome.
    again = await cluster.agent(cluster.second, "a-policy")
    try:
        assert (await next_command(again, "policy"))["payload"]["version"] == version
    finally:
        await again.close()


async def test_a_deploy_through_one_gateway_rolls_out_to_role_agents_on_the_other(
    cluster: Cluster, tmp_path: Path
) -> None:
    release = upload(
        cluster.first.http_url,
        cluster.admin_token,
        write_release_dir(tmp_path / "r", role="scaler", version="1.0.0"),
    )
    conn = await cluster.agent_with(cluster.second, "a-role", role="scaler")
    try:
        deployed = await asyncio.to_thread(
            cluster.post, cluster.first, "/api/v1/deployments", {"release": "scaler@1.0.0", "env": "dev"}
        )
        assert deployed.status_code == 201, deployed.text
        command = await next_command(conn, "deploy")
        assert command["payload"] == {"release": release.id, "ref": "scaler@1.0.0"}
    finally:
        await conn.close()
    # The agent comes back running it: whichever gateway leads rollouts sees it complete.
    running = await cluster.agent_with(cluster.second, "a-role", role="scaler", release=release.id)
    try:
        deadline = time.monotonic() + 20
        while True:
            status = await asyncio.to_thread(
                lambda: httpx.get(
                    f"{cluster.first.http_url}/api/v1/envs/dev/roles/scaler",
                    headers={"Authorization": f"Bearer {cluster.admin_token}"},
                    timeout=10,
                ).json()
            )
            if status["deployment"]["phase"] == "complete":
                break
            assert time.monotonic() < deadline, status
            await asyncio.sleep(0.3)
        assert status["progress"]["running"] == status["progress"]["total"] == 1
    finally:
        await running.close()


async def test_a_killed_gateways_agents_go_on_through_the_other_nothing_lost_or_twice(
    cluster: Cluster,
) -> None:
    """Last in this module: it kills the first gateway. The agent's outbox outlives its connection,
    as a node agent's spool does; a load balancer would send its reconnect to the other gateway."""
    outbox = MemoryOutbox()
    hello = Hello(agent="a-failover", env="dev", region="eu-west-1")
    first = UplinkClient(cluster.first.ws_url, hello, outbox, token=cluster.agent_token, max_batch=20)
    runner = asyncio.create_task(first.run())
    for seq in range(1, 2001):
        outbox.append(event(seq))
    first.notify()
    try:
        await first.wait_acked(200, 20)
        cluster.first.kill()  # mid-stream: some frames published and not acked, some not published
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
    second = UplinkClient(cluster.second.ws_url, hello, outbox, token=cluster.agent_token)
    runner = asyncio.create_task(second.run())
    try:
        await second.wait_acked(2000, 30)
    finally:
        await second.close()
        runner.cancel()
    deadline = time.monotonic() + 30
    while (seqs := await stored_seqs(cluster.second, "a-failover", cluster.admin_token)) != list(
        range(1, 2001)
    ):
        assert time.monotonic() < deadline, f"stored {len(seqs)} events, {len(set(seqs))} distinct"
        await asyncio.sleep(0.3)
