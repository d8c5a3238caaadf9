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


def downgrade() -> None:
    for table in ("tokens", "sessions", "agents", "events"):
        op.drop_table(table)
