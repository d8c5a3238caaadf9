"""Human-readable progress and summary for a simulated fleet."""

from __future__ import annotations

import time

from rich.table import Table

from clawtrace.sim.fleet import FleetStats

_SHOWN_PER_SCENARIO = 5


class RateMeter:
    """Acked events per second between two progress snapshots."""

    def __init__(self) -> None:
        self._last: tuple[float, int] | None = None

    def update(self, stats: FleetStats) -> float | None:
        now = time.monotonic()
        last, self._last = self._last, (now, stats.events_acked)
        if last is None or now <= last[0]:
            return None
        return (stats.events_acked - last[1]) / (now - last[0])


def progress_line(stats: FleetStats, rate: float | None) -> str:
    latency = stats.ack_latency_ms
    parts = [
        f"[{stats.elapsed_s:6.0f}s]",
        f"connected {stats.connected}/{stats.agents}",
        f"generated {stats.events_generated:,}",
        f"acked {stats.events_acked:,}" + (f" ({rate:,.0f}/s)" if rate is not None else ""),
        f"pending {stats.pending:,}",
    ]
    if latency.get("p99") is not None:
        parts.append(f"ack p50/p99 {latency['p50']:.0f}/{latency['p99']:.0f} ms")
    if stats.connected < stats.agents and stats.last_error:
        parts.append(f"last error: {stats.last_error}")
    return " | ".join(parts)


def summary_table(stats: FleetStats) -> Table:
    table = Table(title="simulation summary", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    elapsed = stats.elapsed_s or 1.0
    latency = stats.ack_latency_ms
    rows: list[tuple[str, str]] = [
        (
            "agents",
            f"{stats.agents} ({stats.ever_connected} connected at some point, {stats.refused} refused)",
        ),
        ("events generated", f"{stats.events_generated:,}"),
        (
            "events acked",
            f"{stats.events_acked:,} ({stats.events_acked / elapsed:,.0f}/s over {elapsed:.0f} s)",
        ),
        ("not acked", f"{stats.pending:,}"),
        ("by kind", ", ".join(f"{k} {n:,}" for k, n in stats.by_kind.items()) or "-"),
        ("reconnects", f"{stats.reconnects:,}"),
    ]
    if latency.get("count"):
        rows.append(
            ("ack latency", f"p50 {latency['p50']} ms, p99 {latency['p99']} ms, max {latency['max']} ms")
        )
    if stats.commands:
        rows.append(("commands", ", ".join(f"{k} {n}" for k, n in stats.commands.items())))
    if stats.gateway_errors:
        rows.append(("gateway errors", ", ".join(f"{k} {n}" for k, n in stats.gateway_errors.items())))
    for scenario, agents in stats.scenarios.items():
        shown = ", ".join(agents[:_SHOWN_PER_SCENARIO])
        more = len(agents) - _SHOWN_PER_SCENARIO
        rows.append((f"scenario {scenario}", shown + (f" (+{more} more)" if more > 0 else "")))
    if stats.last_error:
        rows.append(("last error", stats.last_error))
    for key, value in rows:
        table.add_row(key, value)
    return table
