"""Alert notifications: Alertmanager-style grouping and timing against a real
HTTP receiver on loopback. Group timing runs on a fake clock (process(now) is
called by hand); delivery is real."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from clawtrace.alerts.model import Alert, Severity, fingerprint
from clawtrace.alerts.notify import Notifier
from clawtrace.alerts.receivers import build_receivers, rfc3339
from clawtrace.alerts.settings import AlertSettings, ReceiverConfig
from clawtrace.gateway.settings import SettingsError, load_settings
from http_receiver import HttpReceiver

T0 = 1_795_000_000.0
WAIT, INTERVAL, REPEAT = 5.0, 60.0, 600.0


@pytest.fixture
async def server() -> AsyncIterator[HttpReceiver]:
    receiver = HttpReceiver()
    await receiver.start()
    yield receiver
    await receiver.stop()


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def make_alert(
    agent: str,
    *,
    rule: str = "DeadNode",
    env: str = "prod",
    severity: Severity = "critical",
    fired_at: float = T0,
) -> Alert:
    labels = {
        "alertname": rule,
        "env": env,
        "agent": agent,
        "region": "eu-west",
        "severity": severity,
        "team": "fleet",
    }
    return Alert(
        rule=rule,
        agent=agent,
        env=env,
        region="eu-west",
        state="firing",
        severity=severity,
        fired_at=fired_at,
        active_since=fired_at,
        labels=labels,
        annotations={"summary": f"{agent} sent no heartbeat", "runbook": "https://runbooks/dead"},
        fingerprint=fingerprint(labels),
    )


def resolve(alert: Alert, at: float) -> None:
    alert.state = "resolved"
    alert.resolved_at = at


class Harness:
    def __init__(self, configs: list[ReceiverConfig], **settings: Any) -> None:
        self.clock = Clock()
        self.sent: list[list[Alert]] = []
        values: dict[str, Any] = {
            "group_wait_seconds": WAIT,
            "group_interval_seconds": INTERVAL,
            "repeat_interval_seconds": REPEAT,
        }
        values.update(settings)
        self.notifier = Notifier(
            build_receivers(configs),
            AlertSettings(**values),
            clock=self.clock,
            external_url="https://clawtrace.example/",
            on_sent=self.sent.append,
            retry_initial_seconds=0.01,
        )

    def at(self, t: float) -> int:
        """Move the clock to T0 + t and process; how many handoffs happened."""
        before = len(self.sent)
        self.clock.now = T0 + t
        self.notifier.process(T0 + t)
        return len(self.sent) - before

    def update(self, *alerts: Alert) -> None:
        for alert in alerts:
            self.notifier.update(alert)


def webhook(server: HttpReceiver, name: str = "hook", **kwargs: Any) -> ReceiverConfig:
    return ReceiverConfig(name=name, type="webhook", url=server.url(f"/{name}"), **kwargs)


@pytest.fixture
async def harness(server: HttpReceiver) -> AsyncIterator[Harness]:
    h = Harness([webhook(server, headers={"Authorization": "Bearer s3cret"})])
    await h.notifier.start()
    yield h
    await h.notifier.close(timeout=1.0)


def agents_of(body: dict[str, Any]) -> list[str]:
    return [a["labels"]["agent"] for a in body["alerts"]]


async def test_300_dead_agents_make_one_post_with_every_v4_field(
    server: HttpReceiver, harness: Harness
) -> None:
    alerts = [make_alert(f"agent-{i:03d}") for i in range(300)]
    harness.update(*alerts)
    assert harness.at(WAIT - 0.1) == 0
    assert harness.at(WAIT) == 1
    [request] = await server.wait_for(1)
    await harness.notifier.drain(2.0)
    assert len(server.requests) == 1
    assert request.path == "/hook"
    assert request.headers["authorization"] == "Bearer s3cret"
    assert request.headers["content-type"] == "application/json"
    body = request.body
    assert body["version"] == "4"
    assert body["groupKey"] == '{}:{alertname="DeadNode", env="prod"}'
    assert body["truncatedAlerts"] == 0
    assert body["status"] == "firing"
    assert body["receiver"] == "hook"
    assert body["groupLabels"] == {"alertname": "DeadNode", "env": "prod"}
    assert body["commonLabels"] == {
        "alertname": "DeadNode",
        "env": "prod",
        "region": "eu-west",
        "severity": "critical",
        "team": "fleet",
    }
    assert body["commonAnnotations"] == {"runbook": "https://runbooks/dead"}
    assert body["externalURL"] == "https://clawtrace.example"
    assert len(body["alerts"]) == 300
    first = body["alerts"][0]
    assert first == {
        "status": "firing",
        "labels": alerts[0].labels,
        "annotations": alerts[0].annotations,
        "startsAt": rfc3339(T0),
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "https://clawtrace.example/agents/agent-000",
        "fingerprint": alerts[0].fingerprint,
    }
    assert sorted(agents_of(body)) == [a.agent for a in alerts]
    # The engine's alerts are marked and handed back for saving.
    assert [len(batch) for batch in harness.sent] == [300]
    assert all(a.notified_at == T0 + WAIT and a.notified_state == "firing" for a in alerts)
    assert harness.notifier.stats["hook"].sent == 1


def test_rfc3339_keeps_milliseconds() -> None:
    assert rfc3339(1795638662.123) == "2026-11-25T20:31:02.123Z"
    assert rfc3339(0) == "1970-01-01T00:00:00.000Z"


async def test_group_wait_collects_a_burst(server: HttpReceiver, harness: Harness) -> None:
    harness.update(make_alert("a1"))
    assert harness.at(2) == 0
    harness.update(make_alert("a2"))
    assert harness.at(4) == 0
    harness.update(make_alert("a3"))
    assert harness.at(WAIT) == 1
    [request] = await server.wait_for(1)
    assert agents_of(request.body) == ["a1", "a2", "a3"]


async def test_groups_are_by_alertname_and_env(server: HttpReceiver, harness: Harness) -> None:
    harness.update(make_alert("a1"), make_alert("a2", env="staging"), make_alert("a3", rule="CostSpike"))
    assert harness.at(WAIT) == 3
    requests = await server.wait_for(3)
    keys = sorted(r.body["groupKey"] for r in requests)
    assert keys == [
        '{}:{alertname="CostSpike", env="prod"}',
        '{}:{alertname="DeadNode", env="prod"}',
        '{}:{alertname="DeadNode", env="staging"}',
    ]


async def test_group_interval_holds_changes_and_repeat_interval_resends(
    server: HttpReceiver, harness: Harness
) -> None:
    a1 = make_alert("a1")
    harness.update(a1)
    assert harness.at(WAIT) == 1
    # A new alert in a notified group waits for group_interval after the last notification.
    harness.update(make_alert("a2", fired_at=T0 + 10))
    assert harness.at(10) == 0
    assert harness.at(WAIT + INTERVAL - 0.1) == 0
    assert harness.at(WAIT + INTERVAL) == 1
    requests = await server.wait_for(2)
    assert agents_of(requests[1].body) == ["a1", "a2"]
    # Nothing changes: silence until repeat_interval after the last notification.
    last = WAIT + INTERVAL
    assert harness.at(last + INTERVAL) == 0
    assert harness.at(last + REPEAT - 0.1) == 0
    assert harness.at(last + REPEAT) == 1
    requests = await server.wait_for(3)
    assert agents_of(requests[2].body) == ["a1", "a2"]
    assert requests[2].body["status"] == "firing"
    assert harness.at(last + REPEAT + INTERVAL) == 0


async def test_resolved_alert_is_sent_once_then_forgotten(server: HttpReceiver) -> None:
    h = Harness([webhook(server, "all"), webhook(server, "quiet", send_resolved=False)])
    await h.notifier.start()
    a1, a2 = make_alert("a1"), make_alert("a2")
    h.update(a1, a2)
    assert h.at(WAIT) == 1
    await server.wait_for(2)
    resolve(a1, T0 + 20)
    h.update(a1)
    assert h.at(30) == 0
    assert h.at(WAIT + INTERVAL) == 1
    requests = await server.wait_for(3)
    await h.notifier.drain(2.0)
    assert len(requests) == 3, "the receiver without send_resolved has nothing new to hear"
    body = requests[2].body
    assert requests[2].path == "/all"
    assert body["status"] == "firing", "a2 still fires"
    by_agent = {a["labels"]["agent"]: a for a in body["alerts"]}
    assert by_agent["a1"]["status"] == "resolved"
    assert by_agent["a1"]["endsAt"] == rfc3339(T0 + 20)
    assert by_agent["a2"]["status"] == "firing"
    assert a1.notified_state == "resolved"
    # Resolve the last one: an all-resolved message, then nothing more, ever.
    resolve(a2, T0 + 100)
    h.update(a2)
    assert h.at(WAIT + 2 * INTERVAL) == 1
    requests = await server.wait_for(4)
    assert requests[3].body["status"] == "resolved"
    assert agents_of(requests[3].body) == ["a2"]
    assert h.at(WAIT + 2 * INTERVAL + REPEAT * 3) == 0
    await h.notifier.close(timeout=1.0)
    assert len(server.requests) == 4


async def test_alert_that_fires_and_resolves_within_group_wait_is_sent_once_as_resolved(
    server: HttpReceiver, harness: Harness
) -> None:
    # An alert fixed by its own remediation within group_wait (a restart that
    # ends a loop) still tells people it happened, once, already resolved.
    a1 = make_alert("a1")
    harness.update(a1)
    resolve(a1, T0 + 1)
    harness.update(a1)
    assert harness.at(WAIT) == 1
    [request] = await server.wait_for(1)
    assert request.body["status"] == "resolved"
    assert [a["status"] for a in request.body["alerts"]] == ["resolved"]
    assert harness.at(WAIT + REPEAT) == 0
    assert a1.notified_state == "resolved"


async def test_silenced_alerts_are_left_out(server: HttpReceiver, harness: Harness) -> None:
    a1, a2, a3 = make_alert("a1"), make_alert("a2"), make_alert("a3")
    a2.silenced_by = "silence-1"
    harness.update(a1, a2, a3)
    # A group of silenced alerts alone says nothing.
    muted = make_alert("m1", rule="CostSpike")
    muted.silenced_by = "silence-2"
    harness.update(muted)
    assert harness.at(WAIT) == 1
    [request] = await server.wait_for(1)
    assert agents_of(request.body) == ["a1", "a3"]
    assert a2.notified_at is None
    # Lifting the silence is a change: a2 is new to the receiver.
    a2.silenced_by = None
    harness.update(a2)
    assert harness.at(WAIT + INTERVAL) == 1
    requests = await server.wait_for(2)
    assert agents_of(requests[1].body) == ["a1", "a2", "a3"]


async def test_acknowledged_alerts_do_not_repeat_but_still_resolve(
    server: HttpReceiver, harness: Harness
) -> None:
    a1, a2 = make_alert("a1"), make_alert("a2")
    harness.update(a1, a2)
    assert harness.at(WAIT) == 1
    for alert in (a1, a2):
        alert.acknowledged_by = "alice"
        harness.update(alert)
    assert harness.at(WAIT + INTERVAL) == 0, "an acknowledgement is no news"
    assert harness.at(WAIT + REPEAT) == 0
    assert harness.at(WAIT + 3 * REPEAT) == 0
    resolve(a1, T0 + 3 * REPEAT)
    harness.update(a1)
    assert harness.at(WAIT + 3 * REPEAT + 1) == 1
    requests = await server.wait_for(2)
    by_agent = {a["labels"]["agent"]: a["status"] for a in requests[1].body["alerts"]}
    assert by_agent == {"a1": "resolved", "a2": "firing"}


async def test_one_unacknowledged_alert_keeps_the_group_repeating(
    server: HttpReceiver, harness: Harness
) -> None:
    a1, a2 = make_alert("a1"), make_alert("a2")
    a1.acknowledged_by = "alice"
    harness.update(a1, a2)
    assert harness.at(WAIT) == 1
    assert harness.at(WAIT + REPEAT) == 1
    requests = await server.wait_for(2)
    assert agents_of(requests[1].body) == ["a1", "a2"]


async def test_receivers_filter_by_env_and_severity(server: HttpReceiver) -> None:
    h = Harness(
        [
            webhook(server, "pager", envs=["prod"], min_severity="critical"),
            webhook(server, "everything"),
            webhook(server, "warn-up", min_severity="warning"),
        ],
        group_by=["alertname"],
    )
    await h.notifier.start()
    h.update(
        make_alert("prod-crit"),
        make_alert("prod-warn", severity="warning"),
        make_alert("prod-info", severity="info"),
        make_alert("staging-crit", env="staging"),
    )
    assert h.at(WAIT) == 1
    await server.wait_for(3)
    await h.notifier.close(timeout=1.0)
    got = {r.path: sorted(agents_of(r.body)) for r in server.requests}
    assert got == {
        "/pager": ["prod-crit"],
        "/everything": ["prod-crit", "prod-info", "prod-warn", "staging-crit"],
        "/warn-up": ["prod-crit", "prod-warn", "staging-crit"],
    }
    assert server.requests[0].body["groupKey"] == '{}:{alertname="DeadNode"}'
    # A change another receiver does not see is no reason to message this one.
    h2 = Harness([webhook(server, "pager2", min_severity="critical"), webhook(server, "all2")])
    await h2.notifier.start()
    h2.update(make_alert("c1"))
    assert h2.at(WAIT) == 1
    h2.update(make_alert("w1", severity="warning"))
    assert h2.at(WAIT + INTERVAL) == 1
    await server.wait_for(6)
    await h2.notifier.close(timeout=1.0)
    paths = [r.path for r in server.requests[3:]]
    assert sorted(paths) == ["/all2", "/all2", "/pager2"]


def copies(alerts: list[Alert]) -> list[Alert]:
    """What the store gives back after a restart: the saved fields, new objects."""
    return [msgspec.structs.replace(a, labels=dict(a.labels)) for a in alerts]


async def test_restore_after_restart_sends_nothing_new_but_still_resolves(server: HttpReceiver) -> None:
    before = Harness([webhook(server)])
    await before.notifier.start()
    alerts = [make_alert("a1"), make_alert("a2"), make_alert("a3")]
    before.update(*alerts)
    assert before.at(WAIT) == 1
    await server.wait_for(1)
    await before.notifier.close(timeout=1.0)

    # The gateway restarts five minutes later.
    saved = copies(alerts)
    after = Harness([webhook(server)])
    after.clock.now = T0 + 300
    after.notifier.restore(saved)
    await after.notifier.start()
    assert after.at(300) == 0
    assert after.at(300 + WAIT + INTERVAL) == 0
    # The repeat clock runs on from notified_at, not from the restart.
    assert after.at(WAIT + REPEAT - 1) == 0
    assert after.at(WAIT + REPEAT) == 1
    await server.wait_for(2)
    await after.notifier.close(timeout=1.0)

    # Another restart; one alert resolved after the last notification, before the restart.
    saved = copies(saved)
    resolve(saved[0], T0 + 650)
    third = Harness([webhook(server)])
    third.clock.now = T0 + 700
    third.notifier.restore(saved)
    await third.notifier.start()
    assert third.at(700) == 0
    assert third.at(700 + WAIT) == 1
    requests = await server.wait_for(3)
    await third.notifier.close(timeout=1.0)
    by_agent = {a["labels"]["agent"]: a["status"] for a in requests[2].body["alerts"]}
    assert by_agent == {"a1": "resolved", "a2": "firing", "a3": "firing"}
    assert requests[2].body["alerts"][2]["endsAt"] == rfc3339(T0 + 650)
    assert len(server.requests) == 3


async def test_restore_keeps_group_interval_from_the_last_notification(server: HttpReceiver) -> None:
    a1, a2 = make_alert("a1"), make_alert("a2")
    for alert in (a1, a2):
        alert.notified_at, alert.notified_state = T0 + WAIT, "firing"
    resolve(a1, T0 + 8)
    h = Harness([webhook(server)])
    h.clock.now = T0 + 10
    h.notifier.restore([a1, a2])
    await h.notifier.start()
    assert h.at(10 + WAIT) == 0
    assert h.at(WAIT + INTERVAL - 0.1) == 0
    assert h.at(WAIT + INTERVAL) == 1
    [request] = await server.wait_for(1)
    await h.notifier.close(timeout=1.0)
    assert [a["status"] for a in request.body["alerts"]] == ["firing", "resolved"]


async def test_restore_of_unnotified_firing_alert_notifies_it(server: HttpReceiver) -> None:
    h = Harness([webhook(server)])
    h.notifier.restore([make_alert("a1"), make_alert("old", fired_at=T0 - 10)])
    resolved_unseen = make_alert("gone")
    resolve(resolved_unseen, T0 - 5)
    h.notifier.restore([resolved_unseen])
    await h.notifier.start()
    assert h.at(WAIT) == 1
    [request] = await server.wait_for(1)
    await h.notifier.close(timeout=1.0)
    assert sorted(agents_of(request.body)) == ["a1", "old"]


async def test_500_twice_is_retried_and_delivered_once(server: HttpReceiver, harness: Harness) -> None:
    server.fail = 2
    harness.update(make_alert("a1"))
    assert harness.at(WAIT) == 1
    await server.wait_for(3)
    assert await harness.notifier.drain(2.0)
    stats = harness.notifier.stats["hook"]
    assert (stats.sent, stats.failed_attempts, stats.dropped, stats.queued) == (1, 2, 0, 0)
    assert len(server.requests) == 3
    assert server.requests[0].body == server.requests[2].body


async def test_4xx_is_not_retried_and_the_body_is_logged(
    server: HttpReceiver, harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    server.status = 400
    harness.update(make_alert("a1"))
    with caplog.at_level(logging.ERROR, logger="clawtrace.alerts.notify"):
        assert harness.at(WAIT) == 1
        await server.wait_for(1)
        assert await harness.notifier.drain(2.0)
    await asyncio.sleep(0.05)
    assert len(server.requests) == 1
    assert harness.notifier.stats["hook"].failed_attempts == 1
    assert harness.notifier.stats["hook"].sent == 0
    assert "HTTP 400: no thanks" in caplog.text


async def test_gives_up_after_max_attempts(server: HttpReceiver) -> None:
    server.fail = 100
    clock = Clock()
    notifier = Notifier(
        build_receivers([webhook(server)]),
        AlertSettings(group_wait_seconds=0),
        clock=clock,
        retry_initial_seconds=0.001,
        max_attempts=4,
    )
    await notifier.start()
    notifier.update(make_alert("a1"))
    notifier.process(T0)
    await server.wait_for(4)
    assert await notifier.drain(2.0)
    await notifier.close(timeout=1.0)
    assert len(server.requests) == 4
    assert notifier.stats["hook"].failed_attempts == 4
    assert notifier.stats["hook"].sent == 0


async def test_hanging_receiver_delays_nobody(server: HttpReceiver) -> None:
    stuck = HttpReceiver(hang=True)
    await stuck.start()
    h = Harness(
        [
            ReceiverConfig(name="stuck", type="webhook", url=stuck.url(), timeout_seconds=30),
            webhook(server, "fine"),
        ]
    )
    await h.notifier.start()
    h.update(make_alert("a1"))
    assert h.at(WAIT) == 1
    await stuck.wait_for(1)
    # The stuck receiver holds its request open; the other receives, and the notifier carries on.
    await server.wait_for(1, within=2.0)
    h.update(make_alert("a2", rule="CostSpike", fired_at=T0 + 10))
    started = time.monotonic()
    assert h.at(10 + WAIT) == 1
    h.update(make_alert("a3", rule="ReasoningLoop"))
    assert time.monotonic() - started < 0.1
    await server.wait_for(2, within=2.0)
    assert h.notifier.stats["stuck"].queued == 1
    started = time.monotonic()
    await h.notifier.close(timeout=0.3)
    assert time.monotonic() - started < 2.0
    assert h.notifier.stats["fine"].sent == 2
    assert h.notifier.stats["stuck"].sent == 0
    await stuck.stop()


async def test_full_queue_drops_the_oldest(server: HttpReceiver, caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    notifier = Notifier(
        build_receivers([webhook(server)]),
        AlertSettings(group_wait_seconds=0),
        clock=clock,
        queue_size=2,
    )
    # Not started: nothing drains the queue.
    for rule in ("R1", "R2", "R3"):
        notifier.update(make_alert("a1", rule=rule))
    with caplog.at_level(logging.WARNING, logger="clawtrace.alerts.notify"):
        notifier.process(T0)
    assert notifier.stats["hook"].dropped == 1
    assert notifier.stats["hook"].queued == 2
    assert "queue full" in caplog.text
    await notifier.close(timeout=2.0)
    assert sorted(r.body["groupLabels"]["alertname"] for r in server.requests) == ["R2", "R3"]


async def test_slack_body_shape(server: HttpReceiver) -> None:
    h = Harness([ReceiverConfig(name="slack", type="slack", url=server.url("/slack"))])
    await h.notifier.start()
    alerts = [make_alert(f"agent-{i:02d}") for i in range(12)]
    alerts[0].acknowledged_by = "alice"
    h.update(*alerts)
    assert h.at(WAIT) == 1
    [request] = await server.wait_for(1)
    await h.notifier.close(timeout=1.0)
    body = request.body
    assert set(body) == {"text", "blocks"}
    assert body["text"] == "[FIRING:12] DeadNode prod"
    [block] = body["blocks"]
    assert block["type"] == "section"
    assert block["text"]["type"] == "mrkdwn"
    lines = block["text"]["text"].split("\n")
    assert lines[0] == "*[FIRING:12] DeadNode prod*"
    assert len(lines) == 1 + 10 + 1
    assert lines[1] == (
        "• *<https://clawtrace.example/agents/agent-00|agent-00>*: agent-00 sent no heartbeat"
        " _(acknowledged by alice)_"
    )
    assert lines[-1] == "and 2 more"


async def test_log_receiver_writes_one_line(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness([ReceiverConfig(name="log", type="log")])
    await h.notifier.start()
    alerts = [make_alert(f"a{i}") for i in range(7)]
    h.update(*alerts)
    with caplog.at_level(logging.INFO, logger="clawtrace.alerts.notify"):
        assert h.at(WAIT) == 1
        assert await h.notifier.drain(1.0)
        for alert in alerts:
            resolve(alert, T0 + 10)
            h.update(alert)
        assert h.at(WAIT + INTERVAL) == 1
        await h.notifier.close(timeout=1.0)
    records = [r for r in caplog.records if r.name == "clawtrace.alerts.notify"]
    assert [r.levelno for r in records] == [logging.WARNING, logging.INFO]
    assert records[0].getMessage() == (
        "alert notification firing: alertname=DeadNode env=prod: 7 firing, 0 resolved; "
        "agents a0, a1, a2, a3, a4 and 2 more"
    )
    assert records[1].getMessage().startswith("alert notification resolved: alertname=DeadNode env=prod")


async def test_close_processes_once_more_and_delivers_the_queue(server: HttpReceiver) -> None:
    h = Harness([webhook(server)])
    # Never started: close() alone must decide and deliver.
    h.update(make_alert("a1"), make_alert("a2"))
    h.clock.now = T0 + WAIT
    await h.notifier.close(timeout=2.0)
    assert len(server.requests) == 1
    assert agents_of(server.requests[0].body) == ["a1", "a2"]
    assert h.notifier.stats["hook"].sent == 1


async def test_update_and_process_never_raise(harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    def broken(_: list[Alert]) -> None:
        raise RuntimeError("store is down")

    harness.notifier.on_sent = broken
    harness.update(make_alert("a1"))
    with caplog.at_level(logging.ERROR, logger="clawtrace.alerts.notify"):
        assert harness.at(WAIT) == 0  # on_sent raised before the harness could record it
    assert "on_sent failed" in caplog.text


def test_build_receivers_rejects_bad_config() -> None:
    with pytest.raises(ValueError, match="named"):
        build_receivers([ReceiverConfig(name="x", type="log"), ReceiverConfig(name="x", type="log")])
    with pytest.raises(ValueError, match="http"):
        build_receivers([ReceiverConfig(name="x", type="slack")])


def test_a_bad_receiver_is_refused_when_the_settings_are_loaded(tmp_path: Any) -> None:
    config = tmp_path / "clawtrace.toml"
    config.write_text(
        '[[gateway.alerts.receivers]]\nname = "oncall"\ntype = "webhook"\nurl = "hooks.example"\n'
    )
    with pytest.raises(SettingsError, match=r"receivers in .*clawtrace\.toml: .*oncall"):
        load_settings(config)
