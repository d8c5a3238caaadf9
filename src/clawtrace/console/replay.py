"""The reasoning replay: one session as a timeline of steps, walked forward and back.

A step is one turn of the agent's loop: its thoughts, the LLM call(s) they
led to, the tool call that followed, the policy decision about it and the
result, with the log lines written meanwhile. The steps are built here, from
the stored events in order; the page walks them with the keyboard
(``static/replay.js``). Alerts that fired during the session are markers on
the timeline, with a jump to the step just before each.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from clawtrace.access import Credential
from clawtrace.console.agent import readable_agent
from clawtrace.console.formatting import iso_to_epoch
from clawtrace.console.pages import alerts_enabled, api_json, error_page, render
from clawtrace.gateway import alerts_api
from clawtrace.store import EventQuery, SessionRecord, Store

router = APIRouter(include_in_schema=False)

# Events per page of a long session; a page is cut at a step boundary.
PAGE_EVENTS = 2_000
# How far before an alert the page that jumps to it starts, in events.
EVENTS_BEFORE_ALERT = 1_500
# An alert this long after the session's last event may still be about it (a dead agent, say).
ALERT_GRACE_SECONDS = 120.0

Event = dict[str, Any]
# How the timeline names each kind of a step's chain (short, so a whole chain fits its column).
SHORT_KINDS = {
    "thought": "thought",
    "llm_call": "LLM",
    "tool_call": "tool",
    "tool_result": "result",
    "policy": "policy",
    "lifecycle": "lifecycle",
}


@dataclass(slots=True)
class Step:
    index: int
    events: list[Event] = field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0
    thought: str | None = None
    llm_ms: float = 0.0
    tool_ms: float = 0.0
    tokens: int = 0
    cost_usd: float | None = None
    tool: str | None = None
    ok: bool | None = None
    denied: bool = False

    @property
    def kinds(self) -> list[str]:
        """The step's reasoning kinds in order, repeats folded: thought, llm_call, tool_call, ..."""
        out: list[str] = []
        for event in self.events:
            kind = event["kind"]
            if kind in ("log", "heartbeat") or (out and out[-1] == kind):
                continue
            out.append(kind)
        return out

    @property
    def wall_ms(self) -> float:
        """Agent clock time from the step's first event to its last."""
        return max(0.0, (self.ended - self.started) * 1000)

    def has(self, *kinds: str) -> bool:
        return any(event["kind"] in kinds for event in self.events)

    def add(self, event: Event, at: float) -> None:
        if not self.events:
            self.started = at
        self.events.append(event)
        self.ended = max(self.ended, at)
        kind = event["kind"]
        if kind == "thought" and self.thought is None:
            self.thought = event.get("text")
        elif kind == "llm_call":
            self.llm_ms += float(event.get("duration_ms") or 0)
            self.tokens += int(event.get("input_tokens") or 0) + int(event.get("output_tokens") or 0)
            if event.get("cost_usd") is not None:
                self.cost_usd = (self.cost_usd or 0.0) + float(event["cost_usd"])
        elif kind == "tool_call":
            self.tool = event.get("tool")
        elif kind == "tool_result":
            self.tool_ms += float(event.get("duration_ms") or 0)
            self.ok = bool(event.get("ok"))
        elif kind == "policy" and event.get("decision") == "deny":
            self.denied = True


def starts_new_step(step: Step, kind: str) -> bool:
    """Whether an event of ``kind`` opens the next step rather than continuing ``step``."""
    if not step.events:
        return False
    if kind == "thought":
        # Thoughts in a row are one step; a thought after the LLM or a tool is the next turn.
        return step.has("llm_call", "tool_call", "tool_result")
    if kind == "llm_call":
        return step.has("tool_call", "tool_result")
    if kind == "tool_call":
        return step.has("tool_call")
    # Results, decisions, logs and lifecycle events belong to the turn in progress.
    return False


def build_steps(events: Iterable[Event]) -> tuple[list[Step], int]:
    """(the steps, how many heartbeats were left out) from a session's events in seq order."""
    steps: list[Step] = []
    heartbeats = 0
    current = Step(index=0)
    for event in events:
        kind = event["kind"]
        if kind == "heartbeat":
            heartbeats += 1
            continue
        if starts_new_step(current, kind):
            steps.append(current)
            current = Step(index=len(steps))
        current.add(event, iso_to_epoch(event["ts"]))
    if current.events:
        steps.append(current)
    return steps, heartbeats


