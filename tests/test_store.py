"""The whole Store interface, against both backends: SQLite and PostgreSQL.

Every test taking ``store`` runs twice, once per backend, and expects the
same answers from both. PostgreSQL must be reachable (tests/postgres.py):
these tests fail, not skip, when it is not. Below those, what only
PostgreSQL has: daily partitions, concurrent writers, an outage, and a real
gateway storing into it.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import psycopg
import pytest

from clawtrace.access import create_token
from clawtrace.alerts.model import Alert, AuditEntry, Silence, Transition
from clawtrace.protocol.client import MemoryOutbox, UplinkClient
from clawtrace.protocol.messages import Hello, Log
from clawtrace.store import AgentEnvMismatch, AgentInfo, EventQuery, Store, StoreError, WriteBatch, open_store
from clawtrace.store.base import (
    AmbiguousRelease,
    ApprovalRecord,
    DeploymentRecord,
    EventRow,
    PolicyRecord,
    PromotionApproval,
    QuarantineRecord,
    ReleaseConflict,
    ReleaseRecord,
    TokenRecord,
)
from clawtrace.store.partitions import DAY_SECONDS, day_of, partition_name
from gateway_process import GatewayProcess
from postgres import CuttableLink, admin_connection, fresh_database, fresh_schema

# A UTC midnight: partitions (and so retention) work in whole days from here.
T0 = float(day_of(1_780_000_000) * DAY_SECONDS)
HOUR = 3_600.0


# --- fixtures -------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """One throwaway database for the whole run (tests get a schema each)."""
    with fresh_database() as url:
        yield url


@pytest.fixture
def postgres_url(postgres_database: str) -> Iterator[str]:
    with fresh_schema(postgres_database) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        opened = open_store(f"sqlite:///{tmp_path / 'store.db'}", tmp_path)
    else:
        opened = open_store(request.getfixturevalue("postgres_url"), tmp_path)
    try:
        yield opened
    finally:
        opened.close()


def is_postgres(store: Store) -> bool:
    return store.url.startswith("postgresql://")


# --- helpers --------------------------------------------------------------------


def event_row(
    agent: str,
    seq: int,
    received: float,
    *,
    session: str = "s1",
    kind: str = "log",
    ts: float | None = None,
    data: bytes | None = None,
) -> EventRow:
    return (
        agent,
        seq,
        session,
        kind,
        received if ts is None else ts,
        received,
        data if data is not None else f'{{"seq":{seq}}}'.encode(),
    )


def batch_of(*rows: EventRow, heartbeat: tuple[float | None, int | None] | None = None) -> WriteBatch:
    batch = WriteBatch()
    for row in rows:
        batch.add(row, heartbeat=heartbeat if row[3] == "heartbeat" else None)
    return batch


def register(store: Store, agent: str, env: str = "dev", now: float = T0, **fields: Any) -> int:
    info = AgentInfo(
        agent,
        env,
        fields.get("region", "eu-west-1"),
        fields.get("labels", {}),
        fields.get("release"),
        fields.get("role"),
    )
    return store.register_agent(
        info, now, connected=fields.get("connected", True), gateway=fields.get("gateway")
    )


def seqs(store: Store, agent: str, **query: Any) -> list[int]:
    return [seq for seq, _ in store.query_events(EventQuery(agent, **query))]


def retention_pass(store: Store, cutoffs: dict[str, float], max_rows: int = 7) -> int:
    """What gateway/retention.py does: each environment pruned until finished."""
    deleted = 0
    for env in sorted(cutoffs):
        finished = False
        while not finished:
            count, finished = store.prune(env, cutoffs[env], max_rows)
            deleted += count
    return deleted


# --- events ---------------------------------------------------------------------


def test_events_are_written_and_queried_in_pages(store: Store) -> None:
    register(store, "a-1")
    rows = [event_row("a-1", seq, T0 + seq, kind="log" if seq % 3 else "thought") for seq in range(1, 26)]
    store.write(batch_of(*rows))
    assert store.count_events() == 25
    assert seqs(store, "a-1", limit=10) == list(range(1, 11))
    assert seqs(store, "a-1", after_seq=10, limit=10) == list(range(11, 21))
    assert seqs(store, "a-1", after_seq=20, limit=10) == list(range(21, 26))
    assert seqs(store, "a-1", kinds=["thought"]) == [3, 6, 9, 12, 15, 18, 21, 24]
    assert seqs(store, "a-1", since=T0 + 5, until=T0 + 8) == [5, 6, 7]
    assert store.query_events(EventQuery("a-1", after_seq=24)) == [(25, b'{"seq":25}')]
    assert seqs(store, "nobody") == []


def test_events_by_session(store: Store) -> None:
    register(store, "a-1")
    rows = [event_row("a-1", seq, T0 + seq, session="first" if seq <= 4 else "second") for seq in range(1, 9)]
    store.write(batch_of(*rows))
    assert seqs(store, "a-1", session="first") == [1, 2, 3, 4]
    assert seqs(store, "a-1", session="second", after_seq=6) == [7, 8]
    assert seqs(store, "a-1", session="second", kinds=["thought"]) == []
    assert seqs(store, "a-1", session="missing") == []


def test_duplicates_are_ignored_within_and_across_batches(store: Store) -> None:
    register(store, "a-1")
    store.write(
        batch_of(
            event_row("a-1", 1, T0, data=b'"first"'),
            event_row("a-1", 2, T0 + 1),
            event_row("a-1", 1, T0 + 2, data=b'"same seq later in the batch"'),
        )
    )
    # A resend the next day (another partition on PostgreSQL) and one within the same day.
    store.write(batch_of(event_row("a-1", 1, T0 + DAY_SECONDS + 5, data=b'"resent a day later"')))
    store.write(batch_of(event_row("a-1", 2, T0 + 60, data=b'"resent"'), event_row("a-1", 3, T0 + 61)))
    assert store.query_events(EventQuery("a-1"))[:2] == [(1, b'"first"'), (2, b'{"seq":2}')]
    assert store.count_events() == 3
    # A seq below the highest stored one that was never stored is not a duplicate.
    store.write(batch_of(event_row("a-1", 10, T0 + 70), event_row("a-1", 7, T0 + 71)))
    store.write(batch_of(event_row("a-1", 5, T0 + DAY_SECONDS + 9)))
    assert seqs(store, "a-1") == [1, 2, 3, 5, 7, 10]


def test_events_of_unregistered_agents_are_stored_and_deduplicated(store: Store) -> None:
    store.write(batch_of(event_row("ghost", 1, T0), event_row("ghost", 2, T0 + 1)))
    store.write(batch_of(event_row("ghost", 2, T0 + DAY_SECONDS), event_row("ghost", 3, T0 + 2)))
    assert seqs(store, "ghost") == [1, 2, 3]
    assert store.get_agent("ghost") is None


def test_write_keeps_agents_and_sessions_in_step(store: Store) -> None:
    register(store, "a-1")
    register(store, "b-1", env="prod")
    first = WriteBatch()
    first.add(event_row("a-1", 1, T0 + 1, ts=T0 - 5))
    first.add(event_row("a-1", 2, T0 + 2, kind="heartbeat"), heartbeat=(12.5, 1_000_000))
    first.add(event_row("a-1", 3, T0 + 3, kind="lifecycle"), lifecycle="running")
    first.add(event_row("b-1", 7, T0 + 4, session="other"))
    store.write(first)
    a = store.get_agent("a-1")
    assert a is not None
    assert (a.last_seq, a.last_event, a.last_heartbeat) == (3, T0 + 3, T0 + 2)
    assert (a.cpu_percent, a.rss_bytes, a.lifecycle) == (12.5, 1_000_000, "running")
    # No heartbeat in this batch: the last one's figures stay.
    store.write(batch_of(event_row("a-1", 4, T0 + 10, ts=T0 + 9)))
    a = store.get_agent("a-1")
    assert a is not None
    assert (a.last_seq, a.last_event, a.cpu_percent, a.lifecycle) == (4, T0 + 10, 12.5, "running")
    [session] = store.list_sessions("a-1")
    assert (session.first_seq, session.last_seq, session.events) == (1, 4, 4)
    assert (session.started, session.last_ts) == (T0 - 5, T0 + 9)
    [other] = store.list_sessions("b-1")
    assert (other.session, other.first_seq, other.last_seq, other.events) == ("other", 7, 7, 1)
    assert register(store, "a-1", now=T0 + 20) == 4


def test_agents_registry(store: Store) -> None:
    assert register(store, "a-2", labels={"team": "search"}, release="r1", role="worker") == 0
    assert register(store, "a-1", env="prod", connected=False) == 0
    with pytest.raises(AgentEnvMismatch, match="registered in environment 'dev'"):
        register(store, "a-2", env="prod")
    a2 = store.get_agent("a-2")
    assert a2 is not None
    assert (a2.env, a2.region, a2.labels, a2.release, a2.role) == (
        "dev",
        "eu-west-1",
        {"team": "search"},
        "r1",
        "worker",
    )
    assert (a2.connected, a2.first_seen, a2.last_connect, a2.last_seq) == (True, T0, T0, 0)
    a1 = store.get_agent("a-1")
    assert a1 is not None and not a1.connected and a1.last_connect is None
    assert [a.agent for a in store.list_agents()] == ["a-1", "a-2"]
    assert [a.agent for a in store.list_agents(["dev"])] == ["a-2"]
    assert [a.agent for a in store.list_agents(["dev", "prod"])] == ["a-1", "a-2"]
    assert store.list_agents([]) == []
    assert store.get_agent("nobody") is None
    store.mark_disconnected("a-2", T0 + 5)
    a2 = store.get_agent("a-2")
    assert a2 is not None and (a2.connected, a2.last_disconnect) == (False, T0 + 5)
    register(store, "a-2", now=T0 + 6)
    store.mark_all_disconnected(T0 + 7)
    assert not any(a.connected for a in store.list_agents())
    store.set_agent_release("a-2", "r2")
    a2 = store.get_agent("a-2")
    assert a2 is not None and (a2.release, a2.last_disconnect) == ("r2", T0 + 7)


def test_which_gateway_holds_an_agent(store: Store) -> None:
    """Scale mode: a disconnect counts only from the gateway that holds the agent; a dead
    gateway's agents can be marked disconnected all at once."""
    register(store, "a-1", gateway="gw-a")
    register(store, "a-2", gateway="gw-a")
    register(store, "a-3", gateway="gw-b")
    register(store, "a-4")  # embedded mode: no gateway named
    assert store.connected_gateways() == ["gw-a", "gw-b"]
    # a-1 reconnected to gw-b before gw-a saw its old connection close.
    register(store, "a-1", now=T0 + 1, gateway="gw-b")
    store.mark_disconnected("a-1", T0 + 2, gateway="gw-a")
    a1 = store.get_agent("a-1")
    assert a1 is not None and a1.connected
    assert store.mark_gateway_gone("gw-a", T0 + 3) == 1
    connected = {a.agent: a.connected for a in store.list_agents()}
    assert connected == {"a-1": True, "a-2": False, "a-3": True, "a-4": True}
    a2 = store.get_agent("a-2")
    assert a2 is not None and a2.last_disconnect == T0 + 3
    assert store.connected_gateways() == ["gw-b"]
    store.mark_disconnected("a-1", T0 + 4, gateway="gw-b")
    a1 = store.get_agent("a-1")
    assert a1 is not None and not a1.connected


