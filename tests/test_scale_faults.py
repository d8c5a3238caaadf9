"""Issue 8's combined fault run: scale mode under every fault in turn, each event counted at the end.

Real processes throughout: two gateways (``clawtrace up --bus nats://... --store
postgresql://...``), two workers (``clawtrace worker``), 200 simulated agents
(one ``clawtrace simulate`` process, agents spread over both gateways and
failing over to the other), a NATS server of the test's own (``PrivateNats``,
so that it can be restarted) and the machine's PostgreSQL, which gateways and
workers reach through a ``CuttableLink``. While the agents stream, in turn:

1. kill -9 one gateway: its agents reconnect to the other;
2. kill -9 one worker: the other takes its shards over;
3. restart NATS: gateways stop acking, agents spool, everything drains after;
4. PostgreSQL unreachable for 30 s: workers retry, gateways keep acking.

Then the agents stop (flushing what they hold) and every event is counted
in PostgreSQL by (agent, seq): each agent's seqs are exactly 1..N, N being
what the simulator says the agent produced.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import nats
import nats.js.errors
import psycopg
import pytest

from clawtrace.access import create_token
from clawtrace.protocol import Hello, Log
from clawtrace.protocol.client import MemoryOutbox, UplinkClient
from clawtrace.store import open_store
from gateway_process import GatewayProcess, free_port
from http_receiver import HttpReceiver
from nats_server import PrivateNats, scale_bus_url, stream_events
from postgres import CuttableLink, fresh_database, fresh_schema
from test_gateway_protocol import agent_conn, frame, log
from waiting import wait_for
from worker_process import WorkerProcess

AGENTS = 200
# Events per second per agent (heartbeats aside), produced 3 at a time: ~300 events/s in all,
# ~100 frames/s, modest on 2 cores shared by 7 processes and other tests.
RATE = 1.5
BATCH = 3
SHARDS = 4
NATS_DOWN_SECONDS = 6.0
# How long a gateway waits for JetStream's acks of a frame (default 10 s): shorter than the NATS
# outage, so that gateways give up on frames, close the agents' connections and have them resent.
ACK_TIMEOUT_SECONDS = 3
POSTGRES_DOWN_SECONDS = 30.0
STREAM = "FAULTS"

T = TypeVar("T")

# Fires for every agent that streams, once: each (rule, agent) is its own notification group.
STREAMING_RULE = """
rules:
  - name: Streaming
    condition: events_per_s > 0
"""


def crashes(log: str) -> list[str]:
    """The log's records with a traceback."""
    records = re.split(r"\n(?=\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", log)
    return [record for record in records if "Traceback" in record]


