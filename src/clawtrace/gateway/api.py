"""REST and live read side (``/api/v1``) and the NDJSON ingest endpoint."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import msgspec
from fastapi import APIRouter, Depends, HTTPException, Query, Request, WebSocket
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocketDisconnect

from clawtrace.access import SESSION_COOKIE, Authenticator, AuthError, Credential, PermissionDenied
from clawtrace.alerts.drivers.base import AgentTarget
from clawtrace.alerts.model import AuditEntry
from clawtrace.gateway.agent_socket import bearer_token
from clawtrace.gateway.commands import CommandService, delivery
from clawtrace.gateway.live import LiveHub, Viewer
from clawtrace.gateway.pipeline import Pipeline
from clawtrace.gateway.settings import GatewaySettings
from clawtrace.protocol import KINDS, CloseCode, Error, ErrorCode, Event, decode_event, encode
from clawtrace.protocol.codec import describe_event_error
from clawtrace.store import AgentEnvMismatch, AgentRecord, EventQuery, Store

MAX_PAGE = 5_000


def json_response(value: Any, status_code: int = 200) -> Response:
    return Response(msgspec.json.encode(value), status_code=status_code, media_type="application/json")


class ApiError(HTTPException):
    def __init__(self, status_code: int, code: str, message: str) -> None:
        super().__init__(status_code=status_code, detail={"code": code, "message": message})


B = TypeVar("B")


async def read_body(request: Request, body_type: type[B], expected: str, max_bytes: int | None = None) -> B:
    """The JSON body as ``body_type``, or a 400 saying what was expected and what was wrong
    (413 above ``max_bytes``)."""
    raw = await request.body()
    if max_bytes is not None and len(raw) > max_bytes:
        raise ApiError(413, "too_large", f"the body may be at most {max_bytes} bytes of JSON")
    try:
        return msgspec.json.decode(raw, type=body_type)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ApiError(400, "invalid_body", f"expected {expected}: {exc}") from None


def _credential(request: Request) -> Credential:
    auth: Authenticator = request.app.state.auth
    try:
        return auth.authenticate(bearer_token(request.headers))
    except AuthError as exc:
        raise ApiError(401, ErrorCode.UNAUTHORIZED, str(exc)) from None


def require(credential: Credential, role: str, env: str | None = None) -> None:
    """``credential.require`` (which audits the refusal) answering 403 with its how-to message."""
    try:
        credential.require(role, env)
    except PermissionDenied as exc:
        raise ApiError(403, ErrorCode.FORBIDDEN, str(exc)) from None


def require_ingest(credential: Credential, env: str) -> None:
    """``credential.require_ingest`` (which audits the refusal) answering 403 with its how-to message."""
    try:
        credential.require_ingest(env)
    except PermissionDenied as exc:
        raise ApiError(403, ErrorCode.FORBIDDEN, str(exc)) from None


def viewer(credential: Annotated[Credential, Depends(_credential)]) -> Credential:
    require(credential, "viewer")
    return credential


Viewer_ = Annotated[Credential, Depends(viewer)]
AnyCredential = Annotated[Credential, Depends(_credential)]


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def _pipeline(request: Request) -> Pipeline:
    pipeline: Pipeline = request.app.state.pipeline
    return pipeline


async def _readable_agent(request: Request, credential: Credential, agent: str) -> AgentRecord:
    record = await run_in_threadpool(_store(request).get_agent, agent)
    # An agent in an environment the credential cannot read does not exist for it.
    if record is None or not credential.covers_env(record.env):
        raise ApiError(404, "not_found", f"no agent {agent!r} (in the environments this credential can read)")
    return record


def agent_view(record: AgentRecord) -> dict[str, Any]:
    view = msgspec.structs.asdict(record)
    hb = record.last_heartbeat
    view["heartbeat_age_seconds"] = None if hb is None else round(max(0.0, time.time() - hb), 3)
    return view


router = APIRouter()


@router.get("/healthz", include_in_schema=False)
async def healthz() -> Response:
    return json_response({"status": "ok"})


@router.get("/readyz", include_in_schema=False)
async def readyz(request: Request) -> Response:
    writer = request.app.state.writer
    problems = []
    if not writer.alive:
        problems.append("store writer is not running")
    elif writer.last_error:
        problems.append(f"last store write failed: {writer.last_error}")
    try:
        await run_in_threadpool(_store(request).get_token, "-")
    except Exception as exc:
        problems.append(f"store unreachable: {exc}")
    scale = request.app.state.scale
    if scale is not None and (scale.link is None or not scale.link.nats.connected):
        problems.append("NATS unreachable: events are not acknowledged until it is back")
    if problems:
        return json_response({"status": "unavailable", "problems": problems}, 503)
    return json_response({"status": "ready"})


@router.get("/api/v1/agents")
async def list_agents(request: Request, credential: Viewer_, env: str | None = None) -> Response:
    envs = credential.readable_envs()
    if env is not None:
        require(credential, "viewer", env)
        envs = [env]
    records = await run_in_threadpool(_store(request).list_agents, envs)
    pipeline = _pipeline(request)
    views = []
    for record in records:
        view = agent_view(record)
        state = pipeline.agents.get(record.agent)
        view["connected"] = state is not None and state.link is not None
        views.append(view)
    return json_response({"agents": views})


@router.get("/api/v1/agents/{agent}")
async def get_agent(request: Request, agent: str, credential: Viewer_) -> Response:
    return json_response(agent_view(await _readable_agent(request, credential, agent)))


@router.get("/api/v1/agents/{agent}/sessions")
async def list_sessions(request: Request, agent: str, credential: Viewer_) -> Response:
    await _readable_agent(request, credential, agent)
    sessions = await run_in_threadpool(_store(request).list_sessions, agent)
    return json_response({"sessions": sessions})


def _parse_time(value: str | None, name: str) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ApiError(
            400, "invalid_parameter", f"{name} must be RFC 3339 (2026-01-31T03:02:00Z) or epoch seconds"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@router.get("/api/v1/agents/{agent}/events")
async def list_events(
    request: Request,
    agent: str,
    credential: Viewer_,
    session: str | None = None,
    kind: Annotated[list[str] | None, Query()] = None,
    since: str | None = None,
    until: str | None = None,
    after_seq: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 500,
) -> Response:
    await _readable_agent(request, credential, agent)
    kinds = [k for value in kind or [] for k in value.split(",") if k]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ApiError(400, "invalid_parameter", f"unknown kind(s) {unknown}; known: {', '.join(KINDS)}")
    query = EventQuery(
        agent=agent,
        session=session,
        kinds=kinds,
        since=_parse_time(since, "since"),
        until=_parse_time(until, "until"),
        after_seq=after_seq,
        limit=limit,
    )
    rows = await run_in_threadpool(_store(request).query_events, query)
    next_after = rows[-1][0] if len(rows) == limit else None
    body = (
        b'{"events":['
        + b",".join(data for _, data in rows)
        + b'],"next_after_seq":'
        + (b"null" if next_after is None else str(next_after).encode())
        + b"}"
    )
    return Response(body, media_type="application/json")


class CommandRequest(msgspec.Struct, forbid_unknown_fields=True):
    action: str
    reason: str | None = None
    payload: dict[str, Any] = {}


_ACTIONS = ("restart", "stop", "quarantine", "release")


@router.post("/api/v1/agents/{agent}/commands", status_code=202)
async def send_command(request: Request, agent: str, credential: AnyCredential) -> Response:
    """restart / stop (sent to the node agent), quarantine / release (recorded, then sent); audited."""
    # The role first: a viewer learns nothing about which agents exist from a 404.
    require(credential, "operator")
    record = await _readable_agent(request, credential, agent)
    require(credential, "operator", record.env)
    body = await read_body(request, CommandRequest, f'{{"action": {"|".join(_ACTIONS)}, "reason": "..."}}')
    if body.action not in _ACTIONS:
        raise ApiError(
            400, "invalid_body", f"unknown action {body.action!r}; supported: {', '.join(_ACTIONS)}"
        )
    commands: CommandService = request.app.state.commands
    actor = credential.actor
    reason = body.reason or f"requested by {credential.role} credential {credential.id}"
    command = None
    failure: tuple[str, str] | None = None
    if body.action == "quarantine":
        target = AgentTarget(agent, record.env, record.region, record.labels)
        delivered = await commands.quarantine(target, reason, actor)
        detail = f"quarantine recorded; {delivery(delivered)}"
    elif body.action == "release":
        was_quarantined, delivered = await commands.release(agent, reason)
        detail = f"quarantine lifted; {delivery(delivered)}"
        if not was_quarantined:
            failure = ("not_quarantined", f"agent {agent!r} is not quarantined")
        elif request.app.state.alerts is not None:
            request.app.state.alerts.remediator.released(agent)
    else:
        command, delivered = await commands.send(agent, body.action, reason, body.payload)  # type: ignore[arg-type]
        detail = f"{body.action} command {command.id} {delivery(delivered)}"
        if not delivered:
            failure = ("not_connected", f"agent {agent!r} is not connected; the {body.action} was not sent")
    entry = AuditEntry(
        ts=time.time(),
        env=record.env,
        actor=actor,
        action=body.action,
        target=agent,
        reason=reason,
        result="failed" if failure else "ok",
        detail={"detail": failure[1] if failure else detail},
    )
    await request.app.state.writer.call(lambda store: store.add_audit([entry]))
    if failure is not None:
        raise ApiError(409, *failure)
    return json_response(
        {"command": command, "action": body.action, "delivered": delivered, "detail": detail}, 202
    )


@router.post("/v1/events")
async def post_events(request: Request, credential: AnyCredential, agent: str | None = None) -> Response:
    """NDJSON ingest for clients that cannot hold a socket; answers once stored."""
    settings: GatewaySettings = request.app.state.settings
    env = request.query_params.get("env") or credential.env
    # Before the body is read: whoever may not send events gets 403, not a 413 about their size.
    require_ingest(credential, env)
    body = await request.body()
    if len(body) > settings.max_frame_bytes:
        raise ApiError(413, ErrorCode.FRAME_TOO_LARGE, f"body exceeds {settings.max_frame_bytes} bytes")
    lines = body.split(b"\n")
    errors: list[Error] = []
    by_agent: dict[str, list[Event]] = {}
    count = 0
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        count += 1
        if count > settings.max_events_per_frame:
            raise ApiError(
                413,
                ErrorCode.TOO_MANY_EVENTS,
                f"more than {settings.max_events_per_frame} events in one post",
            )
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            errors.append(Error(code=ErrorCode.INVALID_UTF8, message="line is not valid UTF-8", line=number))
            continue
        try:
            event = decode_event(raw)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            error = describe_event_error(raw, exc)
            error.line = number
            errors.append(error)
            continue
        target = event.agent or agent or (credential.name if credential.role == "agent" else None)
        if not target:
            errors.append(
                Error(
                    code=ErrorCode.INVALID_EVENT,
                    message="no agent: set the event's agent field or ?agent=",
                    seq=event.seq,
                    line=number,
                )
            )
            continue
        event.agent = target
        by_agent.setdefault(target, []).append(event)
    pipeline = _pipeline(request)
    acks: dict[str, int] = {}
    accepted = duplicates = 0
    for target, events in by_agent.items():
        try:
            state = await pipeline.agent_for_post(target, env)
        except AgentEnvMismatch as exc:
            raise ApiError(403, ErrorCode.FORBIDDEN, str(exc)) from None
        events.sort(key=lambda e: e.seq)
        # The same seq twice in one post is a duplicate (the first line wins), not an ordering error.
        unique = [e for i, e in enumerate(events) if i == 0 or e.seq != events[i - 1].seq]
        duplicates += len(events) - len(unique)
        events = unique
        async with state.lock:
            result = pipeline.ingest(state, events, 0, body)
            if result.write is not None:
                try:
                    await result.write
                except Exception as exc:
                    pipeline.agents.pop(target, None)
                    raise ApiError(
                        503, ErrorCode.STORE_UNAVAILABLE, f"events could not be stored: {exc}"
                    ) from None
        errors.extend(result.errors)
        accepted += result.accepted
        duplicates += result.duplicates
        acks[target] = state.accepted_seq
    return json_response({"accepted": accepted, "duplicates": duplicates, "acks": acks, "errors": errors})


@router.websocket("/api/v1/live")
async def live(ws: WebSocket) -> None:
    auth: Authenticator = ws.app.state.auth
    hub: LiveHub = ws.app.state.live
    params = ws.query_params
    try:
        credential = auth.authenticate(
            bearer_token(ws.headers) or params.get("token") or ws.cookies.get(SESSION_COOKIE)
        )
        credential.require("viewer", params.get("env") or None)
    except (AuthError, PermissionDenied) as exc:
        denied = isinstance(exc, PermissionDenied)
        await ws.accept()
        code = ErrorCode.FORBIDDEN if denied else ErrorCode.UNAUTHORIZED
        await ws.send_text(encode(Error(code=code, message=str(exc))).decode())
        await ws.close(CloseCode.FORBIDDEN if denied else CloseCode.UNAUTHORIZED, str(exc)[:120])
        return
    kinds = frozenset(k for value in params.getlist("kind") for k in value.split(",") if k)
    unknown = kinds - set(KINDS)
    await ws.accept()
    if unknown:
        await ws.send_text(
            encode(Error(code="invalid_parameter", message=f"unknown kind(s) {sorted(unknown)}")).decode()
        )
        await ws.close(4000)
        return
    envs = credential.readable_envs()

    async def send(data: bytes) -> None:
        await ws.send_text(data.decode())

    async def until_closed() -> None:
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
        except WebSocketDisconnect:
            return

    viewer = Viewer(
        send=send,
        envs=None if envs is None else frozenset(envs),
        agent=params.get("agent") or None,
        env=params.get("env") or None,
        kinds=kinds,
    )
    await hub.serve(viewer, until_closed())
