"""The agent page: live numbers, charts, live tail, alerts, policy decisions and actions.

The live tail is the gateway's ``/api/v1/live`` WebSocket (it accepts the
console's cookie); actions go through the console's cookie-authenticated
copies of the JSON API routes (``actions.py``), so the API decides who may.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from clawtrace.access import Credential
from clawtrace.console.pages import alerts_enabled, api_json, error_page, render, signed_in
from clawtrace.gateway import alerts_api
from clawtrace.gateway.metrics_api import agent_row
from clawtrace.metrics.fleet import FleetRow
from clawtrace.protocol import KINDS
from clawtrace.store import AgentRecord, EventQuery, QuarantineRecord, Store

router = APIRouter(include_in_schema=False)

# Events shown when the page opens; the live tail continues from the last of them.
INITIAL_EVENTS = 200
RECENT_DECISIONS = 30
RECENT_ACTIONS = 15
RECENT_TRANSITIONS = 20
SESSIONS_SHOWN = 50
# Kinds the tail shows unless unticked; heartbeats are ticked off (one every few seconds is noise).
TAIL_KINDS_OFF = ("heartbeat",)


@dataclass(frozen=True, slots=True)
class AgentContext:
    record: AgentRecord
    row: FleetRow
    quarantine: QuarantineRecord | None


async def readable_agent(request: Request, agent: str) -> tuple[Credential, AgentRecord] | Response:
    """The signed-in person and the agent a page is about; the login or a 404 page otherwise."""
    credential = signed_in(request)
    if isinstance(credential, Response):
        return credential
    store: Store = request.app.state.store
    record = await run_in_threadpool(store.get_agent, agent)
    # An agent of an environment the person cannot read does not exist for them (as in the API).
    if record is None or not credential.covers_env(record.env):
        return error_page(
            request,
            credential,
            f"No agent {agent!r} in the environments you can read. Check the id on the fleet page.",
            404,
        )
    return credential, record


async def live_panel(request: Request, credential: Credential, record: AgentRecord) -> dict[str, Any]:
    """What the page's live side panel shows: numbers, alerts, recent decisions and actions."""
    agent = record.agent
    alerts: list[dict[str, Any]] = []
    transitions: list[dict[str, Any]] = []
    enabled = alerts_enabled(request)
    if enabled:
        listed = await api_json(alerts_api.list_alerts(request, credential, state="all", agent=agent))
        alerts = listed["alerts"]
        history = alerts_api.alert_history(request, credential, agent=agent, limit=RECENT_TRANSITIONS)
        transitions = (await api_json(history))["transitions"]
    decisions = await api_json(
        alerts_api.audit_log(request, credential, target=agent, action="policy", limit=RECENT_DECISIONS)
    )
    audit = await api_json(alerts_api.audit_log(request, credential, target=agent, limit=60))
    # The audit minus policy decisions (listed apart) and refusals (about a person, not the agent).
    actions = [e for e in audit["entries"] if e["action"] not in ("policy", "refused")]
    return {
        "agent": AgentContext(
            record, agent_row(request, record), request.app.state.commands.quarantined.get(agent)
        ),
        "alerts": alerts,
        "alerts_enabled": enabled,
        "transitions": transitions,
        "decisions": decisions["entries"],
        "actions": actions[:RECENT_ACTIONS],
    }


@router.get("/agents/{agent}", response_class=HTMLResponse)
async def agent_page(request: Request, agent: str) -> Response:
    readable = await readable_agent(request, agent)
    if isinstance(readable, Response):
        return readable
    credential, record = readable
    store: Store = request.app.state.store
    sessions = await run_in_threadpool(store.list_sessions, agent)
    rows = await run_in_threadpool(
        store.query_events,
        EventQuery(agent=agent, after_seq=max(0, record.last_seq - INITIAL_EVENTS), limit=INITIAL_EVENTS),
    )
    context = await live_panel(request, credential, record)
    context.update(
        sessions=list(reversed(sessions))[:SESSIONS_SHOWN],
        session_count=len(sessions),
        events=[msgspec.json.decode(data) for _, data in rows],
        kinds=KINDS,
        kinds_off=TAIL_KINDS_OFF,
    )
    return render(request, "agent.html", credential, context, nav="fleet")


@router.get("/agents/{agent}/panel", response_class=HTMLResponse)
async def agent_panel(request: Request, agent: str) -> Response:
    """The live side panel of the agent page; htmx swaps it in every few seconds."""
    readable = await readable_agent(request, agent)
    if isinstance(readable, Response):
        return readable
    credential, record = readable
    return render(request, "agent_panel.html", credential, await live_panel(request, credential, record))
