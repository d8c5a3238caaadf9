"""The JSON API routes the console's pages call, authenticated by the console's cookie.

The JSON API takes its credential from the ``Authorization`` header, which a
page cannot send without holding the credential in JavaScript (the cookie is
HttpOnly so that it cannot). So each route the browser needs has a copy here
under ``/console/api/v1/`` that takes the credential from the cookie and then
calls the API route's own function: the same role checks, the same audit, the
same answers and errors. Nothing is decided here but who is asking.

State-changing requests are accepted from the console's own pages only: the
cookie is ``SameSite=Strict``, and a request whose ``Origin`` names another
site is refused.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from clawtrace.access import SESSION_COOKIE, Authenticator, AuthError, Credential
from clawtrace.gateway import alerts_api, api, envs_api, metrics_api, policy_api
from clawtrace.gateway.api import ApiError, require
from clawtrace.protocol import ErrorCode

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def cookie_credential(request: Request) -> Credential:
    """The console's credential (401 without one); a dependency, so it answers before any validation."""
    if request.method not in SAFE_METHODS:
        origin = request.headers.get("origin")
        if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
            raise ApiError(
                403,
                ErrorCode.FORBIDDEN,
                f"a request from {origin} may not act through the console: use the console's own pages",
            )
    auth: Authenticator = request.app.state.auth
    try:
        credential = auth.authenticate(request.cookies.get(SESSION_COOKIE))
    except AuthError as exc:
        raise ApiError(401, ErrorCode.UNAUTHORIZED, f"{exc}; log in to the console again") from None
    # The console is for people: an agent credential in the cookie may do nothing here.
    require(credential, "viewer")
    return credential


Console = Annotated[Credential, Depends(cookie_credential)]

router = APIRouter(prefix="/console/api/v1", include_in_schema=False)


@router.post("/agents/{agent}/commands", status_code=202)
async def send_command(request: Request, agent: str, credential: Console) -> Response:
    return await api.send_command(request, agent, credential)


@router.get("/agents/{agent}/events")
async def list_events(
    request: Request,
    agent: str,
    credential: Console,
    session: str | None = None,
    kind: Annotated[list[str] | None, Query()] = None,
    since: str | None = None,
    until: str | None = None,
    after_seq: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=api.MAX_PAGE)] = 500,
) -> Response:
    return await api.list_events(request, agent, credential, session, kind, since, until, after_seq, limit)


@router.get("/metrics")
async def metrics_series(
    request: Request,
    credential: Console,
    metric: Annotated[list[str], Query()],
    agent: str | None = None,
    env: str | None = None,
    region: str | None = None,
    since: str | None = None,
    until: str | None = None,
    step: Annotated[int, Query(ge=60)] = 60,
) -> Response:
    return await metrics_api.metrics_series(
        request, credential, metric, agent=agent, env=env, region=region, since=since, until=until, step=step
    )


@router.post("/alerts/{key:path}/ack")
async def acknowledge(request: Request, key: str, credential: Console) -> Response:
    return await alerts_api.acknowledge(request, key, credential)


@router.post("/silences", status_code=201)
async def create_silence(request: Request, credential: Console) -> Response:
    return await alerts_api.create_silence(request, credential)


@router.delete("/silences/{silence_id}")
async def expire_silence(request: Request, silence_id: str, credential: Console) -> Response:
    return await alerts_api.expire_silence(request, silence_id, credential)


@router.post("/approvals/{approval_id}")
async def answer_approval(request: Request, approval_id: str, credential: Console) -> Response:
    return await policy_api.answer_approval(request, approval_id, credential)


@router.post("/authorize")
async def authorize(request: Request, credential: Console) -> Response:
    """``POST /v1/authorize`` as a what-if (the "try a command" box): operators and admins."""
    return await policy_api.authorize(request, credential)


@router.post("/deployments", status_code=201)
async def deploy(request: Request, credential: Console) -> Response:
    """A release enters the first environment (operator there)."""
    return await envs_api.deploy(request, credential)


@router.post("/promotions", status_code=201)
async def promote(request: Request, credential: Console) -> Response:
    """Promote into the next environment (operator there), or only check the gates (``check``: viewer)."""
    return await envs_api.promote(request, credential)


@router.post("/promotions/approvals", status_code=201)
async def approve_promotion(request: Request, credential: Console) -> Response:
    """An admin's approval for a release to enter an environment that needs one."""
    return await envs_api.approve(request, credential)


@router.post("/rollbacks", status_code=201)
async def rollback(request: Request, credential: Console) -> Response:
    return await envs_api.rollback(request, credential)
