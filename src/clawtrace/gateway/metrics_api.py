"""Metrics routes: ``/api/v1/fleet``, ``/api/v1/metrics`` and Prometheus ``/metrics``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from clawtrace.access import ALL_ENVS, AuthError, PermissionDenied
from clawtrace.gateway.agent_socket import bearer_token
from clawtrace.gateway.api import ApiError, Viewer_, _parse_time, json_response, require
from clawtrace.metrics.buckets import Bucket
from clawtrace.metrics.fleet import SORT_KEYS, STATUSES, FleetRow, fleet_rows, sort_rows, totals
from clawtrace.metrics.prometheus import FleetCollector
from clawtrace.metrics.query import CHART_METRICS, series
from clawtrace.metrics.scopes import scope_for
from clawtrace.metrics.stage import MetricsStage
from clawtrace.protocol import ErrorCode
from clawtrace.store import AgentRecord, Store

router = APIRouter()


async def current_fleet(
    request: Request, envs: list[str] | None
) -> tuple[list[FleetRow], list[Bucket], float]:
    """Rows for every agent in ``envs`` (None: all); computed on the event loop,
    which owns the metrics state."""
    stage: MetricsStage = request.app.state.metrics
    store: Store = request.app.state.store
    records = await run_in_threadpool(store.list_agents, envs)
    now = stage.clock()
    quarantined = request.app.state.commands.quarantined
    rows, windows = fleet_rows(stage, records, _connected(request, records), now, quarantined)
    return rows, windows, now


def _connected(request: Request, records: list[AgentRecord]) -> set[str]:
    """Agents connected here and, in scale mode, to other gateways (as the registry has it)."""
    pipeline = request.app.state.pipeline
    here = {agent for agent, state in pipeline.agents.items() if state.link is not None}
    if request.app.state.scale is None:
        return here
    return here | {record.agent for record in records if record.connected}


def agent_row(request: Request, record: AgentRecord) -> FleetRow:
    """The live numbers of one agent (what its row in the fleet view shows)."""
    stage: MetricsStage = request.app.state.metrics
    quarantined = request.app.state.commands.quarantined
    rows, _ = fleet_rows(stage, [record], _connected(request, [record]), stage.clock(), quarantined)
    return rows[0]


@router.get("/api/v1/fleet")
async def fleet(
    request: Request,
    credential: Viewer_,
    agent: str | None = None,
    env: str | None = None,
    region: str | None = None,
    status: str | None = None,
    label: str | None = None,
    q: str | None = None,
    sort: str = "agent",
    order: str = "asc",
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1_000,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> Response:
    envs = credential.readable_envs()
    if env is not None:
        require(credential, "viewer", env)
        envs = [env]
    if status is not None and status not in STATUSES:
        raise ApiError(400, "invalid_parameter", f"status must be one of {', '.join(STATUSES)}")
    if sort not in SORT_KEYS:
        raise ApiError(400, "invalid_parameter", f"sort must be one of {', '.join(SORT_KEYS)}")
    if order not in ("asc", "desc"):
        raise ApiError(400, "invalid_parameter", "order must be asc or desc")
    label_key, _, label_value = (label or "").partition("=")
    rows, windows, now = await current_fleet(request, envs)
    selected = [
        (row, window)
        for row, window in zip(rows, windows, strict=True)
        if (agent is None or row.agent == agent)
        and (region is None or row.region == region)
        and (status is None or row.status == status)
        and (not label or row.labels.get(label_key) == label_value)
        and (not q or q.lower() in row.agent.lower())
    ]
    stage: MetricsStage = request.app.state.metrics
    summary = totals(
        [row for row, _ in selected], [w for _, w in selected], now, stage.settings.window_seconds
    )
    ordered = sort_rows([row for row, _ in selected], sort, order == "desc")
    return json_response(
        {
            "agents": ordered[offset : offset + limit],
            "total": len(ordered),
            "totals": summary,
            "window_seconds": stage.settings.window_seconds,
            "at": now,
        }
    )


@router.get("/api/v1/metrics")
async def metrics_series(
    request: Request,
    credential: Viewer_,
    metric: Annotated[list[str], Query()],
    agent: str | None = None,
    env: str | None = None,
    region: str | None = None,
    label: str | None = None,
    since: str | None = None,
    until: str | None = None,
    step: Annotated[int, Query(ge=60)] = 60,
) -> Response:
    names = [name for value in metric for name in value.split(",") if name]
    unknown = [name for name in names if name not in CHART_METRICS]
    if unknown or not names:
        raise ApiError(400, "invalid_parameter", f"metric must be among {', '.join(CHART_METRICS)}")
    if step % 60:
        raise ApiError(400, "invalid_parameter", "step must be a multiple of 60 seconds")
    if label and agent is None and (env or region):
        # Label rollups span every environment and region; they cannot be narrowed.
        raise ApiError(400, "invalid_parameter", "label cannot be combined with env or region")
    stage: MetricsStage = request.app.state.metrics
    store: Store = request.app.state.store
    if agent is not None:
        record = await run_in_threadpool(store.get_agent, agent)
        if record is None or not credential.covers_env(record.env):
            raise ApiError(
                404, "not_found", f"no agent {agent!r} (in the environments this credential can read)"
            )
    elif env is not None:
        require(credential, "viewer", env)
    else:
        # Without env= the series spans every environment (a region's or a label's too).
        try:
            credential.require("viewer", ALL_ENVS)
        except PermissionDenied as exc:
            # Label rollups cannot be narrowed to an environment; the others can.
            readable = "|".join(credential.readable_envs() or ())
            narrow = "" if label else f", or narrow the query with env={readable}"
            raise ApiError(403, ErrorCode.FORBIDDEN, f"{exc}{narrow}") from None
    try:
        scope = scope_for(agent=agent, env=env, region=region, label=label)
    except ValueError as exc:
        raise ApiError(400, "invalid_parameter", str(exc)) from None
    now = stage.clock()
    until_s = _parse_time(until, "until")
    until_s = now if until_s is None else until_s
    since_s = _parse_time(since, "since")
    since_s = until_s - 3600 if since_s is None else since_s
    if since_s >= until_s:
        raise ApiError(400, "invalid_parameter", "since must be before until")
    stored = await run_in_threadpool(store.query_rollups, scope, int(since_s // 60), int(until_s // 60))
    members = [agent] if agent else stage.agents_in(env=env, region=region, label=label)
    try:
        result = series(names, scope, stored, stage.open_buckets(members), since_s, until_s, step)
    except ValueError as exc:
        raise ApiError(400, "invalid_parameter", str(exc)) from None
    return json_response({"series": result})


@router.get("/metrics", include_in_schema=False)
async def prometheus(request: Request) -> Response:
    envs: list[str] | None = None
    if request.app.state.settings.metrics_auth:
        try:
            credential = request.app.state.auth.authenticate(bearer_token(request.headers))
        except AuthError as exc:
            raise ApiError(401, ErrorCode.UNAUTHORIZED, f"{exc} (or set metrics_auth = false)") from None
        require(credential, "viewer")
        # A credential for one environment scrapes that environment's series only.
        envs = credential.readable_envs()
    rows, _, _ = await current_fleet(request, envs)
    collector: FleetCollector = request.app.state.prometheus_collector
    collector.rows = rows
    collector.envs = None if envs is None else frozenset(envs)
    return Response(generate_latest(request.app.state.prometheus_registry), media_type=CONTENT_TYPE_LATEST)