# --- retention ------------------------------------------------------------------


def test_prune_per_environment(store: Store, request: pytest.FixtureRequest) -> None:
    """Two environments with different retention over four days of events.

    On PostgreSQL: day 0 (older than both cutoffs) is dropped whole, day 1
    loses the short-lived environment's rows and the long-lived one's up to
    its cutoff, day 2 the short-lived one's up to its cutoff. Retention's
    first pass learns the cutoffs, so two passes give the same rows as SQLite.
    """
    register(store, "short-1", env="short")
    register(store, "long-1", env="long")
    rows = []
    for step in range(32):  # every 3 h over 4 days, both agents
        received = T0 + step * 3 * HOUR + 60
        for agent in ("short-1", "long-1"):
            rows.append(event_row(agent, step + 1, received, session=f"day{step // 8}"))
    for start in range(0, len(rows), 16):
        store.write(batch_of(*rows[start : start + 16]))
    cutoffs = {"short": T0 + 2.5 * DAY_SECONDS, "long": T0 + 1.5 * DAY_SECONDS}
    deleted = retention_pass(store, cutoffs) + retention_pass(store, cutoffs)
    expected = {
        agent: [r[1] for r in rows if r[0] == agent and r[5] >= cutoffs[env]]
        for agent, env in (("short-1", "short"), ("long-1", "long"))
    }
    assert seqs(store, "short-1") == expected["short-1"]
    assert seqs(store, "long-1") == expected["long-1"]
    assert deleted == len(rows) - store.count_events()
    assert [s.session for s in store.list_sessions("short-1")] == ["day2", "day3"]
    assert [s.session for s in store.list_sessions("long-1")] == ["day1", "day2", "day3"]
    # Nothing left to do: a third pass deletes nothing.
    assert retention_pass(store, cutoffs) == 0
    if is_postgres(store):
        partitions = _partitions(request.getfixturevalue("postgres_url"))
        assert partition_name(day_of(T0)) not in partitions
        assert partition_name(day_of(T0) + 1) in partitions