@dataclass(frozen=True, slots=True)
class AlertMarker:
    rule: str
    fired_at: float
    value: float | None
    # The last step that started before the alert fired (None: it fired before the page's first step).
    step_before: int | None


def alert_markers(firings: Iterable[tuple[str, float, float | None]], steps: list[Step]) -> list[AlertMarker]:
    """Place each (rule, fired at, value) on the timeline: the step just before it."""
    out = []
    for rule, fired_at, value in sorted(firings, key=lambda firing: firing[1]):
        before = [step.index for step in steps if step.started <= fired_at]
        out.append(AlertMarker(rule, fired_at, value, before[-1] if before else None))
    return out


async def session_firings(
    request: Request, credential: Credential, agent: str, session: SessionRecord
) -> list[tuple[str, float, float | None]]:
    """(rule, fired at, value) of the agent's alerts that fired while the session ran."""
    if not alerts_enabled(request):
        return []
    history = alerts_api.alert_history(request, credential, agent=agent, since=session.started, limit=500)
    transitions = (await api_json(history))["transitions"]
    end = session.last_ts + ALERT_GRACE_SECONDS
    firings = {
        (t["rule"], t["ts"], t["value"])
        for t in transitions
        if t["to_state"] == "firing" and session.started <= t["ts"] <= end
    }
    return sorted(firings, key=lambda firing: firing[1])


def session_at(sessions: list[SessionRecord], moment: float | None) -> SessionRecord:
    """The session running at ``moment`` (or the last one started before it); the latest without one."""
    if moment is None:
        return sessions[-1]
    started = [s for s in sessions if s.started <= moment]
    running = [s for s in started if moment <= s.last_ts + ALERT_GRACE_SECONDS]
    return (running or started or sessions)[-1]


async def first_seq_at(store: Store, agent: str, session: str, moment: float) -> int | None:
    """The seq of the session's first event at or after ``moment`` (agent clock)."""
    rows = await run_in_threadpool(
        store.query_events, EventQuery(agent=agent, session=session, since=moment, limit=1)
    )
    return rows[0][0] if rows else None


@router.get("/agents/{agent}/replay", response_class=HTMLResponse)
async def replay_page(
    request: Request, agent: str, session: str = "", after_seq: int = 0, at: float | None = None
) -> Response:
    """``session``'s steps from ``after_seq``; ``at`` (epoch seconds) opens the page holding that moment."""
    readable = await readable_agent(request, agent)
    if isinstance(readable, Response):
        return readable
    credential, record = readable
    store: Store = request.app.state.store
    sessions = await run_in_threadpool(store.list_sessions, agent)
    if not session and sessions:
        session = session_at(sessions, at).session
    if not sessions:
        message = f"Agent {agent!r} has sent no events yet, so there is nothing to replay."
        return error_page(request, credential, message, 404)
    found = next((s for s in sessions if s.session == session), None)
    if found is None:
        return error_page(
            request,
            credential,
            f"Agent {agent!r} has no session {session!r}. Pick one from the agent page's session list.",
            404,
        )
    if at is not None:
        seq = await first_seq_at(store, agent, session, at)
        anchor = found.last_seq if seq is None else seq
        after_seq = max(found.first_seq - 1, anchor - EVENTS_BEFORE_ALERT)
    after_seq = max(after_seq, found.first_seq - 1)
    rows = await run_in_threadpool(
        store.query_events, EventQuery(agent=agent, session=session, after_seq=after_seq, limit=PAGE_EVENTS)
    )
    events: list[Event] = [msgspec.json.decode(data) for _, data in rows]
    more = bool(rows) and rows[-1][0] < found.last_seq
    if more:
        # Cut at the last step boundary so that no step is split across pages.
        steps, _ = build_steps(events)
        if len(steps) > 1:
            last = steps[-1].events[0]["seq"]
            events = [e for e in events if e["seq"] < last]
    steps, heartbeats = build_steps(events)
    firings = await session_firings(request, credential, agent, found)
    context = {
        "record": record,
        "short_kinds": SHORT_KINDS,
        "session": found,
        "steps": steps,
        "heartbeats": heartbeats,
        "markers": alert_markers(firings, steps),
        "next_after_seq": events[-1]["seq"] if more and events else None,
        "previous_after_seq": max(found.first_seq - 1, after_seq - PAGE_EVENTS)
        if after_seq > found.first_seq - 1
        else None,
        "page_start": steps[0].started if steps else None,
        "page_end": steps[-1].ended if steps else None,
    }
    return render(request, "replay.html", credential, context, nav="fleet")
