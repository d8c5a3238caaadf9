"""The alert engine with an injected clock: states, ``for``, remediation safety, restarts.

The engine runs as in the gateway (metrics stage, rule book, notifier,
remediator, a real SQLite store for its state and history); only time is
injected, so "45 s without a heartbeat" takes no real time. Notifications go
to a receiver that keeps what it is sent; actions to a driver that keeps
what it is asked. End-to-end versions with real processes live in
tests/test_alerts_e2e.py.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

from clawtrace.alerts.drivers.base import ActionResult, AgentTarget
from clawtrace.alerts.engine import BUDGET_ALERT, GAVE_UP_ALERT, AlertEngine
from clawtrace.alerts.model import Alert, AuditEntry, Silence, Transition
from clawtrace.alerts.notify import Notifier
from clawtrace.alerts.receivers import Notification
from clawtrace.alerts.remediate import Remediator
from clawtrace.alerts.rulebook import RuleBook
from clawtrace.alerts.settings import AlertSettings
from clawtrace.metrics import MetricsStage, ModelPrice, PriceTable
from clawtrace.metrics.agent import AnyMetricEvent
from clawtrace.store import AgentInfo, Store, WriteBatch, open_store

T0 = 1_800_000_000.0
PRICES = PriceTable({"big-model": ModelPrice(input=100.0, output=100.0)})
_decode = msgspec.json.Decoder(list[AnyMetricEvent])


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class KeepingReceiver:
    """A receiver that keeps every notification it is sent."""

    name = "keep"
    send_resolved = True

    def __init__(self) -> None:
        self.sent: list[Notification] = []

    def accepts(self, alert: Alert) -> bool:
        return True

    async def send(self, notification: Notification) -> None:
        self.sent.append(notification)

    async def aclose(self) -> None:
        return None


class KeepingDriver:
    """A driver that records the actions it is asked for and reports success."""

    name = "keeping"

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def restart(self, target: AgentTarget, reason: str) -> ActionResult:
        self.calls.append(("restart", target.agent))
        return ActionResult(True, "restarted")

    async def stop(self, target: AgentTarget, reason: str) -> ActionResult:
        self.calls.append(("stop", target.agent))
        return ActionResult(True, "stopped")


class Harness:
    def __init__(self, store: Store, rules_dir: Path, clock: Clock, **settings: Any) -> None:
        self.store = store
        self.clock = clock
        self.settings = AlertSettings(group_wait_seconds=0, group_interval_seconds=60, **settings)
        self.infos: dict[str, AgentInfo] = {}
        self.stage = MetricsStage(PRICES, self.infos.get, clock=clock)
        self.receiver = KeepingReceiver()
        self.driver = KeepingDriver()
        self.quarantined: list[str] = []
        self.engine = self._engine(rules_dir)

    def _engine(self, rules_dir: Path) -> AlertEngine:
        async def quarantine(target: AgentTarget, reason: str, actor: str) -> ActionResult:
            self.quarantined.append(target.agent)
            return ActionResult(True, "quarantined")

        def audit(entry: AuditEntry) -> None:
            self.store.add_audit([entry])

        def save(alerts: list[Alert], forget: list[tuple[str, str]], transitions: list[Transition]) -> None:
            self.store.add_transitions(transitions)
            self.store.save_alerts(alerts, forget)

        # The engine gives the remediator its environment sizes and takes the notifier's reports.
        remediator = Remediator(self.driver, quarantine, audit, lambda env: 0, self.settings, self.clock)
        notifier = Notifier([self.receiver], self.settings, clock=self.clock)
        engine = AlertEngine(
            RuleBook(rules_dir), self.stage, notifier, remediator, self.settings, save, clock=self.clock
        )
        self.stage.listeners.append(engine.on_events)
        return engine

    def connect(self, agent: str, env: str = "prod", region: str = "eu") -> None:
        info = AgentInfo(agent, env, region, {"team": "search"}, None)
        self.infos[agent] = info
        self.store.register_agent(info, self.clock.now)
        self.engine.watch(info)

    def send(self, agent: str, *events: dict[str, Any]) -> None:
        ts = datetime.fromtimestamp(self.clock.now, UTC).isoformat()
        body = [{"seq": 1, "ts": ts, **event} for event in events]
        self.stage.observe(self.infos[agent].env, agent, _decode.decode(msgspec.json.encode(body)))

    def heartbeat(self, agent: str) -> None:
        self.send(agent, {"kind": "heartbeat"})

    def failures(self, agent: str, n: int, start: int = 0) -> None:
        events: list[dict[str, Any]] = []
        for i in range(start, start + n):
            events.append({"kind": "tool_call", "call_id": f"c{i}"})
            events.append({"kind": "tool_result", "call_id": f"c{i}", "ok": False})
        self.send(agent, *events)

    async def settle(self) -> None:
        """Let actions and deliveries in flight finish."""
        await self.engine.remediator.drain()
        self.engine.notifier.process()
        await self.engine.notifier.drain(5)
        self.engine.flush()

    def state(self, rule: str, agent: str) -> str:
        alert = self.engine.alerts.get((rule, agent))
        return "inactive" if alert is None else alert.state


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store("sqlite://", tmp_path / "data")
    yield s
    s.close()


@pytest.fixture
async def h(store: Store, tmp_path: Path) -> AsyncIterator[Harness]:
    harness = Harness(store, tmp_path / "rules", Clock())
    await harness.engine.notifier.start()
    yield harness
    await harness.engine.notifier.close()


async def test_dead_node_fires_after_45_s_without_heartbeat_restarts_and_resolves(h: Harness) -> None:
    h.connect("a-1")
    h.heartbeat("a-1")
    h.clock.now += 45.0
    h.engine.tick()
    assert h.state("DeadNode", "a-1") == "inactive"  # > 45 s, not >= 45 s
    h.clock.now += 0.5
    h.engine.tick()
    assert h.state("DeadNode", "a-1") == "firing"
    await h.settle()
    assert h.driver.calls == [("restart", "a-1")]
    [notification] = h.receiver.sent
    assert notification.status == "firing"
    assert notification.group_labels == {"alertname": "DeadNode", "env": "prod"}
    assert notification.alerts[0].labels["agent"] == "a-1"
    assert notification.alerts[0].labels["team"] == "search"
    # The heartbeat comes back: resolved, and the resolved notification follows.
    h.clock.now += 61
    h.heartbeat("a-1")
    assert h.state("DeadNode", "a-1") == "resolved"
    await h.settle()
    assert [n.status for n in h.receiver.sent] == ["firing", "resolved"]
    history = h.store.query_transitions(agent="a-1")
    assert [(t.from_state, t.to_state) for t in reversed(history)] == [
        ("inactive", "firing"),
        ("firing", "resolved"),
    ]
    assert history[1].value == pytest.approx(45.5)
    [entry] = h.store.query_audit(target="a-1")
    assert (entry.actor, entry.action, entry.result) == ("alert:DeadNode", "restart", "ok")


async def test_reasoning_loop_fires_on_the_eleventh_failure_without_waiting_for_a_tick(h: Harness) -> None:
    h.connect("a-2")
    h.failures("a-2", 10)
    assert h.state("ReasoningLoop", "a-2") == "inactive"
    # The 11th failure and then a success in the same frame: the loop still counts.
    h.send(
        "a-2",
        {"kind": "tool_call", "call_id": "x"},
        {"kind": "tool_result", "call_id": "x", "ok": False},
        {"kind": "tool_call", "call_id": "y"},
        {"kind": "tool_result", "call_id": "y", "ok": True},
    )
    alert = h.engine.alerts[("ReasoningLoop", "a-2")]
    assert alert.state == "firing"
    assert alert.value == 11
    assert "11" in alert.annotations["summary"]
    await h.settle()
    assert h.driver.calls == [("restart", "a-2")]


async def test_a_restart_resets_the_failure_count_so_the_loop_alert_resolves(h: Harness) -> None:
    h.connect("a-3")
    h.failures("a-3", 11)
    assert h.state("ReasoningLoop", "a-3") == "firing"
    h.clock.now += 2
    h.send("a-3", {"kind": "lifecycle", "state": "started"})
    assert h.state("ReasoningLoop", "a-3") == "resolved"


async def test_cost_spike_notifies_only(h: Harness) -> None:
    h.connect("a-4")
    # 100 USD per million tokens: 10k tokens = 1 USD within the first minute of
    # the 5-minute window -> far above 5 USD/h.
    h.send("a-4", {"kind": "llm_call", "model": "big-model", "input_tokens": 5000, "output_tokens": 5000})
    assert h.state("CostSpike", "a-4") == "firing"
    await h.settle()
    assert h.driver.calls == []
    assert [n.group_labels["alertname"] for n in h.receiver.sent] == ["CostSpike"]


def write_rules(h: Harness, tmp_path: Path, text: str, env: str = "prod") -> None:
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir(exist_ok=True)
    (rules_dir / f"{env}.yaml").write_text(text)
    h.engine.rulebook.reload(env)


async def test_for_keeps_an_alert_pending_and_keep_firing_for_damps_flapping(
    h: Harness, tmp_path: Path
) -> None:
    write_rules(
        h,
        tmp_path,
        """
