"""Alert state and history, silences, the audit log, quarantines, agents.lifecycle.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

from clawtrace.store.migrations.column_types import ID_TYPE

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # An agent stopped on purpose is not a dead node, also after a gateway restart.
    op.add_column("agents", sa.Column("lifecycle", sa.Text, nullable=True))
    op.create_table(
        "alert_state",
        sa.Column("rule", sa.Text, primary_key=True),
        sa.Column("agent", sa.Text, primary_key=True),
        sa.Column("env", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "alert_history",
        sa.Column("id", ID_TYPE, primary_key=True, autoincrement=True),
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
    )
    op.create_index("ix_alert_history_ts", "alert_history", ["ts"])
    op.create_index("ix_alert_history_agent", "alert_history", ["agent", "ts"])
    op.create_table(
        "silences",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("target", sa.Text, nullable=False),
        sa.Column("env", sa.Text, nullable=True),
        sa.Column("starts", sa.Float, nullable=False),
        sa.Column("ends", sa.Float, nullable=False),
        sa.Column("created_by", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("expired_by", sa.Text, nullable=True),
    )
    op.create_table(
        "audit",
        sa.Column("id", ID_TYPE, primary_key=True, autoincrement=True),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("env", sa.Text, nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("target", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("result", sa.Text, nullable=False),
        sa.Column("detail", sa.Text, nullable=False, server_default="{}"),
    )
    op.create_index("ix_audit_ts", "audit", ["ts"])
    op.create_index("ix_audit_target", "audit", ["target", "ts"])
    op.create_table(
        "quarantines",
        sa.Column("agent", sa.Text, primary_key=True),
        sa.Column("env", sa.Text, nullable=False),
        sa.Column("since", sa.Float, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
    )


def downgrade() -> None:
    for table in ("quarantines", "audit", "silences", "alert_history", "alert_state"):
        op.drop_table(table)
    with op.batch_alter_table("agents") as batch:
        batch.drop_column("lifecycle")
