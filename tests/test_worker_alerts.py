"""Scale mode: workers evaluate the alerts, each for the agents of its shards.

A real gateway process in scale mode, real NATS JetStream and PostgreSQL, a
real webhook receiver; workers as real processes where one is killed, in
this process where the test watches a graceful handover. Rules are short
so that the tests run in seconds: a run of 3 failed tool calls (``ToolLoop``),
3 s without a sign of life (``Silent``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import msgspec
import nats
import nats.js.errors
import pytest

from clawtrace.access import create_token
from clawtrace.alerts.model import Silence
from clawtrace.bus.layout import shard_of
from clawtrace.gateway import load_settings
from clawtrace.store import open_store
from clawtrace.worker.service import Worker, WorkerSettings
from clawtrace.worker.shard import ConsumerSettings
from gateway_process import GatewayProcess
from http_receiver import HttpReceiver
from nats_server import delete_stream, require_shared_nats, scale_bus_url, unique_name
from postgres import fresh_database, fresh_schema
from test_gateway_protocol import Conn, frame, hello_frame, open_ws
from worker_process import WorkerProcess

T = TypeVar("T")
SHARDS = 4
RULES = """
rules:
  - name: ToolLoop
    condition: consecutive_failed_tool_calls > 2
    scope: {agent: "a-*"}
    severity: critical
  - name: Silent
    condition: heartbeat_age_s > 3
    scope: {agent: "hb-*"}
  - name: Runaway
    condition: consecutive_failed_tool_calls > 2
    scope: {agent: "q-*"}
    actions: [notify, quarantine, restart]
"""


def now_ts() -> str:
    return datetime.now(UTC).isoformat()


def tool_result(seq: int, ok: bool) -> dict[str, Any]:
    return {
        "kind": "tool_result",
        "seq": seq,
        "ts": now_ts(),
        "session": "s1",
        "call_id": f"c{seq}",
        "ok": ok,
        "duration_ms": 5.0,
    }


def heartbeat(seq: int) -> dict[str, Any]:
    return {"kind": "heartbeat", "seq": seq, "ts": now_ts(), "session": "s1", "cpu_percent": 1.0}


def lifecycle(seq: int, state: str) -> dict[str, Any]:
    return {"kind": "lifecycle", "seq": seq, "ts": now_ts(), "session": "s1", "state": state}


@dataclass
class Scale:
    """A scale-mode gateway on a stream and a PostgreSQL schema of this test's own."""

    tmp_path: Path
    name: str
    bus: str
    store: str
    config: Path
    webhook: HttpReceiver
    gateway: GatewayProcess
    agent_token: str
    admin_token: str
    workers: list[WorkerProcess] = field(default_factory=list)

    def worker(self, worker_id: str) -> WorkerProcess:
        process = WorkerProcess(worker_id, self.bus, self.store, self.tmp_path, "--config", str(self.config))
        self.workers.append(process)
        return process

    def worker_settings(self, worker_id: str, reload_seconds: float = 5.0) -> WorkerSettings:
        """The same as ``clawtrace worker --config`` would run, for a worker in this process."""
        shared = load_settings(self.config)
        return WorkerSettings(
            bus=self.bus,
            store=self.store,
            data_dir=str(self.tmp_path),
            worker_id=worker_id,
            lease_ttl_seconds=3.0,
            consumer=ConsumerSettings(fetch_batch=64, ack_wait_seconds=3.0),
            alerts=shared.alerts,
            alerts_reload_seconds=reload_seconds,
        )

    async def agent(self, agent: str) -> Conn:
        conn = Conn(await open_ws(self.gateway, self.agent_token))
        await conn.send(hello_frame(agent, "dev", region="eu-west-1"))
        conn.welcome = await conn.recv()
        assert conn.welcome["type"] == "welcome", conn.welcome
        conn.acked = conn.welcome["ack"]
        return conn

    async def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        async with httpx.AsyncClient(base_url=self.gateway.http_url, headers=headers, timeout=30) as client:
            return await client.request(method, path, **kwargs)

    async def alerts(self) -> list[dict[str, Any]]:
        response = await self.api("GET", "/api/v1/alerts", params={"state": "all"})
        assert response.status_code == 200, response.text
        found: list[dict[str, Any]] = response.json()["alerts"]
        return found

    async def alert(self, rule: str, agent: str) -> dict[str, Any] | None:
        return next((a for a in await self.alerts() if a["rule"] == rule and a["agent"] == agent), None)

    def posts(self, rule: str, agent: str, status: str | None = None) -> list[dict[str, Any]]:
        """Notifications the webhook received about one alert (each carries one group: one alert)."""
        out = []
        for request in self.webhook.requests:
            body = request.body
            labels = body["groupLabels"]
            about = labels.get("alertname") == rule and labels.get("agent") == agent
            if about and (status is None or body["status"] == status):
                out.append(body)
        return out

    async def owners(self) -> dict[int, str]:
        client = await nats.connect(require_shared_nats())
        out: dict[int, str] = {}
        try:
            try:
                kv = await client.jetstream().key_value(f"{self.name.upper()}_LEASES")
            except nats.js.errors.BucketNotFoundError:
                return out
            for shard in range(SHARDS):
                with contextlib.suppress(nats.js.errors.KeyNotFoundError):
                    entry = await kv.get(f"shard.{shard}")
                    if entry.value:
                        out[shard] = entry.value.decode()
        finally:
            await client.close()
        return out

    async def held_by(self, **counts: int) -> bool:
        owners = await self.owners()
        return len(owners) == SHARDS and all(
            sum(1 for w in owners.values() if w == worker) == count for worker, count in counts.items()
        )