rules:
  - name: Flaky
    condition: consecutive_failed_tool_calls >= 3
    for: 10s
    keep_firing_for: 30s
    actions: [notify]
""",
    )
    h.connect("a-5")
    h.failures("a-5", 3)
    assert h.state("Flaky", "a-5") == "pending"
    h.clock.now += 9
    h.engine.tick()
    assert h.state("Flaky", "a-5") == "pending"
    h.clock.now += 1
    h.engine.tick()
    assert h.state("Flaky", "a-5") == "firing"
    # A success clears the condition, but the alert keeps firing for 30 s.
    h.send(
        "a-5", {"kind": "tool_call", "call_id": "ok"}, {"kind": "tool_result", "call_id": "ok", "ok": True}
    )
    h.clock.now += 29
    h.engine.tick()
    assert h.state("Flaky", "a-5") == "firing"
    h.clock.now += 1.5
    h.engine.tick()
    assert h.state("Flaky", "a-5") == "resolved"
    # Pending that clears before `for` goes back to inactive, with a transition on record.
    h.failures("a-5", 3, start=10)
    assert h.state("Flaky", "a-5") == "pending"
    h.send(
        "a-5", {"kind": "tool_call", "call_id": "ok2"}, {"kind": "tool_result", "call_id": "ok2", "ok": True}
    )
    assert h.state("Flaky", "a-5") == "inactive"
    h.engine.flush()
    states = [(t.from_state, t.to_state) for t in reversed(h.store.query_transitions(rule="Flaky"))]
    assert states == [
        ("inactive", "pending"),
        ("pending", "firing"),
        ("firing", "resolved"),
        ("resolved", "pending"),
        ("pending", "inactive"),
    ]


async def test_no_data_is_not_zero_and_min_samples_guards_small_counts(h: Harness, tmp_path: Path) -> None:
    write_rules(
        h,
        tmp_path,
        """
