"""Console pages. Log in with an API credential; it is kept in an HttpOnly cookie."""

from __future__ import annotations

from pathlib import Path

import msgspec
from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from clawtrace import __version__
from clawtrace.access import SESSION_COOKIE, Authenticator, AuthError, Credential, PermissionDenied
from clawtrace.gateway.metrics_api import agent_row, current_fleet
from clawtrace.metrics.fleet import STATUSES, FleetRow
from clawtrace.store import EventQuery, Store

COOKIE = SESSION_COOKIE

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
templates.env.globals["version"] = __version__
router = APIRouter(include_in_schema=False)


def _login_redirect(request: Request) -> RedirectResponse:
    return RedirectResponse(f"/login?next={request.url.path}", status_code=303)


def _viewer(request: Request) -> Credential | Response:
    """The logged-in person's credential, or the page to show instead of the one asked for."""
    auth: Authenticator = request.app.state.auth
    try:
        credential = auth.authenticate(request.cookies.get(COOKIE))
    except AuthError:
        return _login_redirect(request)
    try:
        # Any credential can end up in the cookie (an agent's too): pages show the fleet to viewers only.
        credential.require("viewer")
    except PermissionDenied as exc:
        # The login form, so that logging in with a viewer credential is one step away.
        error = f"{exc}. Log in with a viewer, operator or admin credential."
        return templates.TemplateResponse(
            request, "login.html", {"next": request.url.path, "error": error}, status_code=403
        )
    return credential


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
    credential = _viewer(request)
    if isinstance(credential, Response):
        return credential
    envs = credential.readable_envs()
    if env:
        envs = [env] if envs is None or env in envs else []
    rows, _, _ = await current_fleet(request, envs)
    rows = [row for row in rows if not q or q.lower() in row.agent.lower()]
    counts = dict.fromkeys(STATUSES, 0)
    groups: dict[tuple[str, str], list[FleetRow]] = {}
    for row in rows:
        counts[row.status] += 1
        groups.setdefault((row.env, row.region), []).append(row)
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
    credential = _viewer(request)
    if isinstance(credential, Response):
        return credential
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
            "row": agent_row(request, record),
        },
    )
