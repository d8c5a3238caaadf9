"""The fleet view: one row of live numbers per agent, with status and totals."""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Sequence
from typing import Any, Literal

import msgspec

from clawtrace.metrics.agent import AgentMetrics, WindowNumbers, window_numbers
from clawtrace.metrics.buckets import Bucket, merged
from clawtrace.metrics.stage import MetricsStage
from clawtrace.store import AgentRecord

Status = Literal["healthy", "degraded", "dead", "quarantined"]
STATUSES: tuple[Status, ...] = ("healthy", "degraded", "dead", "quarantined")

# Defaults of the checklist: a heartbeat older than this is a dead node, ...
DEAD_AFTER_SECONDS = 45.0
# ... and these make an agent "degraded" (see docs/metrics.md).
DEGRADED_CONSECUTIVE_FAILURES = 5
DEGRADED_SUCCESS_RATE = 0.8
DEGRADED_MIN_RESULTS = 10
TOKENS_PER_ACTION_WARNING = 1_000


class FleetRow(msgspec.Struct, kw_only=True):
    agent: str
    env: str
    region: str
    labels: dict[str, str]
    release: str | None
    status: Status
    connected: bool
    heartbeat_age_s: float | None
    cpu_percent: float | None
    rss_bytes: int | None
    events_per_s: float
    error_lines_per_s: float
    tool_calls: int
    tool_success_rate: float | None
    consecutive_failures: int
    tokens_per_action: float | None
    reasoning_latency_p50_ms: float | None
    reasoning_latency_p95_ms: float | None
    reasoning_latency_max_ms: float | None
    cost_usd_last_hour: float
    cost_usd_per_hour_rate: float
    restarts_last_hour: int
    restarts_total: int
    unpriced_llm_calls: int


class FleetTotals(msgspec.Struct, kw_only=True):
    agents: int
    by_status: dict[str, int]
    events_per_s: float
    error_lines_per_s: float
    tool_calls: int
    tool_success_rate: float | None
    tokens_per_action: float | None
    reasoning_latency_p95_ms: float | None
    cost_usd_last_hour: float
    cost_usd_per_hour_rate: float


SORT_KEYS = (
    "agent",
    "status",
    "cost",
    "cost_rate",
    "failures",
    "success",
    "latency",
    "heartbeat",
    "events",
    "errors",
    "tokens",
    "cpu",
    "rss",
)


