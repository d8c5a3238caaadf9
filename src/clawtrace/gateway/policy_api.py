"""Tool policy over HTTP: bundles, ``/v1/authorize``, approvals.

``/api/v1/policies/{env}`` (bundles per environment, history, rollback),
``/v1/authorize`` (one decision, for enforcement points without a node
agent), ``/api/v1/approvals`` (tool calls waiting for a person).
"""

from __future__ import annotations

import re
import time
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from clawtrace.access import Credential
from clawtrace.alerts.model import AuditEntry
from clawtrace.gateway.api import (
    AnyCredential,
    ApiError,
    Viewer_,
    json_response,
    read_body,
    require,
    require_ingest,
)
from clawtrace.gateway.policies import (
    DEFAULT_HOME,
    DEFAULT_WORKSPACE,
    ApplyResult,
    ApprovalConflict,
    Authorization,
    PolicyService,
    UnknownVersion,
    decode_bundle,
)
from clawtrace.policy import BundleSettings, PolicyError
from clawtrace.protocol.messages import AgentId
from clawtrace.store import AgentInfo, Store
from clawtrace.store.base import APPROVAL_STATES, ApprovalRecord, PolicyRecord

router = APIRouter()

MAX_BUNDLE_BYTES = 1 << 20
_ENV = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*\.cedar$")


def _policies(request: Request) -> PolicyService:
    service: PolicyService = request.app.state.policies
    return service


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def _check_env(env: str) -> None:
    if not _ENV.match(env):
        raise ApiError(
            400,
            "invalid_parameter",
            f"{env!r} is not an environment name (letters, digits, '-', '_'; 64 at most)",
        )


# --- bundles -------------------------------------------------------------------------------


class BundleRequest(msgspec.Struct, forbid_unknown_fields=True):
    files: dict[str, str]
    settings: BundleSettings = BundleSettings()


def _history_view(record: PolicyRecord) -> dict[str, Any]:
    return {
        "version": record.version,
        "applied_by": record.applied_by,
        "applied_at": record.applied_at,
        "action": record.action,
        "active": record.active,
    }


def _bundle_view(record: PolicyRecord) -> dict[str, Any]:
    """The bundle (env, version, files, settings) with who applied it when."""
    view: dict[str, Any] = msgspec.to_builtins(decode_bundle(record.bundle))
    view.update(_history_view(record))
    return view


def _apply_view(result: ApplyResult) -> dict[str, Any]:
    return {
        "env": result.env,
        "version": result.version,
        "previous": result.previous,
        "changed": result.changed,
        "delivered": list(result.delivered),
        "not_delivered": list(result.not_delivered),
    }


def _invalid_policy(exc: PolicyError) -> ApiError:
    error = ApiError(
        400,
        "invalid_policy",
        f"the bundle was refused, nothing changed: {len(exc.problems)} problem(s); fix them and apply again",
    )
    assert isinstance(error.detail, dict)
    error.detail["problems"] = exc.problems
    return error


@router.get("/api/v1/policies")
async def list_policies(request: Request, credential: Viewer_) -> Response:
    """The active bundle version of every environment the credential can read."""
    envs = credential.readable_envs()
    out = [
        {"env": env, **_history_view(active.record)}
        for env, active in sorted(_policies(request).active.items())
        if envs is None or env in envs
    ]
    return json_response({"environments": out})


@router.get("/api/v1/policies/{env}")
async def get_policy(
    request: Request, env: str, credential: Viewer_, version: str | None = None, history: int = 50
) -> Response:
    """``env``'s active bundle and its version, the history of activations (newest first),
    and with ``?version=`` that version's bundle as ``bundle``."""
    _check_env(env)
    require(credential, "viewer", env)
    store = _store(request)
    records = await run_in_threadpool(store.policy_history, env, max(1, min(history, 1000)))
    active = _policies(request).active.get(env)
    body: dict[str, Any] = {
        "env": env,
        "version": active.version if active is not None else None,
        "active": _bundle_view(active.record) if active is not None else None,
        "history": [_history_view(r) for r in records],
    }
    if version is not None:
        record = await run_in_threadpool(store.find_policy, env, version)
        if record is None:
            raise ApiError(
                404, "not_found", f"environment {env!r} never had policy version {version!r}; see its history"
            )
        body["bundle"] = _bundle_view(record)
    return json_response(body)


