"""Environments over HTTP: desired releases, promotion, rollout, rollback, diff (docs/releases.md).

Who may do what, per environment: reading needs viewer there; deploying,
promoting into it and rolling back need operator there; approving a
promotion into it needs admin there. Node agents fetch the releases their
environment was given with their own (agent) credential: ``GET /v1/releases/{id}``.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import msgspec
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from clawtrace.alerts.model import Rule
from clawtrace.alerts.rules_file import rules_for_env
from clawtrace.envs.diff import EnvSnapshot, RoleRelease, diff
from clawtrace.envs.environments import UnknownEnvironment
from clawtrace.gateway.api import (
    AnyCredential,
    ApiError,
    Viewer_,
    json_response,
    read_body,
    require,
    require_ingest,
)
from clawtrace.gateway.deployments import DeploymentRefused, DeploymentService, ref_of
from clawtrace.gateway.policies import PolicyService
from clawtrace.gateway.releases_api import full_view
from clawtrace.gateway.settings import GatewaySettings
from clawtrace.store import Store

router = APIRouter()

_FULL_ID = re.compile(r"^[0-9a-f]{64}$")


class DeployBody(msgspec.Struct, forbid_unknown_fields=True):
    release: str
    env: str
    reason: str = ""


class PromoteBody(msgspec.Struct, forbid_unknown_fields=True):
    release: str
    to: str
    reason: str = ""
    # Evaluate the gates only; change nothing.
    check: bool = False


class ApproveBody(msgspec.Struct, forbid_unknown_fields=True):
    release: str
    to: str
    reason: str = ""


class RollbackBody(msgspec.Struct, forbid_unknown_fields=True):
    role: str
    env: str
    # A release that ran there before (default: the one the current release replaced).
    to: str | None = None
    reason: str = ""


def _service(request: Request) -> DeploymentService:
    service: DeploymentService = request.app.state.deployments
    return service


def _refused(exc: DeploymentRefused) -> Response:
    error: dict[str, Any] = {"code": exc.code, "message": str(exc)}
    if exc.gates is not None:
        error["gates"] = msgspec.to_builtins(exc.gates)
    return json_response({"error": error}, exc.status)


def _known_env(service: DeploymentService, env: str) -> None:
    try:
        service.environments.check(env)
    except UnknownEnvironment as exc:
        raise ApiError(404, "unknown_environment", str(exc)) from None


def env_settings(settings: GatewaySettings, env: str) -> dict[str, Any]:
    """An environment's effective settings, defaults included."""
    environments = settings.promotion
    gates: dict[str, Any] = msgspec.structs.asdict(environments.gates(env))
    gates["approval"] = environments.needs_approval(env)
    return {
        "retention_days": settings.retention_for(env),
        "gates": gates if environments.previous(env) is not None else {},
        "rollout": msgspec.structs.asdict(environments.rollout(env)),
    }


@router.get("/api/v1/envs")
async def list_environments(request: Request, credential: Viewer_) -> Response:
    """The promotion order, each environment's settings and the desired release of every role."""
    service = _service(request)
    settings: GatewaySettings = request.app.state.settings
    out = []
    for env in service.environments.order:
        readable = credential.has_role("viewer", env)
        deployments = [
            {**service.describe(d), "progress": service.status(env, d.role).get("progress")}
            for (d_env, _role), d in sorted(service.current.items())
            if d_env == env and readable
        ]
        out.append(
            {
                "name": env,
                "previous": service.environments.previous(env),
                "readable": readable,
                "settings": env_settings(settings, env),
                "deployments": deployments,
            }
        )
    return json_response({"order": list(service.environments.order), "environments": out})


@router.get("/api/v1/envs/{env}/roles/{role}")
async def role_status(request: Request, env: str, role: str, credential: Viewer_) -> Response:
    """The desired release of ``role`` in ``env``, its rollout progress, its agents and its history."""
    service = _service(request)
    _known_env(service, env)
    require(credential, "viewer", env)
    view = service.status(env, role)
    history = await run_in_threadpool(lambda: service.store.deployment_history(env=env, role=role, limit=50))
    view["history"] = [service.describe(d) for d in history]
    return json_response(view)


@router.post("/api/v1/deployments")
async def deploy(request: Request, credential: AnyCredential) -> Response:
    require(credential, "operator")
    body = await read_body(request, DeployBody, '{"release": "ROLE@VERSION or id", "env": "dev"}')
    service = _service(request)
    _known_env(service, body.env)
    require(credential, "operator", body.env)
    try:
        record = await service.deploy(body.release, body.env, credential.actor, body.reason)
    except DeploymentRefused as exc:
        return _refused(exc)
    return json_response({"deployment": service.describe(record)}, 201)


