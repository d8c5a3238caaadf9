"""Metrics through a real gateway: ``/api/v1/fleet``, ``/api/v1/metrics``, ``/metrics``.

Known events go in over the agent WebSocket (the reference client), with
timestamps in the current minute; the numbers that come out are checked
against values worked out by hand (docs/metrics.md has the definitions).
The simulator's fault scenarios must move the numbers an alert would use.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from clawtrace.protocol import (
    Ack,
    Heartbeat,
    Hello,
    Lifecycle,
    LlmCall,
    Log,
    Thought,
    ToolCall,
    ToolResult,
    Welcome,
    decode_server_message,
    encode,
)
from clawtrace.protocol.client import MemoryOutbox, UplinkClient
from clawtrace.protocol.messages import Event
from clawtrace.sim import FleetConfig, Scenario, run_fleet
from gateway_process import GatewayProcess

T = TypeVar("T")
WAIT = 15.0


def poll(fetch: Callable[[], T], done: Callable[[T], bool], timeout: float = WAIT) -> T:
    """Fetch until ``done`` (or the timeout); return the last value for the asserts to judge."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


class Script:
    """One agent's events, numbered from 1, at ``base`` + an offset in seconds."""

    def __init__(self, agent: str, env: str, region: str, labels: dict[str, str], base: float) -> None:
        self.hello = Hello(agent=agent, env=env, region=region, labels=labels)
        self.base = base
        self.events: list[Event] = []

    def add(self, cls: type[Any], t: float, **fields: Any) -> Script:
        ts = datetime.fromtimestamp(self.base + t, UTC)
        self.events.append(cls(seq=len(self.events) + 1, ts=ts, session="s1", **fields))
        return self

    def tool(self, t: float, call_id: str, ok: bool) -> Script:
        self.add(ToolCall, t, call_id=call_id, tool="exec", args={"command": "make"})
        return self.add(ToolResult, t + 0.01, call_id=call_id, ok=ok, duration_ms=10.0)


async def send(gateway: GatewayProcess, script: Script, events: list[Event] | None = None) -> None:
    """Deliver with the reference client and wait for the gateway's ack."""
    events = script.events if events is None else events
    outbox = MemoryOutbox()
    client = UplinkClient(gateway.ws_url, script.hello, outbox, token=gateway.token(script.hello.env))
    runner = asyncio.create_task(client.run())
    for event in events:
        outbox.append(event)
    client.notify()
    try:
        await client.wait_acked(events[-1].seq, WAIT)
    finally:
        await client.close()
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner


def current_base() -> float:
    """A whole second with at least 5 s left in its minute, so every event shares one minute."""
    now = time.time()
    if now % 60 > 54:
        time.sleep(60 - now % 60 + 0.2)
        now = time.time()
    return float(math.floor(now))


def dataset(base: float) -> dict[str, Script]:
    """Four agents in two environments, three regions' worth of groups (33 events)."""
    one = Script("dev-eu-1", "dev", "eu-west-1", {"team": "search"}, base)
    one.add(Heartbeat, 0, cpu_percent=12.5, rss_bytes=200_000_000).add(Thought, 0.1, text="plan")
    # (1000 - 200) * 2.00 + 200 * 0.50 + 100 * 8.00 = 2500 -> $0.0025 (gpt-4.1 in prices.toml)
    one.add(
        LlmCall,
        0.2,
        model="gpt-4.1",
        input_tokens=1000,
        output_tokens=100,
        cached_input_tokens=200,
        duration_ms=1500.0,
    )
    one.tool(0.3, "c1", ok=True).add(Thought, 0.5, text="next")
    one.tool(0.9, "c2", ok=True)  # thought -> tool_call with no llm_call: a 400 ms sample
    one.add(Log, 1.1, stream="stderr", line="warn 1").add(Log, 1.2, stream="stderr", line="warn 2")
    one.add(Log, 1.3, stream="stdout", line="ok").add(Lifecycle, 1.4, state="restarting")

    two = Script("dev-eu-2", "dev", "eu-west-1", {"team": "billing"}, base)
    two.add(Heartbeat, 0, cpu_percent=50.0, rss_bytes=500_000_000)
    # 2000 * 3.00 + 500 * 15.00 = 13500 -> $0.0135 (claude-sonnet-4, prefix and provider ignored)
    two.add(
        LlmCall,
        0.1,
        model="anthropic/claude-sonnet-4-20250514",
        input_tokens=2000,
        output_tokens=500,
        duration_ms=3000.0,
    )
    for n in range(6):
        two.tool(0.2 + n / 10, f"f{n}", ok=False)

    three = Script("dev-us-3", "dev", "us-east-1", {"team": "search"}, base)
    three.add(LlmCall, 0.1, model="unknown-model-x", input_tokens=100, output_tokens=10, duration_ms=500.0)
    three.add(
        LlmCall, 0.2, model="whatever", input_tokens=50, output_tokens=5, duration_ms=2500.0, cost_usd=1.5
    )
    three.add(ToolCall, 0.3, call_id="p1", tool="exec", args={})  # no result (yet)

    four = Script("prod-eu-4", "prod", "eu-west-1", {"team": "search"}, base)
    four.add(Heartbeat, 0, cpu_percent=5.0, rss_bytes=100_000_000)
    # 10000 * 0.25 + 1000 * 2.00 = 4500 -> $0.0045 (gpt-5-mini)
    four.add(LlmCall, 0.1, model="gpt-5-mini", input_tokens=10_000, output_tokens=1000, duration_ms=800.0)
    four.tool(0.2, "q1", ok=True)
    return {s.hello.agent: s for s in (one, two, three, four)}


