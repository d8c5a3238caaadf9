"""Environments: desired releases per role (deployments with rollout state), promotion approvals.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

from clawtrace.store.migrations.column_types import ID_TYPE

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("agents", sa.Column("role", sa.Text, nullable=True))
    op.create_table(
        "deployments",
        sa.Column("id", ID_TYPE, primary_key=True, autoincrement=True),
        sa.Column("env", sa.Text, nullable=False),
        sa.Column("role", sa.Text, nullable=False),
        sa.Column("release", sa.Text, nullable=False),
        sa.Column("previous", sa.Text, nullable=True),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("phase", sa.Text, nullable=False),
        sa.Column("phase_since", sa.Float, nullable=False),
        sa.Column("canary", sa.Text, nullable=False, server_default="[]"),
        sa.Column("detail", sa.Text, nullable=False, server_default=""),
    )
    op.create_index("ix_deployments_env_role", "deployments", ["env", "role", "id"])
    op.create_index("ix_deployments_release", "deployments", ["release", "env"])
    op.create_table(
        "promotion_approvals",
        sa.Column("release", sa.Text, primary_key=True),
        sa.Column("env", sa.Text, primary_key=True),
        sa.Column("approved_by", sa.Text, nullable=False),
        sa.Column("approved_at", sa.Float, nullable=False),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
    )


def downgrade() -> None:
    op.drop_table("promotion_approvals")
    op.drop_table("deployments")
    with op.batch_alter_table("agents") as batch:
        batch.drop_column("role")
