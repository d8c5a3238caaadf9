"""``/api/v1/alerts``, silences, rules and the audit log.

Embedded mode reads the gateway's own alert engine (``app.state.alerts``).
In scale mode workers evaluate alerts and the gateway has no engine: alerts
are read from the store, and acknowledgements and silences are written there
and announced to the workers (``app.state.shared_alerts``, gateway/alerting.py).
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import msgspec
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from clawtrace.access import Credential
from clawtrace.alerts.engine import SYSTEM_RULES, AlertEngine
from clawtrace.alerts.model import METRICS, Alert, AuditEntry, Silence
from clawtrace.alerts.rulebook import RuleBook
from clawtrace.alerts.rules_file import RuleError, dump_rules, format_duration
from clawtrace.alerts.settings import AlertSettings
from clawtrace.bus.control import SilenceAdded, SilenceExpired
from clawtrace.gateway.alerting import SharedAlerts
from clawtrace.gateway.api import AnyCredential, ApiError, Viewer_, json_response, read_body, require
from clawtrace.store import Store

router = APIRouter()

MAX_SILENCE_SECONDS = 90 * 86400.0
POLICY_DECISIONS = ("allow", "deny", "require_approval")


def _engine(request: Request) -> AlertEngine | SharedAlerts:
    """The gateway's engine (embedded mode), or the store's alerts (scale mode: workers evaluate)."""
    engine: AlertEngine | None = request.app.state.alerts
    if engine is not None:
        return engine
    shared: SharedAlerts | None = getattr(request.app.state, "shared_alerts", None)
    if shared is not None:
        return shared
    raise ApiError(
        409,
        "alerts_disabled",
        "alerts are disabled on this gateway ([gateway.alerts] enabled = false,"
        " or metrics_enabled = false: alerts need the metrics stage)",
    )


async def _live(engine: AlertEngine | SharedAlerts) -> list[Alert]:
    if isinstance(engine, AlertEngine):
        return list(engine.alerts.values())
    return await engine.alerts()


def _rules_of(engine: AlertEngine | SharedAlerts) -> tuple[RuleBook, AlertSettings]:
    return engine.rulebook, engine.settings


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def _envs(credential: Credential, env: str | None) -> list[str] | None:
    """The environments a request may see: the credential's, narrowed by ``env``."""
    if env is None:
        return credential.readable_envs()
    require(credential, "viewer", env)
    return [env]


def alert_view(alert: Alert) -> dict[str, Any]:
    view = msgspec.structs.asdict(alert)
    view["key"] = "/".join(alert.key)
    return view


@router.get("/api/v1/alerts")
async def list_alerts(
    request: Request,
    credential: Viewer_,
    env: str | None = None,
    state: str = "active",
    rule: str | None = None,
    agent: str | None = None,
) -> Response:
    """Live alerts: ``state=active`` (pending and firing, the default), ``firing``, or ``all``."""
    if state not in ("active", "firing", "pending", "resolved", "all"):
        raise ApiError(400, "invalid_parameter", "state must be active, firing, pending, resolved or all")
    envs = _envs(credential, env)
    engine = _engine(request)
    out = []
    for alert in await _live(engine):
        if envs is not None and alert.env not in envs:
            continue
        if (rule is not None and alert.rule != rule) or (agent is not None and alert.agent != agent):
            continue
        if state == "active" and alert.state not in ("pending", "firing"):
            continue
        if state not in ("active", "all") and alert.state != state:
            continue
        out.append(alert_view(alert))
    out.sort(key=lambda a: (a["state"] != "firing", -(a["fired_at"] or a["active_since"] or 0)))
    return json_response({"alerts": out})


@router.get("/api/v1/alerts/history")
async def alert_history(
    request: Request,
    credential: Viewer_,
    env: str | None = None,
    rule: str | None = None,
    agent: str | None = None,
    since: float | None = None,
    limit: int = 200,
) -> Response:
    """Every state change, newest first, with the value that caused it."""
    envs = _envs(credential, env)
    limit = max(1, min(limit, 5_000))
    rows = await run_in_threadpool(
        lambda: _store(request).query_transitions(envs=envs, rule=rule, agent=agent, since=since, limit=limit)
    )
    return json_response({"transitions": rows})