def fleet(gateway: GatewayProcess, token: str | None = None, **params: Any) -> dict[str, Any]:
    response = gateway.get("/api/v1/fleet", token=token, **params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def window(body: dict[str, Any]) -> float:
    """Seconds the live window covered at the response's ``at``: 4 whole minutes + this one."""
    at = body["at"]
    assert body["window_seconds"] == 300
    return 240 + (at - math.floor(at / 60) * 60)


def settled(expected_tool_calls: int, agents: int) -> Callable[[dict[str, Any]], bool]:
    def done(body: dict[str, Any]) -> bool:
        return body["total"] == agents and sum(r["tool_calls"] for r in body["agents"]) == expected_tool_calls

    return done


def load(gateway: GatewayProcess) -> tuple[float, dict[str, Any]]:
    base = current_base()
    scripts = dataset(base)

    async def all_agents() -> None:
        await asyncio.gather(*(send(gateway, s) for s in scripts.values()))

    asyncio.run(all_agents())
    body = poll(lambda: fleet(gateway), settled(2 + 6 + 1 + 1, 4))
    return base, body


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, float]]:
    process = GatewayProcess(tmp_path_factory.mktemp("gw-metrics"))
    process.start()
    try:
        base, _ = load(process)
        yield process, base
    finally:
        process.stop()


def rows_by_agent(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["agent"]: row for row in body["agents"]}


# --- /api/v1/fleet ------------------------------------------------------------------------