async def until(check: Callable[[], Awaitable[T | None]], within: float, what: str) -> T:
    deadline = time.monotonic() + within
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:g} s waiting for {what}")
        await asyncio.sleep(0.2)


@pytest.fixture
async def scale(tmp_path: Path) -> AsyncIterator[Scale]:
    webhook = HttpReceiver()
    await webhook.start()
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    (rules_dir / "dev.yaml").write_text(RULES)
    config = tmp_path / "clawtrace.toml"
    config.write_text(
        f"""
[gateway.alerts]
rules_dir = "{rules_dir}"
default_rules = false
group_wait_seconds = 0.5
group_interval_seconds = 1
group_by = ["alertname", "agent"]

[[gateway.alerts.receivers]]
name = "oncall"
type = "webhook"
url = "{webhook.url()}"
"""
    )
    name = unique_name("wa")
    bus = scale_bus_url(require_shared_nats(), name, shards=SHARDS)
    with fresh_database() as database, fresh_schema(database) as postgres:
        store = open_store(postgres, tmp_path)
        agent_token, _ = create_token(store, env="dev", role="agent")
        admin_token, _ = create_token(store, env="*", role="admin")
        store.close()
        gateway = GatewayProcess(
            tmp_path / "gw", extra_args=["--bus", bus, "--store", postgres, "--config", str(config)]
        )
        cluster = Scale(tmp_path, name, bus, postgres, config, webhook, gateway, agent_token, admin_token)
        try:
            await asyncio.to_thread(gateway.start)
            yield cluster
        finally:
            codes = {w.worker_id: w.stop() for w in cluster.workers if w.proc.returncode is None}
            gateway.stop()
            await webhook.stop()
            await delete_stream(require_shared_nats(), name.upper())
        for worker in cluster.workers:
            if worker.worker_id in codes:
                assert codes[worker.worker_id] == 0, worker.log()[-5000:]
                assert "Traceback" not in worker.log(), worker.log()[-5000:]
        assert "Traceback" not in gateway.log(), gateway.log()[-5000:]


async def send(conn: Conn, *events: dict[str, Any]) -> None:
    await conn.send(frame(*events))
    await conn.until_ack(max(e["seq"] for e in events))


