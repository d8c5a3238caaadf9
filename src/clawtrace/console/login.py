"""Logging in and out: an API credential, kept in an HttpOnly cookie."""

from __future__ import annotations

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from clawtrace.access import SESSION_COOKIE, Authenticator, AuthError, PermissionDenied
from clawtrace.console.pages import templates

COOKIE_MAX_AGE_SECONDS = 7 * 86400

router = APIRouter(include_in_schema=False)


def safe_next(target: str) -> str:
    """Where to go after logging in: a path on this site only (no //host or /\\host)."""
    if target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return "/"


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, token: str | None = None, next: str = "/") -> Response:
    if token:
        # `clawtrace demo` prints a /login?token=... link: one click from the terminal.
        return await login(request, token=token, next=next)
    return templates.TemplateResponse(request, "login.html", {"next": safe_next(next), "error": None})


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request, token: str = Form(...), next: str = Form("/")) -> Response:
    auth: Authenticator = request.app.state.auth
    plain = token.strip()
    try:
        credential = auth.authenticate(plain)
        credential.require("viewer")
    except (AuthError, PermissionDenied) as exc:
        return templates.TemplateResponse(
            request, "login.html", {"next": safe_next(next), "error": str(exc)}, status_code=401
        )
    response = RedirectResponse(safe_next(next), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        plain,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        max_age=COOKIE_MAX_AGE_SECONDS,
    )
    return response


@router.post("/logout")
async def logout() -> Response:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response