def test_fleet_rows_carry_the_hand_computed_numbers(loaded: tuple[GatewayProcess, float]) -> None:
    gateway, _ = loaded
    body = fleet(gateway)
    seconds = window(body)
    rows = rows_by_agent(body)
    assert sorted(rows) == ["dev-eu-1", "dev-eu-2", "dev-us-3", "prod-eu-4"]

    one = rows["dev-eu-1"]
    assert (one["env"], one["region"], one["labels"]) == ("dev", "eu-west-1", {"team": "search"})
    assert one["status"] == "healthy"
    assert one["events_per_s"] == pytest.approx(12 / seconds)
    assert one["error_lines_per_s"] == pytest.approx(2 / seconds)
    assert (one["tool_calls"], one["tool_success_rate"], one["consecutive_failures"]) == (2, 1.0, 0)
    assert one["tokens_per_action"] == pytest.approx(1100 / 2)
    assert one["reasoning_latency_p50_ms"] == pytest.approx(400, rel=1e-4)  # samples 400, 1500
    assert one["reasoning_latency_p95_ms"] == 1500 and one["reasoning_latency_max_ms"] == 1500
    assert one["cost_usd_last_hour"] == pytest.approx(0.0025)
    assert one["cost_usd_per_hour_rate"] == pytest.approx(0.0025 / seconds * 3600, rel=1e-3)
    assert (one["restarts_last_hour"], one["restarts_total"], one["unpriced_llm_calls"]) == (1, 1, 0)
    assert (one["cpu_percent"], one["rss_bytes"]) == (12.5, 200_000_000)
    assert 0 <= one["heartbeat_age_s"] < WAIT * 2

    two = rows["dev-eu-2"]
    assert two["status"] == "degraded"  # 6 failed tool calls in a row
    assert (two["tool_calls"], two["tool_success_rate"], two["consecutive_failures"]) == (6, 0.0, 6)
    assert two["tokens_per_action"] == pytest.approx(2500 / 6)
    assert two["cost_usd_last_hour"] == pytest.approx(0.0135)
    assert two["reasoning_latency_p50_ms"] == 3000 and two["reasoning_latency_p95_ms"] == 3000

    three = rows["dev-us-3"]
    assert three["status"] == "healthy"  # no heartbeat ever, but events just now
    assert three["heartbeat_age_s"] is None and three["cpu_percent"] is None and three["rss_bytes"] is None
    assert (three["tool_calls"], three["tool_success_rate"], three["tokens_per_action"]) == (1, None, None)
    assert three["cost_usd_last_hour"] == pytest.approx(1.5)  # cost_usd as sent; unknown model: $0
    assert three["unpriced_llm_calls"] == 1
    assert (three["reasoning_latency_p50_ms"], three["reasoning_latency_p95_ms"]) == (500, 2500)

    four = rows["prod-eu-4"]
    assert four["cost_usd_last_hour"] == pytest.approx(0.0045)
    assert four["tokens_per_action"] == 11_000

    totals = body["totals"]
    assert totals["agents"] == 4 and body["total"] == 4
    assert totals["by_status"] == {"healthy": 3, "degraded": 1, "dead": 0, "quarantined": 0}
    assert totals["events_per_s"] == pytest.approx(33 / seconds, rel=1e-3)
    assert totals["tool_calls"] == 10
    assert totals["tool_success_rate"] == pytest.approx(3 / 9)  # ok: c1 c2 q1; failed: f0..f5
    assert totals["tokens_per_action"] == pytest.approx((1100 + 2500 + 165 + 11_000) / 9)
    assert totals["reasoning_latency_p95_ms"] == 3000
    assert totals["cost_usd_last_hour"] == pytest.approx(0.0025 + 0.0135 + 1.5 + 0.0045)


def test_fleet_filters(loaded: tuple[GatewayProcess, float]) -> None:
    gateway, _ = loaded

    def agents(**params: Any) -> list[str]:
        body = fleet(gateway, **params)
        assert body["total"] == body["totals"]["agents"] == len(body["agents"])
        return [row["agent"] for row in body["agents"]]

    assert agents(env="dev") == ["dev-eu-1", "dev-eu-2", "dev-us-3"]
    assert agents(env="prod") == ["prod-eu-4"]
    assert agents(region="eu-west-1") == ["dev-eu-1", "dev-eu-2", "prod-eu-4"]
    assert agents(env="dev", region="eu-west-1") == ["dev-eu-1", "dev-eu-2"]
    assert agents(status="degraded") == ["dev-eu-2"]
    assert agents(status="dead") == []
    assert agents(label="team=search") == ["dev-eu-1", "dev-us-3", "prod-eu-4"]
    assert agents(label="team=search", region="eu-west-1") == ["dev-eu-1", "prod-eu-4"]
    assert agents(q="EU-") == ["dev-eu-1", "dev-eu-2", "prod-eu-4"]
    assert agents(q="us-3") == ["dev-us-3"]
    assert agents(agent="dev-eu-2") == ["dev-eu-2"]
    assert agents(agent="dev-eu") == []
    body = fleet(gateway, env="dev", region="eu-west-1")
    assert body["totals"]["by_status"] == {"healthy": 1, "degraded": 1, "dead": 0, "quarantined": 0}
    assert body["totals"]["cost_usd_last_hour"] == pytest.approx(0.016)
    assert body["totals"]["tool_success_rate"] == pytest.approx(2 / 8)


