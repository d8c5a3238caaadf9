"""The value of each rule metric for one agent at one moment, computed on demand."""

from __future__ import annotations

from dataclasses import dataclass, field

from clawtrace.metrics.agent import AgentMetrics, WindowNumbers, window_numbers
from clawtrace.metrics.buckets import Bucket
from clawtrace.metrics.fleet import window_seconds

# A metric's value (None: no data) and how many samples it rests on.
Reading = tuple[float | None, int]


@dataclass(slots=True)
class Watched:
    """What the engine knows of an agent besides its metrics."""

    agent: str
    env: str
    region: str
    labels: dict[str, str] = field(default_factory=dict)
    # The last sign of life the registry had when the engine started (or the
    # agent connected); the metrics stage knows the newer ones.
    last_heartbeat: float | None = None
    alive_at: float = 0.0
    connected: bool = False
    # The last lifecycle state on record when the engine started.
    lifecycle: str | None = None


class AgentSample:
    """Lazily computed readings: a rule on heartbeat age never pays for the window merge."""

    __slots__ = ("_numbers", "_window", "metrics", "now", "watched", "window_setting")

    def __init__(
        self, watched: Watched, metrics: AgentMetrics | None, now: float, window_setting: float
    ) -> None:
        self.watched = watched
        self.metrics = metrics
        self.now = now
        self.window_setting = window_setting
        self._window: tuple[Bucket, float, int] | None = None
        self._numbers: WindowNumbers | None = None

    def _live(self) -> tuple[Bucket, float, int]:
        if self._window is None:
            if self.metrics is None:
                self._window = (Bucket(), 0.0, 0)
            else:
                first_minute, _ = window_seconds(self.now, self.window_setting)
                current = int(self.now // 60)
                self._window = self.metrics.live(first_minute, current - 59, current)
        return self._window

    def _window_numbers(self) -> WindowNumbers:
        if self._numbers is None:
            _, seconds = window_seconds(self.now, self.window_setting)
            self._numbers = window_numbers(self._live()[0], seconds)
        return self._numbers

    def read(self, metric: str) -> Reading:
        m = self.metrics
        if metric == "heartbeat_age_s":
            return self._heartbeat_age()
        if metric == "consecutive_failed_tool_calls":
            if m is None:
                return None, 0
            return float(max(m.consecutive_failures, m.failure_peak)), 1
        if metric == "cpu_percent":
            return (None, 0) if m is None or m.cpu_percent is None else (m.cpu_percent, 1)
        if metric == "rss_bytes":
            return (None, 0) if m is None or m.rss_bytes is None else (float(m.rss_bytes), 1)
        if metric == "restarts_last_hour":
            return float(self._live()[2]), 1
        if metric == "cost_usd_last_hour":
            # Spending nothing for an hour is a real 0, unlike a rate over no calls.
            return (None, 0) if m is None else (self._live()[1], 1)
        numbers = self._window_numbers()
        window = self._live()[0]
        if metric == "tool_success_rate":
            return numbers.tool_success_rate, numbers.tool_results
        if metric == "cost_usd_per_hour":
            return (
                (None, 0) if numbers.llm_calls == 0 else (numbers.cost_usd_per_hour_rate, numbers.llm_calls)
            )
        if metric == "tokens_per_action":
            return numbers.tokens_per_action, window.actions
        if metric == "reasoning_latency_p95_ms":
            return numbers.reasoning_latency_p95_ms, window.latency_count
        if metric == "error_lines_per_s":
            return (None, 0) if window.events == 0 else (numbers.error_lines_per_s, window.events)
        if metric == "events_per_s":
            return numbers.events_per_s, window.events
        raise KeyError(metric)

    def _heartbeat_age(self) -> Reading:
        watched, m = self.watched, self.metrics
        lifecycle = m.lifecycle if m is not None and m.lifecycle is not None else watched.lifecycle
        if lifecycle == "stopped" and not watched.connected:
            # Stopped on purpose (by a command or its node agent's shutdown): not dead.
            return None, 0
        last = watched.last_heartbeat
        if m is not None and m.last_heartbeat is not None:
            last = m.last_heartbeat if last is None else max(last, m.last_heartbeat)
        if last is None:
            # An agent without heartbeats (it posts over HTTP): its last event counts.
            last = watched.alive_at
            if m is not None and m.last_event is not None:
                last = max(last, m.last_event)
        return max(0.0, self.now - last), 1