@router.post("/api/v1/alerts/{key:path}/ack")
async def acknowledge(request: Request, key: str, credential: AnyCredential) -> Response:
    """Acknowledge an alert (by fingerprint or RULE/AGENT): no more repeat notifications."""
    # The role first: a viewer learns nothing about which alerts exist from a 404.
    require(credential, "operator")
    engine = _engine(request)
    alert = engine.find(key) if isinstance(engine, AlertEngine) else await engine.find(key)
    if alert is None or not credential.covers_env(alert.env):
        raise ApiError(404, "not_found", f"no live alert {key!r}; list them with GET /api/v1/alerts")
    require(credential, "operator", alert.env)
    if isinstance(engine, AlertEngine):
        engine.acknowledge(alert, credential.actor)
    else:
        alert = await engine.acknowledge(alert, credential.actor)
    entry = AuditEntry(
        ts=time.time(),
        env=alert.env,
        actor=credential.actor,
        action="acknowledge",
        target=alert.agent or alert.env,
        reason=f"{alert.rule} {alert.fingerprint}",
        result="ok",
    )
    await request.app.state.writer.call(lambda s: s.add_audit([entry]))
    return json_response({"alert": alert_view(alert)})


class SilenceRequest(msgspec.Struct, forbid_unknown_fields=True):
    target: str
    reason: str
    duration_seconds: float
    env: str | None = None


@router.get("/api/v1/silences")
async def list_silences(request: Request, credential: Viewer_, active: bool = True) -> Response:
    envs = credential.readable_envs()
    silences = await run_in_threadpool(_store(request).list_silences, time.time() if active else None)
    visible = [s for s in silences if envs is None or (s.env is not None and s.env in envs)]
    return json_response({"silences": visible})


@router.post("/api/v1/silences", status_code=201)
async def create_silence(request: Request, credential: AnyCredential) -> Response:
    """Mute notifications and remediation of alerts of a rule or an agent (globs allowed)."""
    # The role before the body (whose env= is checked after): a viewer gets 403, not a 400 about it.
    require(credential, "operator")
    body = await read_body(
        request,
        SilenceRequest,
        '{"target": RULE or AGENT, "duration_seconds": N, "reason": "...", "env": ENV}',
    )
    env = body.env
    if env is None and credential.env != "*":
        env = credential.env  # a credential for one environment silences only there
    require(credential, "operator", env)
    if not body.reason.strip():
        raise ApiError(400, "invalid_body", "a silence needs a reason (who is on it, and why)")
    if not 0 < body.duration_seconds <= MAX_SILENCE_SECONDS:
        raise ApiError(400, "invalid_body", "duration_seconds must be positive and at most 90 days")
    if not body.target.strip():
        raise ApiError(400, "invalid_body", "target must name a rule or an agent (globs like 'eu-*' work)")
    engine = _engine(request)
    now = time.time()
    silence = Silence(
        id=secrets.token_hex(6),
        target=body.target,
        env=env,
        starts=now,
        ends=now + body.duration_seconds,
        created_by=credential.actor,
        reason=body.reason,
    )
    entry = AuditEntry(
        ts=now,
        env=env or "*",
        actor=silence.created_by,
        action="silence",
        target=body.target,
        reason=body.reason,
        result="ok",
        detail={"silence": silence.id, "until": silence.ends},
    )

    def write(store: Store) -> None:
        store.add_silence(silence)
        store.add_audit([entry])

    await request.app.state.writer.call(write)
    if isinstance(engine, AlertEngine):
        engine.add_silence(silence)
        matched = sum(1 for a in engine.alerts.values() if a.silenced_by == silence.id)
    else:
        await engine.tell(SilenceAdded(silence))
        matched = sum(1 for a in await engine.alerts() if a.state != "resolved" and silence.matches(a, now))
    return json_response({"silence": silence, "matching_alerts": matched}, 201)


@router.delete("/api/v1/silences/{silence_id}")
async def expire_silence(request: Request, silence_id: str, credential: AnyCredential) -> Response:
    # The role first: a viewer learns nothing about which silences exist from a 404.
    require(credential, "operator")
    engine = _engine(request)
    silences = await run_in_threadpool(_store(request).list_silences, None)
    found = next((s for s in silences if s.id == silence_id), None)
    if found is None or not (
        (found.env is None and credential.env == "*") or credential.covers_env(found.env or "")
    ):
        raise ApiError(404, "not_found", f"no silence {silence_id!r}")
    require(credential, "operator", found.env)
    actor = credential.actor
    now = time.time()
    ended = found.expired_by is not None or found.ends <= now
    entry = AuditEntry(
        ts=now,
        env=found.env or "*",
        actor=actor,
        action="unsilence",
        target=found.target,
        reason=f"silence {silence_id}: {found.reason}",
        result="noop" if ended else "ok",
        detail={"silence": silence_id, "already_ended": ended},
    )

    def write(store: Store) -> Silence | None:
        store.add_audit([entry])
        return store.expire_silence(silence_id, actor, now)

    expired = await request.app.state.writer.call(write)
    if isinstance(engine, AlertEngine):
        engine.expire_silence(silence_id)
    else:
        await engine.tell(SilenceExpired(silence_id))
    return json_response({"silence": expired})


