"""The store interface every backend implements, and the records it returns."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from clawtrace.alerts.model import Alert, AuditEntry, Silence, Transition

# (agent, seq, session, kind, ts, received, data): the hot-path row shape.
EventRow = tuple[str, int, str, str, float, float, bytes]


class AgentRecord(msgspec.Struct, kw_only=True):
    agent: str
    env: str
    region: str
    labels: dict[str, str]
    release: str | None
    connected: bool
    first_seen: float
    last_connect: float | None
    last_disconnect: float | None
    last_event: float | None
    last_heartbeat: float | None
    last_seq: int
    cpu_percent: float | None
    rss_bytes: int | None
    lifecycle: str | None = None
    role: str | None = None


class QuarantineRecord(msgspec.Struct, kw_only=True):
    agent: str
    env: str
    since: float
    reason: str
    actor: str


class PolicyRecord(msgspec.Struct, kw_only=True):
    """One activation of an environment's policy bundle (an apply or a rollback)."""

    env: str
    version: str
    # clawtrace.policy.PolicyBundle as JSON (kept opaque here: the store does not compile policies).
    bundle: str
    applied_by: str
    applied_at: float
    action: str = "apply"
    active: bool = False


APPROVAL_STATES = ("pending", "approved", "rejected", "expired")


class ApprovalRecord(msgspec.Struct, kw_only=True):
    """A tool call waiting for a person (a require_approval decision)."""

    id: str
    agent: str
    env: str
    tool: str
    command: str = ""
    rule: str = ""
    reason: str = ""
    call_id: str | None = None
    policy_version: str | None = None
    created: float
    expires: float
    state: str = "pending"
    decided_by: str | None = None
    decided_at: float | None = None
    decision_reason: str | None = None


class SessionRecord(msgspec.Struct, kw_only=True):
    agent: str
    session: str
    first_seq: int
    last_seq: int
    started: float
    last_ts: float
    events: int


class TokenRecord(msgspec.Struct, kw_only=True):
    id: str
    secret_hash: str
    env: str
    role: str
    name: str
    created: float
    expires: float | None
    revoked: float | None


@dataclass(slots=True)
class AgentProgress:
    last_seq: int
    last_event: float
    last_heartbeat: float | None = None
    cpu_percent: float | None = None
    rss_bytes: int | None = None
    lifecycle: str | None = None


@dataclass(slots=True)
class SessionProgress:
    first_seq: int
    last_seq: int
    started: float
    last_ts: float
    events: int


@dataclass(slots=True)
class WriteBatch:
    """Events plus the registry and session bookkeeping that goes with them.

    Written in one transaction, so the agents' ``last_seq`` (what a
    reconnecting node agent is told in ``welcome``) never runs ahead of the
    events actually stored.
    """

    rows: list[EventRow] = field(default_factory=list)
    agents: dict[str, AgentProgress] = field(default_factory=dict)
    sessions: dict[tuple[str, str], SessionProgress] = field(default_factory=dict)

    def add(
        self,
        row: EventRow,
        *,
        heartbeat: tuple[float | None, int | None] | None = None,
        lifecycle: str | None = None,
    ) -> None:
        agent, seq, session, _kind, ts, received, _data = row
        self.rows.append(row)
        progress = self.agents.get(agent)
        if progress is None:
            progress = self.agents[agent] = AgentProgress(last_seq=seq, last_event=received)
        else:
            progress.last_seq = max(progress.last_seq, seq)
            progress.last_event = max(progress.last_event, received)
        if heartbeat is not None:
            progress.last_heartbeat = received
            progress.cpu_percent, progress.rss_bytes = heartbeat
        if lifecycle is not None:
            progress.lifecycle = lifecycle
        key = (agent, session)
        sess = self.sessions.get(key)
        if sess is None:
            self.sessions[key] = SessionProgress(seq, seq, ts, ts, 1)
        else:
            sess.first_seq = min(sess.first_seq, seq)
            sess.last_seq = max(sess.last_seq, seq)
            sess.started = min(sess.started, ts)
            sess.last_ts = max(sess.last_ts, ts)
            sess.events += 1

    def merge(self, other: WriteBatch) -> None:
        self.rows.extend(other.rows)
        for agent, theirs in other.agents.items():
            mine = self.agents.get(agent)
            if mine is None:
                self.agents[agent] = theirs
                continue
            mine.last_seq = max(mine.last_seq, theirs.last_seq)
            mine.last_event = max(mine.last_event, theirs.last_event)
            if theirs.last_heartbeat is not None:
                mine.last_heartbeat = theirs.last_heartbeat
                mine.cpu_percent, mine.rss_bytes = theirs.cpu_percent, theirs.rss_bytes
            if theirs.lifecycle is not None:
                mine.lifecycle = theirs.lifecycle
        for key, theirs_s in other.sessions.items():
            mine_s = self.sessions.get(key)
            if mine_s is None:
                self.sessions[key] = theirs_s
                continue
            mine_s.first_seq = min(mine_s.first_seq, theirs_s.first_seq)
            mine_s.last_seq = max(mine_s.last_seq, theirs_s.last_seq)
            mine_s.started = min(mine_s.started, theirs_s.started)
            mine_s.last_ts = max(mine_s.last_ts, theirs_s.last_ts)
            mine_s.events += theirs_s.events