@router.put("/api/v1/policies/{env}")
async def apply_policy(request: Request, env: str, credential: AnyCredential) -> Response:
    """Validate a bundle, make it ``env``'s active one and push it to the environment's node agents."""
    _check_env(env)
    require(credential, "admin", env)
    body = await read_body(
        request,
        BundleRequest,
        '{"files": {"NAME.cedar": "policy text", ...}, "settings": {...}}',
        MAX_BUNDLE_BYTES,
    )
    bad = [name for name in body.files if not _FILE.match(name)]
    if bad or not body.files:
        raise ApiError(
            400,
            "invalid_body",
            f"file names must look like NAME.cedar (no directories); got {bad or 'no files'}",
        )
    try:
        result = await _policies(request).apply(env, body.files, body.settings, credential.actor)
    except PolicyError as exc:
        raise _invalid_policy(exc) from None
    return json_response(_apply_view(result))


@router.post("/api/v1/policies/{env}/rollback")
async def rollback_policy(
    request: Request,
    env: str,
    credential: AnyCredential,
    # Required, but checked here after the role: FastAPI's own check would answer anyone 400 first.
    version: Annotated[str | None, Query(description="the version to make active again")] = None,
) -> Response:
    """Make an earlier version of ``env``'s bundle active again and push it."""
    _check_env(env)
    require(credential, "admin", env)
    if not version:
        raise ApiError(
            400,
            "invalid_parameter",
            f"?version= is required: name the version to make active again"
            f" (see the history with GET /api/v1/policies/{env})",
        )
    try:
        result = await _policies(request).rollback(env, version, credential.actor)
    except UnknownVersion:
        raise ApiError(
            404,
            "not_found",
            f"environment {env!r} never had policy version {version!r}; "
            f"see the history with GET /api/v1/policies/{env}",
        ) from None
    except PolicyError as exc:
        raise _invalid_policy(exc) from None
    return json_response(_apply_view(result))


# --- authorize ------------------------------------------------------------------------------


class AuthorizeRequest(msgspec.Struct, forbid_unknown_fields=True):
    agent: AgentId
    tool: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    args: dict[str, Any] = {}
    cwd: str | None = None
    # Where the agent may work. Without one, every path counts as outside it: send it.
    workspace: str | None = None
    home: str | None = None


async def _agent_info(request: Request, credential: Credential, agent: str) -> AgentInfo:
    state = request.app.state.pipeline.agents.get(agent)
    if state is not None:
        info: AgentInfo = state.info
        return info
    record = await run_in_threadpool(_store(request).get_agent, agent)
    if record is not None:
        return AgentInfo(agent, record.env, record.region, record.labels, record.release)
    if credential.env == "*":
        raise ApiError(
            404,
            "not_found",
            f"no agent {agent!r}: it must connect or post events once,"
            " or ask with a credential for its environment",
        )
    # An agent that only ever asks (another language, no node agent): the credential says where it is.
    return AgentInfo(agent, credential.env, "", {}, None)


def _facts_view(result: Authorization) -> dict[str, Any]:
    facts = result.decision.facts
    if facts is None:
        return {"commands": []}
    view: dict[str, Any] = msgspec.to_builtins(facts, order="deterministic")
    return view if isinstance(view, dict) else {"commands": []}


@router.post("/v1/authorize")
async def authorize(request: Request, credential: AnyCredential) -> Response:
    """Decide one tool call with the agent's environment bundle, as its node agent would."""
    # The role before the body; the environment only after, since the agent the body names decides it.
    if credential.role != "agent":
        require(credential, "operator")
    body = await read_body(
        request,
        AuthorizeRequest,
        '{"agent": ID, "tool": NAME, "args": {...}, "cwd": PATH, "workspace": PATH}',
    )
    for name in ("cwd", "workspace", "home"):
        value = getattr(body, name)
        if value is not None and not value.startswith("/"):
            raise ApiError(400, "invalid_body", f"{name} must be an absolute path, not {value!r}")
    info = await _agent_info(request, credential, body.agent)
    if credential.role == "agent":
        # Whoever may send an environment's events may ask for its decisions.
        require_ingest(credential, info.env)
    else:
        require(credential, "operator", info.env)
    service = _policies(request)
    workspace = body.workspace or DEFAULT_WORKSPACE
    result = service.authorize(
        info, body.tool, body.args, cwd=body.cwd, workspace=workspace, home=body.home or DEFAULT_HOME
    )
    if credential.role == "agent":
        # The agent's own enforcement point; an operator asking is a what-if, not a decision.
        service.audit_authorization(result)
    decision = result.decision
    return json_response(
        {
            "decision": decision.decision,
            "rule": decision.rule,
            "reason": decision.reason,
            "policy_version": result.policy_version,
            "agent": info.agent,
            "env": info.env,
            "role": result.identity.role,
            "tool": decision.tool,
            "command": decision.command or None,
            # What "inside the workspace" meant for this decision ("": none, every path is outside).
            "workspace": workspace,
            "facts": _facts_view(result),
        }
    )


