"""Minute rollups of metrics, per agent and per group.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

from clawtrace.store.migrations.column_types import ID_TYPE

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rollups",
        sa.Column("id", ID_TYPE, primary_key=True, autoincrement=True),
        sa.Column("scope", sa.Text, nullable=False),
        sa.Column("minute", sa.BigInteger, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )
    op.create_index("ix_rollups_scope_minute", "rollups", ["scope", "minute"])
    op.create_index("ix_rollups_minute", "rollups", ["minute"])


def downgrade() -> None:
    op.drop_table("rollups")
