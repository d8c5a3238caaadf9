"""``clawtrace top``: a live fleet table in the terminal, refreshed in place."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from types import FrameType
from typing import Any

import click
import httpx
from rich import box
from rich.console import Console, Group, JustifyMethod, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from clawtrace.cli.client import CertificateRefused, GatewayClient
from clawtrace.cli.options import gateway_options
from clawtrace.metrics.fleet import (
    DEGRADED_CONSECUTIVE_FAILURES,
    DEGRADED_SUCCESS_RATE,
    SORT_KEYS,
    STATUSES,
    TOKENS_PER_ACTION_WARNING,
)

# The checklist's cost-spike line: more than $5.00/h of tokens for one agent.
COST_SPIKE_USD_PER_HOUR = 5.0

STATUS_STYLES = {
    "healthy": "green",
    "degraded": "bold yellow",
    "dead": "bold red",
    "quarantined": "bold magenta",
}

# Without --asc/--desc, each key sorts worst first (the agents that need a look).
ASCENDING_BY_DEFAULT = frozenset({"agent", "success"})

_MAX_ROWS = 10_000


# --- formatting, shared with `clawtrace stats` ------------------------------


def fmt_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.0f}s" if seconds >= 9.5 else f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def fmt_percent(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio * 100:.1f}%"


def fmt_cpu(percent: float | None) -> str:
    return "-" if percent is None else f"{percent:.1f}%"


def fmt_bytes(value: float | None) -> str:
    if value is None:
        return "-"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value:.0f} B"


def fmt_number(value: float | None) -> str:
    """A rate or count in a few significant characters: 0.05, 1.23, 12.3, 1,234."""
    if value is None:
        return "-"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 0.01:
        return f"{value:.2f}"
    if magnitude >= 0.001:
        return f"{value:.3f}"
    return "<0.001" if value > 0 else f"{value:.1e}"


def fmt_latency(ms: float | None) -> str:
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms:.0f}ms"
    if ms < 60_000:
        return f"{ms / 1000:.2f}s"
    return fmt_age(ms / 1000)


def fmt_tokens(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def fmt_money(usd: float | None) -> str:
    if usd is None:
        return "-"
    if usd == 0:
        return "$0.00"
    if abs(usd) >= 1:
        return f"${usd:,.2f}"
    return f"${usd:.4f}"


def tokens_style(value: float | None) -> str:
    return "bold yellow" if value is not None and value > TOKENS_PER_ACTION_WARNING else ""


def success_style(ratio: float | None) -> str:
    return "bold red" if ratio is not None and ratio < DEGRADED_SUCCESS_RATE else ""


def failures_style(count: int) -> str:
    return "bold red" if count >= DEGRADED_CONSECUTIVE_FAILURES else ("yellow" if count else "")


def cost_rate_style(usd_per_hour: float) -> str:
    return "bold red" if usd_per_hour > COST_SPIKE_USD_PER_HOUR else ""


def parse_label(value: str | None) -> str | None:
    if value is None:
        return None
    key, sep, _ = value.partition("=")
    if not sep or not key:
        raise click.BadParameter(f"{value!r} is not KEY=VALUE (e.g. team=search)", param_hint="--label")
    return value


# --- fetching -----------------------------------------------------------------


class GatewayUnavailable(Exception):
    """The gateway did not answer (or answered 5xx): worth retrying."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


UNREACHABLE_HINT = "is `clawtrace up` running there? (--gateway / CLAWTRACE_GATEWAY)"


def fetch_json(client: GatewayClient, path: str, params: dict[str, Any]) -> Any:
    """GET ``path``; unreachable or 5xx -> GatewayUnavailable, 4xx -> ClickException (fatal)."""
    try:
        response = client.http.get(path, params={k: v for k, v in params.items() if v is not None})
    except CertificateRefused as exc:
        # Not a gateway that is down: retrying will not help, the message says what will.
        raise click.ClickException(str(exc)) from None
    except httpx.HTTPError as exc:
        reason = str(exc) or type(exc).__name__
        raise GatewayUnavailable(
            f"cannot reach the gateway at {client.base} ({reason})", UNREACHABLE_HINT
        ) from None
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text.strip() or response.reason_phrase
        if response.status_code >= 500:
            raise GatewayUnavailable(
                f"the gateway at {client.base} answered {response.status_code}: {message}"
            )
        hint = ""
        if response.status_code == 401:
            hint = " (check --token / CLAWTRACE_TOKEN: a viewer credential or above)"
        raise click.ClickException(f"{response.status_code}: {message}{hint}")
    return response.json()


# --- the view -------------------------------------------------------------------


