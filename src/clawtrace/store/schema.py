"""The store's tables, defined once for every backend (SQLAlchemy Core).

Migrations in ``migrations/`` create exactly these; the ingest hot path
writes ``events`` with plain DB-API batches rather than through Core.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

events = sa.Table(
    "events",
    metadata,
    # Insertion order doubles as receive order, which retention relies on.
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("agent", sa.Text, nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("session", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("received", sa.Float, nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sa.Index("ix_events_agent_seq", "agent", "seq", unique=True),
)

agents = sa.Table(
    "agents",
    metadata,
    sa.Column("agent", sa.Text, primary_key=True),
    sa.Column("env", sa.Text, nullable=False),
    sa.Column("region", sa.Text, nullable=False, server_default=""),
    sa.Column("labels", sa.Text, nullable=False, server_default="{}"),
    sa.Column("release", sa.Text, nullable=True),
    sa.Column("connected", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("first_seen", sa.Float, nullable=False),
    sa.Column("last_connect", sa.Float, nullable=True),
    sa.Column("last_disconnect", sa.Float, nullable=True),
    sa.Column("last_event", sa.Float, nullable=True),
    sa.Column("last_heartbeat", sa.Float, nullable=True),
    sa.Column("last_seq", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("cpu_percent", sa.Float, nullable=True),
    sa.Column("rss_bytes", sa.BigInteger, nullable=True),
    # The last lifecycle state its node agent reported ("started", "stopped", ...).
    sa.Column("lifecycle", sa.Text, nullable=True),
    # The role whose desired release the node agent runs (hello ``role``), if it follows one.
    sa.Column("role", sa.Text, nullable=True),
    # Scale mode: the gateway that holds (or last held) its connection.
    sa.Column("gateway", sa.Text, nullable=True),
    sa.Index("ix_agents_env", "env"),
)

sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("agent", sa.Text, primary_key=True),
    sa.Column("session", sa.Text, primary_key=True),
    sa.Column("first_seq", sa.BigInteger, nullable=False),
    sa.Column("last_seq", sa.BigInteger, nullable=False),
    sa.Column("started", sa.Float, nullable=False),
    sa.Column("last_ts", sa.Float, nullable=False),
    sa.Column("events", sa.BigInteger, nullable=False, server_default="0"),
)

tokens = sa.Table(
    "tokens",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("secret_hash", sa.Text, nullable=False),
    sa.Column("env", sa.Text, nullable=False),
    sa.Column("role", sa.Text, nullable=False),
    sa.Column("name", sa.Text, nullable=False, server_default=""),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("expires", sa.Float, nullable=True),
    sa.Column("revoked", sa.Float, nullable=True),
)

rollups = sa.Table(
    "rollups",
    metadata,
    # Insert-only: a minute that receives late events gets another row,
    # and readers add the rows of a (scope, minute) together.
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("scope", sa.Text, nullable=False),
    sa.Column("minute", sa.BigInteger, nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sa.Index("ix_rollups_scope_minute", "scope", "minute"),
    sa.Index("ix_rollups_minute", "minute"),
)

# --- alerts and remediation (clawtrace.alerts) ---------------------------

alert_state = sa.Table(
    "alert_state",
    metadata,
    # The engine's live alerts (pending, firing, recently resolved), so that
    # a restart neither forgets a firing alert nor notifies it again.
    sa.Column("rule", sa.Text, primary_key=True),
    sa.Column("agent", sa.Text, primary_key=True),
    sa.Column("env", sa.Text, nullable=False),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
)

alert_history = sa.Table(
    "alert_history",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("rule", sa.Text, nullable=False),
    sa.Column("agent", sa.Text, nullable=False),
    sa.Column("env", sa.Text, nullable=False),
    sa.Column("from_state", sa.Text, nullable=False),
    sa.Column("to_state", sa.Text, nullable=False),
    sa.Column("value", sa.Float, nullable=True),
    sa.Column("threshold", sa.Float, nullable=True),
    sa.Column("fingerprint", sa.Text, nullable=False),
    sa.Column("detail", sa.Text, nullable=False, server_default=""),
    sa.Index("ix_alert_history_ts", "ts"),
    sa.Index("ix_alert_history_agent", "agent", "ts"),
)

silences = sa.Table(
    "silences",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("target", sa.Text, nullable=False),
    sa.Column("env", sa.Text, nullable=True),
    sa.Column("starts", sa.Float, nullable=False),
    sa.Column("ends", sa.Float, nullable=False),
    sa.Column("created_by", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("expired_by", sa.Text, nullable=True),
)

audit = sa.Table(
    "audit",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("env", sa.Text, nullable=False),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("action", sa.Text, nullable=False),
    sa.Column("target", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("result", sa.Text, nullable=False),
    sa.Column("detail", sa.Text, nullable=False, server_default="{}"),
    sa.Index("ix_audit_ts", "ts"),
    sa.Index("ix_audit_target", "target", "ts"),
    # Policy decisions make "policy" by far the most common action: filtering by it must not scan.
    sa.Index("ix_audit_action", "action", "ts"),
)

quarantines = sa.Table(
    "quarantines",
    metadata,
    sa.Column("agent", sa.Text, primary_key=True),
    sa.Column("env", sa.Text, nullable=False),
    sa.Column("since", sa.Float, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("actor", sa.Text, nullable=False),
)

# --- tool policy (clawtrace.policy) ---------------------------------------

policy_bundles = sa.Table(
    "policy_bundles",
    metadata,
    # One row per activation (an apply or a rollback), never updated but for
    # ``active``: the history of what was in force when, and who put it there.
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("env", sa.Text, nullable=False),
    sa.Column("version", sa.Text, nullable=False),
    # The PolicyBundle as JSON, exactly what node agents are sent.
    sa.Column("bundle", sa.Text, nullable=False),
    sa.Column("applied_by", sa.Text, nullable=False),
    sa.Column("applied_at", sa.Float, nullable=False),
    # "apply" or "rollback".
    sa.Column("action", sa.Text, nullable=False, server_default="apply"),
    sa.Column("active", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Index("ix_policy_bundles_env", "env", "id"),
)

approvals = sa.Table(
    "approvals",
    metadata,
    # The id the enforcement point chose (PolicyDecision.approval_id).
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("agent", sa.Text, nullable=False),
    sa.Column("env", sa.Text, nullable=False),
    sa.Column("tool", sa.Text, nullable=False),
    sa.Column("command", sa.Text, nullable=False, server_default=""),
    sa.Column("rule", sa.Text, nullable=False, server_default=""),
    sa.Column("reason", sa.Text, nullable=False, server_default=""),
    sa.Column("call_id", sa.Text, nullable=True),
    sa.Column("policy_version", sa.Text, nullable=True),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("expires", sa.Float, nullable=False),
    # pending | approved | rejected | expired
    sa.Column("state", sa.Text, nullable=False, server_default="pending"),
    sa.Column("decided_by", sa.Text, nullable=True),
    sa.Column("decided_at", sa.Float, nullable=True),
    sa.Column("decision_reason", sa.Text, nullable=True),
    sa.Index("ix_approvals_state", "state", "env"),
    sa.Index("ix_approvals_created", "created"),
)

# --- agent releases (clawtrace.envs) --------------------------------------

releases = sa.Table(
    "releases",
    metadata,
    # Immutable and content-addressed: the id is the sha256 of what is stored, so rows are
    # inserted once and never updated.
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("role", sa.Text, nullable=False),
    sa.Column("version", sa.Text, nullable=False),
    sa.Column("manifest", sa.Text, nullable=False),
    # The referenced files (path -> text) as JSON.
    sa.Column("content", sa.LargeBinary, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("created_by", sa.Text, nullable=False),
    # ROLE@VERSION names one release.
    sa.Index("ix_releases_role_version", "role", "version", unique=True),
)

deployments = sa.Table(
    "deployments",
    metadata,
    # One row per change of an environment's desired release for a role (a deploy,
    # a promotion, a rollback); the newest row of (env, role) is in force. Only its
    # rollout columns (phase, phase_since, canary, detail) are updated afterwards.
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("env", sa.Text, nullable=False),
    sa.Column("role", sa.Text, nullable=False),
    sa.Column("release", sa.Text, nullable=False),
    # The release it replaced (None for the first of the role in the environment).
    sa.Column("previous", sa.Text, nullable=True),
    # deploy | promote | rollback | auto_rollback
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False, server_default=""),
    sa.Column("created", sa.Float, nullable=False),
    # canary | rolling | complete | rolled_back | superseded
    sa.Column("phase", sa.Text, nullable=False),
    sa.Column("phase_since", sa.Float, nullable=False),
    # The agents that got the release first (JSON list), while the phase is canary.
    sa.Column("canary", sa.Text, nullable=False, server_default="[]"),
    sa.Column("detail", sa.Text, nullable=False, server_default=""),
    sa.Index("ix_deployments_env_role", "env", "role", "id"),
    sa.Index("ix_deployments_release", "release", "env"),
)

promotion_approvals = sa.Table(
    "promotion_approvals",
    metadata,
    # An admin's approval for one release to enter one environment (a promotion gate).
    sa.Column("release", sa.Text, primary_key=True),
    sa.Column("env", sa.Text, primary_key=True),
    sa.Column("approved_by", sa.Text, nullable=False),
    sa.Column("approved_at", sa.Float, nullable=False),
    sa.Column("reason", sa.Text, nullable=False, server_default=""),
)