def test_fleet_sorting_and_paging(loaded: tuple[GatewayProcess, float]) -> None:
    gateway, _ = loaded

    def order(sort: str, direction: str, **params: Any) -> list[str]:
        return [row["agent"] for row in fleet(gateway, sort=sort, order=direction, **params)["agents"]]

    assert order("cost", "desc") == ["dev-us-3", "dev-eu-2", "prod-eu-4", "dev-eu-1"]
    assert order("cost", "asc") == ["dev-eu-1", "prod-eu-4", "dev-eu-2", "dev-us-3"]
    # No value (never a heartbeat) sorts last both ways.
    assert order("cpu", "asc") == ["prod-eu-4", "dev-eu-1", "dev-eu-2", "dev-us-3"]
    assert order("cpu", "desc") == ["dev-eu-2", "dev-eu-1", "prod-eu-4", "dev-us-3"]
    assert order("rss", "desc") == ["dev-eu-2", "dev-eu-1", "prod-eu-4", "dev-us-3"]
    assert order("heartbeat", "asc")[-1] == "dev-us-3"
    assert order("success", "asc") == ["dev-eu-2", "dev-eu-1", "prod-eu-4", "dev-us-3"]
    assert order("failures", "desc")[0] == "dev-eu-2"
    assert order("latency", "desc") == ["dev-eu-2", "dev-us-3", "dev-eu-1", "prod-eu-4"]
    assert order("tokens", "desc") == ["prod-eu-4", "dev-eu-1", "dev-eu-2", "dev-us-3"]
    assert order("status", "desc")[0] == "dev-eu-2"
    assert order("agent", "desc") == ["prod-eu-4", "dev-us-3", "dev-eu-2", "dev-eu-1"]
    # Paging applies after filtering and sorting; total counts every match.
    body = fleet(gateway, sort="agent", limit=2, offset=1)
    assert [row["agent"] for row in body["agents"]] == ["dev-eu-2", "dev-us-3"]
    assert body["total"] == 4 and body["totals"]["agents"] == 4
    assert fleet(gateway, offset=4)["agents"] == []


def test_fleet_scoping_and_bad_parameters(loaded: tuple[GatewayProcess, float]) -> None:
    gateway, _ = loaded
    dev_viewer = gateway.token("dev", "viewer")
    body = fleet(gateway, token=dev_viewer)
    assert [row["agent"] for row in body["agents"]] == ["dev-eu-1", "dev-eu-2", "dev-us-3"]
    assert body["totals"]["agents"] == 3
    assert gateway.get("/api/v1/fleet", token=dev_viewer, env="prod").status_code == 403
    assert gateway.get("/api/v1/fleet", token=gateway.token("dev", "agent")).status_code == 403
    unauthenticated = httpx.get(f"{gateway.http_url}/api/v1/fleet", timeout=WAIT)
    assert unauthenticated.status_code == 401
    for params in (
        {"status": "sleepy"},
        {"sort": "vibes"},
        {"order": "up"},
        {"limit": 0},
        {"limit": 10_001},
        {"offset": -1},
        {"limit": "many"},
    ):
        response = gateway.get("/api/v1/fleet", **params)
        assert response.status_code == 400, (params, response.text)
        assert response.json()["error"]["code"] == "invalid_parameter"


# --- /api/v1/metrics ----------------------------------------------------------------------


def chart(gateway: GatewayProcess, token: str | None = None, **params: Any) -> dict[str, list[Any]]:
    response = gateway.get("/api/v1/metrics", token=token, **params)
    assert response.status_code == 200, response.text
    return {s["metric"]: s["points"] for s in response.json()["series"]}


def test_metric_series_per_scope(loaded: tuple[GatewayProcess, float]) -> None:
    gateway, base = loaded
    minute = math.floor(base / 60) * 60
    span = {"since": minute - 120, "until": minute + 60, "step": 60}
    expected_tokens = {
        (("agent", "dev-eu-2"),): 2500.0,
        (("env", "dev"),): 1100 + 2500 + 165.0,
        (("env", "prod"),): 11_000.0,
        (("region", "eu-west-1"),): 1100 + 2500 + 11_000.0,
        (("env", "dev"), ("region", "eu-west-1")): 3600.0,
        (("label", "team=search"),): 1100 + 165 + 11_000.0,
        (): 1100 + 2500 + 165 + 11_000.0,
    }
    for scope, tokens in expected_tokens.items():
        points = chart(gateway, metric="tokens", **dict(scope), **span)["tokens"]
        assert points == [[minute - 120, None], [minute - 60, None], [minute, tokens]], scope

    series = chart(
        gateway,
        metric=["events_per_s,cost_usd_per_hour", "tool_success_rate"],
        env="dev",
        **span,
    )
    assert sorted(series) == ["cost_usd_per_hour", "events_per_s", "tool_success_rate"]
    assert series["events_per_s"][2][1] == pytest.approx((12 + 14 + 3) / 60)
    assert series["cost_usd_per_hour"][2][1] == pytest.approx((0.0025 + 0.0135 + 1.5) / 60 * 3600)
    assert series["tool_success_rate"][2][1] == pytest.approx(2 / 8)
    fleet_wide = chart(gateway, metric="reasoning_latency_max_ms,tool_calls,restarts,cpu_percent", **span)
    assert fleet_wide["reasoning_latency_max_ms"][2][1] == 3000
    assert fleet_wide["tool_calls"][2][1] == 10
    assert fleet_wide["restarts"][2][1] == 1
    assert fleet_wide["cpu_percent"][2][1] == pytest.approx((12.5 + 50 + 5) / 3)
    assert fleet_wide["cpu_percent"][0][1] is None

    # Step 300: the step holding this minute sums it with the (empty) others; a rate divides
    # by the seconds the step covers up to `until`.
    five = chart(gateway, metric="tokens,events_per_s", since=minute - 600, until=minute + 60, step=300)
    start = math.floor((minute - 600) / 300) * 300
    assert [t for t, _ in five["tokens"]] == list(range(start, minute + 60, 300))
    holding = next(i for i, (t, _) in enumerate(five["tokens"]) if t <= minute < t + 300)
    assert five["tokens"][holding][1] == 14_765
    covered = min(300, minute + 60 - five["tokens"][holding][0])
    assert five["events_per_s"][holding][1] == pytest.approx(33 / covered)
    assert all(v is None for i, (_, v) in enumerate(five["tokens"]) if i != holding)

    # Defaults: the last hour up to now, at 1-minute steps.
    default = chart(gateway, metric="tokens")["tokens"]
    assert len(default) in (60, 61) and any(v == 14_765 for _, v in default)
    rfc3339 = chart(
        gateway,
        metric="tokens",
        since=datetime.fromtimestamp(minute, UTC).isoformat(),
        until=datetime.fromtimestamp(minute + 60, UTC).isoformat().replace("+00:00", "Z"),
    )
    assert rfc3339["tokens"] == [[minute, 14_765]]