# --- approvals ------------------------------------------------------------------------------


class AnswerRequest(msgspec.Struct, forbid_unknown_fields=True):
    approve: bool
    reason: str | None = None


def _approval_view(approval: ApprovalRecord, now: float) -> dict[str, Any]:
    view = msgspec.structs.asdict(approval)
    view["expires_in_seconds"] = (
        round(max(0.0, approval.expires - now), 3) if approval.state == "pending" else None
    )
    return view


async def _readable_approval(request: Request, credential: Credential, approval_id: str) -> ApprovalRecord:
    await _policies(request).expire_approvals()
    approval = await run_in_threadpool(_store(request).get_approval, approval_id)
    if approval is None or not credential.covers_env(approval.env):
        raise ApiError(
            404, "not_found", f"no approval {approval_id!r} (in the environments this credential can read)"
        )
    return approval


@router.get("/api/v1/approvals")
async def list_approvals(
    request: Request,
    credential: Viewer_,
    env: str | None = None,
    state: str | None = None,
    agent: str | None = None,
    limit: int = 200,
) -> Response:
    """Approvals, newest first; ``state=pending|approved|rejected|expired`` narrows them (default: all)."""
    if state == "all":
        state = None
    if state is not None and state not in APPROVAL_STATES:
        raise ApiError(400, "invalid_parameter", f"state must be one of {', '.join(APPROVAL_STATES)} or all")
    envs = credential.readable_envs()
    if env is not None:
        require(credential, "viewer", env)
        envs = [env]
    await _policies(request).expire_approvals()
    limit = max(1, min(limit, 5_000))
    rows = await run_in_threadpool(
        lambda: _store(request).list_approvals(envs=envs, state=state, agent=agent, limit=limit)
    )
    now = time.time()
    return json_response({"approvals": [_approval_view(a, now) for a in rows]})


@router.get("/api/v1/approvals/{approval_id}")
async def get_approval(request: Request, approval_id: str, credential: Viewer_) -> Response:
    approval = await _readable_approval(request, credential, approval_id)
    return json_response(_approval_view(approval, time.time()))


@router.post("/api/v1/approvals/{approval_id}")
async def answer_approval(request: Request, approval_id: str, credential: AnyCredential) -> Response:
    """Approve or reject a waiting tool call; the node agent that waits for it is told at once."""
    # The role first: a viewer learns nothing about which approvals exist from a 404.
    require(credential, "operator")
    approval = await _readable_approval(request, credential, approval_id)
    require(credential, "operator", approval.env)
    body = await read_body(request, AnswerRequest, '{"approve": true|false, "reason": "..."}')
    actor = credential.actor
    try:
        decided = await _policies(request).answer(approval_id, body.approve, actor, body.reason)
    except ApprovalConflict as exc:
        if exc.code == "not_connected":
            entry = _answer_audit(approval, actor, body, "failed", exc.message)
            await request.app.state.writer.call(lambda s: s.add_audit([entry]))
        raise ApiError(404 if exc.code == "not_found" else 409, exc.code, exc.message) from None
    entry = _answer_audit(decided, actor, body, "ok", f"{decided.state}; the node agent was told")
    await request.app.state.writer.call(lambda s: s.add_audit([entry]))
    return json_response(_approval_view(decided, time.time()))


def _answer_audit(
    approval: ApprovalRecord, actor: str, body: AnswerRequest, result: str, detail: str
) -> AuditEntry:
    return AuditEntry(
        ts=time.time(),
        env=approval.env,
        actor=actor,
        action="approve" if body.approve else "reject",
        target=approval.agent,
        reason=body.reason or "",
        result=result,
        detail={
            "approval_id": approval.id,
            "tool": approval.tool,
            "command": approval.command,
            "rule": approval.rule,
            "detail": detail,
        },
    )