def test_rollups(store: Store) -> None:
    store.write_rollups([("agent:a-1", 100, b"a"), ("agent:a-1", 101, b"b"), ("env:dev", 100, b"c")])
    store.write_rollups([("agent:a-1", 100, b"late")])
    store.write_rollups([])
    rows = store.query_rollups("agent:a-1", 100, 101)
    # Ordered by minute; the rows of one minute in any order (readers add them up).
    assert [minute for minute, _ in rows] == [100, 100, 101]
    assert sorted(rows) == [(100, b"a"), (100, b"late"), (101, b"b")]
    assert store.query_rollups("agent:a-1", 101, 200) == [(101, b"b")]
    assert store.query_rollups("env:prod", 0, 1_000) == []
    assert store.prune_rollups(101) == 3
    assert store.query_rollups("agent:a-1", 0, 1_000) == [(101, b"b")]


# --- credentials ----------------------------------------------------------------


def test_tokens(store: Store) -> None:
    token = TokenRecord(
        id="t1",
        secret_hash="h",
        env="dev",
        role="agent",
        name="ci",
        created=T0,
        expires=T0 + 60,
        revoked=None,
    )
    store.add_token(token)
    store.add_token(msgspec.structs.replace(token, id="t0", created=T0 - 1, expires=None))
    assert store.get_token("t1") == token
    assert store.get_token("nope") is None
    assert [t.id for t in store.list_tokens()] == ["t0", "t1"]
    assert store.revoke_token("t1", T0 + 5)
    assert not store.revoke_token("t1", T0 + 6)
    revoked = store.get_token("t1")
    assert revoked is not None and revoked.revoked == T0 + 5


