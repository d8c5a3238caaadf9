"""The metrics page: fleet, environment and region charts over a chosen time range.

The server decides which groups there are and which the person may chart
(a region spans every environment, so only a credential for every
environment can chart a region, or the fleet, as a whole); the browser
fetches each group's series from ``GET /api/v1/metrics`` through the
console's cookie-authenticated copy of it and draws them with uPlot.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from clawtrace.access import ALL_ENVS, Credential
from clawtrace.console.pages import render, signed_in
from clawtrace.store import Store

router = APIRouter(include_in_schema=False)

Compare = Literal["fleet", "env", "region", "env_region"]
COMPARE: dict[Compare, str] = {
    "fleet": "the whole fleet",
    "env": "environments",
    "region": "regions",
    "env_region": "environment \N{MULTIPLICATION SIGN} region",
}
# Preset ranges in seconds and their names; "custom" uses the since/until inputs.
RANGES: dict[str, str] = {"900": "15 minutes", "3600": "1 hour", "21600": "6 hours", "86400": "24 hours"}
RANGES_MORE: dict[str, str] = {"604800": "7 days", "custom": "custom…"}
DEFAULT_RANGE = "3600"


@dataclass(frozen=True, slots=True)
class ChartGroup:
    label: str
    # Query parameters of GET /api/v1/metrics that select the group (env, region).
    params: dict[str, str]


def chart_groups(
    compare: Compare, env: str, pairs: set[tuple[str, str]], credential: Credential
) -> list[ChartGroup]:
    """The lines to draw, each a scope the credential may read."""
    everywhere = credential.has_role("viewer", ALL_ENVS)
    if env:
        pairs = {(e, r) for e, r in pairs if e == env}
    if compare == "fleet":
        if env or not everywhere:
            name = env or credential.env
            return [ChartGroup(name, {"env": name})]
        return [ChartGroup("fleet", {})]
    if compare == "env":
        return [ChartGroup(e, {"env": e}) for e in sorted({e for e, _ in pairs})]
    if compare == "region" and (everywhere and not env):
        return [ChartGroup(r or "(no region)", {"region": r}) for r in sorted({r for _, r in pairs})]
    # A region within one environment (what a single-environment credential may read).
    return [ChartGroup(f"{e}/{r or '-'}", {"env": e, "region": r}) for e, r in sorted(pairs)]


def parse_local(value: str) -> float | None:
    """A datetime-local input's value, read as UTC (the console's clock), as epoch seconds."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@router.get("/charts", response_class=HTMLResponse)
async def charts_page(
    request: Request,
    compare: str = "env",
    env: str = "",
    range: str = DEFAULT_RANGE,
    since: str = "",
    until: str = "",
) -> Response:
    credential = signed_in(request)
    if isinstance(credential, Response):
        return credential
    problems: list[str] = []
    if compare not in COMPARE:
        problems.append(f"cannot compare {compare!r}; comparing environments")
        compare = "env"
    if range not in RANGES and range not in RANGES_MORE:
        problems.append(f"unknown range {range!r}; showing the last hour")
        range = DEFAULT_RANGE
    window: dict[str, Any] = {"seconds": None if range == "custom" else int(range)}
    if range == "custom":
        start, end = parse_local(since), parse_local(until)
        if start is None or end is None or start >= end:
            problems.append("a custom range needs a start before its end (UTC); showing the last hour")
            window = {"seconds": int(DEFAULT_RANGE)}
        else:
            window.update(since=start, until=end)
    store: Store = request.app.state.store
    records = await run_in_threadpool(store.list_agents, credential.readable_envs())
    pairs = {(r.env, r.region) for r in records}
    envs = sorted({e for e, _ in pairs})
    if env and env not in envs:
        problems.append(f"no agents in environment {env!r} that you can read; showing all")
        env = ""
    chosen = next(c for c in COMPARE if c == compare)  # the Literal the string names
    groups = chart_groups(chosen, env, pairs, credential)
    context = {
        "compare": compare,
        "compares": COMPARE,
        "env": env,
        "envs": envs,
        "range": range,
        "ranges": {**RANGES, **RANGES_MORE},
        "since": since,
        "until": until,
        "problems": problems,
        "chart_config": {
            "groups": [{"label": g.label, "params": g.params} for g in groups],
            "window": window,
        },
    }
    return render(request, "charts.html", credential, context, nav="metrics")
