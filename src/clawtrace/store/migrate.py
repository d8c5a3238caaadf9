"""Schema migrations through alembic, run programmatically on the store's connection."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection


def upgrade_to_head(connection: Connection) -> None:
    config = Config()
    config.set_main_option("script_location", "clawtrace.store:migrations")
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