class Simulator:
    """``clawtrace simulate`` for the whole fleet, its figures (per agent) rewritten every 0.5 s."""

    def __init__(self, gateways: list[GatewayProcess], token: str, data_dir: Path) -> None:
        self.stats_path = data_dir / "sim-stats.json"
        self.log_path = data_dir / "sim.log"
        args = [sys.executable, "-m", "clawtrace", "simulate", "--agents", str(AGENTS), "--quiet"]
        args += ["--gateway", ",".join(g.ws_url for g in gateways), "--rate", str(RATE)]
        args += ["--batch", str(BATCH), "--seed", "8", "--drain-timeout", "60"]
        args += ["--stats-file", str(self.stats_path), "--stats-every", "0.5"]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "CLAWTRACE_TOKEN": token, "PYTHONUNBUFFERED": "1"},
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stats(self) -> dict[str, Any]:
        if self.proc.poll() is not None and self.proc.returncode != 0:
            raise AssertionError(f"the simulator exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
        with contextlib.suppress(FileNotFoundError):
            stats: dict[str, Any] = json.loads(self.stats_path.read_bytes())
            return stats
        return {"per_agent": [], "connected": 0, "events_acked": 0, "events_generated": 0, "pending": 0}

    def agents(self) -> dict[str, dict[str, Any]]:
        return {a["agent"]: a for a in self.stats()["per_agent"]}

    def stop(self) -> dict[str, Any]:
        """SIGTERM: the agents stop, then wait (up to --drain-timeout) for their last acks."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(90)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"the simulator did not finish draining:\n{self.log()[-3000:]}") from None
        assert self.proc.returncode == 0, self.log()[-3000:]
        return self.stats()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Deployment:
    tmp: Path
    nats: PrivateNats
    link: CuttableLink
    postgres: str  # direct, for the test's own reads: never cut
    gateways: list[GatewayProcess]
    workers: list[WorkerProcess]
    # The workers' webhook receiver: every alert notification of the run.
    alerts: HttpReceiver
    simulator: Simulator | None = None
    timings: dict[str, float] = field(default_factory=dict)

    # --- what the test reads -------------------------------------------------

    def stored_counts(self) -> Counter[str]:
        """Events stored per agent (duplicates counted: the final check tells them apart)."""
        with psycopg.connect(self.postgres, autocommit=True) as conn:
            rows = conn.execute("SELECT agent, count(*) FROM events GROUP BY agent").fetchall()
        return Counter({agent: count for agent, count in rows})

    def notified(self, status: str = "firing") -> Counter[str]:
        """Notifications of the Streaming rule with ``status``, per agent."""
        bodies = [request.body for request in self.alerts.requests]
        return Counter(
            body["groupLabels"]["agent"]
            for body in bodies
            if body["groupLabels"].get("alertname") == "Streaming" and body["status"] == status
        )

    def saved_as_notified(self) -> int:
        """Streaming alerts whose notification the workers have saved (what a new owner reads)."""
        store = open_store(self.postgres, self.tmp)
        try:
            return sum(
                1 for a in store.load_alerts() if a.rule == "Streaming" and a.notified_state == "firing"
            )
        finally:
            store.close()

    def lease_losses(self) -> list[str]:
        """Leases lost by being slow (not by the kill): the workers' log lines saying so."""
        return [line for w in self.workers for line in w.log().splitlines() if "lost its lease" in line]

    def stored_events(self) -> list[tuple[str, int]]:
        with psycopg.connect(self.postgres, autocommit=True) as conn:
            return [(a, s) for a, s in conn.execute("SELECT agent, seq FROM events").fetchall()]

    async def shard_owners(self) -> dict[int, str]:
        """Which worker holds each shard's lease now (a connection of its own: NATS may have restarted)."""
        client = await nats.connect(self.nats.url, max_reconnect_attempts=0)
        out: dict[int, str] = {}
        try:
            kv = await client.jetstream().key_value(f"{STREAM}_LEASES")
            for shard in range(SHARDS):
                with contextlib.suppress(nats.js.errors.KeyNotFoundError):
                    entry = await kv.get(f"shard.{shard}")
                    if entry.value:
                        out[shard] = entry.value.decode()
        except nats.js.errors.BucketNotFoundError:
            pass
        finally:
            await client.close()
        return out

    def check_alive(self) -> None:
        """No process died of a fault (the test kills some on purpose: those have ``killed`` set)."""
        for gateway in self.gateways:
            proc = gateway.proc
            if proc is not None and proc.returncode is None and proc.poll() is not None:
                raise AssertionError(f"gateway on port {gateway.port} died:\n{gateway.log()[-3000:]}")
        for worker in self.workers:
            if worker.proc.returncode is None and worker.proc.poll() is not None:
                raise AssertionError(f"worker {worker.worker_id} died:\n{worker.log()[-3000:]}")


async def until(check: Callable[[], T | None], within: float, what: str) -> T:
    """``waiting.wait_for`` off the event loop (the alerts receiver runs on it)."""
    return await asyncio.to_thread(wait_for, check, within, what, 0.25)


async def until_async(check: Callable[[], Any], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:g} s waiting for {what}")
        await asyncio.sleep(0.25)


def laggards(wanted: dict[str, int], have: dict[str, int]) -> str:
    behind = {agent: (have.get(agent, 0), seq) for agent, seq in wanted.items() if have.get(agent, 0) < seq}
    shown = dict(list(behind.items())[:5])
    return f"{len(behind)} agents behind (have, want), e.g. {shown}"


@pytest.fixture
async def deployment(tmp_path: Path) -> AsyncIterator[Deployment]:
    server = PrivateNats(tmp_path / "nats")
    server.start()
    bus = scale_bus_url(server.url, STREAM.lower(), shards=SHARDS, ack_timeout_seconds=ACK_TIMEOUT_SECONDS)
    link = CuttableLink()
    alerts = HttpReceiver()
    await alerts.start()
    try:
        with fresh_database() as database, fresh_schema(database) as postgres:
            async for deployment in _run(tmp_path, server, bus, link, postgres, alerts):
                yield deployment
    finally:
        link.close()
        server.stop()
        await alerts.stop()


async def _run(
    tmp_path: Path, server: PrivateNats, bus: str, link: CuttableLink, postgres: str, alerts: HttpReceiver
) -> AsyncIterator[Deployment]:
    store_url = link.url(postgres)
    store = open_store(postgres, tmp_path)
    agent_token, _ = create_token(store, env="dev", role="agent")
    store.close()
    # The gateways run no metrics stage (workers do): each would otherwise take in every event.
    gateway_config = tmp_path / "gateway.toml"
    gateway_config.write_text("[gateway]\nmetrics_enabled = false\n")
    args = ["--bus", bus, "--store", store_url, "--config", str(gateway_config)]
    gateways = [GatewayProcess(tmp_path / f"gw-{n}", extra_args=args) for n in (1, 2)]
    workers: list[WorkerProcess] = []
    deployment: Deployment | None = None
    try:
        await asyncio.gather(*(asyncio.to_thread(g.start) for g in gateways))
        rules = tmp_path / "rules"
        rules.mkdir()
        (rules / "dev.yaml").write_text(STREAMING_RULE)
        worker_config = tmp_path / "worker.toml"
        worker_config.write_text(
            f"""
[gateway.alerts]
rules_dir = "{rules}"
default_rules = false
group_wait_seconds = 0.5
group_by = ["alertname", "agent"]

[[gateway.alerts.receivers]]
name = "oncall"
type = "webhook"
url = "{alerts.url()}"
"""
        )
        worker_extra = ["--config", str(worker_config)]
        # Short enough for a quick takeover, long enough that a busy machine does not lose a lease
        # by being slow (a lapsed lease may repeat a notification its owner had not saved yet).
        workers.extend(
            WorkerProcess(f"w-{n}", bus, store_url, tmp_path, *worker_extra, lease_ttl=5) for n in (1, 2)
        )
        deployment = Deployment(tmp_path, server, link, postgres, gateways, workers, alerts)
        deployment.simulator = Simulator(gateways, agent_token, tmp_path)
        yield deployment
    finally:
        if deployment is not None and deployment.simulator is not None:
            deployment.simulator.kill()
        link.restore()  # so that the processes can shut down cleanly
        codes = {worker.worker_id: worker.stop() for worker in workers}
        for gateway in gateways:
            gateway.stop()
        if deployment is not None:
            print("phase timings (s):", json.dumps(deployment.timings))
    logs = [process.log() for process in workers] + [process.log() for process in gateways]
    for text in logs:
        assert not crashes(text), crashes(text)[0][-5000:]
    assert codes.get("w-2") in (None, 0), workers[1].log()[-3000:]


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_gateway_worker_nats_and_postgres_faults_lose_and_duplicate_nothing(
    deployment: Deployment,
) -> None:
    d = deployment
    sim = d.simulator
    assert sim is not None
    first, second = d.gateways
    began = time.monotonic()

    def mark(phase: str) -> None:
        d.timings[phase] = round(time.monotonic() - began, 1)

    # --- everyone up: shards split between the workers, agents on both gateways, events stored ----
    await until_async(lambda: _split_evenly(d), 30, "the two workers to hold two shards each")

    def streaming() -> bool:
        agents = sim.agents()
        return len(agents) == AGENTS and all(a["connected"] and a["acked_seq"] >= 5 for a in agents.values())

    await until(streaming, 60, f"all {AGENTS} agents to connect and have events acked")
    on = Counter(a["gateway"] for a in sim.agents().values())
    assert on == {first.ws_url + "/v1/agent": AGENTS // 2, second.ws_url + "/v1/agent": AGENTS // 2}, on
    await until(lambda: len(d.stored_counts()) == AGENTS, 30, "events of every agent in PostgreSQL")
    await until(lambda: len(d.notified()) == AGENTS, 30, "the Streaming alert of every agent to fire")
    mark("streaming")

    # --- 1. kill -9 a gateway: its agents go on through the other ---------------------------------
    at_kill = {name: a["acked_seq"] for name, a in sim.agents().items()}
    first.kill()
    second_url = second.ws_url + "/v1/agent"

    def failed_over() -> bool:
        agents = sim.agents().values()
        return all(
            a["connected"] and a["gateway"] == second_url and a["acked_seq"] > at_kill[a["agent"]]
            for a in agents
        )

    await until(failed_over, 30, "every agent to be acked through the second gateway")
    mark("gateway_failover")

    # --- 2. kill -9 a worker: the other takes its shards over ------------------------------------
    # Notified alerts are saved by now (one sent and not yet saved when its worker dies is sent
    # again by the next owner: at least once, as with Alertmanager).
    await until(lambda: d.saved_as_notified() == AGENTS, 30, "the workers to save what they notified")
    acked = {name: a["acked_seq"] for name, a in sim.agents().items()}
    d.workers[0].kill()
    await until_async(lambda: _all_held_by(d, "w-2"), 30, "the surviving worker to hold every shard")
    await until(
        lambda: all(d.stored_counts()[a] >= seq for a, seq in acked.items()),
        30,
        "everything acked before the worker died to be stored",
    )
    mark("worker_takeover")
    # The survivor carries on the killed worker's firing alerts: none is notified again.
    await asyncio.sleep(2.0)  # a re-notification would be out by now (group_wait 0.5 s)
    twice = {agent: n for agent, n in d.notified().items() if n > 1}
    assert not twice and len(d.notified()) == AGENTS, (twice, d.lease_losses())

    # --- 3. restart NATS: gateways stop acking, agents spool; all drains after -------------------
    d.check_alive()
    d.nats.stop()
    stopped_at = time.monotonic()
    await asyncio.sleep(1.0)  # acks already on their way arrive
    before = sim.stats()
    await asyncio.sleep(NATS_DOWN_SECONDS - 1.0)
    during = sim.stats()
    d.nats.start()
    down_for = time.monotonic() - stopped_at
    assert during["events_acked"] == before["events_acked"], "events were acked while NATS was down"
    assert during["events_generated"] > before["events_generated"] + AGENTS, "the agents stopped working"
    assert during["pending"] > before["pending"], "the agents did not spool"
    spooled = {a["agent"]: a["last_seq"] for a in during["per_agent"]}

    def drained() -> bool:
        agents = sim.agents()
        return all(agents[a]["acked_seq"] >= seq for a, seq in spooled.items())

    await until(drained, 60, f"the spool of a {down_for:.0f} s NATS outage to drain")
    mark("nats_restart")
    # The gateways gave up on the frames JetStream did not ack in time and said so to the agents,
    # which reconnected and resent them.
    errors = sim.stats()["gateway_errors"]
    assert errors.get("store_unavailable", 0) > 0, errors
    d.check_alive()

    # --- 4. PostgreSQL unreachable for 30 s: workers retry, gateways keep acking -----------------
    d.link.cut()
    cut_at = time.monotonic()
    acked_at_cut = sim.stats()["events_acked"]
    await asyncio.sleep(1.0)
    stored_at_cut = d.stored_counts()
    await asyncio.sleep(POSTGRES_DOWN_SECONDS - (time.monotonic() - cut_at))
    acked_in_cut = sim.stats()["events_acked"]
    stored_in_cut = d.stored_counts()
    d.link.restore()
    assert acked_in_cut > acked_at_cut + AGENTS, "the gateways stopped acking while PostgreSQL was away"
    assert stored_in_cut == stored_at_cut, "events were stored while PostgreSQL was unreachable?"
    acked = {name: a["acked_seq"] for name, a in sim.agents().items()}
    await until(
        lambda: all(d.stored_counts()[a] >= seq for a, seq in acked.items()),
        60,
        "the workers to store what was acked during the PostgreSQL outage",
    )
    mark("postgres_outage")
    d.check_alive()

    # --- the end: agents stop and flush, workers store it all, every event counted ----------------
    final = sim.stop()
    mark("agents_stopped")
    produced = {a["agent"]: a for a in final["per_agent"]}
    assert len(produced) == AGENTS
    for agent in produced.values():
        assert agent["first_seq"] == 1 and agent["acked_seq"] == agent["last_seq"], agent
    assert final["pending"] == 0 and final["events_acked"] == final["events_generated"], final
    wanted = {name: int(agent["last_seq"]) for name, agent in produced.items()}
    total = sum(wanted.values())

    def all_stored() -> bool:
        return sum(d.stored_counts().values()) >= total

    try:
        await until(all_stored, 60, f"the workers to store all {total} events")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {laggards(wanted, dict(d.stored_counts()))}") from None
    mark("all_stored")
    rows = d.stored_events()
    twice = [key for key, n in Counter(rows).items() if n > 1]
    assert not twice, f"{len(twice)} events stored twice, e.g. {twice[:5]}"
    seqs: dict[str, list[int]] = {}
    for agent, seq in rows:
        seqs.setdefault(agent, []).append(seq)
    for name, last in wanted.items():
        got = sorted(seqs.get(name, []))
        expected = set(range(1, last + 1))
        assert got == list(range(1, last + 1)), (
            f"{name}: {len(got)} of {last} events stored; missing {sorted(expected - set(got))[:10]}"
            f", unexpected {sorted(set(got) - expected)[:10]}"
        )
    assert set(seqs) == set(wanted), set(seqs) ^ set(wanted)
    # Through every fault, each agent's alert fired once and never resolved (it streamed throughout).
    assert d.notified() == Counter({agent: 1 for agent in wanted}), d.notified().most_common(3)
    assert not d.notified("resolved"), d.notified("resolved")
    print(f"{total} events of {AGENTS} agents, each stored once; timings {d.timings}")


async def _split_evenly(d: Deployment) -> bool:
    owners = await d.shard_owners()
    return len(owners) == SHARDS and Counter(owners.values()) == {"w-1": 2, "w-2": 2}


async def _all_held_by(d: Deployment, worker: str) -> bool:
    owners = await d.shard_owners()
    return len(owners) == SHARDS and set(owners.values()) == {worker}


async def test_a_frame_lost_with_the_nats_connection_is_resent_not_skipped(tmp_path: Path) -> None:
    """What the combined run found once in a while (kill -9 of NATS): a frame written to NATS just
    before it died is lost, the agent's next frame waits in the gateway's reconnect buffer and
    lands after the restart; the welcome then acked the second one's seq and the agent dropped the
    first from its spool. The gateway now publishes an agent's next frame only once JetStream has
    the one before, so the stream never holds a frame above a hole."""
    server = PrivateNats(tmp_path / "nats")
    server.start()
    bus = scale_bus_url(server.url, "lost", ack_timeout_seconds=5)
    gateway = GatewayProcess(tmp_path / "gw", extra_args=["--bus", bus])
    try:
        gateway.start()
        conn = await agent_conn(gateway, "a-lost", region="r1")
        await conn.send(frame(*(log(seq) for seq in range(1, 11))))
        assert await conn.until_ack(10) == []
        server.pause()  # it reads nothing more: what the gateway publishes stays in the socket...
        await conn.send(frame(*(log(seq) for seq in range(11, 21))))
        await asyncio.sleep(0.5)
        assert server.proc is not None
        server.proc.kill()  # ... and dies with it
        server.proc.wait()
        await asyncio.sleep(0.5)  # the gateway knows: what it publishes now waits for the reconnect
        await conn.send(frame(*(log(seq) for seq in range(21, 31))))
        await asyncio.sleep(0.5)
        server.start()
        # 11-20 are never acknowledged: the gateway gives up on them and closes the connection.
        assert await conn.until_closed(within=20) == 1011
        assert conn.acked == 10
        again = await agent_conn(gateway, "a-lost", region="r1")
        assert again.welcome is not None and again.welcome["ack"] == 10  # not 30: 11-20 are missing
        await again.send(frame(*(log(seq) for seq in range(11, 31))))
        assert await again.until_ack(30) == []
        await again.close()
        seqs = [event["seq"] for event in await stream_events(server.url, "LOST")]
        assert sorted(set(seqs)) == list(range(1, 31)), seqs
    finally:
        gateway.stop()
        server.stop()
    assert not crashes(gateway.log()), gateway.log()[-5000:]


async def test_the_client_moves_on_to_the_next_gateway_when_one_is_gone(gateway: GatewayProcess) -> None:
    """What the agents of a killed gateway do above: the next URL of the list, on the next attempt."""
    gone = f"ws://127.0.0.1:{free_port()}"
    outbox = MemoryOutbox()
    hello = Hello(agent="a-next", env="dev", region="r1")
    client = UplinkClient(
        [gone, gateway.ws_url], hello, outbox, token=gateway.token("dev", "agent"), reconnect_min=0.1
    )
    assert client.urls == [f"{gone}/v1/agent", f"{gateway.ws_url}/v1/agent"]
    runner = asyncio.create_task(client.run())
    try:
        for seq in range(1, 6):
            outbox.append(Log(seq=seq, ts=datetime.now(UTC), session="s1", stream="stdout", line="hi"))
        client.notify()
        await client.wait_acked(5, 15)
        assert client.url == f"{gateway.ws_url}/v1/agent" and client.connects == 1
    finally:
        await client.close()
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
    assert [e["seq"] for e in await asyncio.to_thread(gateway.events, "a-next")] == [1, 2, 3, 4, 5]
