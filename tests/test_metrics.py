"""The metrics stage, one event at a time, against numbers worked out by hand.

Every test drives ``MetricsStage`` with an injected clock, so "now" and the
gateway receive time of each batch are exact; the expected values are
written out as literals (with the arithmetic in a comment), not recomputed
with the code under test. Definitions: docs/metrics.md.
"""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

from clawtrace.gateway.settings import load_settings
from clawtrace.metrics import MetricsSettings, MetricsStage, ModelPrice, PriceTable
from clawtrace.metrics.agent import (
    AnyMetricEvent,
    MHeartbeat,
    MLifecycle,
    MLlmCall,
    MLog,
    MThought,
    MToolCall,
    MToolResult,
)
from clawtrace.metrics.buckets import Bucket, nearest_rank
from clawtrace.metrics.fleet import (
    SORT_KEYS,
    FleetRow,
    fleet_rows,
    sort_rows,
    status_of,
    totals,
    window_seconds,
)
from clawtrace.metrics.query import CHART_METRICS, series
from clawtrace.metrics.scopes import group_scopes, scope_for
from clawtrace.protocol import Heartbeat, LlmCall, Log, Thought, ToolCall, ToolResult, encode
from clawtrace.store import AgentInfo, AgentRecord, open_store

# A minute boundary that is also a 5-minute boundary (1_800_000_000 / 300 = 6_000_000).
T0 = 1_800_000_000.0
M0 = int(T0 // 60)

PRICES = PriceTable(
    {
        # USD per million tokens.
        "test-model": ModelPrice(input=2.0, cached_input=0.5, output=8.0),
        # No cached price: cached input is charged at the input price.
        "test-model-large": ModelPrice(input=10.0, output=30.0),
    }
)

AGENTS = {
    "a1": AgentInfo("a1", "dev", "eu-west-1", {"team": "search"}, None),
    "a2": AgentInfo("a2", "prod", "us-east-1", {"team": "search", "tier": "gold"}, None),
}

_seq = itertools.count(1)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def at(offset: float) -> datetime:
    return datetime.fromtimestamp(T0 + offset, UTC)


def thought(t: float) -> MThought:
    return MThought(seq=next(_seq), ts=at(t))


def llm(
    t: float,
    model: str = "test-model",
    inp: int = 0,
    out: int = 0,
    cached: int = 0,
    ms: float = 0.0,
    cost: float | None = None,
) -> MLlmCall:
    return MLlmCall(
        seq=next(_seq),
        ts=at(t),
        model=model,
        input_tokens=inp,
        output_tokens=out,
        cached_input_tokens=cached,
        duration_ms=ms,
        cost_usd=cost,
    )


def call(t: float, call_id: str) -> MToolCall:
    return MToolCall(seq=next(_seq), ts=at(t), call_id=call_id)


def result(t: float, call_id: str, ok: bool) -> MToolResult:
    return MToolResult(seq=next(_seq), ts=at(t), call_id=call_id, ok=ok)


def heartbeat(t: float, cpu: float | None = None, rss: int | None = None) -> MHeartbeat:
    return MHeartbeat(seq=next(_seq), ts=at(t), cpu_percent=cpu, rss_bytes=rss)


def log(t: float, stream: str = "stdout") -> MLog:
    return MLog(seq=next(_seq), ts=at(t), stream=stream)


def lifecycle(t: float, state: str) -> MLifecycle:
    return MLifecycle(seq=next(_seq), ts=at(t), state=state)


def calls(prefix: str, times: range, ok: bool) -> list[AnyMetricEvent]:
    """A tool call and its result at each of ``times``."""
    out: list[AnyMetricEvent] = []
    for t in times:
        out += [call(t, f"{prefix}{t}"), result(t, f"{prefix}{t}", ok)]
    return out


def make_stage(clock: Clock, **settings: float) -> MetricsStage:
    return MetricsStage(PRICES, AGENTS.get, MetricsSettings(**settings), clock=clock)


def feed(
    stage: MetricsStage, clock: Clock, received: float, agent: str, events: list[AnyMetricEvent]
) -> None:
    """Events as one bus message, received by the gateway at T0 + ``received``."""
    clock.now = T0 + received
    stage.observe(AGENTS[agent].env if agent in AGENTS else "dev", agent, events)


def record(agent: str = "a1", **fields: Any) -> AgentRecord:
    info = AGENTS.get(agent) or AgentInfo(agent, "dev", "eu-west-1", {}, None)
    values: dict[str, Any] = {
        "agent": agent,
        "env": info.env,
        "region": info.region,
        "labels": dict(info.labels),
        "release": None,
        "connected": True,
        "first_seen": T0,
        "last_connect": T0,
        "last_disconnect": None,
        "last_event": None,
        "last_heartbeat": None,
        "last_seq": 0,
        "cpu_percent": None,
        "rss_bytes": None,
    }
    values.update(fields)
    return AgentRecord(**values)


def row_of(stage: MetricsStage, now: float, agent: str = "a1", **fields: Any) -> FleetRow:
    rows, _ = fleet_rows(stage, [record(agent, **fields)], {agent}, now)
    return rows[0]


def decoded(rows: list[tuple[str, int, bytes]]) -> dict[tuple[str, int], list[dict[str, Any]]]:
    out: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for scope, minute, data in rows:
        out.setdefault((scope, minute), []).append(msgspec.json.decode(data))
    return out


# --- the live numbers of one agent ----------------------------------------------------


def known_sequence(stage: MetricsStage, clock: Clock) -> None:
    """28 events of agent a1, all in minute M0, in two bus messages."""
    feed(
        stage,
        clock,
        20,
        "a1",
        [
            heartbeat(1, cpu=10.0, rss=100_000_000),
            thought(2),
            # (1000 - 400) * 2.0 + 400 * 0.5 + 200 * 8.0 = 3000 -> $0.003
            llm(3, "test-model", inp=1000, out=200, cached=400, ms=1200),
            call(4, "c1"),
            result(5, "c1", ok=True),
            thought(10),
            call(12.5, "c2"),  # no llm_call since the thought: a 2500 ms sample
            result(13, "c2", ok=False),
            llm(14, "mystery-model", inp=500, out=100, ms=600),  # unknown, no cost: $0, unpriced
            llm(15, "mystery-model", inp=300, out=50, ms=3000, cost=0.25),  # cost_usd wins
            call(16, "c3"),
            result(17, "c3", ok=False),
            call(18, "c4"),
            result(19, "c4", ok=False),
        ],
    )
    feed(
        stage,
        clock,
        45,
        "a1",
        [
            log(20, "stderr"),
            log(21, "stderr"),
            log(22, "stderr"),
            log(23, "stdout"),
            log(24, "stdout"),
            lifecycle(25, "restarting"),
            lifecycle(26, "started"),
            heartbeat(40, cpu=30.0, rss=300_000_000),
            call(41, "c5"),
            result(42, "c5", ok=True),
            call(43, "c6"),
            result(44, "c6", ok=False),
            # cached at the input price: (400 + 600) * 10 + 100 * 30 = 13000 -> $0.013
            llm(44.5, "test-model-large", inp=1000, out=100, cached=600, ms=800),
            call(45, "c7"),  # never answered
        ],
    )


def test_every_live_number_of_a_known_sequence() -> None:
    clock = Clock(T0)
    stage = make_stage(clock)
    known_sequence(stage, clock)
    now = T0 + 57.5
    assert window_seconds(now, 300) == (M0 - 4, 297.5)  # 4 whole minutes + 57.5 s of this one
    row = row_of(stage, now)

    assert row.events_per_s == pytest.approx(28 / 297.5)
    assert row.error_lines_per_s == pytest.approx(3 / 297.5)
    assert row.tool_calls == 7
    assert row.tool_success_rate == pytest.approx(2 / 6)  # ok: c1 c5; failed: c2 c3 c4 c6; c7 pending
    assert row.consecutive_failures == 1  # c2 c3 c4 -> 3, c5 resets, c6 -> 1
    # (1000+200) + (500+100) + (300+50) + (1000+100) = 3250 tokens over 6 completed calls
    assert row.tokens_per_action == pytest.approx(3250 / 6)
    # samples 1200, 2500, 600, 3000, 800 -> sorted 600 800 1200 2500 3000
    assert row.reasoning_latency_p50_ms == 1200  # rank ceil(0.50 * 5) = 3
    assert row.reasoning_latency_p95_ms == 3000  # rank ceil(0.95 * 5) = 5
    assert row.reasoning_latency_max_ms == 3000
    assert row.cost_usd_last_hour == pytest.approx(0.266)  # 0.003 + 0 + 0.25 + 0.013
    assert row.cost_usd_per_hour_rate == pytest.approx(0.266 / 297.5 * 3600)
    assert row.unpriced_llm_calls == 1
    assert row.heartbeat_age_s == 12.5  # last heartbeat received at T0+45 (server time)
    assert (row.cpu_percent, row.rss_bytes) == (30.0, 300_000_000)
    assert (row.restarts_last_hour, row.restarts_total) == (1, 1)
    assert row.status == "healthy"  # 1 failure in a row; 6 results < 10

    counters = stage.prometheus.group("dev", "eu-west-1")
    assert counters.events == {
        "heartbeat": 2,
        "thought": 2,
        "llm_call": 4,
        "tool_call": 7,
        "tool_result": 6,
        "log": 5,
        "lifecycle": 2,
    }
    assert counters.tool_results == {"ok": 2, "error": 4, "timeout": 0}
    assert counters.cost_usd == pytest.approx(0.266)
    assert (counters.stderr_lines, counters.restarts) == (3, 1)
    assert counters.input_tokens.count == 4 and counters.input_tokens.total == 2800
    assert counters.llm_duration.total == pytest.approx(1.2 + 0.6 + 3.0 + 0.8)


def test_the_window_moves_with_the_clock() -> None:
    clock = Clock(T0)
    stage = make_stage(clock)
    known_sequence(stage, clock)
    # Four minutes later M0 is the oldest whole minute of the window: 4 * 60 + 10 s.
    row = row_of(stage, T0 + 250)
    assert row.events_per_s == pytest.approx(28 / 250)
    # Five minutes later M0 has left the window but is still in the last hour.
    row = row_of(stage, T0 + 300)
    assert row.events_per_s == 0.0 and row.tool_calls == 0
    assert row.tool_success_rate is None and row.tokens_per_action is None
    assert row.reasoning_latency_p50_ms is None and row.reasoning_latency_max_ms is None
    assert row.cost_usd_per_hour_rate == 0.0
    assert row.cost_usd_last_hour == pytest.approx(0.266)
    assert row.restarts_last_hour == 1
    # ... until the hour is over: the current minute and the 59 before it.
    assert row_of(stage, T0 + 59 * 60 + 59).cost_usd_last_hour == pytest.approx(0.266)
    late = row_of(stage, T0 + 60 * 60)
    assert late.cost_usd_last_hour == 0.0 and late.restarts_last_hour == 0
    assert late.restarts_total == 1 and late.consecutive_failures == 1


def test_percentiles_are_nearest_rank() -> None:
    clock = Clock(T0)
    stage = make_stage(clock)
    # 20 llm calls of 100, 200, ... 2000 ms, in reverse order.
    feed(stage, clock, 50, "a1", [llm(1 + i, ms=100.0 * (20 - i)) for i in range(20)])
    row = row_of(stage, T0 + 50)
    assert row.reasoning_latency_p50_ms == 1000  # rank 10 of 20
    assert row.reasoning_latency_p95_ms == 1900  # rank 19 of 20
    assert row.reasoning_latency_max_ms == 2000
    assert nearest_rank([5.0], 50) == 5.0 and nearest_rank([], 50) is None


def test_reasoning_latency_gap_rule() -> None:
    clock = Clock(T0)
    stage = make_stage(clock)
    feed(
        stage,
        clock,
        55,
        "a1",
        [
            thought(0),
            call(1.5, "g1"),  # thought -> tool_call, no llm_call: 1500 ms
            thought(10),
            llm(11, ms=700),
            call(12, "g2"),  # an llm_call came between: only its 700 ms
            thought(20),
            thought(21),
            call(21.25, "g3"),  # from the latest thought: 250 ms
            call(30, "g4"),  # no thought before it: no sample
            llm(40, ms=900),  # an llm_call without a thought still counts: 900 ms
            thought(50),
            call(49, "g5"),  # agent clock went backwards: 0 ms, never negative
        ],
    )
    bucket = stage.agents["a1"].buckets[M0]
    assert sorted(bucket.samples) == [0.0, 250.0, 700.0, 900.0, 1500.0]
    row = row_of(stage, T0 + 55)
    assert row.reasoning_latency_p50_ms == 700 and row.reasoning_latency_max_ms == 1500


def test_consecutive_failures_reset_by_a_success_only() -> None:
    clock = Clock(T0)
    stage = make_stage(clock)
    events: list[AnyMetricEvent] = []
    for i in range(12):
        events += [call(i, f"f{i}"), result(i + 0.5, f"f{i}", ok=False)]
    feed(stage, clock, 30, "a1", events)
    assert row_of(stage, T0 + 30).consecutive_failures == 12
    assert row_of(stage, T0 + 30).status == "degraded"
    feed(stage, clock, 31, "a1", [thought(13), llm(13.5, ms=10), log(14, "stderr")])
    assert row_of(stage, T0 + 31).consecutive_failures == 12  # only a tool result resets it
    feed(stage, clock, 32, "a1", [call(15, "ok1"), result(15.5, "ok1", ok=True)])
    assert row_of(stage, T0 + 32).consecutive_failures == 0
    feed(stage, clock, 33, "a1", [call(16, "f16"), result(16.5, "f16", ok=False)])
    assert row_of(stage, T0 + 33).consecutive_failures == 1


# --- timeouts and out-of-order arrival -------------------------------------------------


def test_a_call_without_result_times_out_and_its_late_result_is_ignored() -> None:
    clock = Clock(T0)
    stage = make_stage(clock, tool_timeout_seconds=300)
    feed(stage, clock, 10, "a1", [call(5, "ok1"), result(6, "ok1", ok=True), call(9, "hung")])
    row = row_of(stage, T0 + 10)
    assert (row.tool_calls, row.tool_success_rate, row.consecutive_failures) == (2, 1.0, 0)
    # Not yet: the call was received at T0+10, its deadline is T0+310.
    stage.tick(T0 + 310)
    assert "hung" in stage.agents["a1"].pending_calls
    stage.tick(T0 + 310.5)
    assert stage.agents["a1"].pending_calls == {}
    assert stage.prometheus.group("dev", "eu-west-1").tool_results == {"ok": 1, "error": 0, "timeout": 1}
    # The timeout is a failed result of the minute it expires in (M0+5), so it shows in the
    # live window while the call's own minute (M0) has already left it.
    row = row_of(stage, T0 + 311)
    assert row.consecutive_failures == 1
    assert row.tool_calls == 0 and row.tool_success_rate == 0.0
    assert row.tokens_per_action is None  # a timeout is not an action
    # The late result is ignored everywhere.
    feed(stage, clock, 320, "a1", [result(318, "hung", ok=True)])
    row = row_of(stage, T0 + 320)
    assert row.consecutive_failures == 1 and row.tool_success_rate == 0.0
    assert stage.prometheus.group("dev", "eu-west-1").tool_results == {"ok": 1, "error": 0, "timeout": 1}
    assert stage.prometheus.group("dev", "eu-west-1").events["tool_result"] == 2
    rows = decoded(stage.tick(T0 + 600))
    minute5 = rows[("agent:a1", M0 + 5)]
    assert [(r["tool_timeouts"], r["tool_ok"], r["actions"], r["events"]) for r in minute5] == [(1, 0, 0, 1)]


def test_a_result_that_arrives_before_its_call_completes_it() -> None:
    clock = Clock(T0)
    stage = make_stage(clock, tool_timeout_seconds=60)
    feed(stage, clock, 10, "a1", [result(6, "early", ok=True)])
    feed(stage, clock, 11, "a1", [call(5, "early")])
    stage.tick(T0 + 500)  # long past the timeout
    row = row_of(stage, T0 + 500)
    assert row.consecutive_failures == 0
    assert stage.prometheus.group("dev", "eu-west-1").tool_results == {"ok": 1, "error": 0, "timeout": 0}
    totals_m0 = row_of(stage, T0 + 30)
    assert (totals_m0.tool_calls, totals_m0.tool_success_rate, totals_m0.tokens_per_action) == (1, 1.0, 0.0)


def test_a_result_counts_in_the_minute_of_its_call() -> None:
    clock = Clock(T0)
    stage = make_stage(clock)
    feed(stage, clock, 50, "a1", [call(50, "x"), llm(51, inp=600, out=0, ms=5)])
    feed(stage, clock, 70, "a1", [result(70, "x", ok=False), llm(71, inp=0, out=10, ms=5)])
    buckets = stage.agents["a1"].buckets
    assert (buckets[M0].tool_calls, buckets[M0].tool_failed, buckets[M0].actions) == (1, 1, 1)
    assert (buckets[M0 + 1].tool_failed, buckets[M0 + 1].actions) == (0, 0)
    assert row_of(stage, T0 + 75).tokens_per_action == 610.0


def test_events_land_in_the_minute_of_their_own_timestamp() -> None:
    clock = Clock(T0)
    stage = make_stage(clock)
    feed(
        stage,
        clock,
        30,
        "a1",
        [
            llm(-180, inp=100, ms=1, cost=1.0),  # 3 minutes ago: in the window (M0-3)
            llm(-600, inp=200, ms=1, cost=2.0),  # 10 minutes ago: last hour only (M0-10)
            llm(-4000, inp=400, ms=1, cost=4.0),  # 67 minutes ago: rollups only (M0-67)
            llm(30 + 59, inp=800, ms=1, cost=8.0),  # 59 s ahead of the gateway: kept (M0+1)
            llm(30 + 61, inp=1600, ms=1, cost=16.0),  # 61 s ahead: clamped to receive time (M0)
        ],
    )
    assert sorted(stage.agents["a1"].buckets) == [M0 - 67, M0 - 10, M0 - 3, M0, M0 + 1]
    assert stage.agents["a1"].buckets[M0].input_tokens == 1600
    row = row_of(stage, T0 + 30)
    assert row.cost_usd_last_hour == pytest.approx(1 + 2 + 8 + 16)
    assert row.cost_usd_per_hour_rate == pytest.approx((1 + 8 + 16) / 270 * 3600)
    rows = decoded(stage.tick(T0 + 30))
    # Minutes that ended over a minute ago are persisted at once; the oldest is then forgotten.
    assert {minute for scope, minute in rows if scope == "agent:a1"} == {M0 - 67, M0 - 10, M0 - 3}
    assert rows[("agent:a1", M0 - 67)][0]["cost_usd"] == 4.0
    assert M0 - 67 not in stage.agents["a1"].buckets


def test_events_from_the_bus_decode_into_metric_events() -> None:
    clock = Clock(T0 + 30)
    stage = make_stage(clock)
    protocol_events = [
        Heartbeat(seq=1, ts=at(1), session="s", cpu_percent=7.5, rss_bytes=42),
        Thought(seq=2, ts=at(2), session="s", text="think"),
        LlmCall(
            seq=3,
            ts=at(3),
            session="s",
            model="openai/test-model",
            input_tokens=10,
            output_tokens=5,
            duration_ms=250.0,
        ),
        ToolCall(seq=4, ts=at(4), session="s", call_id="k", tool="exec", args={"command": "ls"}),
        ToolResult(seq=5, ts=at(5), session="s", call_id="k", ok=True, duration_ms=3.0, output="x"),
        Log(seq=6, ts=at(6), session="s", stream="stderr", line="oops"),
    ]
    payload = b"[" + b",".join(encode(e) for e in protocol_events) + b"]"
    stage._on_message("events.dev.a1", payload)
    stage._on_message("events.dev.a1", b"not json")
    assert (stage.events_observed, stage.decode_errors) == (6, 1)
    row = row_of(stage, T0 + 30)
    assert (row.cpu_percent, row.rss_bytes, row.tool_success_rate) == (7.5, 42, 1.0)
    assert row.cost_usd_last_hour == pytest.approx((10 * 2.0 + 5 * 8.0) / 1e6)  # provider prefix ignored
    assert row.error_lines_per_s == pytest.approx(1 / 270)


# --- prices ------------------------------------------------------------------------------


def test_the_shipped_price_table() -> None:
    table = PriceTable.load()
    sonnet = table.lookup("claude-sonnet-4")
    assert sonnet == ModelPrice(input=3.0, cached_input=0.3, output=15.0)
    # Provider prefix ignored, longest prefix wins, case does not matter.
    assert table.lookup("anthropic/claude-sonnet-4-20250514") == sonnet
    assert table.lookup("gpt-4.1-mini-2025-04-14") == ModelPrice(input=0.4, cached_input=0.1, output=1.6)
    assert table.lookup("OpenAI/GPT-4.1") == ModelPrice(input=2.0, cached_input=0.5, output=8.0)
    assert table.lookup("llama-3-70b") is None
    assert table.cost("llama-3-70b", 1000, 1000) is None
    # 1M input of which 400k cached, 100k output: 0.6 * 3 + 0.4 * 0.3 + 0.1 * 15 = 3.42
    assert table.cost("claude-sonnet-4", 1_000_000, 100_000, 400_000) == pytest.approx(3.42)
    # More cached tokens than input tokens: capped at the input tokens.
    assert table.cost("claude-sonnet-4", 1_000_000, 0, 5_000_000) == pytest.approx(0.3)


def test_price_overrides_from_the_gateway_config(tmp_path: Path) -> None:
    config = tmp_path / "clawtrace.toml"
    config.write_text(
        "[gateway]\nmetrics_window_seconds = 600\n\n"
        '[gateway.prices."my-finetune"]\ninput = 4.0\ncached_input = 1.0\noutput = 16.0\n\n'
        '[gateway.prices."gpt-4o"]\ninput = 1.0\noutput = 1.0\n'
    )
    settings = load_settings(config)
    assert settings.metrics_window_seconds == 600
    table = PriceTable.load(overrides=settings.prices)
    assert table.cost("my-finetune-v2", 1_000_000, 1_000_000, 500_000) == pytest.approx(0.5 * 4 + 0.5 + 16)
    assert table.cost("gpt-4o", 1_000_000, 1_000_000, 1_000_000) == pytest.approx(2.0)  # no cached price
    assert table.lookup("gpt-4o-mini") == ModelPrice(input=0.15, cached_input=0.075, output=0.6)
    bad = tmp_path / "prices.toml"
    bad.write_text('[models."x"]\ninput = 1.0\n')  # output missing
    with pytest.raises(ValueError, match="cannot read the price table"):
        PriceTable.load(bad)


# --- minute rollups and charts -----------------------------------------------------------


def two_agents(stage: MetricsStage, clock: Clock) -> None:
    feed(
        stage,
        clock,
        30,
        "a1",
        [
            llm(5, inp=1000, out=200, ms=1000),  # 1000*2 + 200*8 -> $0.0036
            call(6, "x1"),
            result(7, "x1", ok=True),
            log(8, "stderr"),
        ],
    )
    feed(
        stage,
        clock,
        31,
        "a2",
        [
            llm(10, inp=500, out=100, ms=2000),  # 500*2 + 100*8 -> $0.0018
            call(11, "y1"),
            result(12, "y1", ok=False),
        ],
    )
    feed(stage, clock, 70, "a1", [heartbeat(61, cpu=20.0, rss=1000), heartbeat(62, cpu=40.0, rss=3000)])


def test_closed_minutes_become_rollup_rows_per_agent_and_group() -> None:
    clock = Clock(T0)
    stage = make_stage(clock)
    two_agents(stage, clock)
    assert stage.tick(T0 + 119.9) == []  # M0 closes 60 s after its end
    rows = decoded(stage.tick(T0 + 120))
    assert sorted(scope for scope, _ in rows) == [
        "agent:a1",
        "agent:a2",
        "env:dev",
        "env:prod",
        "env_region:dev/eu-west-1",
        "env_region:prod/us-east-1",
        "fleet",
        "label:team=search",
        "label:tier=gold",
        "region:eu-west-1",
        "region:us-east-1",
    ]
    assert {minute for _, minute in rows} == {M0}
    fleet = rows[("fleet", M0)][0]
    counts = ("events", "tool_calls", "tool_ok", "tool_failed", "actions", "stderr_lines")
    assert {k: fleet[k] for k in counts} == {
        "events": 7,
        "tool_calls": 2,
        "tool_ok": 1,
        "tool_failed": 1,
        "actions": 2,
        "stderr_lines": 1,
    }
    assert (fleet["input_tokens"], fleet["output_tokens"]) == (1500, 300)
    assert fleet["cost_usd"] == pytest.approx(0.0054)
    assert (fleet["latency_count"], fleet["latency_p50"], fleet["latency_p95"], fleet["latency_max"]) == (
        2,
        1000,
        2000,
        2000,
    )
    assert rows[("label:team=search", M0)] == rows[("fleet", M0)]  # both agents carry team=search
    dev = rows[("env:dev", M0)][0]
    assert (dev["events"], dev["input_tokens"], dev["tool_ok"]) == (4, 1000, 1)
    assert rows[("env:dev", M0)] == rows[("agent:a1", M0)]
    assert rows[("label:tier=gold", M0)] == rows[("agent:a2", M0)]
    assert stage.tick(T0 + 120) == []  # nothing twice
    rows = decoded(stage.tick(T0 + 180))
    a1 = rows[("agent:a1", M0 + 1)][0]
    assert (a1["heartbeats"], a1["cpu_sum"], a1["cpu_n"], a1["rss_max"]) == (2, 60.0, 2, 3000)
    assert ("agent:a2", M0 + 1) not in rows  # an empty minute writes no row


def test_late_events_add_a_partial_row_and_charts_merge_them(tmp_path: Path) -> None:
    store = open_store("sqlite://", tmp_path)
    clock = Clock(T0)
    stage = make_stage(clock)
    two_agents(stage, clock)
    store.write_rollups(stage.tick(T0 + 120))
    # An event of minute M0 arrives after M0 was persisted.
    feed(stage, clock, 130, "a1", [llm(20, inp=100, out=0, ms=500)])  # 100 * 2 -> $0.0002
    assert stage.open_buckets(["a1"])[M0].input_tokens == 100  # only the part not yet stored
    late_rows = stage.tick(T0 + 131)
    store.write_rollups(late_rows)
    late = decoded(late_rows)
    assert sorted(late) == sorted(
        (scope, M0)
        for scope in (
            "agent:a1",
            "fleet",
            "env:dev",
            "region:eu-west-1",
            "env_region:dev/eu-west-1",
            "label:team=search",
        )
    )
    assert late[("fleet", M0)][0]["events"] == 1 and late[("fleet", M0)][0]["input_tokens"] == 100
    stored = store.query_rollups("fleet", M0 - 2, M0 + 2)
    assert [minute for minute, _ in stored] == [M0, M0]  # insert-only: two rows for M0
    # M0+1 (a1's heartbeats) is still open: the chart merges stored and open minutes.
    open_buckets = stage.open_buckets(["a1", "a2"])
    names = [
        "tokens",
        "events_per_s",
        "cost_usd",
        "heartbeats",
        "cpu_percent",
        "rss_bytes",
        "tool_success_rate",
        "reasoning_latency_max_ms",
        "reasoning_latency_p50_ms",
    ]
    charts = {s.metric: s for s in series(names, "fleet", stored, open_buckets, T0 - 120, T0 + 180, 60)}
    assert [t for t, _ in charts["tokens"].points] == [T0 - 120, T0 - 60, T0, T0 + 60, T0 + 120]
    assert [v for _, v in charts["tokens"].points] == [None, None, 1900.0, 0.0, None]
    assert [v for _, v in charts["events_per_s"].points] == [None, None, 8 / 60, 2 / 60, None]
    assert charts["cost_usd"].points[2][1] == pytest.approx(0.0056)
    assert [v for _, v in charts["heartbeats"].points] == [None, None, 0.0, 2.0, None]
    assert charts["cpu_percent"].points[3][1] == 30.0 and charts["cpu_percent"].points[2][1] is None
    assert charts["rss_bytes"].points[3][1] == 3000.0
    assert charts["tool_success_rate"].points[2][1] == 0.5
    assert charts["reasoning_latency_max_ms"].points[2][1] == 2000.0
    # Two rows in one step: percentiles come from the log histogram (buckets 25 % wide):
    # samples 500, 1000, 2000 -> rank 2 is 1000 ms, in bucket (1.25**30, 1.25**31].
    p50 = charts["reasoning_latency_p50_ms"].points[2][1]
    assert p50 == pytest.approx(1.25**30.5) and abs(p50 - 1000) / 1000 < 0.125
    # Step 300: one point sums M0 and M0+1.
    five = {s.metric: s for s in series(names, "fleet", stored, open_buckets, T0 - 600, T0 + 300, 300)}
    assert [t for t, _ in five["tokens"].points] == [T0 - 600, T0 - 300, T0]
    assert [v for _, v in five["tokens"].points] == [None, None, 1900.0]
    assert five["events_per_s"].points[2][1] == pytest.approx(10 / 300)
    agent = series(["tokens"], "agent:a1", store.query_rollups("agent:a1", M0, M0), {}, T0, T0 + 60, 60)
    assert agent[0].points == [(T0, 1300.0)]  # 1200 + the late 100
    store.close()


def test_one_stored_minute_keeps_its_exact_percentiles() -> None:
    clock = Clock(T0)
    stage = make_stage(clock)
    feed(stage, clock, 50, "a1", [llm(1 + i, ms=100.0 * (i + 1)) for i in range(20)])
    rows = [(minute, data) for scope, minute, data in stage.tick(T0 + 120) if scope == "agent:a1"]
    points = {
        s.metric: s.points[0][1]
        for s in series(
            ["reasoning_latency_p50_ms", "reasoning_latency_p95_ms"], "agent:a1", rows, {}, T0, T0 + 60, 60
        )
    }
    assert points == {"reasoning_latency_p50_ms": 1000.0, "reasoning_latency_p95_ms": 1900.0}


def test_chart_range_and_step() -> None:
    # A range ending just past a step boundary still includes that step.
    points = series(["tokens"], "fleet", [], {}, T0, T0 + 60.5, 60)[0].points
    assert [t for t, _ in points] == [T0, T0 + 60]
    assert series(["tokens"], "fleet", [], {}, T0 + 10, T0 + 60, 60)[0].points == [(T0, None)]
    # A step that ends after `until` (the one in progress) is a rate over the part it covers.
    minute = Bucket()
    minute.events, minute.cost_usd = 30, 0.5
    rates = {
        s.metric: s.points
        for s in series(
            ["events_per_s", "cost_usd_per_hour", "cost_usd"], "fleet", [], {M0: minute}, T0, T0 + 20, 60
        )
    }
    assert rates == {
        "events_per_s": [(T0, 1.5)],  # 30 events / 20 s
        "cost_usd_per_hour": [(T0, 90.0)],  # 0.5 / 20 * 3600
        "cost_usd": [(T0, 0.5)],
    }
    assert len(series(["tokens"], "fleet", [], {}, T0, T0 + 600_000, 60)[0].points) == 10_000
    with pytest.raises(ValueError, match="at most 10000"):
        series(["tokens"], "fleet", [], {}, T0, T0 + 600_060, 60)
    assert set(CHART_METRICS) >= {
        "events_per_s",
        "error_lines_per_s",
        "tool_success_rate",
        "tokens_per_action",
        "cost_usd",
        "cost_usd_per_hour",
        "reasoning_latency_p50_ms",
        "reasoning_latency_p95_ms",
        "reasoning_latency_max_ms",
        "cpu_percent",
        "rss_bytes",
        "restarts",
    }


def test_hour_of_empty_minutes_and_the_bucket_round_trip() -> None:
    bucket = Bucket()
    bucket.events, bucket.input_tokens, bucket.cost_usd = 3, 10, 0.5
    bucket.add_latency(0.5)
    bucket.add_latency(1000.0)
    again = Bucket.from_row(msgspec.json.decode(msgspec.json.encode(bucket.to_row())))
    assert (again.events, again.input_tokens, again.cost_usd, again.latency_max) == (3, 10, 0.5, 1000.0)
    assert again.hist == {0: 1, 31: 1}  # <= 1 ms is bucket 0; 1000 ms is in (1.25**30, 1.25**31]
    assert Bucket().is_empty() and not again.is_empty()


# --- status, scopes, sorting -------------------------------------------------------------


def numbers(stage: MetricsStage, now: float, agent: str = "a1") -> Any:
    from clawtrace.metrics.agent import window_numbers

    first, seconds = window_seconds(now, 300)
    metrics = stage.agents.get(agent)
    return window_numbers(metrics.window(first) if metrics else Bucket(), seconds)


def test_status_rules() -> None:
    clock = Clock(T0)
    stage = make_stage(clock)
    now = T0 + 100
    empty = numbers(stage, now)
    # Dead: no heartbeat for more than 45 s (server time).
    assert status_of(record(last_heartbeat=now - 45), None, empty, now) == ("healthy", 45.0)
    assert status_of(record(last_heartbeat=now - 45.5), None, empty, now) == ("dead", 45.5)
    # Never a heartbeat: the last event (else connect, else first sight) stands in.
    assert status_of(record(last_event=now - 10), None, empty, now) == ("healthy", None)
    assert status_of(record(last_event=now - 50), None, empty, now) == ("dead", None)
    assert status_of(record(first_seen=now - 46, last_connect=None), None, empty, now)[0] == "dead"
    # Quarantined wins over everything.
    assert status_of(record(last_heartbeat=now - 500), None, empty, now, quarantined=True)[0] == (
        "quarantined"
    )

    # Degraded: 5 failed tool calls in a row ...
    alive = {"last_heartbeat": now - 1}
    feed(stage, clock, 50, "a1", calls("d", range(4), ok=False))
    assert row_of(stage, now, **alive).status == "healthy"
    feed(stage, clock, 51, "a1", calls("d", range(5, 6), ok=False))
    assert row_of(stage, now, **alive).status == "degraded"
    assert row_of(stage, now, last_heartbeat=now - 46).status == "dead"  # dead beats degraded
    # ... or a success rate under 80 % over at least 10 results in the window.
    feed(stage, clock, 52, "a1", calls("s", range(6, 7), ok=True))  # 1 ok / 6: only 6 results
    assert row_of(stage, now, **alive).status == "healthy"
    feed(stage, clock, 53, "a1", calls("s", range(7, 10), ok=True))
    # 9 results, 4 ok: still too few results to judge
    assert row_of(stage, now, **alive).status == "healthy"
    feed(stage, clock, 54, "a1", calls("s", range(10, 11), ok=True))
    assert row_of(stage, now, **alive).status == "degraded"  # 10 results, 5 ok = 50 %

    good = make_stage(Clock(T0))
    good.observe("dev", "a1", calls("o", range(8), ok=True) + calls("o", range(8, 10), ok=False))
    assert row_of(good, now, **alive).tool_success_rate == 0.8
    assert row_of(good, now, **alive).status == "healthy"  # 80 % is not under 80 %


def test_heartbeat_age_prefers_the_stored_heartbeat() -> None:
    clock = Clock(T0)
    stage = make_stage(clock)
    feed(stage, clock, 10, "a1", [heartbeat(9, cpu=1.0)])
    assert row_of(stage, T0 + 40).heartbeat_age_s == 30.0
    assert row_of(stage, T0 + 40, last_heartbeat=T0 + 20).heartbeat_age_s == 20.0
    row = row_of(stage, T0 + 40, agent="ghost", cpu_percent=3.0, rss_bytes=7, last_heartbeat=T0)
    assert (row.cpu_percent, row.rss_bytes, row.heartbeat_age_s, row.tool_calls) == (3.0, 7, 40.0, 0)


def test_scopes() -> None:
    assert list(group_scopes("dev", "eu", {"team": "a", "tier": "b"})) == [
        "fleet",
        "env:dev",
        "region:eu",
        "env_region:dev/eu",
        "label:team=a",
        "label:tier=b",
    ]
    assert scope_for() == "fleet"
    assert scope_for(env="dev") == "env:dev"
    assert scope_for(region="eu") == "region:eu"
    assert scope_for(env="dev", region="eu") == "env_region:dev/eu"
    assert scope_for(label="team=a=b") == "label:team=a=b"
    assert scope_for(agent="a1", env="dev", label="team=a") == "agent:a1"
    for bad in ("team", "=a"):
        with pytest.raises(ValueError, match="KEY=VALUE"):
            scope_for(label=bad)


def fleet_row(agent: str, **fields: Any) -> FleetRow:
    values: dict[str, Any] = {
        "agent": agent,
        "env": "dev",
        "region": "eu",
        "labels": {},
        "release": None,
        "status": "healthy",
        "connected": True,
        "heartbeat_age_s": None,
        "cpu_percent": None,
        "rss_bytes": None,
        "events_per_s": 0.0,
        "error_lines_per_s": 0.0,
        "tool_calls": 0,
        "tool_success_rate": None,
        "consecutive_failures": 0,
        "tokens_per_action": None,
        "reasoning_latency_p50_ms": None,
        "reasoning_latency_p95_ms": None,
        "reasoning_latency_max_ms": None,
        "cost_usd_last_hour": 0.0,
        "cost_usd_per_hour_rate": 0.0,
        "restarts_last_hour": 0,
        "restarts_total": 0,
        "unpriced_llm_calls": 0,
    }
    values.update(fields)
    return FleetRow(**values)


def test_sort_rows_puts_missing_values_last_both_ways() -> None:
    rows = [
        fleet_row("b", cpu_percent=50.0, cost_usd_last_hour=1.0, status="dead"),
        fleet_row("d", cpu_percent=None, cost_usd_last_hour=1.0),
        fleet_row("a", cpu_percent=5.0, cost_usd_last_hour=3.0, status="degraded"),
        fleet_row("c", cpu_percent=20.0, cost_usd_last_hour=0.0, status="quarantined"),
    ]

    def order(key: str, descending: bool) -> list[str]:
        return [r.agent for r in sort_rows(rows, key, descending)]

    assert order("cpu", False) == ["a", "c", "b", "d"]
    assert order("cpu", True) == ["b", "c", "a", "d"]
    assert order("agent", False) == ["a", "b", "c", "d"]
    # Ties by agent id, in the same direction as the sort.
    assert order("cost", False) == ["c", "b", "d", "a"]
    assert order("cost", True) == ["a", "d", "b", "c"]
    # Status in the order healthy, degraded, dead, quarantined.
    assert order("status", False) == ["d", "a", "b", "c"]
    for key in SORT_KEYS:
        assert sorted(order(key, False)) == ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match="unknown sort key"):
        sort_rows(rows, "bogus", False)


