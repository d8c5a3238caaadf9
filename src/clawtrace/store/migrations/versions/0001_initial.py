"""Initial schema: events, agents, sessions, tokens.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _create_partitioned_events()
    else:
        op.create_table(
            "events",
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("agent", sa.Text, nullable=False),
            sa.Column("seq", sa.BigInteger, nullable=False),
            sa.Column("session", sa.Text, nullable=False),
            sa.Column("kind", sa.Text, nullable=False),
            sa.Column("ts", sa.Float, nullable=False),
            sa.Column("received", sa.Float, nullable=False),
            sa.Column("data", sa.LargeBinary, nullable=False),
        )
        op.create_index("ix_events_agent_seq", "events", ["agent", "seq"], unique=True)
    op.create_table(
        "agents",
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
    )
    op.create_index("ix_agents_env", "agents", ["env"])
    op.create_table(
        "sessions",
        sa.Column("agent", sa.Text, primary_key=True),
        sa.Column("session", sa.Text, primary_key=True),
        sa.Column("first_seq", sa.BigInteger, nullable=False),
        sa.Column("last_seq", sa.BigInteger, nullable=False),
        sa.Column("started", sa.Float, nullable=False),
        sa.Column("last_ts", sa.Float, nullable=False),
        sa.Column("events", sa.BigInteger, nullable=False, server_default="0"),
    )
    if op.get_bind().dialect.name == "postgresql":
        # Every write batch updates the row of each of its agents and sessions:
        # room on the page lets PostgreSQL update them in place (HOT, no index
        # writes), which made the batch's bookkeeping about a quarter cheaper.
        op.execute("ALTER TABLE agents SET (fillfactor = 50)")
        op.execute("ALTER TABLE sessions SET (fillfactor = 50)")
    op.create_table(
        "tokens",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("secret_hash", sa.Text, nullable=False),
        sa.Column("env", sa.Text, nullable=False),
        sa.Column("role", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False, server_default=""),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("expires", sa.Float, nullable=True),
        sa.Column("revoked", sa.Float, nullable=True),
    )


def _create_partitioned_events() -> None:
    """PostgreSQL: events range-partitioned by day of ``received`` (store/partitions.py makes the days).

    No ``id``: receive order is the partition key itself. A unique index on a
    partitioned table must contain the partition key, and (agent, seq,
    received) would not stop a resend received on another day; so (agent,
    seq) is indexed but not unique, and ``events_max_seq`` (the highest seq
    stored per agent, locked by each write) is what keeps duplicates out:
    see PostgresStore.write.
    """
    op.execute(
        """
        CREATE TABLE events (
            agent text NOT NULL,
            seq bigint NOT NULL,
            session text NOT NULL,
            kind text NOT NULL,
            ts double precision NOT NULL,
            received double precision NOT NULL,
            data bytea NOT NULL
        ) PARTITION BY RANGE (received)
        """
    )
    op.execute("CREATE INDEX ix_events_agent_seq ON events (agent, seq)")
    # Retention deletes one environment's rows by windows of receive time; rows
    # arrive in receive order, so a block-range index finds them for next to nothing.
    op.execute("CREATE INDEX ix_events_received ON events USING brin (received)")
    op.create_table(
        "events_max_seq",
        sa.Column("agent", sa.Text, primary_key=True),
        sa.Column("max_seq", sa.BigInteger, nullable=False),
        # What max_seq was before the last write raised it: that write's answer.
        sa.Column("previous_max_seq", sa.BigInteger, nullable=False, server_default="0"),
        postgresql_with={"fillfactor": 50},
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_table("events_max_seq")
    # On PostgreSQL, dropping events drops its partitions with it.
    for table in ("tokens", "sessions", "agents", "events"):
        op.drop_table(table)