rules:
  - name: LowSuccess
    condition: tool_success_rate < 0.5
    min_samples: 20
    actions: [notify]
  - name: Silent
    condition: tool_success_rate < 0.5
    no_data: alerting
    actions: [notify]
""",
    )
    h.connect("a-6")
    h.heartbeat("a-6")
    # No tool results at all: LowSuccess stays inactive (no data is not 0 %),
    # while the rule that asks to alert on no data fires.
    assert h.state("LowSuccess", "a-6") == "inactive"
    assert h.state("Silent", "a-6") == "firing"
    h.failures("a-6", 19)
    assert h.state("LowSuccess", "a-6") == "inactive"  # 19 < min_samples
    h.failures("a-6", 1, start=100)
    assert h.state("LowSuccess", "a-6") == "firing"


async def test_budget_holds_restarts_at_ten_percent_and_says_so(h: Harness) -> None:
    agents = [f"b-{i:02d}" for i in range(20)]
    for agent in agents:
        h.connect(agent, env="staging")
        h.heartbeat(agent)
    h.clock.now += 30
    for agent in agents[6:]:
        h.heartbeat(agent)
    h.clock.now += 16  # 46 s since the six dead agents' last heartbeat
    h.engine.tick()
    await h.settle()
    dead = agents[:6]
    assert all(h.state("DeadNode", a) == "firing" for a in dead)
    # 10 % of 20 agents: two restarts per 10 minutes, the other four held.
    assert len(h.driver.calls) == 2
    budget = h.engine.alerts[(BUDGET_ALERT, "@staging")]
    assert budget.state == "firing" and budget.env == "staging"
    assert "4 agents" in budget.annotations["summary"]
    held = [e for e in h.store.query_audit(envs=["staging"]) if e.result == "held"]
    assert len(held) == 4
    # Held actions are not retried every second while the budget is spent.
    h.clock.now += 60
    h.engine.tick()
    await h.settle()
    assert len(h.driver.calls) == 2
    # Once the window has passed, the budget allows two more.
    h.clock.now += 600
    h.engine.tick()
    await h.settle()
    assert len(h.driver.calls) == 4


async def test_backoff_doubles_then_gives_up_and_quarantines(store: Store, tmp_path: Path) -> None:
    # A budget that never interferes: this test is about one agent's backoff.
    h = Harness(store, tmp_path / "rules", Clock(), budget_fraction=100.0)
    h.connect("c-1")
    h.heartbeat("c-1")
    h.clock.now += 46
    restart_times = []
    for _ in range(700):
        h.clock.now += 1
        h.engine.tick()
        await h.engine.remediator.drain()
        if len(h.driver.calls) > len(restart_times):
            restart_times.append(h.clock.now)
    gaps = [round(b - a) for a, b in itertools.pairwise(restart_times)]
    # 10 s doubling (Kubernetes-style), five restarts, then no more.
    assert gaps == [10, 20, 40, 80]
    assert h.quarantined == ["c-1"]
    gave_up = h.engine.alerts[(GAVE_UP_ALERT, "c-1")]
    assert gave_up.state == "firing"
    assert "quarantined" in gave_up.annotations["summary"]
    actions = [(e.action, e.result) for e in reversed(h.store.query_audit(target="c-1"))]
    assert actions == [("restart", "ok")] * 5 + [("quarantine", "ok")]


async def test_dry_run_decides_and_audits_but_does_nothing(h: Harness, tmp_path: Path) -> None:
    write_rules(
        h,
        tmp_path,
        """