def test_fleet_totals() -> None:
    clock = Clock(T0)
    stage = make_stage(clock)
    two_agents(stage, clock)
    now = T0 + 90  # window: 4 whole minutes + 30 s = 270 s
    rows, windows = fleet_rows(stage, [record("a1"), record("a2", last_heartbeat=now - 5)], {"a1"}, now)
    assert [(r.agent, r.connected, r.env, r.labels) for r in rows] == [
        ("a1", True, "dev", {"team": "search"}),
        ("a2", False, "prod", {"team": "search", "tier": "gold"}),
    ]
    summary = totals(rows, windows, now, 300)
    assert summary.agents == 2
    assert summary.by_status == {"healthy": 2, "degraded": 0, "dead": 0, "quarantined": 0}
    assert summary.events_per_s == pytest.approx(9 / 270)
    assert summary.error_lines_per_s == pytest.approx(1 / 270)
    assert summary.tool_calls == 2 and summary.tool_success_rate == 0.5
    assert summary.tokens_per_action == pytest.approx(1800 / 2)
    assert summary.reasoning_latency_p95_ms == 2000
    assert summary.cost_usd_last_hour == pytest.approx(0.0054)
    assert summary.cost_usd_per_hour_rate == pytest.approx(0.0054 / 270 * 3600)
    assert math.isclose(sum(r.cost_usd_per_hour_rate for r in rows), summary.cost_usd_per_hour_rate)
