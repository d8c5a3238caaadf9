"""Alerts end to end: a real gateway, real node agents or the simulator, a real webhook.

The dead-node test waits the real 45 s of the default rule (the one
real-time test); the others use a rule file with short thresholds, as an
operator testing their own rules would. Clock-driven versions of every
rule live in tests/test_alert_engine.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from clawtrace.sim import FleetConfig, Scenario, run_fleet
from gateway_process import GatewayProcess
from http_receiver import HttpReceiver
from node_process import AGENTS, PY, NodeAgentProcess

T = TypeVar("T")
V4_FIELDS = {
    "version",
    "groupKey",
    "truncatedAlerts",
    "status",
    "receiver",
    "groupLabels",
    "commonLabels",
    "commonAnnotations",
    "externalURL",
    "alerts",
}


@pytest.fixture
async def webhook() -> AsyncIterator[HttpReceiver]:
    receiver = HttpReceiver()
    await receiver.start()
    yield receiver
    await receiver.stop()


def gateway_config(tmp_path: Path, webhook: HttpReceiver, rules: dict[str, str] | None = None) -> Path:
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir(exist_ok=True)
    for env, text in (rules or {}).items():
        (rules_dir / f"{env}.yaml").write_text(text)
    config = tmp_path / "clawtrace.toml"
    config.write_text(
        f"""
[gateway.alerts]
rules_dir = "{rules_dir}"
group_wait_seconds = 0.5
group_interval_seconds = 1