# --- alerts, silences, audit, quarantines ---------------------------------------


def test_alert_state_and_history(store: Store) -> None:
    firing = Alert(
        rule="ReasoningLoop", agent="a-1", env="dev", state="firing", value=12.0, labels={"x": "y"}
    )
    budget = Alert(rule="Budget", agent="", env="dev", state="pending")
    store.save_alerts([firing, budget])
    assert sorted(store.load_alerts(), key=lambda a: a.rule) == [budget, firing]
    resolved = msgspec.structs.replace(firing, state="resolved", resolved_at=T0)
    store.save_alerts([resolved], forget=[("Budget", "@dev")])
    assert store.load_alerts() == [resolved]

    def transition(ts: float, rule: str, agent: str, env: str = "dev") -> Transition:
        return Transition(
            ts=ts,
            rule=rule,
            agent=agent,
            env=env,
            from_state="pending",
            to_state="firing",
            value=1.0,
            threshold=None,
            fingerprint=f"{rule}{agent}",
        )

    store.add_transitions([transition(T0, "A", "a-1"), transition(T0 + 1, "B", "a-2", "prod")])
    store.add_transitions([transition(T0 + 2, "A", "a-2")])
    store.add_transitions([])
    assert [t.ts for t in store.query_transitions()] == [T0 + 2, T0 + 1, T0]
    assert [t.ts for t in store.query_transitions(envs=["dev"])] == [T0 + 2, T0]
    assert [t.ts for t in store.query_transitions(rule="A", agent="a-2")] == [T0 + 2]
    assert [t.ts for t in store.query_transitions(since=T0 + 1, limit=1)] == [T0 + 2]
    store.add_silence(
        Silence(id="s-old", target="A", env=None, starts=T0 - 10, ends=T0 - 5, created_by="x", reason="r")
    )
    store.add_audit(
        [AuditEntry(ts=T0 - 100, env="dev", actor="x", action="restart", target="a", reason="", result="ok")]
    )
    assert store.prune_alert_history(transitions_before=T0 + 1, audit_before=T0) == 3
    assert [t.ts for t in store.query_transitions()] == [T0 + 2, T0 + 1]


def test_silences(store: Store) -> None:
    silence = Silence(
        id="s1",
        target="ReasoningLoop",
        env="dev",
        starts=T0,
        ends=T0 + 3600,
        created_by="ann",
        reason="noisy",
    )
    store.add_silence(silence)
    store.add_silence(
        Silence(
            id="s2", target="a-*", env=None, starts=T0 + 10, ends=T0 + 20, created_by="bob", reason="deploy"
        )
    )
    assert [s.id for s in store.list_silences()] == ["s2", "s1"]
    assert [s.id for s in store.list_silences(active_at=T0 + 15)] == ["s2", "s1"]
    assert [s.id for s in store.list_silences(active_at=T0 + 30)] == ["s1"]
    expired = store.expire_silence("s1", "carol", T0 + 40)
    assert expired == msgspec.structs.replace(silence, ends=T0 + 40, expired_by="carol")
    assert store.list_silences(active_at=T0 + 50) == []
    # Expiring again changes nothing; an unknown id is None.
    assert store.expire_silence("s1", "dave", T0 + 60) == expired
    assert store.expire_silence("nope", "dave", T0) is None