@dataclass
class Query:
    sort: str
    descending: bool
    env: str | None
    region: str | None
    status: str | None
    label: str | None
    match: str | None
    limit: int | None  # None: as many as fit the terminal

    def params(self, rows: int) -> dict[str, Any]:
        return {
            "env": self.env,
            "region": self.region,
            "status": self.status,
            "label": self.label,
            "q": self.match,
            "sort": self.sort,
            "order": "desc" if self.descending else "asc",
            "limit": rows,
        }

    def filters(self) -> str:
        parts = [
            f"{name}={value}"
            for name, value in (
                ("env", self.env),
                ("region", self.region),
                ("status", self.status),
                ("label", self.label),
                ("match", self.match),
            )
            if value
        ]
        return " ".join(parts)


@dataclass
class Snapshot:
    data: dict[str, Any] | None = None
    fetched_at: float | None = None
    error: str | None = None
    error_hint: str = ""


def status_counts(by_status: dict[str, int]) -> Text:
    text = Text()
    for index, status in enumerate(STATUSES):
        if index:
            text.append(" · ", style="bright_black")
        count = int(by_status.get(status, 0))
        text.append(f"{count} {status}", style=STATUS_STYLES[status] if count else "bright_black")
    return text


def _line(text: Text) -> Text:
    """One terminal line whatever the width, so the rows that fit can be counted."""
    text.no_wrap = True
    text.overflow = "ellipsis"
    return text


def header(gateway: str, query: Query, snapshot: Snapshot, interval: float | None) -> list[Text]:
    title = Text()
    title.append("ClawTrace fleet", style="bold")
    title.append(f"  {datetime.now().strftime('%H:%M:%S')}")
    title.append(f"  {gateway}", style="bright_black")
    filters = query.filters()
    if filters:
        title.append(f"  {filters}", style="cyan")
    lines = [title]
    if snapshot.error is not None:
        lines.append(Text(f"⚠ {snapshot.error}", style="bold red"))
        advice = Text(f"retrying every {interval:g}s", style="red")
        if snapshot.error_hint:
            advice.append(f"; {snapshot.error_hint}")
        if snapshot.fetched_at is not None:
            stale = datetime.fromtimestamp(snapshot.fetched_at).strftime("%H:%M:%S")
            advice.append(f"; the numbers below are from {stale}")
        lines.append(advice)
    if snapshot.data is not None:
        totals = snapshot.data["totals"]
        counts = Text(f"{totals['agents']} agents: ", style="bold")
        counts.append_text(status_counts(totals["by_status"]))
        numbers = Text("cost ")
        numbers.append(fmt_money(totals["cost_usd_last_hour"]), style="bold")
        numbers.append(" last hour · ")
        numbers.append(f"{fmt_money(totals['cost_usd_per_hour_rate'])}/h", style="bold")
        numbers.append("   tool success ")
        rate = totals.get("tool_success_rate")
        numbers.append(fmt_percent(rate), style=success_style(rate) or "bold")
        numbers.append(f"   p95 think {fmt_latency(totals.get('reasoning_latency_p95_ms'))}")
        tokens = totals.get("tokens_per_action")
        numbers.append("   tokens/action ")
        numbers.append(fmt_tokens(tokens), style=tokens_style(tokens))
        numbers.append(f"   {fmt_number(totals.get('events_per_s'))} events/s")
        lines += [counts, numbers]
    return [_line(line) for line in lines]