@dataclass(slots=True, frozen=True)
class EventQuery:
    agent: str
    session: str | None = None
    kinds: Sequence[str] = ()
    since: float | None = None
    until: float | None = None
    after_seq: int = 0
    limit: int = 500


@dataclass(slots=True, frozen=True)
class AgentInfo:
    """What a node agent says about itself in ``hello``."""

    agent: str
    env: str
    region: str
    labels: dict[str, str]
    release: str | None
    # Set when the node agent runs its environment's desired release of this role.
    role: str | None = None


class StoreError(Exception):
    """The store cannot do what was asked; the message says why."""


class AgentEnvMismatch(StoreError):
    pass


class ReleaseRecord(msgspec.Struct, kw_only=True):
    """One stored release (clawtrace.envs.Release, kept opaque here: the store does not hash or check)."""

    id: str
    role: str
    version: str
    manifest: str  # the Manifest as JSON
    content: bytes  # the files (path -> text) as JSON
    created: float
    created_by: str


class DeploymentRecord(msgspec.Struct, kw_only=True):
    """One change of an environment's desired release for a role, with its rollout's state."""

    env: str
    role: str
    release: str
    previous: str | None
    kind: str  # deploy | promote | rollback | auto_rollback
    actor: str
    reason: str
    created: float
    phase: str  # canary | rolling | complete | rolled_back | superseded
    phase_since: float
    canary: list[str] = []
    detail: str = ""
    id: int = 0  # given by the store


class PromotionApproval(msgspec.Struct, kw_only=True):
    release: str
    env: str
    approved_by: str
    approved_at: float
    reason: str = ""


# The fewest leading hex digits of a release id that ``get_release`` looks up as a prefix.
MIN_RELEASE_PREFIX = 6


class ReleaseConflict(StoreError):
    """ROLE@VERSION already names another release: a version label is given once."""

    def __init__(self, existing: ReleaseRecord) -> None:
        super().__init__(
            f"{existing.role}@{existing.version} is already release {existing.id[:12]}"
            " with other content: give this one a new version label"
        )
        self.existing = existing


class AmbiguousRelease(StoreError):
    """An id prefix that several releases start with."""

    def __init__(self, ref: str, ids: list[str]) -> None:
        shown = ", ".join(i[:12] for i in ids[:5])
        super().__init__(f"{ref!r} is the start of {len(ids)} release ids ({shown}): give more of the id")
        self.ids = ids


