"""The metrics stage: per-agent numbers in memory, minute rollups to the store.

It consumes accepted events from the bus (``events.<env>.<agent>``, a JSON
array per message), so it never re-reads stored events. A publisher in the
same process that has the events decoded already (the worker) publishes a
``DecodedPayload``, and the stage takes its events as they are. A 1 s tick expires
tool calls that never got a result and closes finished minutes into rollup
rows (per agent and per group) for the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import msgspec

from clawtrace.bus import Bus, Subscription
from clawtrace.metrics.agent import LIVE_MINUTES, AgentMetrics, AnyMetricEvent
from clawtrace.metrics.buckets import Bucket
from clawtrace.metrics.prices import PriceTable
from clawtrace.metrics.prometheus_state import PrometheusCounters
from clawtrace.metrics.scopes import agent_scope, group_scopes
from clawtrace.store import AgentInfo

log = logging.getLogger("clawtrace.metrics")

_decoder = msgspec.json.Decoder(list[AnyMetricEvent])

RollupRow = tuple[str, int, bytes]  # (scope, minute, bucket row as JSON)
AgentDirectory = Callable[[str], AgentInfo | None]
RollupSink = Callable[[list[RollupRow]], "asyncio.Future[None]"]
# Called after each batch of an agent's events is counted (the alert engine).
ObserveListener = Callable[[str, AgentMetrics], None]


class DecodedPayload(bytes):
    """A bus payload of events (their JSON array, for any subscriber) that also carries them decoded
    as the stage reads them, for the stage in the same process (the in-process bus hands the very
    object over): one decode fewer per event."""

    events: list[AnyMetricEvent]

    @classmethod
    def of(cls, data: bytes, events: list[AnyMetricEvent]) -> DecodedPayload:
        payload = cls(data)
        payload.events = events
        return payload


@dataclass(slots=True)
class MetricsSettings:
    window_seconds: float = 300.0
    tool_timeout_seconds: float = 300.0
    # A minute is persisted once this many seconds have passed after its end.
    close_after_seconds: float = 60.0


@dataclass
class _Known:
    env: str
    region: str
    labels: dict[str, str] = field(default_factory=dict)


class MetricsStage:
    def __init__(
        self,
        prices: PriceTable,
        directory: AgentDirectory,
        settings: MetricsSettings | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.prices = prices
        self.directory = directory
        self.settings = settings or MetricsSettings()
        self.clock = clock
        self.agents: dict[str, AgentMetrics] = {}
        self.known: dict[str, _Known] = {}
        self.prometheus = PrometheusCounters()
        self.events_observed = 0
        self.decode_errors = 0
        self._last_closed: int | None = None
        self.listeners: list[ObserveListener] = []
        self._subscription: Subscription | None = None
        self._ticker: asyncio.Task[None] | None = None

    # --- wiring -----------------------------------------------------------
    async def start(self, bus: Bus, sink: RollupSink) -> None:
        self._subscription = await bus.subscribe("events.>", self._on_message)
        self._ticker = asyncio.create_task(self._tick_loop(sink))

    async def close(self) -> None:
        if self._subscription is not None:
            await self._subscription.unsubscribe()
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker

    async def _tick_loop(self, sink: RollupSink) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                rows = self.tick()
                if rows:
                    await sink(rows)
            except Exception:
                log.exception("metrics tick failed; will retry")

    def _on_message(self, subject: str, data: bytes) -> None:
        _, env, agent = subject.split(".", 2)
        if isinstance(data, DecodedPayload):
            self.observe(env, agent, data.events)
            return
        try:
            events = _decoder.decode(data)
        except msgspec.DecodeError:
            self.decode_errors += 1
            return
        self.observe(env, agent, events)

    # --- ingest -----------------------------------------------------------
    def _agent(self, env: str, agent: str) -> AgentMetrics:
        metrics = self.agents.get(agent)
        if metrics is None:
            metrics = self.agents[agent] = AgentMetrics(agent)
        if agent not in self.known:
            info = self.directory(agent)
            self.known[agent] = (
                _Known(env, "") if info is None else _Known(info.env, info.region, dict(info.labels))
            )
        return metrics

    def observe(self, env: str, agent: str, events: Iterable[AnyMetricEvent]) -> None:
        metrics = self._agent(env, agent)
        known = self.known[agent]
        received = self.clock()
        counters = self.prometheus.group(known.env, known.region)
        prices = self.prices
        observed = 0
        try:
            for event in events:
                counters.observe(event, metrics.observe(event, received, prices))
                observed += 1
        finally:
            self.events_observed += observed
        for listener in self.listeners:
            try:
                listener(agent, metrics)
            except Exception:
                log.exception("a metrics listener failed on events of %s", agent)

    def refresh_agent(self, agent: str) -> None:
        """Re-read an agent's env/region/labels (after a new hello)."""
        self.known.pop(agent, None)

    # --- time -------------------------------------------------------------
    def tick(self, now: float | None = None) -> list[RollupRow]:
        """Expire unanswered tool calls and close finished minutes into rollup rows."""
        now = self.clock() if now is None else now
        settings = self.settings
        cutoff = now - settings.tool_timeout_seconds
        for agent, metrics in self.agents.items():
            if metrics.pending_calls:
                expired = metrics.expire_calls(cutoff, int(now // 60))
                if expired:
                    known = self.known.get(agent) or _Known("", "")
                    self.prometheus.group(known.env, known.region).tool_results["timeout"] += expired
        last_closed = int((now - settings.close_after_seconds) // 60) - 1
        if last_closed != self._last_closed:
            # A minute ended: close it for everyone (and forget what left the hour).
            rows = self._close_minutes(last_closed, self.agents)
            self._last_closed = last_closed
            oldest_live = int(now // 60) - LIVE_MINUTES
            for metrics in self.agents.values():
                metrics.forget_before(oldest_live)
        else:
            # Otherwise only agents that received events for already closed minutes.
            late = {agent: m for agent, m in self.agents.items() if m.flush_due}
            rows = self._close_minutes(last_closed, late) if late else []
        return rows

    def flush_all(self) -> list[RollupRow]:
        """Rollup rows for every minute not yet persisted, open ones included (at shutdown)."""
        return self._close_minutes(None, self.agents)

    def _close_minutes(self, last_closed: int | None, agents: dict[str, AgentMetrics]) -> list[RollupRow]:
        groups: dict[tuple[str, int], Bucket] = {}
        rows: list[RollupRow] = []
        for agent, metrics in agents.items():
            metrics.flush_due = False
            metrics.closed_through = last_closed
            known = self.known.get(agent) or _Known("", "")
            scopes = list(group_scopes(known.env, known.region, known.labels))
            for minute, bucket in metrics.buckets.items():
                if last_closed is not None and minute > last_closed:
                    continue
                part: Bucket | None
                if not bucket.flushed:
                    part = bucket
                    bucket.flushed = True
                else:
                    part, bucket.late = bucket.late, None
                    if part is not None:
                        bucket.merge(part)
                if part is None or part.is_empty():
                    continue
                rows.append((agent_scope(agent), minute, msgspec.json.encode(part.to_row())))
                for scope in scopes:
                    group = groups.get((scope, minute))
                    if group is None:
                        group = groups[(scope, minute)] = Bucket()
                    group.merge(part)
        for (scope, minute), bucket in groups.items():
            rows.append((scope, minute, msgspec.json.encode(bucket.to_row())))
        return rows

    # --- reads ------------------------------------------------------------
    def group_of(self, agent: str) -> _Known | None:
        return self.known.get(agent)

    def open_buckets(self, agents: Iterable[str]) -> dict[int, Bucket]:
        """Minutes of these agents not yet persisted, merged per minute."""
        out: dict[int, Bucket] = {}
        for agent in agents:
            metrics = self.agents.get(agent)
            if metrics is None:
                continue
            for minute, bucket in metrics.buckets.items():
                part = bucket.late if bucket.flushed else bucket
                if part is None:
                    continue
                total = out.get(minute)
                if total is None:
                    total = out[minute] = Bucket()
                total.merge(part)
        return out

    def agents_in(
        self, *, env: str | None = None, region: str | None = None, label: str | None = None
    ) -> list[str]:
        key, _, value = (label or "").partition("=")
        out = []
        for agent, known in self.known.items():
            if env is not None and known.env != env:
                continue
            if region is not None and known.region != region:
                continue
            if label and known.labels.get(key) != value:
                continue
            out.append(agent)
        return out
