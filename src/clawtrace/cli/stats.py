"""``clawtrace stats``: one agent's (or one environment's) numbers now, and text
charts over the last hour."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import click
import httpx
from rich.console import Console
from rich.table import Table
from rich.text import Text

from clawtrace.cli.client import GatewayClient
from clawtrace.cli.options import gateway_options
from clawtrace.cli.top import (
    STATUS_STYLES,
    GatewayUnavailable,
    cost_rate_style,
    failures_style,
    fetch_json,
    fmt_age,
    fmt_bytes,
    fmt_cpu,
    fmt_latency,
    fmt_money,
    fmt_number,
    fmt_percent,
    fmt_tokens,
    fmt_window,
    parse_label,
    status_counts,
    success_style,
    tokens_style,
)
from clawtrace.metrics.fleet import DEGRADED_SUCCESS_RATE, TOKENS_PER_ACTION_WARNING

BARS = "▁▂▃▄▅▆▇█"
GAP = " "  # a step without data: no bar at all (no data is not zero)


@dataclass(frozen=True)
class ChartMetric:
    name: str  # as in /api/v1/metrics
    label: str
    fmt: Callable[[float | None], str]
    warn: Callable[[float], bool] | None = None  # bars drawn in the warning colour


def _per_s(value: float | None) -> str:
    return "-" if value is None else f"{fmt_number(value)}/s"


def _per_h(value: float | None) -> str:
    return "-" if value is None else f"{fmt_money(value)}/h"


CHARTS: tuple[ChartMetric, ...] = (
    ChartMetric("events_per_s", "events/s", _per_s),
    ChartMetric("tool_success_rate", "tool success", fmt_percent, lambda v: v < DEGRADED_SUCCESS_RATE),
    ChartMetric("tokens_per_action", "tokens/action", fmt_tokens, lambda v: v > TOKENS_PER_ACTION_WARNING),
    ChartMetric("reasoning_latency_p95_ms", "p95 think", fmt_latency),
    ChartMetric("cost_usd_per_hour", "cost/h", _per_h),
    ChartMetric("error_lines_per_s", "error lines/s", _per_s, lambda v: v > 0),
)

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# label, min value, the chart's frame, max value: what a row needs besides the bars.
_LABEL_WIDTH = 14
_VALUE_WIDTH = 9
_ROW_CHROME = _LABEL_WIDTH + 1 + _VALUE_WIDTH + 1 + 2 + 1 + _VALUE_WIDTH + 2


def parse_duration(text: str, option: str) -> float:
    """``90s``, ``30m``, ``1h``, ``2d`` or plain seconds."""
    value = text.strip().lower()
    unit = value[-1:]
    try:
        seconds = float(value[:-1]) * _DURATION_UNITS[unit] if unit in _DURATION_UNITS else float(value)
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not a duration like 90s, 30m, 1h or 2d", param_hint=option
        ) from None
    if not seconds > 0 or math.isinf(seconds):
        raise click.BadParameter(f"{text!r} must be a positive duration", param_hint=option)
    return seconds


def parse_moment(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not RFC 3339 (2026-01-31T03:02:00Z) or epoch seconds", param_hint="--until"
        ) from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def fmt_span(seconds: float) -> str:
    """``2d``, ``24h``, ``90 min``: days only from two days up."""
    for unit, size in (("d", 86400), ("h", 3600), (" min", 60)):
        if seconds >= size * (2 if unit == "d" else 1) and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return fmt_age(seconds)


# --- the chart ----------------------------------------------------------------


def columns(points: list[tuple[float, float | None]], width: int) -> list[float | None]:
    """At most ``width`` values: consecutive points averaged when there are too many
    (a column with no data in any of its points stays a gap)."""
    values = [value for _, value in points]
    if len(values) <= width:
        return values
    per = math.ceil(len(values) / width)
    out: list[float | None] = []
    for start in range(0, len(values), per):
        present = [v for v in values[start : start + per] if v is not None]
        out.append(sum(present) / len(present) if present else None)
    return out


def sparkline(values: list[float | None], warn: Callable[[float], bool] | None = None) -> Text:
    """One character per value, scaled from the lowest (▁) to the highest (█) value."""
    present = [v for v in values if v is not None]
    text = Text()
    if not present:
        return text.append(GAP * len(values))
    low, high = min(present), max(present)
    span = high - low
    for value in values:
        if value is None:
            text.append(GAP)
            continue
        if span > 0:
            level = round((value - low) / span * (len(BARS) - 1))
        else:
            level = 0 if value == 0 else len(BARS) // 2
        text.append(BARS[level], style="yellow" if warn and warn(value) else "cyan")
    return text


def chart_rows(series: list[dict[str, Any]], bars_width: int) -> list[Text]:
    """One row per metric: label, min, ▕bars▏, max; then a time axis."""
    by_name = {item["metric"]: item for item in series}
    rows: list[Text] = []
    axis_columns = 0
    first: float | None = None
    last: float | None = None
    for chart in CHARTS:
        item = by_name.get(chart.name)
        points = [(float(t), None if v is None else float(v)) for t, v in (item or {}).get("points", [])]
        values = columns(points, bars_width)
        axis_columns = max(axis_columns, len(values))
        if points:
            first, last = points[0][0], points[-1][0]
        present = [v for v in values if v is not None]
        row = Text()
        row.append(f"{chart.label:<{_LABEL_WIDTH}}", style="bold")
        row.append(" ")
        if not present:
            row.append(f"{'':>{_VALUE_WIDTH}} ▕")
            row.append(f"{'no data':^{len(values)}}", style="bright_black")
            row.append("▏")
            rows.append(row)
            continue
        row.append(f"{chart.fmt(min(present)):>{_VALUE_WIDTH}} ▕")
        row.append_text(sparkline(values, chart.warn))
        row.append(f"▏ {chart.fmt(max(present))}")
        rows.append(row)
    if first is not None and last is not None and axis_columns:
        shape = "%m-%d %H:%M" if last - first >= 86400 - 3600 else "%H:%M"
        start = datetime.fromtimestamp(first).strftime(shape)
        end = datetime.fromtimestamp(last).strftime(shape)
        axis = Text(" " * (_LABEL_WIDTH + 1 + _VALUE_WIDTH + 2), style="bright_black")
        axis.append(start + end.rjust(max(1, axis_columns - len(start))))
        rows.append(axis)
    return rows


# --- the numbers --------------------------------------------------------------


def _grid() -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(no_wrap=True)
    return grid


def agent_numbers(row: dict[str, Any]) -> Table:
    grid = _grid()
    rate = row.get("tool_success_rate")
    tokens = row.get("tokens_per_action")
    failures = int(row.get("consecutive_failures") or 0)
    cost_rate = float(row.get("cost_usd_per_hour_rate") or 0.0)
    status = Text(row["status"], style=STATUS_STYLES.get(row["status"], ""))
    status.append(
        f"  heartbeat {fmt_age(row.get('heartbeat_age_s'))} ago"
        if row.get("heartbeat_age_s") is not None
        else "  no heartbeat yet"
    )
    status.append("  connected" if row.get("connected") else "  not connected", style="bright_black")
    grid.add_row("status", status)
    grid.add_row("events", f"{fmt_number(row.get('events_per_s'))}/s")
    grid.add_row("error lines", f"{fmt_number(row.get('error_lines_per_s'))}/s (stderr)")
    tools = Text(f"{row.get('tool_calls', 0)} calls, ")
    tools.append(f"{fmt_percent(rate)} succeeded", style=success_style(rate))
    tools.append(", ")
    tools.append(f"{failures} consecutive failures", style=failures_style(failures))
    grid.add_row("tool calls", tools)
    token_text = Text(fmt_tokens(tokens), style=tokens_style(tokens))
    if tokens is not None and tokens > TOKENS_PER_ACTION_WARNING:
        token_text.append(f"  (above the {TOKENS_PER_ACTION_WARNING:,} warning line)", style="yellow")
    grid.add_row("tokens/action", token_text)
    grid.add_row(
        "reasoning",
        f"p50 {fmt_latency(row.get('reasoning_latency_p50_ms'))}"
        f"  p95 {fmt_latency(row.get('reasoning_latency_p95_ms'))}"
        f"  max {fmt_latency(row.get('reasoning_latency_max_ms'))}",
    )
    cost = Text(f"{fmt_money(row.get('cost_usd_last_hour'))} in the last hour, rate ")
    cost.append(f"{fmt_money(cost_rate)}/h", style=cost_rate_style(cost_rate))
    if row.get("unpriced_llm_calls"):
        cost.append(f"  ({row['unpriced_llm_calls']} LLM calls of unknown models not priced)", style="yellow")
    grid.add_row("cost", cost)
    grid.add_row("cpu / rss", f"{fmt_cpu(row.get('cpu_percent'))} / {fmt_bytes(row.get('rss_bytes'))}")
    grid.add_row(
        "restarts",
        f"{row.get('restarts_last_hour', 0)} in the last hour, {row.get('restarts_total', 0)} total",
    )
    return grid


def group_numbers(totals: dict[str, Any]) -> Table:
    grid = _grid()
    agents = Text(f"{totals['agents']}: ")
    agents.append_text(status_counts(totals["by_status"]))
    grid.add_row("agents", agents)
    rate = totals.get("tool_success_rate")
    tokens = totals.get("tokens_per_action")
    cost_rate = float(totals.get("cost_usd_per_hour_rate") or 0.0)
    grid.add_row("events", f"{fmt_number(totals.get('events_per_s'))}/s")
    grid.add_row("error lines", f"{fmt_number(totals.get('error_lines_per_s'))}/s (stderr)")
    tools = Text(f"{totals.get('tool_calls', 0)} calls, ")
    tools.append(f"{fmt_percent(rate)} succeeded", style=success_style(rate))
    grid.add_row("tool calls", tools)
    grid.add_row("tokens/action", Text(fmt_tokens(tokens), style=tokens_style(tokens)))
    grid.add_row("reasoning", f"p95 {fmt_latency(totals.get('reasoning_latency_p95_ms'))}")
    grid.add_row(
        "cost",
        f"{fmt_money(totals.get('cost_usd_last_hour'))} in the last hour, rate {fmt_money(cost_rate)}/h",
    )
    return grid


# --- the command ----------------------------------------------------------------


def _get(client: GatewayClient, path: str, **params: Any) -> Any:
    try:
        return fetch_json(client, path, params)
    except GatewayUnavailable as exc:
        raise click.ClickException(f"{exc}; {exc.hint}" if exc.hint else str(exc)) from None


def _agent_row(client: GatewayClient, agent: str) -> dict[str, Any]:
    try:
        record = fetch_json(client, f"/api/v1/agents/{quote(agent, safe='')}", {})
    except GatewayUnavailable as exc:
        raise click.ClickException(f"{exc}; {exc.hint}" if exc.hint else str(exc)) from None
    except click.ClickException as exc:
        if exc.message.startswith("404"):
            raise click.ClickException(
                f"no agent {agent!r} (in the environments this credential can read); "
                "`clawtrace top` lists the agents"
            ) from None
        raise
    page = _get(client, "/api/v1/fleet", env=record["env"], q=agent, sort="agent", limit=10_000)
    for row in page["agents"]:
        if row["agent"] == agent:
            return dict(row, window_seconds=page["window_seconds"], at=page["at"])
    raise click.ClickException(f"the gateway has no live numbers for agent {agent!r} yet; try again")


_NICE_STEPS_MIN = (1, 2, 3, 5, 10, 15, 20, 30, 60, 120, 180, 360, 720, 1440)


def chart_width(console_width: int) -> int:
    return max(10, console_width - _ROW_CHROME)


def fitting_step(span: float, width: int, at_least: int = 60) -> int:
    """The smallest round step (a multiple of ``at_least``) that keeps the
    chart's columns (one per step, plus the partial one) within ``width``."""
    needed = span / max(1, width - 1)
    for minutes in _NICE_STEPS_MIN:
        step = minutes * 60
        if step >= needed and step % at_least == 0:
            return step
    return max(at_least, math.ceil(needed / at_least) * at_least)