async def test_alerts_fire_once_are_silenced_acked_and_survive_a_killed_worker(scale: Scale) -> None:
    first, second = scale.worker("w-1"), scale.worker("w-2")
    await until(lambda: scale.held_by(**{"w-1": 2, "w-2": 2}), 40, "the two workers share the shards")

    # A run of failed tool calls: the worker holding a-1's shard fires ToolLoop, notified once.
    a1 = await scale.agent("a-1")
    await send(a1, *(tool_result(seq, ok=False) for seq in (1, 2, 3)))
    await scale.webhook.wait_for(1, within=20)
    await asyncio.sleep(2.5)  # room for a second notification (group_interval 1 s), which must not come
    assert len(scale.posts("ToolLoop", "a-1", "firing")) == 1, scale.webhook.requests
    assert len(scale.webhook.requests) == 1

    # Any gateway's API reads it from the store, with what was notified.
    fired = await until(
        lambda: scale.alert("ToolLoop", "a-1"), 10, "the gateway to list the alert from the store"
    )
    assert fired["state"] == "firing" and fired["value"] == 3.0
    await until(
        lambda: _with(scale.alert("ToolLoop", "a-1"), notified_state="firing"), 10, "the notified state"
    )

    # Acknowledged through the gateway: recorded, and kept by the worker that evaluates it.
    response = await scale.api("POST", "/api/v1/alerts/ToolLoop/a-1/ack")
    assert response.status_code == 200, response.text
    assert response.json()["alert"]["acknowledged_by"] is not None
    await asyncio.sleep(1.5)  # the worker saves its state on its next ticks: the ack must survive them
    acked = await scale.alert("ToolLoop", "a-1")
    assert acked is not None and acked["acknowledged_by"] is not None, acked

    # A silence through the gateway: a-2's alert fires, silenced, and nobody is told.
    response = await scale.api(
        "POST",
        "/api/v1/silences",
        json={"target": "a-2", "reason": "maintenance", "duration_seconds": 600, "env": "dev"},
    )
    assert response.status_code == 201, response.text
    silence = response.json()["silence"]["id"]
    a2 = await scale.agent("a-2")
    await send(a2, *(tool_result(seq, ok=False) for seq in (1, 2, 3)))
    silenced = await until(
        lambda: _with(scale.alert("ToolLoop", "a-2"), state="firing"), 15, "a-2's alert to fire"
    )
    assert silenced["silenced_by"] == silence, silenced

    # Presence news: hb-1 connects and sends nothing (only its hello tells the worker it exists)
    # and goes silent for 3 s: Silent fires. hb-2 says it stopped on purpose and disconnects:
    # nothing fires for it (it would if the disconnect had not reached the worker).
    hb1 = await scale.agent("hb-1")
    hb2 = await scale.agent("hb-2")
    await send(hb2, heartbeat(1), lifecycle(2, "stopped"))
    await hb2.ws.close()
    await until(lambda: _posted(scale, "Silent", "hb-1"), 20, "Silent to fire for the silent agent")
    await asyncio.sleep(2.5)
    assert scale.posts("ToolLoop", "a-2") == [], "a silenced alert was notified"
    assert scale.posts("Silent", "hb-2") == [], "an agent stopped on purpose was taken for dead"
    assert await scale.alert("Silent", "hb-2") is None
    assert await until(lambda: _with(scale.alert("Silent", "hb-1"), notified_state="firing"), 10, "saved")

    # kill -9 the worker holding a-1: the other takes its shards over and carries its alerts on.
    shard = shard_of("a-1", SHARDS)
    owner = (await scale.owners())[shard]
    victim, survivor = (first, second) if owner == "w-1" else (second, first)
    before = len(scale.webhook.requests)
    taken = f"shard {shard}: evaluating alerts"
    taken_before = survivor.log().count(taken)
    victim.kill()
    await until(lambda: scale.held_by(**{survivor.worker_id: SHARDS}), 30, "the survivor takes every shard")
    await until(lambda: _logged(survivor, taken, taken_before + 1), 20, "the survivor to take the alerts")
    await asyncio.sleep(3)  # a re-notification (firing or resolved) would be out by now
    assert len(scale.webhook.requests) == before, scale.webhook.requests[before:]
    carried = await scale.alert("ToolLoop", "a-1")
    assert carried is not None and carried["state"] == "firing", carried
    assert carried["acknowledged_by"] is not None, carried

    # The survivor evaluates a-1 now: a success ends the run (resolved, told once), a new run fires
    # once more, told once.
    await send(a1, tool_result(4, ok=True))
    await until(lambda: _posted(scale, "ToolLoop", "a-1", "resolved"), 15, "the resolved notification")
    await send(a1, *(tool_result(seq, ok=False) for seq in (5, 6, 7)))
    await until(lambda: _posted(scale, "ToolLoop", "a-1", "firing", count=2), 15, "the second firing")
    await asyncio.sleep(2.5)
    assert len(scale.posts("ToolLoop", "a-1", "firing")) == 2
    assert len(scale.posts("ToolLoop", "a-1", "resolved")) == 1
    again = await scale.alert("ToolLoop", "a-1")
    assert again is not None and again["state"] == "firing" and again["acknowledged_by"] is None, again
    assert len(scale.webhook.requests) == before + 2, scale.webhook.requests[before:]
    for conn in (a1, a2, hb1):
        await conn.ws.close()