def test_audit(store: Store) -> None:
    def entry(ts: float, **fields: Any) -> AuditEntry:
        values: dict[str, Any] = {
            "env": "dev",
            "actor": "alert:ReasoningLoop",
            "action": "restart",
            "target": "a-1",
            "reason": "loop",
            "result": "ok",
            **fields,
        }
        return AuditEntry(ts=ts, **values)

    store.add_audit(
        [
            entry(T0, detail={"attempt": 1, "nested": {"k": [1, 2]}}),
            entry(T0 + 1, env="prod", target="a-2"),
            entry(T0 + 2, actor="policy", action="policy", result="deny"),
            entry(T0 + 3, actor="alert_50%_off", action="stop"),
        ]
    )
    store.add_audit([])
    assert [e.ts for e in store.query_audit()] == [T0 + 3, T0 + 2, T0 + 1, T0]
    assert store.query_audit(since=T0, limit=1)[0].ts == T0 + 3
    assert [e.ts for e in store.query_audit(envs=["dev"], target="a-1")] == [T0 + 3, T0 + 2, T0]
    assert [e.ts for e in store.query_audit(action="policy", result="deny")] == [T0 + 2]
    assert [e.ts for e in store.query_audit(actor_prefix="alert:")] == [T0 + 1, T0]
    # LIKE wildcards in the prefix are matched literally.
    assert [e.ts for e in store.query_audit(actor_prefix="alert_50%")] == [T0 + 3]
    assert store.query_audit(since=T0 + 10) == []
    assert store.query_audit(target="a-1", action="restart")[-1].detail == {
        "attempt": 1,
        "nested": {"k": [1, 2]},
    }


def test_quarantines(store: Store) -> None:
    store.set_quarantine(QuarantineRecord(agent="a-1", env="dev", since=T0, reason="loop", actor="alert:X"))
    store.set_quarantine(QuarantineRecord(agent="a-1", env="dev", since=T0 + 1, reason="again", actor="ann"))
    store.set_quarantine(QuarantineRecord(agent="a-2", env="prod", since=T0, reason="r", actor="bob"))
    assert sorted((q.agent, q.reason) for q in store.list_quarantines()) == [("a-1", "again"), ("a-2", "r")]
    assert store.clear_quarantine("a-1")
    assert not store.clear_quarantine("a-1")
    assert [q.agent for q in store.list_quarantines()] == ["a-2"]


# --- tool policy and approvals --------------------------------------------------


def test_policies(store: Store) -> None:
    def record(env: str, version: str, at: float, action: str = "apply") -> PolicyRecord:
        return PolicyRecord(
            env=env,
            version=version,
            bundle=f'{{"v":"{version}"}}',
            applied_by="ann",
            applied_at=at,
            action=action,
        )

    store.activate_policy(record("dev", "v1", T0))
    store.activate_policy(record("prod", "v1", T0 + 1))
    store.activate_policy(record("dev", "v2", T0 + 2))
    store.activate_policy(record("dev", "v1", T0 + 3, action="rollback"))
    assert [(p.env, p.version, p.action, p.active) for p in store.active_policies()] == [
        ("dev", "v1", "rollback", True),
        ("prod", "v1", "apply", True),
    ]
    assert [(p.version, p.active) for p in store.policy_history("dev")] == [
        ("v1", True),
        ("v2", False),
        ("v1", False),
    ]
    assert [p.version for p in store.policy_history("dev", limit=1)] == ["v1"]
    found = store.find_policy("dev", "v1")
    assert found is not None and found.applied_at == T0 + 3
    assert store.find_policy("dev", "v9") is None


def test_approvals(store: Store) -> None:
    def approval(approval_id: str, created: float, **fields: Any) -> ApprovalRecord:
        values: dict[str, Any] = {
            "agent": "a-1",
            "env": "dev",
            "tool": "shell",
            "command": "rm -rf /tmp/x",
            **fields,
        }
        return ApprovalRecord(id=approval_id, created=created, expires=created + 60, **values)

    store.add_approvals([approval("p1", T0), approval("p2", T0 + 1, env="prod", agent="a-2")])
    store.add_approvals([approval("p1", T0 + 5, command="resent"), approval("p3", T0 + 100)])
    store.add_approvals([])
    p1 = store.get_approval("p1")
    assert p1 is not None and (p1.command, p1.state) == ("rm -rf /tmp/x", "pending")
    assert store.get_approval("nope") is None
    assert [a.id for a in store.list_approvals()] == ["p3", "p2", "p1"]
    assert [a.id for a in store.list_approvals(envs=["dev"], agent="a-1", limit=1)] == ["p3"]
    assert store.decide_approval("p1", "approved", "ann", T0 + 10, "looks fine")
    assert not store.decide_approval("p1", "rejected", "bob", T0 + 11)
    assert store.decide_approval("p1", "rejected", "bob", T0 + 12, from_state="approved")
    p1 = store.get_approval("p1")
    assert p1 is not None and (p1.state, p1.decided_by, p1.decided_at) == ("rejected", "bob", T0 + 12)
    assert store.expire_approvals(T0 + 70) == 1  # p2; p3 is not due yet
    p2 = store.get_approval("p2")
    assert p2 is not None and (p2.state, p2.decided_by, p2.decided_at) == ("expired", "timeout", T0 + 61)
    assert [a.id for a in store.list_approvals(state="pending")] == ["p3"]


