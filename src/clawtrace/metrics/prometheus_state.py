"""Cumulative counters per (environment, region) for the Prometheus endpoint.

Kept as plain integers updated per event; the exposition is built only when
/metrics is scraped.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from clawtrace.metrics.agent import AnyMetricEvent, MLifecycle, MLlmCall, MLog, MToolResult

# Bucket boundaries advised by the OpenTelemetry GenAI semantic conventions.
TOKEN_BUCKETS: tuple[float, ...] = (
    1,
    4,
    16,
    64,
    256,
    1024,
    4096,
    16384,
    65536,
    262144,
    1048576,
    4194304,
    16777216,
    67108864,
)
DURATION_BUCKETS: tuple[float, ...] = (
    0.01,
    0.02,
    0.04,
    0.08,
    0.16,
    0.32,
    0.64,
    1.28,
    2.56,
    5.12,
    10.24,
    20.48,
    40.96,
    81.92,
)


@dataclass(slots=True)
class Histogram:
    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            running += count
            out.append((_format_bound(bound), running))
        out.append(("+Inf", self.count))
        return out


def _format_bound(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else repr(bound)


@dataclass(slots=True)
class GroupCounters:
    events: dict[str, int] = field(default_factory=dict)
    tool_results: dict[str, int] = field(default_factory=lambda: {"ok": 0, "error": 0, "timeout": 0})
    input_tokens: Histogram = field(default_factory=lambda: Histogram(TOKEN_BUCKETS))
    output_tokens: Histogram = field(default_factory=lambda: Histogram(TOKEN_BUCKETS))
    llm_duration: Histogram = field(default_factory=lambda: Histogram(DURATION_BUCKETS))
    cost_usd: float = 0.0
    stderr_lines: int = 0
    restarts: int = 0

    def observe(self, event: AnyMetricEvent, cost_usd: float | None) -> None:
        """``cost_usd`` None: the metrics ignored the event (late result of a timed-out call)."""
        kind = event.__struct_config__.tag
        assert isinstance(kind, str)
        self.events[kind] = self.events.get(kind, 0) + 1
        if cost_usd is None:
            return
        if isinstance(event, MLog):
            if event.stream == "stderr":
                self.stderr_lines += 1
        elif isinstance(event, MLlmCall):
            self.input_tokens.observe(event.input_tokens)
            self.output_tokens.observe(event.output_tokens)
            self.llm_duration.observe(event.duration_ms / 1000)
            self.cost_usd += cost_usd
        elif isinstance(event, MToolResult):
            self.tool_results["ok" if event.ok else "error"] += 1
        elif isinstance(event, MLifecycle) and event.state == "restarting":
            self.restarts += 1


class PrometheusCounters:
    def __init__(self) -> None:
        self.groups: dict[tuple[str, str], GroupCounters] = {}

    def group(self, env: str, region: str) -> GroupCounters:
        key = (env, region)
        counters = self.groups.get(key)
        if counters is None:
            counters = self.groups[key] = GroupCounters()
        return counters