def window_seconds(now: float, window: float) -> tuple[int, float]:
    """(first minute of the window, seconds it covers): whole minutes plus the current one."""
    whole = max(1, math.ceil(window / 60)) - 1
    current = int(now // 60)
    return current - whole, whole * 60 + (now - current * 60) or 1.0


def status_of(
    record: AgentRecord,
    metrics: AgentMetrics | None,
    numbers: WindowNumbers,
    now: float,
    quarantined: bool = False,
) -> tuple[Status, float | None]:
    last_sign = record.last_heartbeat or (metrics.last_heartbeat if metrics else None)
    heartbeat_age = None if last_sign is None else max(0.0, now - last_sign)
    if quarantined:
        return "quarantined", heartbeat_age
    # Without any heartbeat (an agent that only posts events), the last event counts.
    alive_at = last_sign or record.last_event or record.last_connect or record.first_seen
    if now - alive_at > DEAD_AFTER_SECONDS:
        return "dead", heartbeat_age
    failures = metrics.consecutive_failures if metrics else 0
    rate = numbers.tool_success_rate
    if failures >= DEGRADED_CONSECUTIVE_FAILURES or (
        rate is not None and numbers.tool_results >= DEGRADED_MIN_RESULTS and rate < DEGRADED_SUCCESS_RATE
    ):
        return "degraded", heartbeat_age
    return "healthy", heartbeat_age


def fleet_rows(
    stage: MetricsStage,
    records: Iterable[AgentRecord],
    connected: set[str],
    now: float,
    quarantined: Collection[str] = (),
) -> tuple[list[FleetRow], list[Bucket]]:
    """A row per agent, and each agent's window bucket (for totals)."""
    first_minute, seconds = window_seconds(now, stage.settings.window_seconds)
    current_minute = int(now // 60)
    hour_start = current_minute - 59
    rows: list[FleetRow] = []
    windows: list[Bucket] = []
    for record in records:
        metrics = stage.agents.get(record.agent)
        if metrics is None:
            window, cost_hour, restarts_hour = Bucket(), 0.0, 0
        else:
            window, cost_hour, restarts_hour = metrics.live(first_minute, hour_start, current_minute)
        numbers = window_numbers(window, seconds)
        is_connected = record.agent in connected
        status, heartbeat_age = status_of(record, metrics, numbers, now, record.agent in quarantined)
        windows.append(window)
        rows.append(
            FleetRow(
                agent=record.agent,
                env=record.env,
                region=record.region,
                labels=record.labels,
                release=record.release,
                status=status,
                connected=is_connected,
                heartbeat_age_s=None if heartbeat_age is None else round(heartbeat_age, 3),
                cpu_percent=metrics.cpu_percent
                if metrics and metrics.cpu_percent is not None
                else record.cpu_percent,
                rss_bytes=metrics.rss_bytes
                if metrics and metrics.rss_bytes is not None
                else record.rss_bytes,
                events_per_s=numbers.events_per_s,
                error_lines_per_s=numbers.error_lines_per_s,
                tool_calls=numbers.tool_calls,
                tool_success_rate=numbers.tool_success_rate,
                consecutive_failures=metrics.consecutive_failures if metrics else 0,
                tokens_per_action=numbers.tokens_per_action,
                reasoning_latency_p50_ms=numbers.reasoning_latency_p50_ms,
                reasoning_latency_p95_ms=numbers.reasoning_latency_p95_ms,
                reasoning_latency_max_ms=numbers.reasoning_latency_max_ms,
                cost_usd_last_hour=cost_hour,
                cost_usd_per_hour_rate=numbers.cost_usd_per_hour_rate,
                restarts_last_hour=restarts_hour,
                restarts_total=metrics.restarts_total if metrics else 0,
                unpriced_llm_calls=numbers.unpriced_calls,
            )
        )
    return rows, windows


def totals(rows: Sequence[FleetRow], windows: Sequence[Bucket], now: float, window: float) -> FleetTotals:
    _, seconds = window_seconds(now, window)
    numbers = window_numbers(merged(windows), seconds)
    by_status: dict[str, int] = dict.fromkeys(STATUSES, 0)
    for row in rows:
        by_status[row.status] += 1
    return FleetTotals(
        agents=len(rows),
        by_status=by_status,
        events_per_s=numbers.events_per_s,
        error_lines_per_s=numbers.error_lines_per_s,
        tool_calls=numbers.tool_calls,
        tool_success_rate=numbers.tool_success_rate,
        tokens_per_action=numbers.tokens_per_action,
        reasoning_latency_p95_ms=numbers.reasoning_latency_p95_ms,
        cost_usd_last_hour=sum(row.cost_usd_last_hour for row in rows),
        cost_usd_per_hour_rate=sum(row.cost_usd_per_hour_rate for row in rows),
    )


def _sort_value(row: FleetRow, key: str) -> Any:
    values: dict[str, Any] = {
        "agent": row.agent,
        "status": STATUSES.index(row.status),
        "cost": row.cost_usd_last_hour,
        "cost_rate": row.cost_usd_per_hour_rate,
        "failures": row.consecutive_failures,
        "success": row.tool_success_rate,
        "latency": row.reasoning_latency_p95_ms,
        "heartbeat": row.heartbeat_age_s,
        "events": row.events_per_s,
        "errors": row.error_lines_per_s,
        "tokens": row.tokens_per_action,
        "cpu": row.cpu_percent,
        "rss": row.rss_bytes,
    }
    return values[key]


def sort_rows(rows: list[FleetRow], key: str, descending: bool) -> list[FleetRow]:
    """Sort by ``key``; agents without a value (None) always come last."""
    if key not in SORT_KEYS:
        raise ValueError(f"unknown sort key {key!r}; use one of {', '.join(SORT_KEYS)}")
    present = [r for r in rows if _sort_value(r, key) is not None]
    missing = [r for r in rows if _sort_value(r, key) is None]
    present.sort(key=lambda r: (_sort_value(r, key), r.agent), reverse=descending)
    return present + missing