[[gateway.alerts.receivers]]
name = "oncall"
type = "webhook"
url = "{webhook.url()}"
"""
    )
    return config


@pytest.fixture
def make_gateway(tmp_path: Path) -> Iterator[Callable[[Path], GatewayProcess]]:
    started: list[GatewayProcess] = []

    def make(config: Path) -> GatewayProcess:
        process = GatewayProcess(tmp_path / "gw", extra_args=["--config", str(config)])
        process.start()
        started.append(process)
        return process

    yield make
    for process in started:
        process.stop()


async def poll(check: Callable[[], T | None], seconds: float, what: str, interval: float = 0.2) -> T:
    deadline = time.monotonic() + seconds
    while True:
        value = await asyncio.to_thread(check)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        await asyncio.sleep(interval)


def alerts(gw: GatewayProcess, **params: Any) -> list[dict[str, Any]]:
    body: list[dict[str, Any]] = gw.get("/api/v1/alerts", **params).json()["alerts"]
    return body


def alert(gw: GatewayProcess, rule: str, agent: str, state: str = "firing") -> dict[str, Any] | None:
    """The alert if it is in ``state`` ("fired": firing now or fired and resolved since)."""
    for a in alerts(gw, state="all"):
        if a["rule"] != rule or a["agent"] != agent:
            continue
        if a["state"] == state or (state == "fired" and a["fired_at"] is not None):
            return a
    return None


def audit(gw: GatewayProcess, **params: Any) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = gw.get("/api/v1/audit", **params).json()["entries"]
    return entries


def child_pid(node: NodeAgentProcess) -> int | None:
    try:
        return int(json.loads((node.spool_dir / "child.json").read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None


def posts_for(webhook: HttpReceiver, alertname: str, status: str | None = None) -> list[dict[str, Any]]:
    return [
        r.body
        for r in webhook.requests
        if r.body["groupLabels"].get("alertname") == alertname
        and (status is None or r.body["status"] == status)
    ]


async def test_dead_node_fires_within_46_s_restarts_the_child_and_notifies(
    tmp_path: Path, webhook: HttpReceiver, make_gateway: Callable[[Path], GatewayProcess]
) -> None:
    """Real time, default rule: heartbeat_age_s > 45 -> notify + restart."""
    gw = make_gateway(gateway_config(tmp_path, webhook))
    node = NodeAgentProcess(
        tmp_path,
        gw,
        [PY, str(AGENTS / "ticker.py"), "0.2"],
        agent="dead-1",
        options=["--heartbeat-interval", "1"],
    )
    try:
        first = await poll(lambda: child_pid(node), 20, "the child to start")
        await poll(lambda: gw.get("/api/v1/agents/dead-1").json().get("last_heartbeat"), 20, "a heartbeat")
        # A hung agent: the process is there but does nothing. The node agent
        # stops vouching for it, and no heartbeat reaches the gateway.
        os.kill(first, signal.SIGSTOP)
        await asyncio.sleep(2.5)
        last_heartbeat = gw.get("/api/v1/agents/dead-1").json()["last_heartbeat"]
        fired = await poll(lambda: alert(gw, "DeadNode", "dead-1", "fired"), 60, "DeadNode to fire")
        # "> 45 s" from the last heartbeat, evaluated every second.
        assert 45.0 < fired["fired_at"] - last_heartbeat <= 46.0, fired["fired_at"] - last_heartbeat
        # The node agent restarts the hung child on the gateway's command.
        second = await poll(lambda: (pid := child_pid(node)) != first and pid, 30, "a new child")
        assert second != first
        resolved = await poll(lambda: alert(gw, "DeadNode", "dead-1", "resolved"), 30, "DeadNode to resolve")
        assert resolved["resolved_at"] > fired["fired_at"]
        [entry] = [e for e in audit(gw, target="dead-1") if e["action"] == "restart"]
        assert (entry["actor"], entry["result"]) == ("alert:DeadNode", "ok")
        # The restart may bring it back within the notifier's group_wait: then the
        # one message says it fired and already resolved.
        body = (await poll(lambda: posts_for(webhook, "DeadNode"), 10, "the webhook"))[0]
        assert body.keys() >= V4_FIELDS and body["version"] == "4"
        [sent] = body["alerts"]
        assert sent["labels"]["agent"] == "dead-1" and sent["labels"]["severity"] == "critical"
        assert len(sent["fingerprint"]) == 16 and sent["startsAt"].startswith("20")
        assert (sent["endsAt"] == "0001-01-01T00:00:00Z") == (sent["status"] == "firing")
        await poll(lambda: posts_for(webhook, "DeadNode", "resolved"), 10, "the resolved webhook")
    finally:
        node.close()


async def test_reasoning_loop_fires_and_the_restart_ends_it(
    tmp_path: Path, webhook: HttpReceiver, make_gateway: Callable[[Path], GatewayProcess]
) -> None:
    """Default rule: 11 failed tool calls in a row -> notify + restart."""
    gw = make_gateway(gateway_config(tmp_path, webhook))
    marker = tmp_path / "runs"
    node = NodeAgentProcess(tmp_path, gw, [PY, str(AGENTS / "looper.py"), str(marker)], agent="loop-1")
    try:
        fired = await poll(lambda: alert(gw, "ReasoningLoop", "loop-1", "fired"), 30, "ReasoningLoop to fire")
        assert fired["value"] == 11  # fires on the 11th failure, not later
        runs = await poll(
            lambda: len(lines := marker.read_text().split()) >= 2 and lines, 30, "the agent to be restarted"
        )
        assert len(runs) == 2
        await poll(lambda: alert(gw, "ReasoningLoop", "loop-1", "resolved"), 30, "the alert to resolve")
        [entry] = [e for e in audit(gw, target="loop-1") if e["action"] == "restart"]
        assert entry["result"] == "ok" and "11" in entry["reason"]
        # The restart ends the loop within the notifier's group_wait: the message
        # says it fired and is already resolved.
        post = (await poll(lambda: posts_for(webhook, "ReasoningLoop"), 10, "the webhook"))[0]
        assert post["alerts"][0]["annotations"]["summary"] == "loop-1 failed 11 tool calls in a row"
        assert post["alerts"][0]["startsAt"] != "0001-01-01T00:00:00Z"
        history = gw.get("/api/v1/alerts/history", agent="loop-1").json()["transitions"]
        assert [(t["from_state"], t["to_state"]) for t in reversed(history)] == [
            ("inactive", "firing"),
            ("firing", "resolved"),
        ]
    finally:
        node.close()


async def test_cost_spike_reaches_the_webhook_and_nothing_is_restarted(
    tmp_path: Path, webhook: HttpReceiver, make_gateway: Callable[[Path], GatewayProcess]
) -> None:
    gw = make_gateway(gateway_config(tmp_path, webhook))
    config = FleetConfig(
        gateway=gw.ws_url,
        token=gw.token("dev", "agent"),
        agents=4,
        rate=5.0,
        heartbeat_interval=0.5,
        duration=4.0,
        scenarios={Scenario.COST_SPIKE: 1},
        scenario_after=0.5,
        seed=3,
    )
    stats = await run_fleet(config, asyncio.Event())
    [spiking] = stats.scenarios[Scenario.COST_SPIKE.value]
    [post] = await poll(lambda: posts_for(webhook, "CostSpike", "firing"), 15, "the CostSpike webhook")
    assert post.keys() >= V4_FIELDS
    assert post["groupKey"] == '{}:{alertname="CostSpike", env="dev"}'
    assert [a["labels"]["agent"] for a in post["alerts"]] == [spiking]
    assert post["alerts"][0]["annotations"]["summary"].startswith(f"{spiking} is spending $")
    assert post["externalURL"].startswith("http://127.0.0.1:")
    assert [e for e in audit(gw) if e["action"] in ("restart", "stop")] == []


BUDGET_RULES = """
rules:
  - name: DeadNode
    condition: heartbeat_age_s > 3
    severity: critical
    actions: [notify, restart]
