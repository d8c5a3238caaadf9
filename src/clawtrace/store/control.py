"""Control-plane tables (alerts, silences, audit, quarantines, policies, approvals) through SQLAlchemy Core.

Written once for every backend: these tables see a few writes per second
at most, so portability matters more than the last microsecond.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import msgspec
import sqlalchemy as sa

from clawtrace.alerts.model import Alert, AuditEntry, Silence, Transition
from clawtrace.store import schema
from clawtrace.store.base import (
    MIN_RELEASE_PREFIX,
    AmbiguousRelease,
    ApprovalRecord,
    DeploymentRecord,
    PolicyRecord,
    PromotionApproval,
    QuarantineRecord,
    ReleaseConflict,
    ReleaseRecord,
)

_alert_decoder = msgspec.json.Decoder(Alert)


class CoreControlTables:
    """Mixin for a Store with a SQLAlchemy ``engine``."""

    engine: sa.Engine

    def save_alerts(self, alerts: Sequence[Alert], forget: Sequence[tuple[str, str]] = ()) -> None:
        table = schema.alert_state
        with self.engine.begin() as c:
            for rule, agent in forget:
                c.execute(table.delete().where(table.c.rule == rule, table.c.agent == agent))
            for alert in alerts:
                rule, agent = alert.key
                c.execute(table.delete().where(table.c.rule == rule, table.c.agent == agent))
            if alerts:
                c.execute(
                    table.insert(),
                    [
                        {
                            "rule": a.rule,
                            # "@env" for an environment-wide alert: unique per environment.
                            "agent": a.key[1],
                            "env": a.env,
                            "state": a.state,
                            "data": msgspec.json.encode(a),
                        }
                        for a in alerts
                    ],
                )

    def load_alerts(self) -> list[Alert]:
        with self.engine.connect() as c:
            rows = c.execute(sa.select(schema.alert_state.c.data)).all()
        return [_alert_decoder.decode(row.data) for row in rows]

    def add_transitions(self, transitions: Sequence[Transition]) -> None:
        if not transitions:
            return
        with self.engine.begin() as c:
            c.execute(schema.alert_history.insert(), [msgspec.structs.asdict(t) for t in transitions])

    def query_transitions(
        self,
        *,
        envs: Sequence[str] | None = None,
        rule: str | None = None,
        agent: str | None = None,
        since: float | None = None,
        limit: int = 500,
    ) -> list[Transition]:
        table = schema.alert_history
        query = sa.select(table).order_by(table.c.id.desc()).limit(limit)
        if envs is not None:
            query = query.where(table.c.env.in_(list(envs)))
        if rule is not None:
            query = query.where(table.c.rule == rule)
        if agent is not None:
            query = query.where(table.c.agent == agent)
        if since is not None:
            query = query.where(table.c.ts >= since)
        with self.engine.connect() as c:
            rows = c.execute(query).all()
        return [record_from_row(r, Transition) for r in rows]

    def prune_alert_history(self, transitions_before: float, audit_before: float) -> int:
        with self.engine.begin() as c:
            deleted = c.execute(
                schema.alert_history.delete().where(schema.alert_history.c.ts < transitions_before)
            )
            deleted_silences = c.execute(
                schema.silences.delete().where(schema.silences.c.ends < transitions_before)
            )
            deleted_audit = c.execute(schema.audit.delete().where(schema.audit.c.ts < audit_before))
        return int(deleted.rowcount + deleted_silences.rowcount + deleted_audit.rowcount)

    def add_silence(self, silence: Silence) -> None:
        with self.engine.begin() as c:
            c.execute(schema.silences.insert().values(**msgspec.structs.asdict(silence)))

    def expire_silence(self, silence_id: str, actor: str, now: float) -> Silence | None:
        table = schema.silences
        with self.engine.begin() as c:
            row = c.execute(sa.select(table).where(table.c.id == silence_id)).first()
            if row is None:
                return None
            silence = record_from_row(row, Silence)
            if silence.expired_by is None and silence.ends > now:
                c.execute(table.update().where(table.c.id == silence_id).values(ends=now, expired_by=actor))
                silence = msgspec.structs.replace(silence, ends=now, expired_by=actor)
        return silence

    def list_silences(self, active_at: float | None = None) -> list[Silence]:
        table = schema.silences
        query = sa.select(table).order_by(table.c.starts.desc())
        if active_at is not None:
            query = query.where(table.c.starts <= active_at, table.c.ends > active_at)
        with self.engine.connect() as c:
            return [record_from_row(row, Silence) for row in c.execute(query).all()]

    def add_audit(self, entries: Sequence[AuditEntry]) -> None:
        if not entries:
            return
        rows = []
        for entry in entries:
            row = msgspec.structs.asdict(entry)
            row["detail"] = msgspec.json.encode(entry.detail).decode()
            rows.append(row)
        with self.engine.begin() as c:
            c.execute(schema.audit.insert(), rows)

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
        table = schema.audit
        query = sa.select(table).order_by(table.c.id.desc()).limit(limit)
        if envs is not None:
            query = query.where(table.c.env.in_(list(envs)))
        if target is not None:
            query = query.where(table.c.target == target)
        if since is not None:
            query = query.where(table.c.ts >= since)
        if action is not None:
            query = query.where(table.c.action == action)
        if result is not None:
            query = query.where(table.c.result == result)
        if actor_prefix is not None:
            query = query.where(table.c.actor.startswith(actor_prefix, autoescape=True))
        with self.engine.connect() as c:
            rows = c.execute(query).all()
        return [
            AuditEntry(
                ts=r.ts,
                env=r.env,
                actor=r.actor,
                action=r.action,
                target=r.target,
                reason=r.reason,
                result=r.result,
                detail=msgspec.json.decode(r.detail),
            )
            for r in rows
        ]

    def set_quarantine(self, record: QuarantineRecord) -> None:
        table = schema.quarantines
        with self.engine.begin() as c:
            c.execute(table.delete().where(table.c.agent == record.agent))
            c.execute(table.insert().values(**msgspec.structs.asdict(record)))

    def clear_quarantine(self, agent: str) -> bool:
        table = schema.quarantines
        with self.engine.begin() as c:
            return bool(c.execute(table.delete().where(table.c.agent == agent)).rowcount)

    def list_quarantines(self) -> list[QuarantineRecord]:
        with self.engine.connect() as c:
            rows = c.execute(sa.select(schema.quarantines)).all()
        return [record_from_row(r, QuarantineRecord) for r in rows]

    # --- tool policy -----------------------------------------------------

    def activate_policy(self, record: PolicyRecord) -> None:
        table = schema.policy_bundles
        row = msgspec.structs.asdict(record)
        row["active"] = True
        with self.engine.begin() as c:
            c.execute(table.update().where(table.c.env == record.env, table.c.active).values(active=False))
            c.execute(table.insert().values(**row))

    def active_policies(self) -> list[PolicyRecord]:
        table = schema.policy_bundles
        with self.engine.connect() as c:
            rows = c.execute(sa.select(table).where(table.c.active).order_by(table.c.env)).all()
        return [record_from_row(row, PolicyRecord) for row in rows]

    def policy_history(self, env: str, limit: int = 100) -> list[PolicyRecord]:
        table = schema.policy_bundles
        query = sa.select(table).where(table.c.env == env).order_by(table.c.id.desc()).limit(limit)
        with self.engine.connect() as c:
            return [record_from_row(row, PolicyRecord) for row in c.execute(query).all()]

    def find_policy(self, env: str, version: str) -> PolicyRecord | None:
        table = schema.policy_bundles
        query = (
            sa.select(table)
            .where(table.c.env == env, table.c.version == version)
            .order_by(table.c.id.desc())
            .limit(1)
        )
        with self.engine.connect() as c:
            row = c.execute(query).first()
        return None if row is None else record_from_row(row, PolicyRecord)

    def add_approvals(self, approvals: Sequence[ApprovalRecord]) -> None:
        if not approvals:
            return
        table = schema.approvals
        with self.engine.begin() as c:
            known = set(
                c.execute(sa.select(table.c.id).where(table.c.id.in_([a.id for a in approvals]))).scalars()
            )
            rows = []
            for approval in approvals:
                if approval.id not in known:
                    known.add(approval.id)
                    rows.append(msgspec.structs.asdict(approval))
            if rows:
                c.execute(table.insert(), rows)

    def get_approval(self, approval_id: str) -> ApprovalRecord | None:
        table = schema.approvals
        with self.engine.connect() as c:
            row = c.execute(sa.select(table).where(table.c.id == approval_id)).first()
        return None if row is None else record_from_row(row, ApprovalRecord)

    def list_approvals(
        self,
        *,
        envs: Sequence[str] | None = None,
        state: str | None = None,
        agent: str | None = None,
        limit: int = 500,
    ) -> list[ApprovalRecord]:
        table = schema.approvals
        query = sa.select(table).order_by(table.c.created.desc()).limit(limit)
        if envs is not None:
            query = query.where(table.c.env.in_(list(envs)))
        if state is not None:
            query = query.where(table.c.state == state)
        if agent is not None:
            query = query.where(table.c.agent == agent)
        with self.engine.connect() as c:
            return [record_from_row(row, ApprovalRecord) for row in c.execute(query).all()]

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
        table = schema.approvals
        # Conditional on the current state, so two people approving at once cannot both win.
        statement = (
            table.update()
            .where(table.c.id == approval_id, table.c.state == from_state)
            .values(state=state, decided_by=decided_by, decided_at=decided_at, decision_reason=reason)
        )
        with self.engine.begin() as c:
            return bool(c.execute(statement).rowcount)

    def expire_approvals(self, now: float) -> int:
        table = schema.approvals
        statement = (
            table.update()
            .where(table.c.state == "pending", table.c.expires <= now)
            .values(state="expired", decided_by="timeout", decided_at=table.c.expires)
        )
        with self.engine.begin() as c:
            return int(c.execute(statement).rowcount)

    # --- agent releases --------------------------------------------------

    def add_release(self, record: ReleaseRecord) -> bool:
        table = schema.releases
        with self.engine.begin() as c:
            if c.execute(sa.select(table.c.id).where(table.c.id == record.id)).first() is not None:
                return False
            same_label = c.execute(
                sa.select(table).where(table.c.role == record.role, table.c.version == record.version)
            ).first()
            if same_label is not None:
                raise ReleaseConflict(record_from_row(same_label, ReleaseRecord))
            c.execute(table.insert().values(**msgspec.structs.asdict(record)))
        return True

    def get_release(self, ref: str) -> ReleaseRecord | None:
        table = schema.releases
        role, at, version = ref.partition("@")
        if at:
            query = sa.select(table).where(table.c.role == role, table.c.version == version)
        elif len(ref) < MIN_RELEASE_PREFIX:
            return None
        else:
            # Ids are lower-case hex: a prefix with LIKE wildcards in it matches nothing anyway.
            query = sa.select(table).where(table.c.id.startswith(ref.lower(), autoescape=True)).limit(20)
        with self.engine.connect() as c:
            rows = c.execute(query).all()
        if len(rows) > 1:
            raise AmbiguousRelease(ref, sorted(row.id for row in rows))
        return record_from_row(rows[0], ReleaseRecord) if rows else None

    def list_releases(self, role: str | None = None) -> list[ReleaseRecord]:
        table = schema.releases
        query = sa.select(table).order_by(table.c.created.desc(), table.c.id)
        if role is not None:
            query = query.where(table.c.role == role)
        with self.engine.connect() as c:
            return [record_from_row(row, ReleaseRecord) for row in c.execute(query).all()]

    # --- environments: deployments and promotion approvals -------------------

    def add_deployment(self, record: DeploymentRecord) -> DeploymentRecord:
        values = msgspec.structs.asdict(record)
        del values["id"]
        values["canary"] = msgspec.json.encode(record.canary).decode()
        with self.engine.begin() as c:
            key = c.execute(schema.deployments.insert().values(**values)).inserted_primary_key
            assert key is not None
            new_id = int(key[0])
        return msgspec.structs.replace(record, id=new_id)

    def update_rollout(
        self, deployment_id: int, phase: str, phase_since: float, canary: list[str], detail: str
    ) -> None:
        table = schema.deployments
        with self.engine.begin() as c:
            c.execute(
                table.update()
                .where(table.c.id == deployment_id)
                .values(
                    phase=phase,
                    phase_since=phase_since,
                    canary=msgspec.json.encode(canary).decode(),
                    detail=detail,
                )
            )

    def current_deployments(self, envs: Sequence[str] | None = None) -> list[DeploymentRecord]:
        table = schema.deployments
        newest = sa.select(sa.func.max(table.c.id)).group_by(table.c.env, table.c.role).scalar_subquery()
        query = sa.select(table).where(table.c.id.in_(newest)).order_by(table.c.env, table.c.role)
        if envs is not None:
            query = query.where(table.c.env.in_(list(envs)))
        with self.engine.connect() as c:
            return [_deployment(row) for row in c.execute(query).all()]

    def deployment_history(
        self, *, env: str | None = None, role: str | None = None, release: str | None = None, limit: int = 100
    ) -> list[DeploymentRecord]:
        table = schema.deployments
        query = sa.select(table).order_by(table.c.id.desc()).limit(limit)
        for column, value in ((table.c.env, env), (table.c.role, role), (table.c.release, release)):
            if value is not None:
                query = query.where(column == value)
        with self.engine.connect() as c:
            return [_deployment(row) for row in c.execute(query).all()]

    def approve_promotion(self, approval: PromotionApproval) -> None:
        table = schema.promotion_approvals
        with self.engine.begin() as c:
            c.execute(table.delete().where(table.c.release == approval.release, table.c.env == approval.env))
            c.execute(table.insert().values(**msgspec.structs.asdict(approval)))

    def get_promotion_approval(self, release: str, env: str) -> PromotionApproval | None:
        table = schema.promotion_approvals
        with self.engine.connect() as c:
            row = c.execute(sa.select(table).where(table.c.release == release, table.c.env == env)).first()
        return None if row is None else record_from_row(row, PromotionApproval)


def _deployment(row: Any) -> DeploymentRecord:
    values = {str(k): v for k, v in row._mapping.items()}
    values["canary"] = msgspec.json.decode(values["canary"] or "[]")
    return msgspec.convert(values, DeploymentRecord, strict=False)


R = TypeVar("R")


def record_from_row(row: Any, record_type: type[R]) -> R:
    """A row as one of the store's records, by column name (extra columns, like ids, are ignored)."""
    # str(): column names may be a str subclass, which msgspec does not take as a key.
    # strict=False: SQLite gives 0/1 for booleans, a driver may give memoryview for bytes.
    return msgspec.convert({str(k): v for k, v in row._mapping.items()}, record_type, strict=False)
