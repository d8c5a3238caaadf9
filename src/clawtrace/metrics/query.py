"""Chart series from minute rollups: the numbers per step, for one scope."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import msgspec

from clawtrace.metrics.buckets import Bucket, RollupData, decode_rollup, hist_percentile, merged, nearest_rank

MAX_POINTS = 10_000


def _ratio(numerator: float, denominator: float) -> float | None:
    return None if denominator == 0 else numerator / denominator


def _p(bucket: Bucket, exact: RollupData | None, percentile: int) -> float | None:
    if exact is not None:
        return exact.latency_p50 if percentile == 50 else exact.latency_p95
    if bucket.samples and len(bucket.samples) == bucket.latency_count:
        return nearest_rank(sorted(bucket.samples), percentile)
    return hist_percentile(bucket.hist, percentile)


# name -> (value of one step's bucket, given the step in seconds and exact per-minute values)
Metric = Callable[[Bucket, float, RollupData | None], float | None]
CHART_METRICS: dict[str, Metric] = {
    "events_per_s": lambda b, s, _: b.events / s,
    "error_lines_per_s": lambda b, s, _: b.stderr_lines / s,
    "tool_calls": lambda b, s, _: float(b.tool_calls),
    "tool_success_rate": lambda b, s, _: _ratio(b.tool_ok, b.tool_ok + b.tool_failed + b.tool_timeouts),
    "tool_failures": lambda b, s, _: float(b.tool_failed + b.tool_timeouts),
    "tokens": lambda b, s, _: float(b.input_tokens + b.output_tokens),
    "tokens_per_action": lambda b, s, _: _ratio(b.input_tokens + b.output_tokens, b.actions),
    "cost_usd": lambda b, s, _: b.cost_usd,
    "cost_usd_per_hour": lambda b, s, _: b.cost_usd / s * 3600,
    "llm_calls": lambda b, s, _: float(b.llm_calls),
    "reasoning_latency_p50_ms": lambda b, s, exact: _p(b, exact, 50),
    "reasoning_latency_p95_ms": lambda b, s, exact: _p(b, exact, 95),
    "reasoning_latency_max_ms": lambda b, s, _: b.latency_max if b.latency_count else None,
    "restarts": lambda b, s, _: float(b.restarts),
    "cpu_percent": lambda b, s, _: _ratio(b.cpu_sum, b.cpu_n),
    "rss_bytes": lambda b, s, _: float(b.rss_max) if b.rss_max else None,
    "heartbeats": lambda b, s, _: float(b.heartbeats),
}


class Series(msgspec.Struct, kw_only=True):
    metric: str
    scope: str
    step: int
    since: float
    until: float
    # [step start (epoch seconds), value or null when there is no data]
    points: list[tuple[float, float | None]]


def series(
    metrics: Sequence[str],
    scope: str,
    stored: Sequence[tuple[int, bytes]],
    open_buckets: dict[int, Bucket],
    since: float,
    until: float,
    step: int,
) -> list[Series]:
    """Merge stored and not-yet-stored minutes into one value per step."""
    first = int(since // step) * step
    count = max(1, math.ceil((until - first) / step))
    if count > MAX_POINTS:
        raise ValueError(
            f"{count} points requested; at most {MAX_POINTS}: widen the step or narrow the range"
        )
    buckets: dict[int, Bucket] = {}
    exact: dict[int, RollupData | None] = {}
    sources: dict[int, int] = {}

    def add(minute: int, bucket: Bucket, row: RollupData | None) -> None:
        index = (minute * 60 - first) // step
        if not 0 <= index < count:
            return
        seen = sources.get(index, 0)
        sources[index] = seen + 1
        exact[index] = row
        if seen == 0:
            buckets[index] = bucket  # the common case at a 1-minute step: nothing to merge
            return
        if seen == 1:
            buckets[index] = merged([buckets[index]])  # copy before adding to it
        buckets[index].merge(bucket)

    for minute, data in stored:
        row = decode_rollup(data)
        add(minute, row.bucket(), row)
    for minute, bucket in open_buckets.items():
        add(minute, bucket, None)
    out: list[Series] = []
    for name in metrics:
        compute = CHART_METRICS[name]
        points: list[tuple[float, float | None]] = []
        for index in range(count):
            step_bucket = buckets.get(index)
            if step_bucket is None:
                points.append((float(first + index * step), None))
                continue
            # One stored minute alone in its step keeps its exact percentiles.
            exact_row = exact.get(index) if sources.get(index) == 1 else None
            start = first + index * step
            # The step still in progress is a rate over the time it has covered so far.
            seconds = max(1.0, min(float(step), until - start))
            points.append((float(start), compute(step_bucket, seconds, exact_row)))
        out.append(
            Series(metric=name, scope=scope, step=step, since=float(first), until=until, points=points)
        )
    return out
