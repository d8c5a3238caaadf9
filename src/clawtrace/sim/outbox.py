"""An in-memory outbox that also measures how long the gateway takes to ack.

Latency runs from the moment the client takes an event out of the outbox to
put it in a frame until the ack that covers it: the gateway's decode, store
and ack path, plus the socket both ways. Resends after a reconnect keep
their first send time, so an outage shows up in the tail.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Iterable

from clawtrace.protocol.client import MemoryOutbox
from clawtrace.protocol.messages import Event

# Buckets grow by 2 %: percentiles within 1 % of the exact value, and a fixed,
# small footprint however many events are measured (mergeable across processes).
_GROWTH = math.log(1.02)
_MIN_MS = 0.01
_BUCKETS = 1_200  # up to ~2e8 ms; anything slower lands in the last bucket

# UplinkClient asks for the whole outbox (a huge limit) only to learn the last
# pending seq when draining; that is not a send.
_SEND_LIMIT_MAX = 100_000


class LatencyHistogram:
    def __init__(self, counts: Iterable[int] | None = None, max_ms: float = 0.0) -> None:
        self.counts = list(counts) if counts is not None else [0] * _BUCKETS
        if len(self.counts) != _BUCKETS:
            raise ValueError(f"expected {_BUCKETS} buckets")
        self.max_ms = max_ms

    @property
    def count(self) -> int:
        return sum(self.counts)

    def reset(self) -> None:
        """Forget every sample (e.g. after a benchmark's warm-up)."""
        self.counts = [0] * _BUCKETS
        self.max_ms = 0.0

    def record(self, ms: float) -> None:
        if ms > self.max_ms:
            self.max_ms = ms
        index = 0 if ms < _MIN_MS else min(_BUCKETS - 1, int(math.log(ms / _MIN_MS) / _GROWTH) + 1)
        self.counts[index] += 1

    def merge(self, other: LatencyHistogram) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.max_ms = max(self.max_ms, other.max_ms)

    def percentile(self, p: float) -> float | None:
        """The ``p``-th percentile (0-100) in ms, or None with no samples."""
        total = self.count
        if total == 0:
            return None
        rank = max(1, math.ceil(total * p / 100))
        seen = 0
        for index, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                if index == 0:
                    return _MIN_MS
                # Geometric middle of the bucket, capped by the largest sample seen.
                return min(self.max_ms, _MIN_MS * math.exp((index - 0.5) * _GROWTH))
        return self.max_ms  # pragma: no cover - ranks never exceed the total

    def summary(self) -> dict[str, float | int | None]:
        return {
            "count": self.count,
            "p50": _round(self.percentile(50)),
            "p90": _round(self.percentile(90)),
            "p99": _round(self.percentile(99)),
            "max": round(self.max_ms, 3) if self.count else None,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


class TrackingOutbox(MemoryOutbox):
    """``MemoryOutbox`` plus counters, ack latency and a wake-up on acks."""

    def __init__(
        self,
        latency: LatencyHistogram,
        *,
        clock: Callable[[], float] = time.perf_counter,
        low_water: int = 0,
    ) -> None:
        super().__init__()
        self.latency = latency
        self.clock = clock
        self.appended = 0
        self.acked_count = 0
        # Set when acks bring the outbox down to ``low_water``: lets a producer
        # that paused on a full outbox resume without polling.
        self.low_water = low_water
        self.room = asyncio.Event()
        self._sent: deque[tuple[int, float]] = deque()
        self._sent_mark = 0

    def append(self, event: Event) -> None:
        super().append(event)
        self.appended += 1

    def pending(self, after_seq: int, limit: int) -> list[tuple[int, bytes]]:
        items = super().pending(after_seq, limit)
        if items and limit <= _SEND_LIMIT_MAX and items[-1][0] > self._sent_mark:
            now = self.clock()
            mark = self._sent_mark
            self._sent.extend((seq, now) for seq, _ in items if seq > mark)
            self._sent_mark = items[-1][0]
        return items

    def acked(self, seq: int) -> None:
        sent = self._sent
        if sent and sent[0][0] <= seq:
            now = self.clock()
            record = self.latency.record
            while sent and sent[0][0] <= seq:
                record((now - sent.popleft()[1]) * 1000)
        before = len(self)
        super().acked(seq)
        self.acked_count += before - len(self)
        if len(self) <= self.low_water:
            self.room.set()
