"""Policy bundles per environment (with history), approvals, and an audit index by action.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

from clawtrace.store.migrations.column_types import ID_TYPE

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "policy_bundles",
        sa.Column("id", ID_TYPE, primary_key=True, autoincrement=True),
        sa.Column("env", sa.Text, nullable=False),
        sa.Column("version", sa.Text, nullable=False),
        sa.Column("bundle", sa.Text, nullable=False),
        sa.Column("applied_by", sa.Text, nullable=False),
        sa.Column("applied_at", sa.Float, nullable=False),
        sa.Column("action", sa.Text, nullable=False, server_default="apply"),
        sa.Column("active", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_index("ix_policy_bundles_env", "policy_bundles", ["env", "id"])
    op.create_table(
        "approvals",
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
        sa.Column("state", sa.Text, nullable=False, server_default="pending"),
        sa.Column("decided_by", sa.Text, nullable=True),
        sa.Column("decided_at", sa.Float, nullable=True),
        sa.Column("decision_reason", sa.Text, nullable=True),
    )
    op.create_index("ix_approvals_state", "approvals", ["state", "env"])
    op.create_index("ix_approvals_created", "approvals", ["created"])
    op.create_index("ix_audit_action", "audit", ["action", "ts"])


def downgrade() -> None:
    op.drop_index("ix_audit_action", "audit")
    op.drop_table("approvals")
    op.drop_table("policy_bundles")