rules:
  - name: ReasoningLoop
    condition: consecutive_failed_tool_calls > 10
    actions: [notify, restart, quarantine]
    dry_run: true
""",
    )
    h.connect("d-1")
    h.failures("d-1", 11)
    await h.settle()
    assert h.state("ReasoningLoop", "d-1") == "firing"
    assert h.driver.calls == [] and h.quarantined == []
    entries = h.store.query_audit(target="d-1")
    assert sorted((e.action, e.result) for e in entries) == [
        ("quarantine", "dry_run"),
        ("restart", "dry_run"),
    ]


async def test_silence_mutes_notifications_and_actions_until_it_ends(h: Harness) -> None:
    h.connect("s-1")
    h.engine.add_silence(
        Silence(
            id="s1",
            target="ReasoningLoop",
            env="prod",
            starts=h.clock.now,
            ends=h.clock.now + 120,
            created_by="operator:t",
            reason="investigating",
        )
    )
    h.failures("s-1", 11)
    await h.settle()
    alert = h.engine.alerts[("ReasoningLoop", "s-1")]
    assert alert.state == "firing" and alert.silenced_by == "s1"
    assert h.receiver.sent == [] and h.driver.calls == []
    h.clock.now += 121
    h.heartbeat("s-1")
    h.engine.tick()
    await h.settle()
    assert alert.silenced_by is None
    assert [n.group_labels["alertname"] for n in h.receiver.sent] == ["ReasoningLoop"]
    assert h.driver.calls == [("restart", "s-1")]


async def test_state_survives_a_restart_without_notifying_again(store: Store, tmp_path: Path) -> None:
    clock = Clock()
    first = Harness(store, tmp_path / "rules", clock)
    await first.engine.notifier.start()
    first.connect("r-1")
    first.heartbeat("r-1")
    clock.now += 46
    first.engine.tick()
    await first.settle()
    first.engine.tick()  # persists notified_at
    assert len(first.receiver.sent) == 1
    await first.engine.close()

    # A new engine on the same store: the alert is still firing, nothing is re-sent.
    clock.now += 5
    second = Harness(store, tmp_path / "rules", clock)
    second.engine.restore(store.load_alerts(), store.list_silences(), store.list_agents())
    await second.engine.notifier.start()
    try:
        assert second.state("DeadNode", "r-1") == "firing"
        # The agent has not come back: still dead, still firing, not notified again.
        second.infos["r-1"] = first.infos["r-1"]
        clock.now += 5
        second.engine.tick()
        await second.settle()
        assert second.receiver.sent == []
        # Recovery after the restart still sends the resolved message.
        clock.now += 60
        second.heartbeat("r-1")
        await second.settle()
        assert [n.status for n in second.receiver.sent] == ["resolved"]
    finally:
        await second.engine.close()


async def test_a_notification_groups_three_hundred_dead_agents_into_one_message(h: Harness) -> None:
    for i in range(300):
        h.connect(f"g-{i:03d}", env="prod", region="us-east")
        h.heartbeat(f"g-{i:03d}")
    h.clock.now += 46
    h.engine.tick()
    await h.settle()
    dead_node = [n for n in h.receiver.sent if n.group_labels["alertname"] == "DeadNode"]
    assert len(dead_node) == 1
    assert len(dead_node[0].alerts) == 300


async def test_a_dead_node_inhibits_its_other_alerts_but_not_other_agents(h: Harness) -> None:
    h.connect("i-1")
    h.connect("i-2")
    h.heartbeat("i-1")
    h.heartbeat("i-2")
    # Both agents loop; then i-1 also stops sending heartbeats.
    h.failures("i-1", 11)
    h.failures("i-2", 11)
    h.clock.now += 30
    h.heartbeat("i-2")
    h.clock.now += 16
    h.engine.tick()
    await h.settle()
    dead = h.engine.alerts[("DeadNode", "i-1")]
    assert dead.state == "firing"
    assert h.engine.alerts[("ReasoningLoop", "i-1")].inhibited_by == dead.fingerprint
    assert h.engine.alerts[("ReasoningLoop", "i-2")].inhibited_by is None
    h.clock.now += 120
    h.heartbeat("i-2")
    h.engine.tick()
    await h.settle()
    sent = [
        (a.labels["alertname"], a.agent) for n in h.receiver.sent for a in n.alerts if a.status == "firing"
    ]
    assert ("DeadNode", "i-1") in sent and ("ReasoningLoop", "i-2") in sent
    # The loop of i-1 was first notified before it died; after that, only its DeadNode.
    late = [
        (a.labels["alertname"], a.agent)
        for n in h.receiver.sent
        if n.created_at > dead.fired_at - 0.001
        for a in n.alerts
    ]
    assert ("ReasoningLoop", "i-1") not in late


async def test_disabling_a_rule_resolves_its_firing_alerts(h: Harness, tmp_path: Path) -> None:
    h.connect("o-1")
    h.failures("o-1", 11)
    assert h.state("ReasoningLoop", "o-1") == "firing"
    disabled = "rules:\n  - name: ReasoningLoop\n    condition: consecutive_failed_tool_calls > 10\n"
    write_rules(h, tmp_path, disabled + "    enabled: false\n")
    h.engine.tick()
    assert h.state("ReasoningLoop", "o-1") == "resolved"
    [last] = h.store.query_transitions(rule="ReasoningLoop", limit=1)
    assert last.to_state == "resolved" and "disabled" in last.detail


async def test_edited_rule_files_are_picked_up_and_a_broken_edit_is_refused(
    h: Harness, tmp_path: Path
) -> None:
    h.connect("e-1")
    write_rules(h, tmp_path, "rules:\n  - {name: Few, condition: consecutive_failed_tool_calls > 2}\n")
    (tmp_path / "rules" / "prod.yaml").write_text(
        "rules:\n  - {name: Few, condition: consecutive_failed_tool_calls > 4}\n"
    )
    h.clock.now += 6  # the engine looks at the files every 5 s
    h.engine.tick()
    h.failures("e-1", 3)
    assert h.state("Few", "e-1") == "inactive"  # the edited threshold is in force
    (tmp_path / "rules" / "prod.yaml").write_text("rules:\n  - {name: Few, condition: nonsense > 4}\n")
    h.clock.now += 6
    h.engine.tick()
    assert "unknown metric 'nonsense'" in h.engine.rulebook.errors["prod"]
    h.failures("e-1", 2, start=10)
    assert h.state("Few", "e-1") == "firing"  # the last valid rules still apply


class FailingDriver(KeepingDriver):
    async def restart(self, target: AgentTarget, reason: str) -> ActionResult:
        self.calls.append(("restart", target.agent))
        return ActionResult(False, f"agent {target.agent!r} is not connected; the restart was not sent")


async def test_a_restart_that_reaches_nobody_spends_no_budget(store: Store, tmp_path: Path) -> None:
    h = Harness(store, tmp_path / "rules", Clock())
    h.driver = FailingDriver()
    h.engine.remediator.driver = h.driver
    await h.engine.notifier.start()
    for i in range(10):  # budget: one restart per 10 minutes
        h.connect(f"f-{i}", env="qa")
        h.heartbeat(f"f-{i}")
    h.clock.now += 20
    for i in range(1, 10):
        h.heartbeat(f"f-{i}")
    h.clock.now += 26
    h.engine.tick()
    await h.settle()
    assert h.driver.calls == [("restart", "f-0")]
    # The failed attempt did not use up the budget: another dead agent is
    # restarted at once, and once that fails too, the first is tried again
    # (its 10 s backoff has passed).
    h.clock.now += 30
    for i in range(2, 10):
        h.heartbeat(f"f-{i}")
    h.engine.tick()
    await h.settle()
    assert h.driver.calls == [("restart", "f-0"), ("restart", "f-1")]
    h.clock.now += 1
    h.engine.tick()
    await h.settle()
    assert h.driver.calls == [("restart", "f-0"), ("restart", "f-1"), ("restart", "f-0")]
    results = [e.result for e in h.store.query_audit(envs=["qa"]) if e.action == "restart"]
    # The first retry of f-0 was held while f-1's attempt was in flight.
    assert sorted(results) == ["failed", "failed", "failed", "held"]
    await h.engine.notifier.close()


async def test_each_environment_gets_its_own_budget_alert(h: Harness) -> None:
    for env in ("qa", "uat"):
        for i in range(4):
            h.connect(f"{env}-{i}", env=env)
            h.heartbeat(f"{env}-{i}")
    h.clock.now += 46
    h.engine.tick()
    await h.settle()
    budget = {a.env: a.state for a in h.engine.alerts.values() if a.rule == BUDGET_ALERT}
    assert budget == {"qa": "firing", "uat": "firing"}
    h.engine.flush()
    assert sorted(a.env for a in h.store.load_alerts() if a.rule == BUDGET_ALERT) == ["qa", "uat"]


async def test_after_a_restart_heartbeat_age_counts_from_the_restart(store: Store, tmp_path: Path) -> None:
    clock = Clock()
    first = Harness(store, tmp_path / "rules", clock)
    first.connect("g-1")
    store.write(_heartbeat_batch("g-1", clock.now))
    # The gateway is down for ten minutes; g-1 had no alert when it went down.
    clock.now += 600
    second = Harness(store, tmp_path / "rules", clock)
    second.engine.restore(store.load_alerts(), store.list_silences(), store.list_agents())
    second.engine.tick()
    assert second.state("DeadNode", "g-1") == "inactive"
    clock.now += 46  # and still nothing from it
    second.engine.tick()
    assert second.state("DeadNode", "g-1") == "firing"


def _heartbeat_batch(agent: str, at: float) -> WriteBatch:
    batch = WriteBatch()
    batch.add((agent, 1, "s", "heartbeat", at, at, b"{}"), heartbeat=(None, None))
    return batch