@router.post("/api/v1/promotions")
async def promote(request: Request, credential: Viewer_) -> Response:
    body = await read_body(
        request, PromoteBody, '{"release": "ROLE@VERSION or id", "to": "staging", "check": false}'
    )
    service = _service(request)
    _known_env(service, body.to)
    require(credential, "viewer" if body.check else "operator", body.to)
    try:
        outcome = await service.promote(
            body.release, body.to, credential.actor, check_only=body.check, reason=body.reason
        )
    except DeploymentRefused as exc:
        return _refused(exc)
    view: dict[str, Any] = {
        "release": outcome.release.id,
        "ref": ref_of(outcome.release),
        "to": outcome.target,
        "gates": msgspec.to_builtins(outcome.gates),
        "passed": all(gate.passed for gate in outcome.gates),
        "deployment": service.describe(outcome.deployment) if outcome.deployment is not None else None,
    }
    return json_response(view, 200 if body.check else 201)


@router.post("/api/v1/promotions/approvals")
async def approve(request: Request, credential: AnyCredential) -> Response:
    require(credential, "admin")
    body = await read_body(request, ApproveBody, '{"release": "ROLE@VERSION or id", "to": "prod"}')
    service = _service(request)
    _known_env(service, body.to)
    require(credential, "admin", body.to)
    try:
        approval = await service.approve(body.release, body.to, credential.actor, body.reason)
    except DeploymentRefused as exc:
        return _refused(exc)
    return json_response({"approval": msgspec.to_builtins(approval)}, 201)


@router.post("/api/v1/rollbacks")
async def rollback(request: Request, credential: AnyCredential) -> Response:
    require(credential, "operator")
    body = await read_body(request, RollbackBody, '{"role": "researcher", "env": "prod"}')
    service = _service(request)
    _known_env(service, body.env)
    require(credential, "operator", body.env)
    try:
        record = await service.rollback(body.role, body.env, credential.actor, body.to, body.reason)
    except DeploymentRefused as exc:
        return _refused(exc)
    return json_response({"deployment": service.describe(record)}, 201)


async def _snapshot(request: Request, env: str) -> EnvSnapshot:
    service = _service(request)
    settings: GatewaySettings = request.app.state.settings
    policies: PolicyService = request.app.state.policies
    store: Store = request.app.state.store
    history = await run_in_threadpool(lambda: store.deployment_history(env=env, limit=100_000))
    rules = await asyncio.to_thread(rules_for_env, settings.rules_path, env, settings.alerts.default_rules)
    active = policies.active.get(env)
    releases = {
        role: RoleRelease(id=d.release, ref=service.ref(d.release) or d.release)
        for (d_env, role), d in service.current.items()
        if d_env == env
    }
    return EnvSnapshot(
        env=env,
        releases=releases,
        history={d.release for d in history},
        policy_version=active.version if active is not None else None,
        policy_files=dict(active.bundle.files) if active is not None else {},
        rules={rule.name: _comparable(rule, env) for rule in rules},
        settings=env_settings(settings, env),
    )


def _comparable(rule: Rule, env: str) -> dict[str, Any]:
    """A rule as data, without what every environment's copy of it differs in (its file, its env)."""
    data: dict[str, Any] = msgspec.to_builtins(rule)
    data.pop("source", None)
    scope = {k: v for k, v in data.pop("scope", {}).items() if not (k == "envs" and list(v) == [env])}
    if scope:
        data["scope"] = scope
    return data


@router.get("/api/v1/envs/diff")
async def env_diff(request: Request, a: str, b: str, credential: Viewer_) -> Response:
    """What differs between environments ``a`` and ``b``; ``flagged`` items are divergence."""
    service = _service(request)
    for env in (a, b):
        _known_env(service, env)
        require(credential, "viewer", env)
    if a == b:
        raise ApiError(400, "invalid_parameter", f"compare two different environments, not {a} with itself")
    result = diff(await _snapshot(request, a), await _snapshot(request, b), service.environments.before(a, b))
    return json_response(
        {"a": a, "b": b, "items": msgspec.to_builtins(result.items), "flagged": len(result.flagged)}
    )


@router.get("/v1/releases/{release_id}")
async def fetch_release(request: Request, release_id: str, credential: AnyCredential) -> Response:
    """A release for a node agent to run: only one its environment was given (agent credential)."""
    service = _service(request)
    env: str | None = None
    if not credential.has_role("admin"):
        require_ingest(credential, credential.env)
        env = credential.env
    if not _FULL_ID.match(release_id):
        raise ApiError(400, "invalid_parameter", "name the release by its full id (64 hex digits)")
    record = await run_in_threadpool(service.store.get_release, release_id)
    if record is None:
        raise ApiError(404, "not_found", f"no release {release_id!r}")
    given = await run_in_threadpool(
        lambda: service.store.deployment_history(env=env, release=record.id, limit=1)
    )
    if not given:
        raise ApiError(
            403,
            "forbidden",
            f"release {record.id[:12]} was never deployed in {credential.env}: a node agent only gets "
            "releases its environment was given",
        )
    view = full_view(record)
    return json_response({"id": view["id"], "manifest": view["manifest"], "files": view["files"]})
