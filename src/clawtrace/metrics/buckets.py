"""One minute of one agent's (or one group's) activity, and how to summarise it.

Buckets are additive: a group's minute is the sum of its agents' minutes, a
chart's step the sum of its minutes. Latency keeps its samples (up to a cap)
for exact percentiles within a minute, and a log-scale histogram that merges
exactly across agents and minutes.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

MAX_SAMPLES = 2_000
# Histogram bucket i holds values in (BASE**(i-1), BASE**i] milliseconds.
HIST_BASE = 1.25


def hist_index(value_ms: float) -> int:
    if value_ms <= 1.0:
        return 0
    return math.ceil(math.log(value_ms, HIST_BASE))


def hist_value(index: int) -> float:
    """A representative value of a histogram bucket (its geometric middle)."""
    if index <= 0:
        return 1.0
    return float(HIST_BASE ** (index - 0.5))


def nearest_rank(sorted_values: Sequence[float], percentile: float) -> float | None:
    """The nearest-rank percentile: the value at rank ceil(p/100 * n)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(percentile / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def hist_percentile(hist: dict[int, int], percentile: float) -> float | None:
    total = sum(hist.values())
    if total == 0:
        return None
    rank = max(1, math.ceil(percentile / 100 * total))
    seen = 0
    for index in sorted(hist):
        seen += hist[index]
        if seen >= rank:
            return hist_value(index)
    return None  # pragma: no cover - rank <= total


class Bucket:
    """Counters for one minute; every field adds up across agents and minutes."""

    __slots__ = (
        "actions",
        "cached_tokens",
        "cost_usd",
        "cpu_n",
        "cpu_sum",
        "events",
        "flushed",
        "heartbeats",
        "hist",
        "input_tokens",
        "late",
        "latency_max",
        "llm_calls",
        "output_tokens",
        "percentiles",
        "restarts",
        "rss_max",
        "samples",
        "stderr_lines",
        "tool_calls",
        "tool_failed",
        "tool_ok",
        "tool_timeouts",
        "unpriced_calls",
    )

    FIELDS = (
        "events",
        "stderr_lines",
        "tool_calls",
        "tool_ok",
        "tool_failed",
        "tool_timeouts",
        "actions",
        "llm_calls",
        "input_tokens",
        "output_tokens",
        "cached_tokens",
        "cost_usd",
        "unpriced_calls",
        "restarts",
        "heartbeats",
        "cpu_sum",
        "cpu_n",
    )

    def __init__(self) -> None:
        self.events = 0
        self.stderr_lines = 0
        self.tool_calls = 0
        self.tool_ok = 0
        self.tool_failed = 0
        self.tool_timeouts = 0
        self.actions = 0
        self.llm_calls = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.cached_tokens = 0
        self.cost_usd = 0.0
        self.unpriced_calls = 0
        self.restarts = 0
        self.heartbeats = 0
        self.cpu_sum = 0.0
        self.cpu_n = 0
        self.rss_max = 0
        self.latency_max = 0.0
        # An array, not a list: a fleet's worth of float objects would slow down every GC pass.
        self.samples = array("d")
        self.hist: dict[int, int] = {}
        # After a minute is persisted, late events go to a separate bucket
        # that is persisted on its own (rollups are insert-only).
        self.flushed = False
        self.late: Bucket | None = None
        # (p50, p95) once computed for a finished merge (see window_numbers); never for a live bucket.
        self.percentiles: tuple[float | None, float | None] | None = None

    def add_latency(self, value_ms: float) -> None:
        if len(self.samples) < MAX_SAMPLES:
            self.samples.append(value_ms)
        index = hist_index(value_ms)
        self.hist[index] = self.hist.get(index, 0) + 1
        if value_ms > self.latency_max:
            self.latency_max = value_ms

    def merge(self, other: Bucket) -> None:
        # Spelled out rather than looped over FIELDS: the fleet view merges
        # thousands of buckets per request.
        self.events += other.events
        self.stderr_lines += other.stderr_lines
        self.tool_calls += other.tool_calls
        self.tool_ok += other.tool_ok
        self.tool_failed += other.tool_failed
        self.tool_timeouts += other.tool_timeouts
        self.actions += other.actions
        self.llm_calls += other.llm_calls
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cached_tokens += other.cached_tokens
        self.cost_usd += other.cost_usd
        self.unpriced_calls += other.unpriced_calls
        self.restarts += other.restarts
        self.heartbeats += other.heartbeats
        self.cpu_sum += other.cpu_sum
        self.cpu_n += other.cpu_n
        if other.rss_max > self.rss_max:
            self.rss_max = other.rss_max
        if other.hist:
            if other.latency_max > self.latency_max:
                self.latency_max = other.latency_max
            room = MAX_SAMPLES - len(self.samples)
            if room > 0:
                self.samples.extend(other.samples[:room])
            hist = self.hist
            for index, count in other.hist.items():
                hist[index] = hist.get(index, 0) + count

    def is_empty(self) -> bool:
        return self.events == 0 and self.tool_timeouts == 0

    @property
    def latency_count(self) -> int:
        return sum(self.hist.values())

    def to_row(self) -> dict[str, Any]:
        samples = sorted(self.samples)
        exact = len(samples) == self.latency_count
        row: dict[str, Any] = {name: getattr(self, name) for name in self.FIELDS}
        row.update(
            rss_max=self.rss_max,
            latency_count=self.latency_count,
            latency_max=self.latency_max,
            latency_p50=nearest_rank(samples, 50) if exact else hist_percentile(self.hist, 50),
            latency_p95=nearest_rank(samples, 95) if exact else hist_percentile(self.hist, 95),
            latency_hist={str(k): v for k, v in self.hist.items()},
        )
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Bucket:
        bucket = cls()
        for name in cls.FIELDS:
            setattr(bucket, name, row.get(name) or 0)
        bucket.rss_max = row.get("rss_max") or 0
        bucket.latency_max = row.get("latency_max") or 0.0
        bucket.hist = {int(k): int(v) for k, v in (row.get("latency_hist") or {}).items()}
        return bucket


class RollupData(msgspec.Struct, kw_only=True):
    """A stored rollup row (``Bucket.to_row()`` as JSON), typed for fast decoding."""

    events: int = 0
    stderr_lines: int = 0
    tool_calls: int = 0
    tool_ok: int = 0
    tool_failed: int = 0
    tool_timeouts: int = 0
    actions: int = 0
    llm_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    unpriced_calls: int = 0
    restarts: int = 0
    heartbeats: int = 0
    cpu_sum: float = 0.0
    cpu_n: int = 0
    rss_max: int = 0
    latency_count: int = 0
    latency_max: float = 0.0
    latency_p50: float | None = None
    latency_p95: float | None = None
    latency_hist: dict[int, int] = {}

    def bucket(self) -> Bucket:
        bucket = Bucket()
        for name in Bucket.FIELDS:
            setattr(bucket, name, getattr(self, name))
        bucket.rss_max = self.rss_max
        bucket.latency_max = self.latency_max
        bucket.hist = self.latency_hist
        return bucket


_rollup_decoder = msgspec.json.Decoder(RollupData)


def decode_rollup(data: bytes) -> RollupData:
    row: RollupData = _rollup_decoder.decode(data)
    return row


def merged(buckets: Iterable[Bucket]) -> Bucket:
    total = Bucket()
    for bucket in buckets:
        total.merge(bucket)
    return total