# --- releases and environments ----------------------------------------------------


def test_releases(store: Store) -> None:
    def release(release_id: str, version: str, created: float, role: str = "worker") -> ReleaseRecord:
        return ReleaseRecord(
            id=release_id,
            role=role,
            version=version,
            manifest="{}",
            content=b'{"a.py":"x"}',
            created=created,
            created_by="ann",
        )

    first = release("abcdef0123" + "0" * 54, "1.0", T0)
    assert store.add_release(first)
    assert not store.add_release(first)
    assert store.add_release(release("abcdef9999" + "0" * 54, "1.1", T0 + 1))
    assert store.add_release(release("1234567890" + "0" * 54, "1.0", T0 + 2, role="planner"))
    with pytest.raises(ReleaseConflict, match=r"worker@1\.0 is already release abcdef012300"):
        store.add_release(release("fedcba" + "0" * 58, "1.0", T0 + 3))
    assert store.get_release(first.id) == first
    assert store.get_release("abcdef0") == first
    assert store.get_release("ABCDEF0") == first
    assert store.get_release("worker@1.0") == first
    assert store.get_release("abc") is None  # too short to be a prefix
    assert store.get_release("worker@9") is None
    with pytest.raises(AmbiguousRelease):
        store.get_release("abcdef")
    assert [r.version for r in store.list_releases()] == ["1.0", "1.1", "1.0"]
    assert [r.created for r in store.list_releases("worker")] == [T0 + 1, T0]


def test_deployments(store: Store) -> None:
    def deployment(env: str, role: str, release: str, created: float, **fields: Any) -> DeploymentRecord:
        values: dict[str, Any] = {"previous": None, "kind": "deploy", "actor": "ann", "reason": "", **fields}
        return DeploymentRecord(
            env=env,
            role=role,
            release=release,
            created=created,
            phase="canary",
            phase_since=created,
            **values,
        )

    d1 = store.add_deployment(deployment("dev", "worker", "r1", T0))
    d2 = store.add_deployment(deployment("dev", "worker", "r2", T0 + 1, previous="r1", canary=["a-1"]))
    d3 = store.add_deployment(deployment("prod", "worker", "r1", T0 + 2, kind="promote"))
    d4 = store.add_deployment(deployment("dev", "planner", "p1", T0 + 3))
    assert d1.id < d2.id < d3.id < d4.id
    assert d2.canary == ["a-1"] and d2.previous == "r1"
    assert [(d.env, d.role, d.release) for d in store.current_deployments()] == [
        ("dev", "planner", "p1"),
        ("dev", "worker", "r2"),
        ("prod", "worker", "r1"),
    ]
    assert [d.id for d in store.current_deployments(["prod"])] == [d3.id]
    store.update_rollout(d2.id, "rolling", T0 + 10, ["a-1", "a-2"], "canary healthy")
    [current] = [d for d in store.current_deployments(["dev"]) if d.role == "worker"]
    assert (current.phase, current.phase_since, current.canary, current.detail) == (
        "rolling",
        T0 + 10,
        ["a-1", "a-2"],
        "canary healthy",
    )
    assert [d.id for d in store.deployment_history()] == [d4.id, d3.id, d2.id, d1.id]
    assert [d.id for d in store.deployment_history(env="dev", role="worker")] == [d2.id, d1.id]
    assert [d.id for d in store.deployment_history(release="r1", limit=1)] == [d3.id]

    assert store.get_promotion_approval("r2", "prod") is None
    store.approve_promotion(PromotionApproval(release="r2", env="prod", approved_by="ann", approved_at=T0))
    store.approve_promotion(
        PromotionApproval(release="r2", env="prod", approved_by="bob", approved_at=T0 + 5, reason="again")
    )
    renewed = store.get_promotion_approval("r2", "prod")
    assert renewed is not None and (renewed.approved_by, renewed.reason) == ("bob", "again")


# --- PostgreSQL only: partitions, concurrency, outages, URLs ------------------------