def test_metric_series_scoping_and_bad_parameters(loaded: tuple[GatewayProcess, float]) -> None:
    gateway, _ = loaded
    dev_viewer = gateway.token("dev", "viewer")
    assert chart(gateway, token=dev_viewer, metric="tokens", env="dev")["tokens"]
    assert chart(gateway, token=dev_viewer, metric="tokens", agent="dev-eu-1")["tokens"]
    for params in ({}, {"env": "prod"}, {"region": "eu-west-1"}, {"label": "team=search"}):
        response = gateway.get("/api/v1/metrics", token=dev_viewer, metric="tokens", **params)
        assert response.status_code == 403, (params, response.text)
    response = gateway.get("/api/v1/metrics", token=dev_viewer, metric="tokens", agent="prod-eu-4")
    assert response.status_code == 404
    assert gateway.get("/api/v1/metrics", metric="tokens", agent="nobody").status_code == 404
    now = time.time()
    for params in (
        {"metric": "vibes"},
        {},
        {"metric": "tokens", "step": 90},
        {"metric": "tokens", "step": 30},
        {"metric": "tokens", "since": now, "until": now - 60},
        {"metric": "tokens", "since": "yesterday"},
        {"metric": "tokens", "label": "team"},
        {"metric": "tokens", "since": 0},  # millions of one-minute points
        # A label's rollups span every environment: it cannot be narrowed to one.
        {"metric": "tokens", "env": "dev", "label": "team=search"},
    ):
        response = gateway.get("/api/v1/metrics", **params)
        assert response.status_code == 400, (params, response.text)
        assert response.json()["error"]["code"] == "invalid_parameter"
    response = gateway.get(
        "/api/v1/metrics", token=dev_viewer, metric="tokens", env="dev", label="team=search"
    )
    assert response.status_code in (400, 403)


