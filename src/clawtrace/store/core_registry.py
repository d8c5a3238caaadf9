"""The agents registry, sessions and credentials through SQLAlchemy Core, for any backend.

Like ``control.CoreControlTables``: a handful of writes per connection or
per minute, where one portable implementation beats a fast one per backend.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from clawtrace.store import schema
from clawtrace.store.base import AgentEnvMismatch, AgentInfo, SessionRecord, TokenRecord, labels_json
from clawtrace.store.control import record_from_row


class CoreRegistryTables:
    """Mixin for a Store with a SQLAlchemy ``engine``."""

    engine: sa.Engine

    def register_agent(
        self, info: AgentInfo, now: float, connected: bool = True, gateway: str | None = None
    ) -> int:
        # Two gateways may register a new agent at the same moment: the loser
        # of the insert sees the winner's row on its second try.
        for attempt in range(2):
            try:
                return self._register_agent(info, now, connected, gateway)
            except sa.exc.IntegrityError:
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _register_agent(self, info: AgentInfo, now: float, connected: bool, gateway: str | None) -> int:
        agents = schema.agents
        with self.engine.begin() as c:
            row = c.execute(
                sa.select(agents.c.env, agents.c.last_seq)
                .where(agents.c.agent == info.agent)
                # Ignored by SQLite, whose writes are serialised anyway.
                .with_for_update()
            ).first()
            values: dict[str, Any] = {
                "region": info.region,
                "labels": labels_json(info.labels),
                "release": info.release,
                "role": info.role,
            }
            if connected:
                values.update(connected=True, last_connect=now, gateway=gateway)
            if row is None:
                c.execute(agents.insert().values(agent=info.agent, env=info.env, first_seen=now, **values))
                return 0
            if row.env != info.env:
                raise AgentEnvMismatch(
                    f"agent {info.agent!r} is registered in environment {row.env!r}, not {info.env!r}; "
                    "agent ids are unique across environments: pick another id"
                )
            c.execute(agents.update().where(agents.c.agent == info.agent).values(**values))
            return int(row.last_seq)

    def mark_disconnected(self, agent: str, now: float, gateway: str | None = None) -> None:
        agents = schema.agents
        which = agents.c.agent == agent
        if gateway is not None:
            which = which & (agents.c.gateway == gateway)
        with self.engine.begin() as c:
            c.execute(agents.update().where(which).values(connected=False, last_disconnect=now))

    def connected_gateways(self) -> list[str]:
        agents = schema.agents
        with self.engine.connect() as c:
            query = sa.select(agents.c.gateway).where(agents.c.connected, agents.c.gateway.is_not(None))
            return sorted(str(row.gateway) for row in c.execute(query.distinct()))

    def mark_gateway_gone(self, gateway: str, now: float) -> int:
        agents = schema.agents
        with self.engine.begin() as c:
            result = c.execute(
                agents.update()
                .where(agents.c.connected, agents.c.gateway == gateway)
                .values(connected=False, last_disconnect=now)
            )
            return int(result.rowcount)

    def mark_all_disconnected(self, now: float) -> None:
        agents = schema.agents
        with self.engine.begin() as c:
            c.execute(agents.update().where(agents.c.connected).values(connected=False, last_disconnect=now))

    def set_agent_release(self, agent: str, release: str | None) -> None:
        agents = schema.agents
        with self.engine.begin() as c:
            c.execute(agents.update().where(agents.c.agent == agent).values(release=release))

    def list_sessions(self, agent: str) -> list[SessionRecord]:
        s = schema.sessions
        query = sa.select(s).where(s.c.agent == agent).order_by(s.c.first_seq)
        with self.engine.connect() as c:
            return [record_from_row(row, SessionRecord) for row in c.execute(query)]

    # --- credentials ----------------------------------------------------
    def add_token(self, token: TokenRecord) -> None:
        with self.engine.begin() as c:
            c.execute(
                schema.tokens.insert().values(
                    id=token.id,
                    secret_hash=token.secret_hash,
                    env=token.env,
                    role=token.role,
                    name=token.name,
                    created=token.created,
                    expires=token.expires,
                    revoked=token.revoked,
                )
            )

    def get_token(self, token_id: str) -> TokenRecord | None:
        with self.engine.connect() as c:
            row = c.execute(sa.select(schema.tokens).where(schema.tokens.c.id == token_id)).first()
        return None if row is None else record_from_row(row, TokenRecord)

    def list_tokens(self) -> list[TokenRecord]:
        with self.engine.connect() as c:
            return [
                record_from_row(row, TokenRecord)
                for row in c.execute(sa.select(schema.tokens).order_by(schema.tokens.c.created))
            ]

    def revoke_token(self, token_id: str, now: float) -> bool:
        t = schema.tokens
        with self.engine.begin() as c:
            result = c.execute(
                t.update().where(t.c.id == token_id, t.c.revoked.is_(None)).values(revoked=now)
            )
            return result.rowcount > 0