def _partitions(url: str) -> set[str]:
    """The partitions of ``events`` in the store at ``url``."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'events'::regclass"
        ).fetchall()
    return {str(name) for (name,) in rows}


def test_partitions_are_made_ahead_of_the_rows(postgres_url: str, tmp_path: Path) -> None:
    store = open_store(postgres_url, tmp_path)
    try:
        today = day_of(time.time())
        assert {partition_name(today), partition_name(today + 1)} <= _partitions(postgres_url)
        # A batch straddling a midnight far ahead: both days' rows land, and the day after is ready.
        midnight = float((today + 30) * DAY_SECONDS)
        register(store, "a-1")
        store.write(batch_of(event_row("a-1", 1, midnight - 0.001), event_row("a-1", 2, midnight)))
        assert seqs(store, "a-1") == [1, 2]
        ahead = {partition_name(today + 29), partition_name(today + 30), partition_name(today + 31)}
        assert ahead <= _partitions(postgres_url)
        # Another process dropped a partition this store believes in: the write still lands.
        with admin_connection(postgres_url) as admin:
            admin.execute(f"DROP TABLE {partition_name(today + 31)}")
        store.write(batch_of(event_row("a-1", 3, midnight + DAY_SECONDS + 1)))
        assert seqs(store, "a-1") == [1, 2, 3]
    finally:
        store.close()


def test_concurrent_writers_store_each_event_once(postgres_url: str, tmp_path: Path) -> None:
    """Two gateways' writers sending overlapping batches (a reconnect race): no duplicate, no deadlock."""
    stores = [open_store(postgres_url, tmp_path) for _ in range(2)]
    agents = [f"a-{i}" for i in range(20)]
    for agent in agents:
        register(stores[0], agent)
    errors: list[BaseException] = []

    def writer(store: Store, order: int) -> None:
        try:
            for step in range(30):
                received = T0 + 10 * DAY_SECONDS + step * 3_000 * order  # some batches cross a midnight
                rows = [event_row(a, seq, received) for a in agents[::order] for seq in range(step, step + 5)]
                store.write(batch_of(*[r for r in rows if r[1] > 0]))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(s, o)) for s, o in zip(stores, (1, -1), strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert not errors, errors
        for agent in agents:
            assert seqs(stores[0], agent) == list(range(1, 34))
        assert stores[0].count_events() == 20 * 33
        assert all(a.last_seq == 33 for a in stores[1].list_agents())
    finally:
        for store in stores:
            store.close()


def test_outage_fails_clearly_and_loses_nothing(postgres_url: str, tmp_path: Path) -> None:
    link = CuttableLink()
    store = open_store(link.url(postgres_url), tmp_path)
    try:
        register(store, "a-1")
        store.write(batch_of(event_row("a-1", 1, T0)))
        link.cut()
        lost = batch_of(event_row("a-1", 2, T0 + 1), event_row("a-1", 3, T0 + 2))
        with pytest.raises(
            StoreError, match=r"is unavailable \(storing 2 events\).*None of the batch was stored"
        ):
            store.write(lost)
        with pytest.raises(StoreError, match="is unavailable"):
            store.query_events(EventQuery("a-1"))
        with pytest.raises(StoreError, match="is unavailable"):
            store.list_tokens()
        with pytest.raises(StoreError, match="is unavailable"):
            register(store, "a-1")
        link.restore()
        # The caller retries the same batch (a resend): everything lands, once.
        store.write(lost)
        store.write(lost)
        assert seqs(store, "a-1") == [1, 2, 3]
        agent = store.get_agent("a-1")
        assert agent is not None and agent.last_seq == 3
        assert store.list_tokens() == []
    finally:
        link.close()
        store.close()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://postgres@127.0.0.1:5432/", "names no database"),
        ("postgresql://postgres@127.0.0.1:5432/test?bogus=1", "invalid PostgreSQL URL"),
        ("postgresql://postgres@127.0.0.1:5432/test?pool_size=0", "pool_size='0'"),
        ("postgresql://postgres@127.0.0.1:5432/ct_no_such_database", "Create the database first"),
        ("postgresql://postgres@127.0.0.1:1/test", r"unavailable \(connecting\).*running and reachable"),
        ("mysql://root@localhost/x", "unsupported store URL"),
    ],
)
def test_bad_urls_say_what_to_do(url: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=message):
        open_store(url, tmp_path)


def test_missing_permission_says_what_to_grant(postgres_database: str, tmp_path: Path) -> None:
    role = f"ct_test_role_{secrets.token_hex(4)}"
    with admin_connection(postgres_database) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN")  # trust auth: no password needed
        # Since PostgreSQL 15 only the database owner may create in its public schema.
        admin.execute(f"REVOKE CREATE ON SCHEMA public FROM {role}")
    try:
        url = postgres_database.replace("postgres@", f"{role}@")
        with pytest.raises(StoreError, match=r"permission denied for schema public.*Grant it CREATE"):
            open_store(url, tmp_path)
    finally:
        with admin_connection(postgres_database) as admin:
            admin.execute(f"DROP ROLE {role}")