# --- /metrics -----------------------------------------------------------------------------


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(gateway: GatewayProcess, token: str | None = None) -> tuple[Samples, dict[str, str]]:
    """Parse /metrics with the Prometheus text parser: samples by (name, labels), family types."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(f"{gateway.http_url}/metrics", headers=headers, timeout=WAIT)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(response.text):
        types[family.name] = family.type
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, key
            samples[key] = sample.value
    return samples, types


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_prometheus_exposition(loaded: tuple[GatewayProcess, float]) -> None:
    gateway, _ = loaded
    assert httpx.get(f"{gateway.http_url}/metrics", timeout=WAIT).status_code == 401
    bad = httpx.get(f"{gateway.http_url}/metrics", headers={"Authorization": "Bearer nope"}, timeout=WAIT)
    assert bad.status_code == 401
    samples, types = scrape(gateway, gateway.token("*", "viewer"))
    assert types["clawtrace_events"] == "counter"
    assert types["gen_ai_client_token_usage"] == "histogram"
    assert types["gen_ai_client_operation_duration_seconds"] == "histogram"
    assert types["clawtrace_agents"] == "gauge"

    eu = {"env": "dev", "region": "eu-west-1"}  # dev-eu-1 and dev-eu-2
    kinds = {
        "heartbeat": 2,
        "thought": 2,
        "llm_call": 2,
        "tool_call": 8,
        "tool_result": 8,
        "log": 3,
        "lifecycle": 1,
    }
    for kind, count in kinds.items():
        assert value(samples, "clawtrace_events_total", kind=kind, **eu) == count, kind
    assert value(samples, "clawtrace_events_total", kind="policy", **eu) is None
    assert value(samples, "clawtrace_tool_results_total", result="ok", **eu) == 2
    assert value(samples, "clawtrace_tool_results_total", result="error", **eu) == 6
    assert value(samples, "clawtrace_tool_results_total", result="timeout", **eu) == 0
    assert value(samples, "clawtrace_cost_usd_total", **eu) == pytest.approx(0.016)
    assert value(samples, "clawtrace_cost_usd_total", env="dev", region="us-east-1") == pytest.approx(1.5)
    assert value(samples, "clawtrace_stderr_lines_total", **eu) == 2
    assert value(samples, "clawtrace_agent_restarts_total", **eu) == 1

    # Token usage per call: input 1000 and 2000, output 100 and 500.
    tokens = "gen_ai_client_token_usage"
    for le, count in (("256", 0), ("1024", 1), ("4096", 2), ("+Inf", 2)):
        assert value(samples, f"{tokens}_bucket", gen_ai_token_type="input", le=le, **eu) == count, le
    for le, count in (("64", 0), ("256", 1), ("1024", 2)):
        assert value(samples, f"{tokens}_bucket", gen_ai_token_type="output", le=le, **eu) == count, le
    assert value(samples, f"{tokens}_sum", gen_ai_token_type="input", **eu) == 3000
    assert value(samples, f"{tokens}_count", gen_ai_token_type="input", **eu) == 2
    assert value(samples, f"{tokens}_sum", gen_ai_token_type="output", **eu) == 600
    # Operation duration: 1.5 s and 3.0 s.
    duration = "gen_ai_client_operation_duration_seconds"
    chat = {"gen_ai_operation_name": "chat", **eu}
    for le, count in (("1.28", 0), ("2.56", 1), ("5.12", 2), ("+Inf", 2)):
        assert value(samples, f"{duration}_bucket", le=le, **chat) == count, le
    assert value(samples, f"{duration}_sum", **chat) == pytest.approx(4.5)
    assert value(samples, f"{duration}_count", **chat) == 2

    statuses = {"healthy": 1, "degraded": 1, "dead": 0, "quarantined": 0}
    for status, count in statuses.items():
        assert value(samples, "clawtrace_agents", status=status, **eu) == count, status
    assert value(samples, "clawtrace_agents", status="healthy", env="prod", region="eu-west-1") == 1
    assert value(samples, "clawtrace_cost_usd_last_hour", **eu) == pytest.approx(0.016)
    assert value(samples, "clawtrace_consecutive_tool_failures_max", **eu) == 6
    assert value(samples, "clawtrace_heartbeat_age_max_seconds", env="dev", region="us-east-1") is None
    assert 0 <= (value(samples, "clawtrace_heartbeat_age_max_seconds", **eu) or -1) < 2 * WAIT
    assert value(samples, "clawtrace_gateway_events_total", outcome="accepted") == 33
    assert value(samples, "clawtrace_gateway_events_total", outcome="duplicate") == 0
    assert value(samples, "clawtrace_gateway_connected_agents") == 0
    # Low cardinality by default: no series names an agent.
    assert not [name for name, labels in samples if "agent" in dict(labels)]
    # A credential for one environment scrapes that environment only.
    dev_only, _ = scrape(gateway, gateway.token("dev", "viewer"))
    assert value(dev_only, "clawtrace_events_total", kind="thought", **eu) == 2
    assert not [name for name, labels in dev_only if dict(labels).get("env") == "prod"]


# --- one gateway per test -----------------------------------------------------------------


async def test_resending_after_a_reconnect_counts_nothing_twice(gateway: GatewayProcess) -> None:
    base = current_base()
    script = dataset(base)["dev-eu-1"]
    await send(gateway, script)
    before = await asyncio.to_thread(
        poll, lambda: fleet(gateway), lambda b: b["total"] == 1 and b["agents"][0]["tool_calls"] == 2
    )
    # The node agent lost its acks: it reconnects and resends everything, plus one new line.
    script.add(Log, 2.0, stream="stderr", line="new")
    headers = {"Authorization": f"Bearer {gateway.token('dev')}"}
    async with connect(f"{gateway.ws_url}/v1/agent", additional_headers=headers) as ws:
        await ws.send(encode(script.hello).decode())
        welcome = decode_server_message(await ws.recv())
        assert isinstance(welcome, Welcome) and welcome.ack == 12
        await ws.send(
            (b'{"type":"events","events":[' + b",".join(map(encode, script.events)) + b"]}").decode()
        )
        ack = decode_server_message(await asyncio.wait_for(ws.recv(), WAIT))
        assert isinstance(ack, Ack) and ack.seq == 13

    def errors_seen(body: dict[str, Any]) -> bool:
        return round(body["agents"][0]["error_lines_per_s"] * window(body)) == 3

    after = await asyncio.to_thread(poll, lambda: fleet(gateway), errors_seen)
    row, old = after["agents"][0], before["agents"][0]
    assert row["error_lines_per_s"] * window(after) == pytest.approx(3)
    assert row["events_per_s"] * window(after) == pytest.approx(13)
    for field in (
        "tool_calls",
        "tool_success_rate",
        "tokens_per_action",
        "cost_usd_last_hour",
        "restarts_last_hour",
        "reasoning_latency_p50_ms",
        "reasoning_latency_max_ms",
    ):
        assert row[field] == old[field], field
    samples, _ = scrape(gateway, gateway.token("*", "admin"))
    assert value(samples, "clawtrace_gateway_events_total", outcome="duplicate") == 12
    assert value(samples, "clawtrace_gateway_events_total", outcome="accepted") == 13
    assert value(samples, "clawtrace_events_total", kind="log", env="dev", region="eu-west-1") == 4
    assert value(samples, "clawtrace_cost_usd_total", env="dev", region="eu-west-1") == pytest.approx(0.0025)


async def test_per_agent_series_timeouts_and_open_metrics(tmp_path: Path) -> None:
    config = tmp_path / "clawtrace.toml"
    config.write_text(
        "[gateway]\nmetrics_per_agent = true\nmetrics_auth = false\ntool_timeout_seconds = 1.0\n"
    )
    gateway = GatewayProcess(tmp_path / "gw", extra_args=["--config", str(config)])
    gateway.start()
    try:
        script = Script("solo", "dev", "eu-west-1", {}, current_base())
        script.add(Heartbeat, 0, cpu_percent=9.0, rss_bytes=1234)
        script.add(ToolCall, 0.1, call_id="hung", tool="exec", args={})  # never answered in time
        script.tool(0.2, "fine", ok=True)
        await send(gateway, script)

        def timed_out(samples: Samples) -> bool:
            return (
                value(
                    samples, "clawtrace_tool_results_total", result="timeout", env="dev", region="eu-west-1"
                )
                == 1
            )

        samples = await asyncio.to_thread(poll, lambda: scrape(gateway)[0], timed_out)  # no credential
        assert timed_out(samples)
        solo = {"agent": "solo", "env": "dev", "region": "eu-west-1"}
        assert value(samples, "clawtrace_agent_consecutive_tool_failures", **solo) == 1
        assert value(samples, "clawtrace_agent_tool_success_ratio", **solo) == 0.5  # 1 ok, 1 timeout
        assert value(samples, "clawtrace_agent_cpu_percent", **solo) == 9.0
        assert value(samples, "clawtrace_agent_rss_bytes", **solo) == 1234
        assert value(samples, "clawtrace_agent_cost_usd_last_hour", **solo) == 0
        assert value(samples, "clawtrace_agent_heartbeat_age_seconds", **solo) is not None

        # The result of the timed-out call arrives late: ignored everywhere.
        late = [
            ToolResult(
                seq=5,
                ts=datetime.fromtimestamp(script.base + 3, UTC),
                session="s1",
                call_id="hung",
                ok=True,
                duration_ms=1.0,
            ),
            Log(
                seq=6,
                ts=datetime.fromtimestamp(script.base + 3, UTC),
                session="s1",
                stream="stderr",
                line="marker",
            ),
        ]
        await send(gateway, script, late)
        body = await asyncio.to_thread(
            poll, lambda: fleet(gateway), lambda b: b["agents"][0]["error_lines_per_s"] > 0
        )
        row = body["agents"][0]
        assert (row["consecutive_failures"], row["tool_success_rate"], row["tool_calls"]) == (1, 0.5, 2)
        assert row["tokens_per_action"] == 0.0  # one completed call, no tokens
        samples, _ = scrape(gateway)
        assert value(samples, "clawtrace_tool_results_total", result="ok", env="dev", region="eu-west-1") == 1
        assert (
            value(samples, "clawtrace_events_total", kind="tool_result", env="dev", region="eu-west-1") == 2
        )
    finally:
        gateway.stop()


async def test_rollups_survive_a_restart(gateway: GatewayProcess) -> None:
    base, _ = await asyncio.to_thread(load, gateway)
    minute = math.floor(base / 60) * 60
    span = {"since": minute, "until": minute + 60, "step": 60}
    names = "tokens,cost_usd,tool_success_rate,reasoning_latency_max_ms,events_per_s"
    live = chart(gateway, metric=names, env="dev", **span)
    assert gateway.stop() == 0
    gateway.start()
    # The open minute was written at shutdown; the chart reads it back from the store.
    stored = chart(gateway, metric=names, env="dev", **span)
    assert stored.keys() == live.keys()
    for name, points in stored.items():
        assert [t for t, _ in points] == [t for t, _ in live[name]] == [minute], name
        assert points[0][1] == pytest.approx(live[name][0][1]), name
    assert stored["tokens"] == [[minute, 3765]]
    assert chart(gateway, metric="tokens", label="team=search", **span)["tokens"] == [[minute, 12_265]]
    assert chart(gateway, metric="tokens", agent="dev-eu-2", **span)["tokens"] == [[minute, 2500]]
    # Live numbers are in memory only: they start again from nothing (docs/metrics.md).
    rows = rows_by_agent(fleet(gateway))
    assert rows["dev-eu-2"]["tool_calls"] == 0 and rows["dev-eu-2"]["consecutive_failures"] == 0
    assert rows["dev-eu-2"]["cpu_percent"] == 50.0  # the last heartbeat's values are stored


# --- the simulator's fault scenarios ------------------------------------------------------


@pytest.fixture
def dry_run_gateway(tmp_path: Path) -> Iterator[GatewayProcess]:
    """A gateway whose alerts decide but do not act: a restart would end the loop under test."""
    config = tmp_path / "clawtrace.toml"
    config.write_text("[gateway.alerts]\ndry_run = true\n")
    process = GatewayProcess(tmp_path / "gw", extra_args=["--config", str(config)])
    process.start()
    try:
        yield process
    finally:
        process.stop()


async def test_simulated_loop_and_cost_spike_move_the_right_numbers(dry_run_gateway: GatewayProcess) -> None:
    gateway = dry_run_gateway
    config = FleetConfig(
        gateway=gateway.ws_url,
        token=gateway.token("dev", "agent"),
        agents=5,
        rate=40.0,
        heartbeat_interval=0.5,
        duration=3.5,
        scenarios={Scenario.LOOP: 1, Scenario.COST_SPIKE: 1},
        scenario_after=0.5,
        seed=7,
    )
    stats = await run_fleet(config, asyncio.Event())
    assert stats.events_acked == stats.events_generated > 0
    [looping] = stats.scenarios[Scenario.LOOP.value]
    [spiking] = stats.scenarios[Scenario.COST_SPIKE.value]

    def caught_up(body: dict[str, Any]) -> bool:
        rows = rows_by_agent(body)
        return len(rows) == 5 and rows[looping]["consecutive_failures"] > 10

    body = await asyncio.to_thread(poll, lambda: fleet(gateway), caught_up)
    rows = rows_by_agent(body)
    loop = rows[looping]
    assert loop["consecutive_failures"] > 10
    assert loop["tool_success_rate"] is not None and loop["tool_success_rate"] < 0.5
    assert loop["status"] == "degraded"
    assert rows[spiking]["cost_usd_per_hour_rate"] > 5.0
    healthy = [row for agent, row in rows.items() if agent not in (looping, spiking)]
    assert len(healthy) == 3
    for row in healthy:
        assert row["cost_usd_per_hour_rate"] < 5.0, row
        assert row["consecutive_failures"] <= 10 and row["status"] != "dead", row
    assert fleet(gateway, sort="cost_rate", order="desc")["agents"][0]["agent"] == spiking
    assert fleet(gateway, sort="failures", order="desc")["agents"][0]["agent"] == looping
