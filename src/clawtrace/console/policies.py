"""The policies and audit page: bundles per environment, approvals, denials, the audit log,
and a "try a command" box.

The data is what the policy and audit API routes answer (their functions are
called directly). Pending approvals are a live fragment; approving, rejecting
and trying a command go to the console's copies of the API routes, which an
operator may use and a viewer may not.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from clawtrace.access import Credential
from clawtrace.console.pages import api_json, api_message, render, signed_in
from clawtrace.gateway import alerts_api, policy_api
from clawtrace.policy.bundle import DEFAULT_SHELL_TOOLS
from clawtrace.store import Store

router = APIRouter(include_in_schema=False)

DENIALS_SHOWN = 50
AUDIT_SHOWN = 100
APPROVALS_SHOWN = 100
HISTORY_SHOWN = 5
# Audit actions offered in the filter (policy decisions have their own table above it).
AUDIT_ACTIONS = (
    "restart", "stop", "quarantine", "release", "silence", "unsilence", "acknowledge", "approve", "reject",
    "apply_policy", "rollback_policy", "replace_rules", "policy", "refused",
)  # fmt: skip


def requested_env(request: Request, credential: Credential) -> str:
    env = request.query_params.get("env", "")
    return env if env and credential.covers_env(env) else ""


async def bundles(request: Request, credential: Credential, env: str) -> list[dict[str, Any]]:
    """Each environment's active bundle (files, settings) with its recent history."""
    listed = (await api_json(policy_api.list_policies(request, credential)))["environments"]
    out = []
    for entry in listed:
        if env and entry["env"] != env:
            continue
        view = policy_api.get_policy(request, entry["env"], credential, history=HISTORY_SHOWN)
        out.append(await api_json(view))
    return out


async def pending_approvals(request: Request, credential: Credential, env: str) -> dict[str, Any]:
    try:
        listed = policy_api.list_approvals(
            request, credential, env=env or None, state="pending", limit=APPROVALS_SHOWN
        )
        body = await api_json(listed)
    except HTTPException as exc:
        return {"approvals": [], "approvals_problem": api_message(exc)}
    return {"approvals": body["approvals"], "approvals_problem": None}


def shell_tools(bundle_views: list[dict[str, Any]]) -> dict[str, str]:
    """Tool name -> the argument holding its command, over every bundle shown (for the try box)."""
    tools = dict(DEFAULT_SHELL_TOOLS)
    for view in bundle_views:
        active = view.get("active") or {}
        tools.update(active.get("settings", {}).get("shell_tools", {}))
    return tools


@router.get("/policies", response_class=HTMLResponse)
async def policies_page(request: Request) -> Response:
    credential = signed_in(request)
    if isinstance(credential, Response):
        return credential
    env = requested_env(request, credential)
    action = request.query_params.get("action", "")
    if action not in AUDIT_ACTIONS:
        action = ""
    views = await bundles(request, credential, env)
    scope = env or None
    denials = await api_json(
        alerts_api.audit_log(request, credential, env=scope, decision="deny", limit=DENIALS_SHOWN)
    )
    audit = await api_json(
        alerts_api.audit_log(request, credential, env=scope, action=action or None, limit=AUDIT_SHOWN)
    )
    store: Store = request.app.state.store
    records = await run_in_threadpool(store.list_agents, [env] if env else credential.readable_envs())
    context: dict[str, Any] = {
        "env": env,
        "envs": sorted({r.env for r in records} | {v["env"] for v in views}),
        "bundles": views,
        "denials": denials["entries"],
        "audit": audit["entries"],
        "action": action,
        "actions": AUDIT_ACTIONS,
        "agents": sorted(r.agent for r in records),
        "shell_tools": shell_tools(views),
    }
    context.update(await pending_approvals(request, credential, env))
    return render(request, "policies.html", credential, context, nav="policies")


@router.get("/policies/approvals", response_class=HTMLResponse)
async def approvals_fragment(request: Request) -> Response:
    """Pending approvals; htmx fetches them again every few seconds."""
    credential = signed_in(request)
    if isinstance(credential, Response):
        return credential
    context = await pending_approvals(request, credential, requested_env(request, credential))
    return render(request, "approvals.html", credential, context)