"""


async def test_budget_holds_restarts_when_30_percent_of_an_environment_dies(
    tmp_path: Path, webhook: HttpReceiver, make_gateway: Callable[[Path], GatewayProcess]
) -> None:
    config_path = gateway_config(tmp_path, webhook, {"staging": BUDGET_RULES})
    gw = make_gateway(config_path)
    config = FleetConfig(
        gateway=gw.ws_url,
        token=gw.token("staging", "agent"),
        env="staging",
        agents=20,
        rate=2.0,
        heartbeat_interval=0.5,
        duration=12.0,
        scenarios={Scenario.DEAD: 6},
        scenario_after=1.0,
        seed=11,
    )
    stats = await run_fleet(config, asyncio.Event())
    dead = set(stats.scenarios[Scenario.DEAD.value])
    restarts = [e for e in audit(gw, env="staging") if e["action"] == "restart"]
    # 10 % of 20 agents: two restarts in the budget window, the other four held.
    assert sorted(e["result"] for e in restarts) == ["held"] * 4 + ["ok"] * 2
    assert {e["target"] for e in restarts} == dead
    budget = await poll(lambda: alert(gw, "RemediationBudgetExhausted", ""), 10, "the budget alert")
    assert budget["env"] == "staging" and "4 agents" in budget["annotations"]["summary"]
    await poll(lambda: posts_for(webhook, "RemediationBudgetExhausted", "firing"), 10, "its notification")

    # A gateway restart neither forgets the firing alerts nor notifies them again,
    # nor hands out a fresh budget.
    firing_before = {(a["rule"], a["agent"]) for a in alerts(gw, state="firing")}
    posts_before = len(webhook.requests)
    assert gw.stop() == 0
    gw.start()
    await asyncio.sleep(4)
    firing_after = {(a["rule"], a["agent"]) for a in alerts(gw, state="firing")}
    assert firing_before <= firing_after
    new_firing = [r.body for r in webhook.requests[posts_before:] if r.body["status"] == "firing"]
    assert new_firing == []
    restarts_after = [e for e in audit(gw, env="staging") if e["action"] == "restart" and e["result"] == "ok"]
    assert len(restarts_after) == 2


async def test_silence_from_the_api_mutes_a_rule(
    tmp_path: Path, webhook: HttpReceiver, make_gateway: Callable[[Path], GatewayProcess]
) -> None:
    gw = make_gateway(gateway_config(tmp_path, webhook))
    operator = gw.token("dev", "operator")
    response = await asyncio.to_thread(
        httpx.post,
        f"{gw.http_url}/api/v1/silences",
        json={"target": "ReasoningLoop", "duration_seconds": 3600, "reason": "known flaky backend"},
        headers={"Authorization": f"Bearer {operator}"},
    )
    assert response.status_code == 201, response.text
    assert response.json()["silence"]["env"] == "dev"
    marker = tmp_path / "runs"
    node = NodeAgentProcess(tmp_path, gw, [PY, str(AGENTS / "looper.py"), str(marker)], agent="loop-2")
    try:
        fired = await poll(lambda: alert(gw, "ReasoningLoop", "loop-2"), 30, "ReasoningLoop to fire")
        assert fired["silenced_by"] == response.json()["silence"]["id"]
        await asyncio.sleep(2)
        assert posts_for(webhook, "ReasoningLoop") == []
        assert len(marker.read_text().split()) == 1  # not restarted
        assert [e for e in audit(gw, target="loop-2") if e["action"] == "restart"] == []
    finally:
        node.close()


async def test_quarantine_and_release_reach_an_offline_node_agent_on_reconnect(
    tmp_path: Path, webhook: HttpReceiver, make_gateway: Callable[[Path], GatewayProcess]
) -> None:
    gw = make_gateway(gateway_config(tmp_path, webhook))
    operator = gw.token("dev", "operator")
    quarantine_file = tmp_path / "spool" / "quarantine.json"

    def command(action: str) -> dict[str, Any]:
        response = httpx.post(
            f"{gw.http_url}/api/v1/agents/q-2/commands",
            json={"action": action, "reason": "deleting files"},
            headers={"Authorization": f"Bearer {operator}"},
        )
        assert response.status_code == 202, response.text
        body: dict[str, Any] = response.json()
        return body

    def lifecycle_states() -> list[str]:
        return [e["state"] for e in gw.events("q-2") if e["kind"] == "lifecycle"]

    async def run_node_once() -> None:
        node = NodeAgentProcess(tmp_path, gw, [PY, str(AGENTS / "ticker.py"), "0.2"], agent="q-2")
        try:
            await poll(lambda: child_pid(node), 20, "the child to start")
            await asyncio.sleep(1.0)
        finally:
            node.close()

    await run_node_once()  # known to the gateway, now offline
    assert (await asyncio.to_thread(command, "quarantine"))["delivered"] is False
    await run_node_once()
    assert "deleting files" in quarantine_file.read_text()
    assert "quarantined" in await asyncio.to_thread(lifecycle_states)

    assert (await asyncio.to_thread(command, "release"))["delivered"] is False
    await run_node_once()
    assert not quarantine_file.exists()
    states = await asyncio.to_thread(lifecycle_states)
    assert states.index("released") > states.index("quarantined")