def test_password_never_shown(postgres_url: str, tmp_path: Path) -> None:
    secret_url = postgres_url.replace("postgres@", "postgres:s3cret@")
    store = open_store(secret_url, tmp_path)  # trust auth: the password is not checked
    try:
        assert "s3cret" not in store.url
    finally:
        store.close()


# --- a real gateway on PostgreSQL -------------------------------------------------


@dataclass
class PostgresGateway:
    process: GatewayProcess
    link: CuttableLink  # between the gateway and PostgreSQL
    admin_token: str
    agent_token: str

    def stored_events(self, agent: str) -> list[dict[str, Any]]:
        """Every stored event of ``agent``, paging through the API."""
        out: list[dict[str, Any]] = []
        after = 0
        while True:
            response = httpx.get(
                f"{self.process.http_url}/api/v1/agents/{agent}/events",
                params={"after_seq": after, "limit": 5000},
                headers={"Authorization": f"Bearer {self.admin_token}"},
                timeout=30,
            )
            response.raise_for_status()
            body = response.json()
            out.extend(body["events"])
            if body["next_after_seq"] is None:
                return out
            after = body["next_after_seq"]


@pytest.fixture(scope="module")
def postgres_gateway(
    postgres_database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PostgresGateway]:
    """One ``clawtrace up --store postgresql://...`` for this module's tests, through a cuttable link."""
    data_dir = tmp_path_factory.mktemp("gateway")
    link = CuttableLink()
    with fresh_schema(postgres_database) as url:
        store_url = link.url(url)
        setup = open_store(store_url, data_dir)
        try:
            admin, _ = create_token(setup, env="*", role="admin")
            agent, _ = create_token(setup, env="dev", role="agent", name="node-1")
        finally:
            setup.close()
        process = GatewayProcess(data_dir, extra_args=["--store", store_url])
        process.start()
        try:
            yield PostgresGateway(process, link, admin, agent)
        finally:
            process.stop()
            link.close()


def test_gateway_stores_into_postgres(postgres_gateway: PostgresGateway) -> None:
    gateway = postgres_gateway
    lines = [
        msgspec.json.encode(
            {
                "kind": "log",
                "seq": seq,
                "ts": "2026-03-01T12:00:00Z",
                "session": "s1",
                "stream": "stdout",
                "line": f"line {seq}",
            }
        )
        for seq in range(1, 101)
    ]
    response = httpx.post(
        f"{gateway.process.http_url}/v1/events",
        params={"agent": "http-1"},
        content=b"\n".join(lines),
        headers={"Authorization": f"Bearer {gateway.agent_token}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 100
    events = gateway.stored_events("http-1")
    assert [e["seq"] for e in events] == list(range(1, 101))
    assert events[41]["line"] == "line 42"
    assert "Traceback" not in gateway.process.log(), gateway.process.log()


async def test_gateway_loses_nothing_while_postgres_is_away(postgres_gateway: PostgresGateway) -> None:
    """PostgreSQL unreachable for a few seconds mid-stream: the gateway stops acking, the
    agent keeps its events and resends them once the store is back; each lands once."""
    gateway = postgres_gateway
    outbox = MemoryOutbox()
    client = UplinkClient(
        gateway.process.ws_url,
        Hello(agent="ws-1", env="dev", region="eu-west-1"),
        outbox,
        token=gateway.agent_token,
        reconnect_min=0.1,
        reconnect_max=0.5,
    )
    runner = asyncio.create_task(client.run())
    total = 300
    try:
        for seq in range(1, total + 1):
            outbox.append(
                Log(seq=seq, ts=datetime.now(UTC), session="s1", stream="stdout", line=f"line {seq}")
            )
            client.notify()
            if seq == 100:
                await client.wait_acked(100, timeout=20)
                gateway.link.cut()
            if seq == 200:
                await asyncio.sleep(3)  # the outage
                assert client.acked_seq < 200, "nothing may be acked while PostgreSQL is away"
                gateway.link.restore()
            await asyncio.sleep(0.005)
        await client.wait_acked(total, timeout=60)
        events = await asyncio.to_thread(gateway.stored_events, "ws-1")
        assert [e["seq"] for e in events] == list(range(1, total + 1))
    finally:
        await client.close()
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        gateway.link.restore()  # for whatever runs after, should this test have failed mid-outage