def fmt_window(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 and seconds % 60 == 0 else fmt_age(seconds)


def _cell_success(row: dict[str, Any]) -> Text:
    rate = row.get("tool_success_rate")
    return Text(fmt_percent(rate), style=success_style(rate))


def _cell_failures(row: dict[str, Any]) -> Text:
    count = int(row.get("consecutive_failures") or 0)
    return Text(str(count), style=failures_style(count))


def _cell_tokens(row: dict[str, Any]) -> Text:
    tokens = row.get("tokens_per_action")
    return Text(fmt_tokens(tokens), style=tokens_style(tokens))


def _cell_cost_rate(row: dict[str, Any]) -> Text:
    rate = float(row.get("cost_usd_per_hour_rate") or 0.0)
    return Text(f"{fmt_money(rate)}/h", style=cost_rate_style(rate))


def _plain(render: Callable[[Any], str], field: str) -> Callable[[dict[str, Any]], Text]:
    return lambda row: Text(render(row.get(field)))


# (title, sort key, justify, priority: the lowest goes first on a narrow terminal, cell)
_COLUMNS: list[tuple[str, str, JustifyMethod, int, Callable[[dict[str, Any]], Text]]] = [
    ("agent", "agent", "left", 100, _plain(str, "agent")),
    ("env", "", "left", 3, _plain(str, "env")),
    ("region", "", "left", 4, _plain(lambda region: region or "-", "region")),
    (
        "status",
        "status",
        "left",
        99,
        lambda row: Text(row["status"], style=STATUS_STYLES.get(row["status"], "")),
    ),
    ("heartbeat", "heartbeat", "right", 90, _plain(fmt_age, "heartbeat_age_s")),
    ("cpu", "cpu", "right", 5, _plain(fmt_cpu, "cpu_percent")),
    ("rss", "rss", "right", 2, _plain(fmt_bytes, "rss_bytes")),
    ("events/s", "events", "right", 6, _plain(fmt_number, "events_per_s")),
    ("tool ok", "success", "right", 96, _cell_success),
    ("fails", "failures", "right", 97, _cell_failures),
    ("p95 think", "latency", "right", 94, _plain(fmt_latency, "reasoning_latency_p95_ms")),
    ("tok/action", "tokens", "right", 95, _cell_tokens),
    ("cost 1h", "cost", "right", 93, _plain(fmt_money, "cost_usd_last_hour")),
    ("cost/h", "cost_rate", "right", 98, _cell_cost_rate),
]


@dataclass
class _Column:
    title: str
    sort_key: str
    justify: JustifyMethod
    priority: int
    cells: list[Text]

    def width(self) -> int:
        return max([len(self.title), *(cell.cell_len for cell in self.cells)])


def fleet_table(agents: list[dict[str, Any]], sort: str, descending: bool, width: int) -> Table:
    """The table; on a narrow terminal the least useful columns go first (never the sort column)."""
    marker = " ▼" if descending else " ▲"
    columns = [
        _Column(
            title + marker if key == sort else title, key, justify, priority, [cell(row) for row in agents]
        )
        for title, key, justify, priority, cell in _COLUMNS
    ]
    gap = 3  # two spaces of padding and the column divider of SIMPLE_HEAD
    while len(columns) > 2 and sum(c.width() + gap for c in columns) - gap > width:
        droppable = [c for c in columns if c.sort_key != sort]
        columns.remove(min(droppable, key=lambda c: c.priority))
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, header_style="bold")
    for col in columns:
        table.add_column(
            col.title,
            justify=col.justify,
            no_wrap=True,
            overflow="ellipsis",
            style="bold" if col.sort_key == sort else None,
        )
    for index in range(len(agents)):
        table.add_row(*(col.cells[index] for col in columns))
    return table


def footer(query: Query, snapshot: Snapshot, interval: float | None, max_rows: int) -> Text:
    data = snapshot.data or {}
    shown = min(len(data.get("agents", [])), max_rows)
    total = int(data.get("total", 0))
    window = float(data.get("window_seconds", 300))
    order = "desc" if query.descending else "asc"
    text = Text(style="bright_black")
    text.append(f"{shown} of {total} agents · sorted by {query.sort} {order}")
    text.append(f" · rates over the last {fmt_window(window)}, cost 1h = last 60 min")
    if interval:
        text.append(f" · every {interval:g}s · Ctrl-C quits")
    elif shown < total:
        text.append(" · --limit to see more")
    return _line(text)


def view(
    gateway: str,
    query: Query,
    snapshot: Snapshot,
    interval: float | None,
    width: int,
    max_rows: int = _MAX_ROWS,
) -> RenderableType:
    parts: list[RenderableType] = [*header(gateway, query, snapshot, interval)]
    if snapshot.data is not None:
        agents = snapshot.data["agents"][:max_rows]
        if agents:
            parts.append(fleet_table(agents, query.sort, query.descending, width))
        else:
            parts.append(Text("no agents match these filters", style="yellow"))
        parts.append(footer(query, snapshot, interval, max_rows))
    return Group(*parts)


def rows_that_fit(console: Console, snapshot: Snapshot) -> int:
    """Table rows that fit the terminal under the header and above the footer."""
    if not console.is_terminal:
        return _MAX_ROWS
    # Header (title, counts, numbers; + 2 lines while the gateway is unreachable),
    # the table's head and rule, and the footer.
    chrome = 3 + 2 * (snapshot.error is not None) + 2 + 1
    return max(1, console.size.height - chrome)


def poll(
    client: GatewayClient, console: Console, query: Query, snapshot: Snapshot, live: bool = True
) -> Snapshot:
    """The next snapshot: the fleet page, or the last one with the reason it is stale.

    Live, at most the rows that fit the terminal are fetched; once, --limit wins.
    """
    fits = rows_that_fit(console, snapshot)
    rows = fits if query.limit is None else (min(query.limit, fits) if live else query.limit)
    try:
        data = fetch_json(client, "/api/v1/fleet", query.params(rows))
    except GatewayUnavailable as exc:
        return Snapshot(
            data=snapshot.data, fetched_at=snapshot.fetched_at, error=str(exc), error_hint=exc.hint
        )
    return Snapshot(data=data, fetched_at=time.time())


def _make_console() -> Console:
    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        # Piped: no terminal width to respect; keep every column on one line.
        console = Console(highlight=False, width=240)
    return console