@router.get("/api/v1/alerts/rules")
async def list_rules(request: Request, credential: Viewer_, env: str | None = None) -> Response:
    """The rules in force per environment, with how many alerts each has pending and firing."""
    engine = _engine(request)
    envs = _envs(credential, env)
    rulebook, alert_settings = _rules_of(engine)
    live = await _live(engine)
    if isinstance(engine, AlertEngine):
        agent_envs = {w.env for w in engine.watched.values()}
    else:
        # Scale mode: the fleet's environments are in the registry (the workers know theirs only).
        agent_envs = {a.env for a in await run_in_threadpool(_store(request).list_agents)}
        await run_in_threadpool(rulebook.refresh)  # the files may have changed since the last look
    known = sorted(agent_envs | set(rulebook.loaded()))
    if env is not None and env not in known:
        known.append(env)
    out = []
    for name in known:
        if envs is not None and name not in envs:
            continue
        rules = rulebook.rules(name)
        counts: dict[str, dict[str, int]] = {}
        for alert in live:
            if alert.env == name:
                by_state = counts.setdefault(alert.rule, {"pending": 0, "firing": 0})
                if alert.state in by_state:
                    by_state[alert.state] += 1
        out.append(
            {
                "env": name,
                "file": str(rulebook.path_for(name) or ""),
                "error": rulebook.errors.get(name),
                "rules": [
                    {
                        "name": rule.name,
                        "condition": str(rule.condition),
                        "for": format_duration(rule.for_seconds),
                        "severity": rule.severity,
                        "actions": list(rule.actions),
                        "dry_run": rule.dry_run or alert_settings.dry_run,
                        "enabled": rule.enabled,
                        "source": rule.source,
                        "alerts": counts.get(rule.name, {"pending": 0, "firing": 0}),
                    }
                    for rule in rules
                ],
                "yaml": dump_rules([r for r in rules if r.source != "defaults"]),
            }
        )
    return json_response(
        {
            "environments": out,
            "metrics": {m.name: {"description": m.description, "unit": m.unit} for m in METRICS.values()},
            "system_rules": list(SYSTEM_RULES),
        }
    )


@router.put("/api/v1/alerts/rules/{env}")
async def replace_rules(request: Request, env: str, credential: AnyCredential) -> Response:
    """Replace an environment's rule file (YAML body); refused whole if any rule is invalid."""
    require(credential, "admin", env)
    rulebook, _ = _rules_of(_engine(request))
    if rulebook.rules_dir is None:
        raise ApiError(
            409, "no_rules_dir", "no rules directory is configured; set [gateway.alerts] rules_dir"
        )
    text = (await request.body()).decode("utf-8", errors="replace")
    try:
        # Scale mode: the file is written in this gateway's rules directory, which the workers
        # read when it is shared with them (docs/deployment.md).
        rules = await run_in_threadpool(rulebook.replace, env, text)
    except (RuleError, ValueError) as exc:
        raise ApiError(400, "invalid_rules", str(exc)) from None
    entry = AuditEntry(
        ts=time.time(),
        env=env,
        actor=credential.actor,
        action="replace_rules",
        target=env,
        reason=f"{len(rules)} rules",
        result="ok",
        detail={"rules": [r.name for r in rules]},
    )
    await request.app.state.writer.call(lambda s: s.add_audit([entry]))
    return json_response({"env": env, "rules": [r.name for r in rules]})


@router.get("/api/v1/audit")
async def audit_log(
    request: Request,
    credential: Viewer_,
    env: str | None = None,
    target: str | None = None,
    since: float | None = None,
    limit: int = 200,
    action: str | None = None,
    decision: str | None = None,
) -> Response:
    """Who did what to which agent, why, and the result (remediation, commands, silences, policy).

    ``decision=allow|deny|require_approval`` keeps the policy decisions with that outcome.
    """
    envs = _envs(credential, env)
    limit = max(1, min(limit, 5_000))
    if decision is not None:
        if decision not in POLICY_DECISIONS:
            raise ApiError(400, "invalid_parameter", f"decision must be one of {', '.join(POLICY_DECISIONS)}")
        if action not in (None, "policy"):
            raise ApiError(
                400, "invalid_parameter", f"decision= only applies to action=policy, not action={action!r}"
            )
        action = "policy"
    rows = await run_in_threadpool(
        lambda: _store(request).query_audit(
            envs=envs, target=target, since=since, limit=limit, action=action, result=decision
        )
    )
    return json_response({"entries": rows})
