"""The alerts page: what is firing and pending, silences, history, and the rules in force.

Everything comes from the alerts API's own route functions; the live part
(``/alerts/live``) is fetched again by htmx every few seconds. Silencing,
expiring a silence and acknowledging are buttons for operators, sent to
the console's copies of the API routes.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.exceptions import HTTPException

from clawtrace.access import Credential
from clawtrace.console.pages import api_json, api_message, render, signed_in
from clawtrace.gateway import alerts_api

router = APIRouter(include_in_schema=False)

HISTORY_ROWS = 100
STATE_ORDER = {"firing": 0, "pending": 1, "resolved": 2, "inactive": 3}
# Silence lengths offered, in seconds (the API takes up to 90 days).
SILENCE_DURATIONS = {
    "3600": "1 hour",
    "7200": "2 hours",
    "14400": "4 hours",
    "43200": "12 hours",
    "86400": "1 day",
}


def rule_state(rule: dict[str, Any]) -> str:
    """One word for a rule's row: firing, pending, ok, or disabled."""
    if not rule["enabled"]:
        return "disabled"
    counts = rule["alerts"]
    if counts["firing"]:
        return "firing"
    return "pending" if counts["pending"] else "ok"


async def alerts_view(request: Request, credential: Credential, env: str) -> dict[str, Any]:
    """The live part of the page, or {"problem": ...} when the gateway has no alert engine."""
    scope = env or None
    try:
        listed = await api_json(alerts_api.list_alerts(request, credential, env=scope, state="all"))
        rules = await api_json(alerts_api.list_rules(request, credential, env=scope))
    except HTTPException as exc:
        return {"problem": api_message(exc)}
    alerts = listed["alerts"]
    silences = (await api_json(alerts_api.list_silences(request, credential)))["silences"]
    history = await api_json(alerts_api.alert_history(request, credential, env=scope, limit=HISTORY_ROWS))
    alerts.sort(key=lambda a: (STATE_ORDER.get(a["state"], 9), -(a["fired_at"] or a["active_since"] or 0)))
    for environment in rules["environments"]:
        for rule in environment["rules"]:
            rule["state"] = rule_state(rule)
    return {
        "problem": None,
        "alerts": alerts,
        "silences": [s for s in silences if not env or s["env"] in (env, None)],
        "transitions": history["transitions"],
        "rule_envs": rules["environments"],
    }


def readable_env(request: Request, credential: Credential) -> str:
    """The ?env= filter, if the person may read it (otherwise every environment they can)."""
    env = request.query_params.get("env", "")
    return env if env and credential.covers_env(env) else ""


@router.get("/alerts", response_class=HTMLResponse)
async def alerts_page(request: Request) -> Response:
    credential = signed_in(request)
    if isinstance(credential, Response):
        return credential
    env = readable_env(request, credential)
    context = await alerts_view(request, credential, env)
    envs = sorted({e["env"] for e in context.get("rule_envs", [])})
    context.update(env=env, envs=envs, durations=SILENCE_DURATIONS)
    return render(request, "alerts.html", credential, context, nav="alerts")


@router.get("/alerts/live", response_class=HTMLResponse)
async def alerts_live(request: Request) -> Response:
    credential = signed_in(request)
    if isinstance(credential, Response):
        return credential
    env = readable_env(request, credential)
    context = await alerts_view(request, credential, env)
    context["env"] = env
    return render(request, "alerts_live.html", credential, context)
