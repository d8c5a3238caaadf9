"""One agent's metrics, updated event by event (never by re-reading the store)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import msgspec

from clawtrace.metrics.buckets import Bucket, hist_percentile, merged, nearest_rank
from clawtrace.metrics.prices import PriceTable
from clawtrace.protocol import PROCESS_STATES

# Events older than this (by event time) no longer count in the live
# numbers; they still reach the persisted rollups.
LIVE_MINUTES = 60


class MetricEvent(msgspec.Struct, tag_field="kind", kw_only=True):
    """The fields of an event that metrics read; the rest is skipped when decoding."""

    seq: int
    ts: datetime


class MLog(MetricEvent, tag="log"):
    stream: str = "stdout"


class MThought(MetricEvent, tag="thought"):
    pass


class MLlmCall(MetricEvent, tag="llm_call"):
    model: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    duration_ms: float = 0.0
    cost_usd: float | None = None


class MToolCall(MetricEvent, tag="tool_call"):
    call_id: str = ""


class MToolResult(MetricEvent, tag="tool_result"):
    call_id: str = ""
    ok: bool = True


class MHeartbeat(MetricEvent, tag="heartbeat"):
    cpu_percent: float | None = None
    rss_bytes: int | None = None


class MLifecycle(MetricEvent, tag="lifecycle"):
    state: str = ""


class MPolicy(MetricEvent, tag="policy"):
    pass


AnyMetricEvent = MLog | MThought | MLlmCall | MToolCall | MToolResult | MHeartbeat | MLifecycle | MPolicy


@dataclass(slots=True)
class PendingCall:
    minute: int
    received: float


class AgentMetrics:
    """Minute buckets of one agent plus the running values that are not per minute."""

    __slots__ = (
        "_closed",
        "_closed_hour",
        "_closed_hour_start",
        "_closed_key",
        "_live",
        "agent",
        "answered_calls",
        "buckets",
        "closed_through",
        "consecutive_failures",
        "cpu_percent",
        "expired_calls",
        "failure_peak",
        "flush_due",
        "last_event",
        "last_heartbeat",
        "lifecycle",
        "llm_since_thought",
        "pending_calls",
        "restarts_total",
        "rss_bytes",
        "thought_ts",
        "version",
    )

    def __init__(self, agent: str) -> None:
        self.agent = agent
        self.buckets: dict[int, Bucket] = {}
        # The last minute the stage has closed into rollups for this agent, and
        # whether an event arrived for such a minute since (see MetricsStage.tick).
        self.closed_through: int | None = None
        self.flush_due = False
        # The merged minutes of the live window before the current one (see window()).
        self._closed: Bucket | None = None
        self._closed_key: tuple[int, int] | None = None
        self._closed_hour_start = 0
        self._closed_hour: tuple[float, int] = (0.0, 0)
        self._live: tuple[tuple[int, int, int, int], tuple[Bucket, float, int]] | None = None
        # Bumped by every change, so cached views know when they are stale.
        self.version = 0
        self.pending_calls: dict[str, PendingCall] = {}
        # Calls already counted as timed out: their late results are ignored.
        self.expired_calls: dict[str, None] = {}
        # Results that came before their call (out of order): that call is not pending.
        self.answered_calls: dict[str, None] = {}
        self.consecutive_failures = 0
        # The highest consecutive_failures since the alert engine last looked:
        # a success later in the same frame must not hide a loop.
        self.failure_peak = 0
        # The last lifecycle state the node agent reported ("started", "stopped", ...).
        self.lifecycle: str | None = None
        self.last_heartbeat: float | None = None
        self.last_event: float | None = None
        self.cpu_percent: float | None = None
        self.rss_bytes: int | None = None
        self.restarts_total = 0
        self.thought_ts: float | None = None
        self.llm_since_thought = False

    def _bucket(self, minute: int) -> Bucket:
        if self._closed_key is not None and minute < self._closed_key[1]:
            self._closed = None  # an event in an already merged minute
        if self.closed_through is not None and minute <= self.closed_through:
            self.flush_due = True  # an event for a minute the stage already closed
        bucket = self.buckets.get(minute)
        if bucket is None:
            bucket = self.buckets[minute] = Bucket()
        if bucket.flushed:
            if bucket.late is None:
                bucket.late = Bucket()
            return bucket.late
        return bucket

    def observe(self, event: AnyMetricEvent, received: float, prices: PriceTable) -> float | None:
        """Count one event; returns its cost in USD (0 for anything but an llm_call),
        or None for a result ignored because its call already timed out."""
        self.version += 1
        ts = event.ts.timestamp()
        # A clock far ahead would put events in minutes that never close.
        if ts > received + 60:
            ts = received
        minute = int(ts // 60)
        bucket = self._bucket(minute)
        bucket.events += 1
        self.last_event = received
        if isinstance(event, MLog):
            if event.stream == "stderr":
                bucket.stderr_lines += 1
        elif isinstance(event, MHeartbeat):
            bucket.heartbeats += 1
            self.last_heartbeat = received
            self.cpu_percent = event.cpu_percent
            self.rss_bytes = event.rss_bytes
            if event.cpu_percent is not None:
                bucket.cpu_sum += event.cpu_percent
                bucket.cpu_n += 1
            if event.rss_bytes is not None and event.rss_bytes > bucket.rss_max:
                bucket.rss_max = event.rss_bytes
        elif isinstance(event, MLlmCall):
            bucket.llm_calls += 1
            bucket.input_tokens += event.input_tokens
            bucket.output_tokens += event.output_tokens
            bucket.cached_tokens += event.cached_input_tokens
            cost = event.cost_usd
            if cost is None:
                cost = prices.cost(
                    event.model, event.input_tokens, event.output_tokens, event.cached_input_tokens
                )
                if cost is None:
                    bucket.unpriced_calls += 1
                    cost = 0.0
            bucket.cost_usd += cost
            bucket.add_latency(event.duration_ms)
            self.llm_since_thought = True
            return cost
        elif isinstance(event, MThought):
            self.thought_ts = ts
            self.llm_since_thought = False
        elif isinstance(event, MToolCall):
            bucket.tool_calls += 1
            if event.call_id in self.answered_calls:
                del self.answered_calls[event.call_id]
            else:
                self.pending_calls[event.call_id] = PendingCall(minute, received)
            if self.thought_ts is not None and not self.llm_since_thought:
                # No llm_call between the thought and its action: the gap is the reasoning time.
                bucket.add_latency(max(0.0, (ts - self.thought_ts) * 1000))
            self.thought_ts = None
        elif isinstance(event, MToolResult):
            pending = self.pending_calls.pop(event.call_id, None)
            if pending is None and event.call_id in self.expired_calls:
                del self.expired_calls[event.call_id]
                return None
            if pending is None:
                self.answered_calls[event.call_id] = None
                while len(self.answered_calls) > 1_000:
                    del self.answered_calls[next(iter(self.answered_calls))]
            target = bucket if pending is None else self._bucket(pending.minute)
            target.actions += 1
            if event.ok:
                target.tool_ok += 1
                self.consecutive_failures = 0
            else:
                target.tool_failed += 1
                self._failed()
        elif isinstance(event, MLifecycle):
            if event.state in PROCESS_STATES:
                self.lifecycle = event.state
            if event.state == "restarting":
                bucket.restarts += 1
                self.restarts_total += 1
            elif event.state == "started":
                # A new process starts a new chain of reasoning.
                self.consecutive_failures = self.failure_peak = 0
        return 0.0

    def _failed(self) -> None:
        self.consecutive_failures += 1
        if self.consecutive_failures > self.failure_peak:
            self.failure_peak = self.consecutive_failures

    def expire_calls(self, received_before: float, minute: int | None = None) -> int:
        """Tool calls with no result in time count as failed; returns how many.

        They count in ``minute`` (the minute they expire in, so that the live
        window sees them), else in the minute of the call."""
        expired = [cid for cid, call in self.pending_calls.items() if call.received < received_before]
        for call_id in expired:
            call = self.pending_calls.pop(call_id)
            self._bucket(call.minute if minute is None else minute).tool_timeouts += 1
            self._failed()
            self.expired_calls[call_id] = None
            self.version += 1
        while len(self.expired_calls) > 1_000:
            del self.expired_calls[next(iter(self.expired_calls))]
        return len(expired)

    def forget_before(self, minute: int) -> None:
        old = [m for m in self.buckets if m < minute]
        for m in old:
            del self.buckets[m]
        if old:
            self._closed = None
            self.version += 1

    def window(self, first_minute: int) -> Bucket:
        """Everything from ``first_minute`` on, late arrivals included."""
        return merged(self._parts(first_minute, None))

    def live(self, first_minute: int, hour_start: int, current_minute: int) -> tuple[Bucket, float, int]:
        """(the window from ``first_minute``, cost and restarts since ``hour_start``).

        The minutes before ``current_minute`` are summed once and reused until
        the minute changes or an event lands in one of them; a request then
        only adds the minute in progress.
        """
        live_key = (self.version, first_minute, hour_start, current_minute)
        if self._live is not None and self._live[0] == live_key:
            return self._live[1]
        key = (first_minute, current_minute)
        if self._closed is None or self._closed_key != key or self._closed_hour_start != hour_start:
            self._closed = merged(self._parts(first_minute, current_minute))
            self._closed_key = key
            self._closed_hour_start = hour_start
            self._closed_hour = self._sums(hour_start, current_minute)
        window = Bucket()
        window.merge(self._closed)
        cost, restarts = self._closed_hour
        # Event time may run up to a minute ahead of the gateway's clock.
        for minute in (current_minute, current_minute + 1):
            bucket = self.buckets.get(minute)
            if bucket is None:
                continue
            for part in (bucket, bucket.late):
                if part is not None:
                    window.merge(part)
                    cost += part.cost_usd
                    restarts += part.restarts
        # Until the next event, repeated requests (top, console, scrapes) get this back.
        self._live = (live_key, (window, cost, restarts))
        return window, cost, restarts

    def _parts(self, first_minute: int, before_minute: int | None) -> list[Bucket]:
        parts: list[Bucket] = []
        for minute, bucket in self.buckets.items():
            if minute >= first_minute and (before_minute is None or minute < before_minute):
                parts.append(bucket)
                if bucket.late is not None:
                    parts.append(bucket.late)
        return parts

    def _sums(self, first_minute: int, before_minute: int) -> tuple[float, int]:
        cost = 0.0
        restarts = 0
        for part in self._parts(first_minute, before_minute):
            cost += part.cost_usd
            restarts += part.restarts
        return cost, restarts


@dataclass(slots=True, frozen=True)
class WindowNumbers:
    """The live numbers of one agent or group over a window (see docs/metrics.md)."""

    events_per_s: float
    error_lines_per_s: float
    tool_calls: int
    tool_results: int
    tool_success_rate: float | None
    tokens: int
    tokens_per_action: float | None
    cost_usd_per_hour_rate: float
    reasoning_latency_p50_ms: float | None
    reasoning_latency_p95_ms: float | None
    reasoning_latency_max_ms: float | None
    llm_calls: int
    unpriced_calls: int


def window_numbers(window: Bucket, seconds: float) -> WindowNumbers:
    results = window.tool_ok + window.tool_failed + window.tool_timeouts
    tokens = window.input_tokens + window.output_tokens
    if window.percentiles is None:
        samples = sorted(window.samples)
        if len(samples) == window.latency_count:
            window.percentiles = (nearest_rank(samples, 50), nearest_rank(samples, 95))
        else:
            window.percentiles = (hist_percentile(window.hist, 50), hist_percentile(window.hist, 95))
    p50, p95 = window.percentiles
    return WindowNumbers(
        events_per_s=window.events / seconds,
        error_lines_per_s=window.stderr_lines / seconds,
        tool_calls=window.tool_calls,
        tool_results=results,
        tool_success_rate=None if results == 0 else window.tool_ok / results,
        tokens=tokens,
        tokens_per_action=None if window.actions == 0 else tokens / window.actions,
        cost_usd_per_hour_rate=window.cost_usd / seconds * 3600,
        reasoning_latency_p50_ms=p50,
        reasoning_latency_p95_ms=p95,
        reasoning_latency_max_ms=window.latency_max if window.latency_count else None,
        llm_calls=window.llm_calls,
        unpriced_calls=window.unpriced_calls,
    )