class Store(abc.ABC):
    """Durable home of events, the agents registry, sessions and credentials.

    Methods are synchronous and thread-safe; the gateway calls them from a
    writer thread (writes) or a thread pool (reads).
    """

    url: str

    @abc.abstractmethod
    def migrate(self) -> None:
        """Create or upgrade the schema."""

    @abc.abstractmethod
    def close(self) -> None: ...

    # --- ingest ---------------------------------------------------------
    @abc.abstractmethod
    def write(self, batch: WriteBatch) -> None:
        """Store events (ignoring duplicates by agent and seq) in one transaction."""

    @abc.abstractmethod
    def register_agent(
        self, info: AgentInfo, now: float, connected: bool = True, gateway: str | None = None
    ) -> int:
        """Record a connection (to ``gateway``, in scale mode) or an HTTP post; return the
        highest seq stored for the agent.

        Raises ``AgentEnvMismatch`` if the agent id belongs to another environment.
        """

    @abc.abstractmethod
    def mark_disconnected(self, agent: str, now: float, gateway: str | None = None) -> None:
        """With ``gateway``: only if that gateway holds it (it may have reconnected elsewhere)."""

    @abc.abstractmethod
    def connected_gateways(self) -> list[str]:
        """Scale mode: the gateways that hold a connected agent, as the registry has it."""

    @abc.abstractmethod
    def mark_gateway_gone(self, gateway: str, now: float) -> int:
        """Scale mode: a gateway died; its agents are not connected (to it). Returns how many."""

    @abc.abstractmethod
    def mark_all_disconnected(self, now: float) -> None:
        """At gateway start, nobody is connected yet."""

    # --- reads ----------------------------------------------------------
    @abc.abstractmethod
    def get_agent(self, agent: str) -> AgentRecord | None: ...

    @abc.abstractmethod
    def list_agents(self, envs: Sequence[str] | None = None) -> list[AgentRecord]:
        """All agents, or those in ``envs``."""

    @abc.abstractmethod
    def list_sessions(self, agent: str) -> list[SessionRecord]: ...

    @abc.abstractmethod
    def query_events(self, query: EventQuery) -> list[tuple[int, bytes]]:
        """(seq, event JSON) ordered by seq, at most ``query.limit``."""

    @abc.abstractmethod
    def count_events(self) -> int: ...

    # --- retention ------------------------------------------------------
    @abc.abstractmethod
    def prune(self, env: str, received_before: float, max_rows: int) -> tuple[int, bool]:
        """Delete a slice of ``env``'s events received before the cutoff.

        Returns (rows deleted, finished); callers loop until finished so that
        retention never holds the write lock for long.
        """

    # --- metric rollups --------------------------------------------------
    @abc.abstractmethod
    def write_rollups(self, rows: Sequence[tuple[str, int, bytes]]) -> None:
        """Append (scope, minute, data) rows."""

    @abc.abstractmethod
    def query_rollups(self, scope: str, first_minute: int, last_minute: int) -> list[tuple[int, bytes]]:
        """(minute, data) of ``scope`` in [first, last] by minute; a minute may have several rows."""

    @abc.abstractmethod
    def prune_rollups(self, before_minute: int) -> int: ...

    # --- credentials ----------------------------------------------------
    @abc.abstractmethod
    def add_token(self, token: TokenRecord) -> None: ...

    @abc.abstractmethod
    def get_token(self, token_id: str) -> TokenRecord | None: ...

    @abc.abstractmethod
    def list_tokens(self) -> list[TokenRecord]: ...

    @abc.abstractmethod
    def revoke_token(self, token_id: str, now: float) -> bool: ...

    # --- alerts and remediation ------------------------------------------
    @abc.abstractmethod
    def save_alerts(self, alerts: Sequence[Alert], forget: Sequence[tuple[str, str]] = ()) -> None:
        """Upsert live alerts and delete those (rule, agent) pairs that went inactive."""

    @abc.abstractmethod
    def load_alerts(self) -> list[Alert]: ...

    @abc.abstractmethod
    def add_transitions(self, transitions: Sequence[Transition]) -> None: ...

    @abc.abstractmethod
    def query_transitions(
        self,
        *,
        envs: Sequence[str] | None = None,
        rule: str | None = None,
        agent: str | None = None,
        since: float | None = None,
        limit: int = 500,
    ) -> list[Transition]:
        """Newest first."""

    @abc.abstractmethod
    def prune_alert_history(self, transitions_before: float, audit_before: float) -> int:
        """Delete alert transitions, ended silences and audit entries older than the cutoffs."""

    @abc.abstractmethod
    def add_silence(self, silence: Silence) -> None: ...

    @abc.abstractmethod
    def expire_silence(self, silence_id: str, actor: str, now: float) -> Silence | None:
        """End a silence now; None if there is no such silence."""

    @abc.abstractmethod
    def list_silences(self, active_at: float | None = None) -> list[Silence]:
        """All silences, or those active at ``active_at``."""

    @abc.abstractmethod
    def add_audit(self, entries: Sequence[AuditEntry]) -> None: ...

    @abc.abstractmethod
    def query_audit(
        self,
        *,
        envs: Sequence[str] | None = None,
        target: str | None = None,
        since: float | None = None,
        limit: int = 500,
        action: str | None = None,
        result: str | None = None,
        actor_prefix: str | None = None,
    ) -> list[AuditEntry]:
        """Newest first. ``actor_prefix`` ("alert:") keeps, say, remediation apart from policy decisions."""

    @abc.abstractmethod
    def set_quarantine(self, record: QuarantineRecord) -> None: ...

    @abc.abstractmethod
    def clear_quarantine(self, agent: str) -> bool: ...

    @abc.abstractmethod
    def list_quarantines(self) -> list[QuarantineRecord]: ...

    # --- tool policy -----------------------------------------------------
    @abc.abstractmethod
    def activate_policy(self, record: PolicyRecord) -> None:
        """Append ``record`` to its environment's history as the one active bundle."""

    @abc.abstractmethod
    def active_policies(self) -> list[PolicyRecord]:
        """The active bundle of every environment that has one."""

    @abc.abstractmethod
    def policy_history(self, env: str, limit: int = 100) -> list[PolicyRecord]:
        """Activations of ``env``, newest first."""

    @abc.abstractmethod
    def find_policy(self, env: str, version: str) -> PolicyRecord | None:
        """The latest activation of ``version`` in ``env``."""

    @abc.abstractmethod
    def add_approvals(self, approvals: Sequence[ApprovalRecord]) -> None:
        """Insert pending approvals; an id that already exists is left as it is (a resend)."""

    @abc.abstractmethod
    def get_approval(self, approval_id: str) -> ApprovalRecord | None: ...

    @abc.abstractmethod
    def list_approvals(
        self,
        *,
        envs: Sequence[str] | None = None,
        state: str | None = None,
        agent: str | None = None,
        limit: int = 500,
    ) -> list[ApprovalRecord]:
        """Newest first."""

    @abc.abstractmethod
    def decide_approval(
        self,
        approval_id: str,
        state: str,
        decided_by: str | None,
        decided_at: float | None,
        reason: str | None = None,
        *,
        from_state: str = "pending",
    ) -> bool:
        """Move an approval from ``from_state`` to ``state``; False if it was not in ``from_state``."""

    @abc.abstractmethod
    def expire_approvals(self, now: float) -> int:
        """Mark pending approvals whose time is up as expired; returns how many."""

    # --- agent releases ------------------------------------------------------
    # Immutable: there is deliberately no update or delete.
    @abc.abstractmethod
    def add_release(self, record: ReleaseRecord) -> bool:
        """Store ``record``; False if that id is already stored (a resend).

        Raises ReleaseConflict if its ROLE@VERSION already names another id.
        """

    @abc.abstractmethod
    def get_release(self, ref: str) -> ReleaseRecord | None:
        """By full id, by a unique prefix of >= MIN_RELEASE_PREFIX hex digits, or by ROLE@VERSION.

        Raises AmbiguousRelease for a prefix several ids share.
        """

    @abc.abstractmethod
    def list_releases(self, role: str | None = None) -> list[ReleaseRecord]:
        """Newest first."""

    # --- environments: desired releases and their rollouts ---------------------
    @abc.abstractmethod
    def add_deployment(self, record: DeploymentRecord) -> DeploymentRecord:
        """Append ``record`` as the desired release of its (env, role); returns it with its id."""

    @abc.abstractmethod
    def update_rollout(
        self, deployment_id: int, phase: str, phase_since: float, canary: list[str], detail: str
    ) -> None:
        """Move a deployment's rollout on (the only columns of a deployment that change)."""

    @abc.abstractmethod
    def current_deployments(self, envs: Sequence[str] | None = None) -> list[DeploymentRecord]:
        """The deployment in force for every (env, role), by env then role."""

    @abc.abstractmethod
    def deployment_history(
        self, *, env: str | None = None, role: str | None = None, release: str | None = None, limit: int = 100
    ) -> list[DeploymentRecord]:
        """Newest first."""

    @abc.abstractmethod
    def set_agent_release(self, agent: str, release: str | None) -> None:
        """Record the release an agent reports running (heartbeats)."""

    @abc.abstractmethod
    def approve_promotion(self, approval: PromotionApproval) -> None:
        """Record (or renew) an admin's approval for a release to enter an environment."""

    @abc.abstractmethod
    def get_promotion_approval(self, release: str, env: str) -> PromotionApproval | None: ...


