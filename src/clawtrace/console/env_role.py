"""One role in one environment: the release in force, its rollout agent by agent, and its history.

What ``GET /api/v1/envs/{env}/roles/{role}`` answers (its function is
called, so a person who cannot read the environment gets the API's refusal).
The live part is a fragment htmx fetches again every few seconds; rolling
back goes through the console's copy of ``POST /api/v1/rollbacks``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.exceptions import HTTPException

from clawtrace.access import Credential
from clawtrace.console.pages import api_json, api_message, error_page, render, signed_in
from clawtrace.gateway import envs_api

router = APIRouter(include_in_schema=False)

REFRESH_SECONDS = 5


def rollback_targets(status: dict[str, Any]) -> set[int]:
    """History rows offered as "roll back to": the newest row of each release other than the current one.

    Any release that ran here may be rolled back to (``"to"``), even one that was itself rolled back.
    """
    current = status["deployment"]["release"] if status["deployment"] else None
    seen: set[str] = set()
    rows: set[int] = set()
    for entry in status["history"]:
        if entry["release"] == current or entry["release"] in seen:
            continue
        seen.add(entry["release"])
        rows.add(entry["id"])
    return rows


async def role_view(
    request: Request, credential: Credential, env: str, role: str
) -> dict[str, Any] | Response:
    try:
        status = await api_json(envs_api.role_status(request, env, role, credential))
    except HTTPException as exc:
        return error_page(request, credential, api_message(exc), exc.status_code)
    return {
        "env": env,
        "role": role,
        "status": status,
        "rollback_targets": rollback_targets(status),
        "refresh_seconds": REFRESH_SECONDS,
    }


@router.get("/envs/{env}/roles/{role}", response_class=HTMLResponse)
async def role_page(request: Request, env: str, role: str) -> Response:
    credential = signed_in(request)
    if isinstance(credential, Response):
        return credential
    context = await role_view(request, credential, env, role)
    if isinstance(context, Response):
        return context
    return render(request, "env_role.html", credential, context, nav="envs")


@router.get("/envs/{env}/roles/{role}/live", response_class=HTMLResponse)
async def role_fragment(request: Request, env: str, role: str) -> Response:
    credential = signed_in(request)
    if isinstance(credential, Response):
        return credential
    context = await role_view(request, credential, env, role)
    if isinstance(context, Response):
        return context
    return render(request, "env_role_live.html", credential, context)