@click.command(short_help="An agent's or an environment's numbers, and charts over time.")
@click.argument("agent", required=False)
@click.option("--env", default=None, help="Numbers for this environment instead of one agent.")
@click.option("--region", default=None, help="With --env (or alone): only this region.")
@click.option(
    "--label", default=None, metavar="KEY=VALUE", help="Numbers for the agents with this label (alone)."
)
@click.option("--since", "since_text", default="1h", show_default=True, help="Chart span: 30m, 1h, 6h, 2d.")
@click.option(
    "--until",
    "until_text",
    default=None,
    metavar="TIME",
    help="End of the chart span (RFC 3339 or epoch seconds). Default: now.",
)
@click.option(
    "--step",
    "step_text",
    default=None,
    help="Seconds per chart column, a whole number of minutes (1m, 5m). Default: fits the terminal.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the raw numbers and series as JSON.")
@gateway_options
def stats(
    agent: str | None,
    env: str | None,
    region: str | None,
    label: str | None,
    since_text: str,
    until_text: str | None,
    step_text: str | None,
    as_json: bool,
    gateway: str,
    token: str,
) -> None:
    """The numbers of one AGENT, or of an environment (--env) or region, now, and
    a text chart of each over the last hour: events/s, tool success rate, tokens
    per action, p95 reasoning latency, cost per hour and stderr lines/s.

    Chart columns without data are left blank: no data is not zero.

    \b
      clawtrace stats a-0417                     # one agent
      clawtrace stats --env prod                 # an environment
      clawtrace stats --env prod --region eu-west-1 --since 6h
      clawtrace stats a-1 --since 24h --step 15m
      clawtrace stats a-1 --json | jq '.current.cost_usd_per_hour_rate'
    """
    if agent is not None and (env or region or label):
        raise click.UsageError("give an AGENT or --env/--region/--label, not both")
    if label and (env or region):
        raise click.UsageError(
            "--label charts span every environment and region: use --label alone, or --env/--region"
        )
    label = parse_label(label)
    span = parse_duration(since_text, "--since")
    until = parse_moment(until_text) if until_text else time.time()
    console = Console(highlight=False)
    width = chart_width(console.width)
    note = ""
    if step_text is None:
        step = fitting_step(span, width)
    else:
        step_seconds = parse_duration(step_text, "--step")
        if step_seconds % 60:
            raise click.BadParameter(
                f"{step_text!r}: the charts are built from 1-minute rollups; use whole minutes (1m, 5m, 1h)",
                param_hint="--step",
            )
        step = int(step_seconds)
        if not as_json and span / step + 1 > width:
            step = fitting_step(span, width, at_least=step)
            note = f" (--step {step_text} does not fit {console.width} columns)"
    client = GatewayClient(gateway, token)
    client.http.timeout = httpx.Timeout(30.0)

    current: dict[str, Any]
    if agent is not None:
        current = _agent_row(client, agent)
        title = Text(agent, style="bold")
        title.append(f"  {current['env']}/{current['region'] or '-'}", style="cyan")
        for key, value in sorted(current.get("labels", {}).items()):
            title.append(f"  {key}={value}", style="bright_black")
        if current.get("release"):
            title.append(f"  release {current['release']}", style="bright_black")
        scope_params: dict[str, Any] = {"agent": agent}
    else:
        page = _get(client, "/api/v1/fleet", env=env, region=region, label=label, limit=1)
        if page["total"] == 0:
            raise click.ClickException(
                f"no agents match {_describe(env, region, label)}; `clawtrace top` lists the fleet"
            )
        current = dict(page["totals"], window_seconds=page["window_seconds"], at=page["at"])
        title = Text(_describe(env, region, label), style="bold")
        scope_params = {"env": env, "region": region, "label": label}

    body = _get(
        client,
        "/api/v1/metrics",
        metric=",".join(chart.name for chart in CHARTS),
        since=f"{until - span:.3f}",
        until=f"{until:.3f}",
        step=step,
        **scope_params,
    )
    if as_json:
        click.echo(json.dumps({"current": current, "series": body["series"]}, indent=2))
        return

    console.print(title)
    console.print(
        Text(
            f"now (rates over the last {fmt_window(float(current['window_seconds']))})", style="bright_black"
        )
    )
    console.print(agent_numbers(current) if agent is not None else group_numbers(current))
    console.print()
    until_note = f" up to {datetime.fromtimestamp(until).strftime('%Y-%m-%d %H:%M')}" if until_text else ""
    console.print(
        Text(
            f"last {fmt_span(span)}{until_note}, {fmt_span(step)} per column{note} (min ▕chart▏ max)",
            style="bright_black",
        )
    )
    for row in chart_rows(body["series"], width):
        console.print(row, no_wrap=True, overflow="crop")


def _describe(env: str | None, region: str | None, label: str | None) -> str:
    parts = [
        f"{name} {value}" for name, value in (("env", env), ("region", region), ("label", label)) if value
    ]
    return ", ".join(parts) if parts else "the whole fleet"