# The agents registry's columns in the order ``agent_record`` reads them (plain DB-API reads:
# the fleet view lists every agent on each refresh).
AGENT_COLUMNS = (
    "agent, env, region, labels, release, connected, first_seen, last_connect, last_disconnect,"
    " last_event, last_heartbeat, last_seq, cpu_percent, rss_bytes, lifecycle, role"
)


def agent_record(row: Sequence[Any]) -> AgentRecord:
    """A row of ``SELECT AGENT_COLUMNS FROM agents`` as its record."""
    (
        agent,
        env,
        region,
        labels,
        release,
        connected,
        first_seen,
        last_connect,
        last_disconnect,
        last_event,
        last_heartbeat,
        last_seq,
        cpu_percent,
        rss_bytes,
        lifecycle,
        role,
    ) = row
    return AgentRecord(
        agent=agent,
        env=env,
        region=region,
        labels=labels_from_json(labels),
        release=release,
        connected=bool(connected),
        first_seen=first_seen,
        last_connect=last_connect,
        last_disconnect=last_disconnect,
        last_event=last_event,
        last_heartbeat=last_heartbeat,
        last_seq=last_seq,
        cpu_percent=cpu_percent,
        rss_bytes=rss_bytes,
        lifecycle=lifecycle,
        role=role,
    )


def labels_json(labels: dict[str, str]) -> str:
    return msgspec.json.encode(labels).decode()


def labels_from_json(text: str | None) -> dict[str, str]:
    if not text or text == "{}":
        return {}
    value: Any = msgspec.json.decode(text)
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}