@click.command(short_help="Live fleet table: status, failures, latency, tokens, cost.")
@click.option(
    "--sort",
    type=click.Choice(SORT_KEYS, case_sensitive=False),
    default="cost",
    show_default=True,
    help="Column to sort by (server-side).",
)
@click.option(
    "--asc/--desc",
    "ascending",
    default=None,
    help="Sort direction. Default: worst first (desc; asc for agent and success).",
)
@click.option("--env", default=None, help="Only this environment.")
@click.option("--region", default=None, help="Only this region.")
@click.option("--status", type=click.Choice(STATUSES), default=None, help="Only agents with this status.")
@click.option("--label", default=None, metavar="KEY=VALUE", help="Only agents with this label.")
@click.option("--match", default=None, metavar="TEXT", help="Only agents whose id contains TEXT.")
@click.option(
    "--limit",
    type=click.IntRange(1, _MAX_ROWS),
    default=None,
    help="Rows to show. Default: as many as fit the terminal (all when piped).",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.2),
    default=2.0,
    show_default=True,
    help="Seconds between refreshes.",
)
@click.option("--once", is_flag=True, help="Print the table once and exit (for scripts).")
@gateway_options
def top(
    sort: str,
    ascending: bool | None,
    env: str | None,
    region: str | None,
    status: str | None,
    label: str | None,
    match: str | None,
    limit: int | None,
    interval: float,
    once: bool,
    gateway: str,
    token: str,
) -> None:
    """A live table of the fleet: status, heartbeat, CPU/RSS, events/s, tool success,
    consecutive failures, p95 reasoning latency, tokens per action and cost, one row
    per agent, refreshed in place. Highlights: tokens/action above 1,000, cost above
    $5/h, tool success below 80 %, 5+ consecutive failures.

    \b
      clawtrace top                          # every agent, most expensive first
      clawtrace top --sort failures          # reasoning loops first
      clawtrace top --sort heartbeat         # silent agents first
      clawtrace top --env prod --region eu-west-1 --status degraded
      clawtrace top --once --limit 20        # print once, for scripts
    """
    sort = sort.lower()
    query = Query(
        sort=sort,
        descending=(sort not in ASCENDING_BY_DEFAULT) if ascending is None else not ascending,
        env=env,
        region=region,
        status=status,
        label=parse_label(label),
        match=match,
        limit=limit,
    )
    client = GatewayClient(gateway, token)
    # A hung gateway must not freeze the screen for long.
    client.http.timeout = httpx.Timeout(max(5.0, 2 * interval))
    console = _make_console()
    if once:
        snapshot = poll(client, console, query, Snapshot(), live=False)
        if snapshot.error is not None:
            hint = f"; {snapshot.error_hint}" if snapshot.error_hint else ""
            raise click.ClickException(snapshot.error + hint)
        console.print(view(client.base, query, snapshot, None, console.width))
        return
    stop = _StopOnInterrupt()
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if console.is_terminal:
            _live(client, console, query, interval, stop)
        else:
            _stream(client, console, query, interval, stop)
    except KeyboardInterrupt:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _StopOnInterrupt:
    """Ctrl-C (or SIGTERM): stop at once, except in the middle of drawing, which
    would leave half a frame and a hidden cursor: then stop right after it."""

    def __init__(self) -> None:
        self.requested = False
        self.drawing = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        if not self.drawing:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def drawing_frame(self) -> Iterator[None]:
        self.drawing = True
        try:
            yield
        finally:
            self.drawing = False
        if self.requested:
            raise KeyboardInterrupt


def _live(
    client: GatewayClient, console: Console, query: Query, interval: float, stop: _StopOnInterrupt
) -> None:
    """Redraw in place on a terminal."""
    snapshot = Snapshot()
    with Live(
        Text("connecting to the gateway..."),
        console=console,
        auto_refresh=False,
        vertical_overflow="crop",
        redirect_stdout=False,
        redirect_stderr=False,
    ) as live:
        while True:
            started = time.monotonic()
            snapshot = poll(client, console, query, snapshot)
            fits = rows_that_fit(console, snapshot)
            frame = view(client.base, query, snapshot, interval, console.width, fits)
            with stop.drawing_frame():
                live.update(frame, refresh=True)
            time.sleep(max(0.0, interval - (time.monotonic() - started)))


def _stream(
    client: GatewayClient, console: Console, query: Query, interval: float, stop: _StopOnInterrupt
) -> None:
    """Not a terminal (piped to a file or `tee`): one table after the other."""
    snapshot = Snapshot()
    while True:
        started = time.monotonic()
        snapshot = poll(client, console, query, snapshot)
        frame = view(client.base, query, snapshot, interval, console.width)
        with stop.drawing_frame():
            console.print(frame)
            console.print()
        time.sleep(max(0.0, interval - (time.monotonic() - started)))
