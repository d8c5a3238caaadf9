"""Console pages. Log in with an API credential; it is kept in an HttpOnly cookie."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgspec
from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from clawtrace import __version__
from clawtrace.access import SESSION_COOKIE, Authenticator, AuthError, Credential
from clawtrace.store import AgentRecord, EventQuery, Store

COOKIE = SESSION_COOKIE
HEARTBEAT_DEAD_SECONDS = 45.0

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
templates.env.globals["version"] = __version__
router = APIRouter(include_in_schema=False)


def _login_redirect(request: Request) -> RedirectResponse:
    return RedirectResponse(f"/login?next={request.url.path}", status_code=303)


def _credential(request: Request) -> Credential | None:
    auth: Authenticator = request.app.state.auth
    try:
        return auth.authenticate(request.cookies.get(COOKIE))
    except AuthError:
        return None


def _status(agent: AgentRecord, now: float) -> str:
    if agent.last_heartbeat is not None and now - agent.last_heartbeat > HEARTBEAT_DEAD_SECONDS:
        return "dead"
    if not agent.connected:
        return "offline"
    return "healthy"


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, token: str | None = None, next: str = "/") -> Response:
    if token:
        return await login(request, token=token, next=next)
    return templates.TemplateResponse(request, "login.html", {"next": next, "error": None})


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request, token: str = Form(...), next: str = Form("/")) -> Response:
    auth: Authenticator = request.app.state.auth
    try:
        credential = auth.authenticate(token.strip())
        credential.require("viewer")
    except Exception as exc:
        return templates.TemplateResponse(
            request, "login.html", {"next": next, "error": str(exc)}, status_code=401
        )
    target = next if next.startswith("/") and not next.startswith("//") else "/"
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(COOKIE, token.strip(), httponly=True, samesite="strict", max_age=7 * 86400)
    return response


@router.post("/logout")
async def logout() -> Response:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE)
    return response


@router.get("/", response_class=HTMLResponse)
async def fleet(request: Request, env: str | None = None, q: str | None = None) -> Response:
    credential = _credential(request)
    if credential is None:
        return _login_redirect(request)
    store: Store = request.app.state.store
    envs = credential.readable_envs()
    if env:
        envs = [env] if envs is None or env in envs else []
    agents = await run_in_threadpool(store.list_agents, envs)
    pipeline = request.app.state.pipeline
    now = time.time()
    rows: list[dict[str, Any]] = []
    counts: dict[str, int] = {"healthy": 0, "offline": 0, "dead": 0}
    for agent in agents:
        if q and q.lower() not in agent.agent.lower():
            continue
        state = pipeline.agents.get(agent.agent)
        agent.connected = state is not None and state.link is not None
        status = _status(agent, now)
        counts[status] += 1
        rows.append(
            {
                "agent": agent,
                "status": status,
                "hb_age": None if agent.last_heartbeat is None else now - agent.last_heartbeat,
            }
        )
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        record: AgentRecord = row["agent"]
        groups.setdefault((record.env, record.region), []).append(row)
    return templates.TemplateResponse(
        request,
        "fleet.html",
        {
            "groups": sorted(groups.items()),
            "counts": counts,
            "total": len(rows),
            "env": env or "",
            "q": q or "",
            "credential": credential,
        },
    )


@router.get("/agents/{agent}", response_class=HTMLResponse)
async def agent_page(request: Request, agent: str, session: str | None = None) -> Response:
    credential = _credential(request)
    if credential is None:
        return _login_redirect(request)
    store: Store = request.app.state.store
    record = await run_in_threadpool(store.get_agent, agent)
    if record is None or not credential.covers_env(record.env):
        return templates.TemplateResponse(
            request,
            "error.html",
            {"message": f"No agent {agent!r} in the environments you can read."},
            status_code=404,
        )
    sessions = await run_in_threadpool(store.list_sessions, agent)
    after = max(0, record.last_seq - 200)
    if session:
        after = 0
    rows = await run_in_threadpool(
        store.query_events, EventQuery(agent=agent, session=session, after_seq=after, limit=200)
    )
    events = [msgspec.json.decode(data) for _, data in rows]
    return templates.TemplateResponse(
        request,
        "agent.html",
        {
            "agent": record,
            "sessions": list(reversed(sessions)),
            "events": events,
            "session": session,
            "status": _status(record, time.time()),
        },
    )
