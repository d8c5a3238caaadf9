"""What every console page shares: templates, the signed-in person, and rendering.

A page reads the gateway's state server-side (``app.state``) or calls the
same functions the JSON API routes are, never a copy of their logic; the
person's credential decides what is shown and which buttons exist, and every
action is checked again by the API whatever the page showed.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import msgspec
from fastapi import Request
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException

from clawtrace import __version__
from clawtrace.access import SESSION_COOKIE, Authenticator, AuthError, Credential, PermissionDenied
from clawtrace.alerts.engine import AlertEngine
from clawtrace.alerts.model import Alert
from clawtrace.console.formatting import FILTERS

TEMPLATES_DIR = Path(__file__).parent / "templates"

templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
templates.env.globals["version"] = __version__
templates.env.filters.update(FILTERS)

# The pages in the top bar: (nav key, path, label, key that goes there after "g").
NAVIGATION: tuple[tuple[str, str, str, str], ...] = (
    ("fleet", "/", "Fleet", "f"),
    ("metrics", "/charts", "Metrics", "m"),
    ("alerts", "/alerts", "Alerts", "a"),
    ("policies", "/policies", "Policies & audit", "p"),
    ("envs", "/envs", "Environments", "e"),
)
templates.env.globals["navigation"] = NAVIGATION


def login_redirect(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)


def signed_in(request: Request) -> Credential | Response:
    """The logged-in person's credential, or the page to show instead of the one asked for."""
    auth: Authenticator = request.app.state.auth
    try:
        credential = auth.authenticate(request.cookies.get(SESSION_COOKIE))
    except AuthError:
        return login_redirect(request)
    try:
        # Any credential can end up in the cookie (an agent's too): pages are for viewers and up.
        credential.require("viewer")
    except PermissionDenied as exc:
        # The login form, so that logging in with a viewer credential is one step away.
        error = f"{exc}. Log in with a viewer, operator or admin credential."
        return templates.TemplateResponse(
            request, "login.html", {"next": request.url.path, "error": error}, status_code=403
        )
    return credential


def alerts_enabled(request: Request) -> bool:
    """Whether this gateway has alerts to show: its engine's, or in scale mode the workers'."""
    return request.app.state.alerts is not None or request.app.state.shared_alerts is not None


def firing_alerts(request: Request, credential: Credential) -> int:
    """Firing alerts the person can see: the number in the top bar's Alerts link."""
    engine: AlertEngine | None = request.app.state.alerts
    if engine is not None:
        alerts: Iterable[Alert] = engine.alerts.values()
    elif request.app.state.shared_alerts is not None:
        # Scale mode: the workers evaluate; the store has what they found.
        alerts = request.app.state.store.load_alerts()
    else:
        return 0
    envs = credential.readable_envs()
    firing = (alert for alert in alerts if alert.state == "firing")
    return sum(1 for alert in firing if envs is None or alert.env in envs)


def render(
    request: Request,
    template: str,
    credential: Credential,
    context: dict[str, Any],
    *,
    nav: str = "",
    status_code: int = 200,
) -> Response:
    """A page (or fragment) with what every template may use: who is signed in and what they may do."""
    return templates.TemplateResponse(
        request,
        template,
        {
            "credential": credential,
            # can("operator", env): whether to show a button; the API decides again when it is pressed.
            "can": credential.has_role,
            "nav": nav,
            "firing": firing_alerts(request, credential),
            "now": time.time(),
            **context,
        },
        status_code=status_code,
    )


def error_page(request: Request, credential: Credential, message: str, status_code: int) -> Response:
    return render(request, "error.html", credential, {"message": message}, status_code=status_code)


def api_message(exc: HTTPException) -> str:
    """The message of an API error (``ApiError`` carries {"code", "message"})."""
    detail = exc.detail
    if isinstance(detail, dict):
        return str(detail.get("message", detail))
    return str(detail)


async def api_json(response: Awaitable[Response]) -> Any:
    """The body of a JSON API route called as a function (the route's own checks and filters apply)."""
    return msgspec.json.decode(bytes((await response).body))