async def test_a_shard_given_back_on_purpose_hands_its_alerts_over(scale: Scale) -> None:
    """A second worker joins: the first gives it half the shards, their alerts with them (saved
    first). Silences set and expired through the gateway reach whichever holds the alert by notice
    (the workers here reload nothing from the store by themselves), and what a missed notice would
    have said is found in the store at the next reload."""
    agent = next(f"a-{i}" for i in range(100) if shard_of(f"a-{i}", SHARDS) >= SHARDS // 2)
    first = Worker(scale.worker_settings("w-in-1", reload_seconds=3600))
    first_run = asyncio.create_task(first.run())
    second: Worker | None = None
    second_run: asyncio.Task[None] | None = None
    try:
        await until(lambda: scale.held_by(**{"w-in-1": SHARDS}), 30, "the first worker takes every shard")
        conn = await scale.agent(agent)
        await send(conn, *(tool_result(seq, ok=False) for seq in (1, 2, 3)))
        await until(lambda: _posted(scale, "ToolLoop", agent, "firing"), 20, "the alert to fire")
        assert first.alerts is not None
        await until(
            lambda: _with(scale.alert("ToolLoop", agent), notified_state="firing"), 10, "the notified state"
        )

        # The first gives the higher half of the shards back when the second joins.
        second = Worker(scale.worker_settings("w-in-2", reload_seconds=3600))
        second_run = asyncio.create_task(second.run())
        await until(lambda: scale.held_by(**{"w-in-1": 2, "w-in-2": 2}), 30, "the shards to be shared")
        assert (await scale.owners())[shard_of(agent, SHARDS)] == "w-in-2"
        await until(lambda: _async(second.alerts is not None and second.alerts.engine.alerts), 20, "taken")
        assert second.alerts is not None and first.alerts is not None
        assert ("ToolLoop", agent) in second.alerts.engine.alerts
        assert ("ToolLoop", agent) not in first.alerts.engine.alerts
        assert agent not in first.alerts.engine.watched
        await asyncio.sleep(2.5)
        assert len(scale.posts("ToolLoop", agent)) == 1, "the handover notified the alert again"

        # A silence set through the gateway reaches the new owner: the alert is marked silenced,
        # and neither its resolving nor its firing again is told.
        owner = second.alerts.engine
        response = await scale.api(
            "POST",
            "/api/v1/silences",
            json={"target": "ToolLoop", "reason": "t", "duration_seconds": 600, "env": "dev"},
        )
        assert response.status_code == 201, response.text
        silence = response.json()["silence"]["id"]
        await until(lambda: _async(silence in owner.silences), 10, "the silence notice")
        await until(lambda: _with(scale.alert("ToolLoop", agent), silenced_by=silence), 10, "silenced")
        await send(conn, tool_result(4, ok=True))
        await until(lambda: _with(scale.alert("ToolLoop", agent), state="resolved"), 10, "resolved")
        await send(conn, *(tool_result(seq, ok=False) for seq in (5, 6, 7)))
        await until(
            lambda: _with(scale.alert("ToolLoop", agent), state="firing", silenced_by=silence), 10, "firing"
        )
        await asyncio.sleep(2.5)
        assert len(scale.posts("ToolLoop", agent)) == 1, scale.posts("ToolLoop", agent)

        # Expired through the gateway: the owner forgets it, and what happens next is told again.
        response = await scale.api("DELETE", f"/api/v1/silences/{silence}")
        assert response.status_code == 200, response.text
        await until(lambda: _async(silence not in owner.silences), 10, "the expiry notice")
        await send(conn, tool_result(8, ok=True))
        await until(lambda: _posted(scale, "ToolLoop", agent, "resolved"), 15, "the resolved notification")
        await send(conn, *(tool_result(seq, ok=False) for seq in (9, 10, 11)))
        await until(lambda: _posted(scale, "ToolLoop", agent, "firing", count=2), 15, "the next firing")
        await until(
            lambda: _with(scale.alert("ToolLoop", agent), notified_state="firing", acknowledged_by=None),
            10,
            "the notified state",
        )
        await conn.ws.close()

        # Notices missed: a silence and an acknowledgement only in the store. The next reload has them.
        now = time.time()
        missed = Silence(
            id="missed", target=agent, env="dev", starts=now, ends=now + 600, created_by="t", reason="t"
        )
        await asyncio.to_thread(_store_behind_the_workers_back, scale.store, scale.tmp_path, agent, missed)
        assert "missed" not in owner.silences
        assert owner.alerts[("ToolLoop", agent)].acknowledged_by is None
        await second.alerts.reload()
        assert "missed" in owner.silences
        assert owner.alerts[("ToolLoop", agent)].silenced_by == "missed"
        assert owner.alerts[("ToolLoop", agent)].acknowledged_by == "someone"
    finally:
        for worker, run in ((second, second_run), (first, first_run)):
            if worker is not None and run is not None:
                worker.stop()
                await run


async def test_remediation_goes_through_nats_to_the_gateway_holding_the_agent(scale: Scale) -> None:
    """The worker has no agent connections: its quarantine is recorded in the store and announced
    (the gateway's welcome says so), its commands reach the agent through the gateway."""
    worker = Worker(scale.worker_settings("w-rem"))
    run = asyncio.create_task(worker.run())
    try:
        await until(lambda: scale.held_by(**{"w-rem": SHARDS}), 30, "the worker takes every shard")
        conn = await scale.agent("q-1")
        await send(conn, *(tool_result(seq, ok=False) for seq in (1, 2, 3)))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while len(conn.commands) < 2:
            conn._note(await conn.recv(max(0.1, deadline - loop.time())))
        assert [c["action"] for c in conn.commands] == ["quarantine", "restart"], conn.commands
        # Audited once the gateway has answered each request (the agent may be told before that).
        wanted = {("alert:Runaway", "quarantine", "ok"), ("alert:Runaway", "restart", "ok")}
        await until(lambda: _audited(scale, "q-1", wanted), 10, "the audit entries")
        await conn.ws.close()
        again = await scale.agent("q-1")
        assert again.welcome is not None and again.welcome.get("quarantine"), again.welcome
        await again.ws.close()
    finally:
        worker.stop()
        await run


def _store_behind_the_workers_back(url: str, data_dir: Path, agent: str, silence: Silence) -> None:
    store = open_store(url, data_dir)
    try:
        store.add_silence(silence)
        alert = next(a for a in store.load_alerts() if a.key == ("ToolLoop", agent))
        store.save_alerts(
            [msgspec.structs.replace(alert, acknowledged_by="someone", acknowledged_at=time.time())]
        )
    finally:
        store.close()


async def _with(pending: Awaitable[dict[str, Any] | None], **fields: Any) -> dict[str, Any] | None:
    found = await pending
    if found is None or any(found.get(key) != value for key, value in fields.items()):
        return None
    return found


async def _audited(scale: Scale, target: str, wanted: set[tuple[str, str, str]]) -> bool:
    response = await scale.api("GET", "/api/v1/audit", params={"target": target})
    entries = {(e["actor"], e["action"], e["result"]) for e in response.json()["entries"]}
    return wanted <= entries


async def _posted(scale: Scale, rule: str, agent: str, status: str | None = None, count: int = 1) -> bool:
    return len(scale.posts(rule, agent, status)) >= count


async def _logged(worker: WorkerProcess, text: str, times: int) -> bool:
    return worker.log().count(text) >= times


async def _async(value: T) -> T:
    return value
