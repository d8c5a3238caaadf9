"""The simulator: event mix and scenarios (fake clock), then against a real gateway."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import pytest
from click.testing import CliRunner

from clawtrace.cli.simulate import simulate
from clawtrace.protocol import (
    Command,
    Event,
    Heartbeat,
    Lifecycle,
    LlmCall,
    Log,
    PolicyDecision,
    Thought,
    ToolCall,
    ToolResult,
)
from clawtrace.sim import (
    AgentSpec,
    Fleet,
    FleetConfig,
    LatencyHistogram,
    Pace,
    Scenario,
    ScenarioSpec,
    SimAgent,
    TrackingOutbox,
    agent_ids,
    assign_scenarios,
    catalog,
    run_fleet,
)
from gateway_process import GatewayProcess

WALL = datetime(2025, 6, 1, 3, 2, tzinfo=UTC)
AGENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_:@-]*$")


def make_agent(
    scenario: ScenarioSpec | None = None,
    *,
    seed: int = 1,
    model: str = "claude-sonnet-4",
    pace: Pace | None = None,
    first_seq: int = 1,
) -> SimAgent:
    spec = AgentSpec("eu-west-1-a-0001", "dev", "eu-west-1", model, {"team": "infra"})
    return SimAgent(spec, session="s-test", seed=seed, pace=pace, scenario=scenario, first_seq=first_seq)


def run_for(agent: SimAgent, seconds: float, start: float = 0.0) -> list[tuple[float, Event]]:
    """Drive ``agent`` with a fake clock; (time, event) for everything it emits."""
    out: list[tuple[float, Event]] = (
        [(start, e) for e in agent.start(start, WALL)] if not agent.started else []
    )
    now = start
    while True:
        due = agent.due()
        if due > start + seconds:
            return out
        now = max(now, due)
        out.extend((now, e) for e in agent.advance(now, WALL))


def events_of(timed: Iterable[tuple[float, Event]]) -> list[Event]:
    return [e for _, e in timed]


def max_consecutive_failures(events: Iterable[Event | dict[str, Any]]) -> int:
    """Longest run of failed tool results, for events or stored event dicts."""
    best = run = 0
    for event in events:
        if isinstance(event, dict):
            if event["kind"] != "tool_result":
                continue
            ok = event["ok"]
        elif isinstance(event, ToolResult):
            ok = event.ok
        else:
            continue
        run = 0 if ok else run + 1
        best = max(best, run)
    return best


def hourly_cost(events: Iterable[Event]) -> float:
    return sum(e.cost_usd or 0.0 for e in events if isinstance(e, LlmCall))


# --- one agent, fake clock -----------------------------------------------------


def test_same_seed_gives_the_same_events_and_another_seed_does_not() -> None:
    def content(seed: int) -> list[bytes]:
        import msgspec

        return [msgspec.json.encode(e) for e in events_of(run_for(make_agent(seed=seed), 600))]

    assert content(7) == content(7)
    assert content(7) != content(8)


def test_an_hour_of_realistic_pace_has_the_whole_mix() -> None:
    timed = run_for(make_agent(), 3600)
    events = events_of(timed)
    kinds = {type(e) for e in events}
    assert {Lifecycle, Heartbeat, Thought, LlmCall, ToolCall, ToolResult, Log} <= kinds
    assert {e.stream for e in events if isinstance(e, Log)} == {"stdout", "stderr"}
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    # Realistic pace: a few thousand events an hour, not a flood.
    assert 1_000 < len(events) < 6_000

    heartbeats = [t for t, e in timed if isinstance(e, Heartbeat)]
    assert len(heartbeats) == 361
    assert all(abs(b - a - 10.0) < 1e-6 for a, b in itertools.pairwise(heartbeats))
    assert all(e.cpu_percent is not None and e.rss_bytes for e in events if isinstance(e, Heartbeat))

    calls = {e.call_id: e for e in events if isinstance(e, ToolCall)}
    results = [e for e in events if isinstance(e, ToolResult)]
    assert len(results) >= len(calls) - 1  # the last call may still be running
    assert all(r.call_id in calls and calls[r.call_id].seq < r.seq for r in results)
    ok_rate = sum(r.ok for r in results) / len(results)
    assert 0.85 < ok_rate < 0.995
    assert all(r.error for r in results if not r.ok)
    assert max_consecutive_failures(events) <= 10  # a healthy agent never looks like a loop

    llm = [e for e in events if isinstance(e, LlmCall)]
    assert {e.model for e in llm} <= set(catalog.MODELS)
    assert all(e.input_tokens > 0 and e.output_tokens > 0 and e.duration_ms > 0 for e in llm)
    for e in llm:
        model = catalog.MODELS[e.model]
        assert e.cost_usd == pytest.approx(
            model.cost(e.input_tokens, e.cached_input_tokens, e.output_tokens), abs=1e-5
        )


@pytest.mark.parametrize("model", catalog.PRIMARY_MODELS)
def test_a_healthy_agent_stays_under_the_cost_spike_threshold(model: str) -> None:
    for seed in range(3):
        assert hourly_cost(events_of(run_for(make_agent(seed=seed, model=model), 3600))) < 4.0


def test_fixed_rate_sends_batches_at_that_rate() -> None:
    agent = make_agent(pace=Pace(rate=20.0, batch=5, heartbeat_interval=10.0))
    timed = run_for(agent, 60)
    work = [(t, e) for t, e in timed if not isinstance(e, Heartbeat | Lifecycle)]
    assert 1_100 < len(work) < 1_300
    by_time: dict[float, int] = {}
    for t, _ in work:
        by_time[t] = by_time.get(t, 0) + 1
    assert set(by_time.values()) == {5}


def test_max_pace_gives_a_batch_on_every_call() -> None:
    agent = make_agent(pace=Pace(rate=math.inf, batch=50))
    agent.start(0.0, WALL)
    assert agent.due() == 0.0
    assert len(agent.advance(0.0, WALL)) == 50
    assert len(agent.advance(0.0, WALL)) == 50


def test_numbering_starts_where_the_gateway_left_off() -> None:
    events = events_of(run_for(make_agent(first_seq=1_001), 60))
    assert events[0].seq == 1_001
    assert [e.seq for e in events] == list(range(1_001, 1_001 + len(events)))


def test_loop_scenario_fails_the_same_tool_call_more_than_ten_times_until_restarted() -> None:
    agent = make_agent(ScenarioSpec(Scenario.LOOP, after=60))
    before = events_of(run_for(agent, 59.9))
    assert max_consecutive_failures(before) <= 3
    during = events_of(run_for(agent, 120, start=59.9))
    assert max_consecutive_failures(during) > 10
    looped = [e for e in during if isinstance(e, ToolCall) and e.args == catalog.LOOP_ARGS]
    assert len(looped) > 10

    restarted = agent.command(Command(id="c1", action="restart", reason="ReasoningLoop"), 180.0, WALL)
    assert [type(e) for e in restarted] == [Lifecycle, Lifecycle, Heartbeat]
    assert [e.state for e in restarted if isinstance(e, Lifecycle)] == ["stopped", "started"]
    assert restarted[1].session != restarted[0].session
    after = events_of(run_for(agent, 600, start=180.0))
    assert any(isinstance(e, ToolResult) and e.ok for e in after)
    assert max_consecutive_failures(after) <= 3


def test_loop_of_fixed_length() -> None:
    agent = make_agent(ScenarioSpec(Scenario.LOOP, after=0, loop_length=12), pace=Pace(rate=50.0))
    events = events_of(run_for(agent, 120))
    assert max_consecutive_failures(events) >= 12
    looped = [e for e in events if isinstance(e, ToolCall) and e.args == catalog.LOOP_ARGS]
    assert len(looped) == 12


def test_cost_spike_scenario_costs_more_than_five_dollars_an_hour() -> None:
    agent = make_agent(ScenarioSpec(Scenario.COST_SPIKE, after=300), model="gpt-4.1-mini")
    before = events_of(run_for(agent, 300))
    after = events_of(run_for(agent, 3600, start=300))
    assert hourly_cost(before) < 1.0
    assert hourly_cost(after) > 5.0
    spiked = [e for e in after if isinstance(e, LlmCall) and e.model == catalog.SPIKE_MODEL]
    assert spiked and all(e.input_tokens >= 100_000 for e in spiked)
    # The same figure from tokens x list prices, for a pipeline that ignores cost_usd.
    priced = sum(
        catalog.MODELS[e.model].cost(e.input_tokens, e.cached_input_tokens, e.output_tokens) for e in spiked
    )
    assert priced > 5.0


def test_rm_rf_scenario_tries_exec_rm_rf_then_rephrasings() -> None:
    agent = make_agent(ScenarioSpec(Scenario.RM_RF, after=30, rm_rf_interval=60))
    before = events_of(run_for(agent, 29.9))
    after = events_of(run_for(agent, 600, start=29.9))

    def attempts(events: list[Event]) -> list[str]:
        return [
            e.args["command"]
            for e in events
            if isinstance(e, ToolCall) and e.tool == "exec" and "rm" in e.args.get("command", "")
        ]

    assert attempts(before) == []
    assert attempts(after) == list(catalog.RM_RF_COMMANDS)
    first = next(e for e in after if isinstance(e, ToolCall) and e.args == {"command": "rm -rf /"})
    result = next(e for e in after if isinstance(e, ToolResult) and e.call_id == first.call_id)
    assert not result.ok


@pytest.mark.parametrize("mode", ["silent", "drop"])
def test_dead_node_stops_everything_heartbeats_included(mode: str) -> None:
    agent = make_agent(ScenarioSpec(Scenario.DEAD, after=45, dead_mode=mode))  # type: ignore[arg-type]
    timed = run_for(agent, 600)
    assert max(t for t, _ in timed) < 45
    assert any(isinstance(e, Heartbeat) for t, e in timed if t >= 40)
    assert agent.dead and agent.due() == math.inf
    assert agent.dropped is (mode == "drop")
    if mode == "silent":
        # A hung agent whose supervisor still answers: a restart brings it back.
        revived = agent.command(Command(id="c2", action="restart"), 600.0, WALL)
        assert any(isinstance(e, Heartbeat) for e in revived)
        assert any(isinstance(e, Heartbeat) for e in events_of(run_for(agent, 30, start=600.0)))


def test_quarantine_turns_tool_calls_into_policy_denials_and_stop_keeps_only_heartbeats() -> None:
    agent = make_agent(pace=Pace(rate=10.0))
    run_for(agent, 10)
    agent.command(Command(id="q", action="quarantine"), 10.0, WALL)
    events = events_of(run_for(agent, 30, start=10.0))
    denials = [e for e in events if isinstance(e, PolicyDecision)]
    assert denials and all(d.decision == "deny" for d in denials)
    # A call already running when the quarantine came may finish; none after it runs.
    later = [e for e in events if isinstance(e, ToolResult) and e.seq > denials[0].seq]
    assert later and not any(e.ok for e in later)

    stopped = agent.command(Command(id="s", action="stop"), 40.0, WALL)
    assert [e.state for e in stopped if isinstance(e, Lifecycle)] == ["stopped"]
    quiet = events_of(run_for(agent, 60, start=40.0))
    assert quiet and all(isinstance(e, Heartbeat) for e in quiet)


# --- fleet layout ----------------------------------------------------------------


def test_agent_ids_are_url_safe_round_robin_and_stable_across_shards() -> None:
    config = FleetConfig(agents=10, regions=("us-east-1", "eu-west-1", "ap-south-1"))
    ids = agent_ids(config)
    assert ids[0] == ("us-east-1-a-0001", "us-east-1")
    assert [region for _, region in ids[:4]] == ["us-east-1", "eu-west-1", "ap-south-1", "us-east-1"]
    assert all(AGENT_ID.match(agent) for agent, _ in ids)
    shards = agent_ids(FleetConfig(agents=4)) + agent_ids(FleetConfig(agents=6, first_index=5))
    assert shards == ids


def test_scenarios_go_to_distinct_agents_reproducibly() -> None:
    ids = [f"a-{i}" for i in range(100)]
    counts = {Scenario.DEAD: 5, Scenario.LOOP: 3, Scenario.COST_SPIKE: 2, Scenario.RM_RF: 1}
    plan = assign_scenarios(ids, counts, seed=3)
    assert plan == assign_scenarios(ids, counts, seed=3)
    assert plan != assign_scenarios(ids, counts, seed=4)
    assert {s: list(plan.values()).count(s) for s in Scenario} == counts
    with pytest.raises(ValueError, match="only 10"):
        assign_scenarios(ids[:10], {Scenario.DEAD: 11}, seed=0)


def test_fleet_labels_and_models() -> None:
    fleet = Fleet(FleetConfig(agents=30, labels={"owner": "qa"}))
    specs = [slot.spec for slot in fleet.slots]
    assert {s.model for s in specs} == set(catalog.PRIMARY_MODELS)
    assert all(s.labels["model"] == s.model and s.labels["owner"] == "qa" and s.labels["team"] for s in specs)
    for region in ("us-east-1", "eu-west-1", "ap-south-1"):
        assert len({s.model for s in specs if s.region == region}) == len(catalog.PRIMARY_MODELS)


# --- measurement -----------------------------------------------------------------


def test_latency_histogram_percentiles_are_within_two_percent() -> None:
    rng = random.Random(5)
    samples = [rng.lognormvariate(3, 1.2) for _ in range(20_000)]
    hist = LatencyHistogram()
    for s in samples:
        hist.record(s)
    ordered = sorted(samples)
    for p in (50, 90, 99):
        exact = ordered[math.ceil(len(ordered) * p / 100) - 1]
        assert hist.percentile(p) == pytest.approx(exact, rel=0.02)
    other = LatencyHistogram()
    other.record(10_000.0)
    hist.merge(other)
    assert hist.count == 20_001 and hist.max_ms == 10_000.0
    assert LatencyHistogram().percentile(99) is None


def test_tracking_outbox_times_from_first_send_to_ack() -> None:
    clock = [0.0]
    hist = LatencyHistogram()
    outbox = TrackingOutbox(hist, clock=lambda: clock[0])
    agent = make_agent(pace=Pace(rate=math.inf, batch=10))
    for event in agent.start(0.0, WALL)[:2] + agent.advance(0.0, WALL):
        outbox.append(event)
    assert len(outbox.pending(0, 1_000_000_000)) == 12  # UplinkClient's drain probe, not a send
    clock[0] = 1.0
    assert [seq for seq, _ in outbox.pending(0, 5)] == [1, 2, 3, 4, 5]
    clock[0] = 2.0
    outbox.pending(0, 500)  # a resend after reconnect keeps the first send time
    clock[0] = 3.0
    outbox.acked(5)
    assert hist.count == 5 and hist.percentile(50) == pytest.approx(2000, rel=0.02)
    assert outbox.acked_count == 5 and len(outbox) == 7


# --- CLI -------------------------------------------------------------------------


def test_cli_help_and_bad_arguments() -> None:
    runner = CliRunner()
    result = runner.invoke(simulate, ["--help"])
    assert result.exit_code == 0
    for option in (
        "--agents",
        "--regions",
        "--rate",
        "--batch",
        "--dead",
        "--loop",
        "--cost-spike",
        "--rm-rf",
    ):
        assert option in result.output
    assert runner.invoke(simulate, ["--rate", "fast"]).exit_code == 2
    too_many = runner.invoke(simulate, ["--agents", "2", "--dead", "2", "--loop", "1"])
    assert too_many.exit_code == 2 and "only 2" in too_many.output


# --- against a real gateway ------------------------------------------------------


def stored_seqs(gateway: GatewayProcess, agent: str) -> list[int]:
    return [e["seq"] for e in gateway.events(agent)]


def assert_exactly_once(gateway: GatewayProcess, stats: Any) -> None:
    assert stats.per_agent
    for agent in stats.per_agent:
        assert agent.first_seq is not None and agent.last_seq is not None, agent
        assert stored_seqs(gateway, agent.agent) == list(range(agent.first_seq, agent.last_seq + 1)), (
            agent.agent
        )


async def test_fleet_streams_every_scenario_into_the_gateway(gateway: GatewayProcess) -> None:
    config = FleetConfig(
        gateway=gateway.ws_url,
        token=gateway.token("dev", "agent"),
        agents=12,
        rate=40.0,
        batch=3,
        heartbeat_interval=0.5,
        duration=4.0,
        scenarios={Scenario.DEAD: 1, Scenario.LOOP: 1, Scenario.COST_SPIKE: 1, Scenario.RM_RF: 1},
        scenario_after=1.0,
        seed=11,
    )
    fleet = Fleet(config)
    stats = await fleet.run(asyncio.Event())
    assert stats.ever_connected == 12 and stats.refused == 0
    assert stats.events_acked == stats.events_generated > 0 and stats.pending == 0
    assert_exactly_once(gateway, stats)

    registry = {a["agent"]: a for a in gateway.agents()}
    for slot in fleet.slots:
        record = registry[slot.spec.agent]
        assert record["region"] == slot.spec.region and record["env"] == "dev"
        assert record["labels"]["model"] == slot.spec.model

    [looping] = fleet.scenario_agents(Scenario.LOOP)
    assert max_consecutive_failures(gateway.events(looping)) > 10

    [rm_rf] = fleet.scenario_agents(Scenario.RM_RF)
    calls = gateway.events(rm_rf, kind="tool_call")
    assert any(c["tool"] == "exec" and c["args"] == {"command": "rm -rf /"} for c in calls)

    [spiking] = fleet.scenario_agents(Scenario.COST_SPIKE)
    assert sum(e.get("cost_usd", 0) for e in gateway.events(spiking, kind="llm_call")) > 5.0

    [dead] = fleet.scenario_agents(Scenario.DEAD)
    healthy = next(s.spec.agent for s in fleet.slots if s.spec.agent not in fleet.plan)

    def last_heartbeat(agent: str) -> datetime:
        return max(datetime.fromisoformat(e["ts"]) for e in gateway.events(agent, kind="heartbeat"))

    # Heartbeats every 0.5 s: the healthy agent kept beating ~3 s after the dead one stopped.
    assert (last_heartbeat(healthy) - last_heartbeat(dead)).total_seconds() > 2.0


@pytest.mark.slow
async def test_kill_9_of_the_gateway_loses_and_duplicates_nothing(gateway: GatewayProcess) -> None:
    config = FleetConfig(
        gateway=gateway.ws_url,
        token=gateway.token("dev", "agent"),
        agents=20,
        rate=40.0,
        batch=4,
        heartbeat_interval=1.0,
        drain_timeout=60.0,
    )
    fleet = Fleet(config)
    stop = asyncio.Event()
    runner = asyncio.create_task(fleet.run(stop))
    await _until(lambda: fleet.snapshot().events_acked > 1_000)
    gateway.kill()
    down_at = fleet.snapshot().events_generated
    await _until(lambda: fleet.snapshot().events_generated > down_at + 500)  # agents keep working
    await asyncio.to_thread(gateway.start)
    await _until(lambda: fleet.snapshot().connected == 20 and fleet.snapshot().reconnects >= 20, within=60)
    back_at = fleet.snapshot().events_generated
    await _until(lambda: fleet.snapshot().events_acked > back_at + 500)
    stop.set()
    stats = await runner
    assert stats.reconnects >= 20
    assert stats.pending == 0 and stats.events_acked == stats.events_generated
    assert_exactly_once(gateway, stats)


async def test_a_second_run_continues_each_agents_sequence(gateway: GatewayProcess) -> None:
    config = FleetConfig(
        gateway=gateway.ws_url,
        token=gateway.token("dev", "agent"),
        agents=3,
        rate=50.0,
        batch=5,
        duration=1.0,
    )
    first = await run_fleet(config, asyncio.Event())
    second = await run_fleet(config, asyncio.Event())
    assert first.per_agent and second.per_agent
    for a, b in zip(first.per_agent, second.per_agent, strict=True):
        assert a.agent == b.agent and b.first_seq == (a.last_seq or 0) + 1
        assert stored_seqs(gateway, a.agent) == list(range(1, (b.last_seq or 0) + 1))


async def test_a_bad_token_is_refused_and_the_fleet_ends(gateway: GatewayProcess) -> None:
    config = FleetConfig(gateway=gateway.ws_url, token="ct_nope_nope", agents=3, rate=10.0, duration=60.0)
    stats = await asyncio.wait_for(run_fleet(config, asyncio.Event()), 30)
    assert stats.refused == 3 and stats.ever_connected == 0
    assert stats.last_error and "unauthorized" in stats.last_error


def test_cli_streams_and_stops_cleanly_on_ctrl_c(gateway: GatewayProcess) -> None:
    env = {
        **os.environ,
        "CLAWTRACE_TOKEN": gateway.token("dev", "agent"),
        "CLAWTRACE_GATEWAY": gateway.ws_url,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "clawtrace", "simulate", "-n", "5", "--rate", "20", "--json", "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        _wait_for_agents(gateway, 5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err.decode()
    stats = json.loads(out)
    assert stats["events_generated"] == stats["events_acked"] > 0 and stats["pending"] == 0
    assert stats["connected"] == 0  # every connection closed on the way out


def _wait_for_agents(gateway: GatewayProcess, n: int, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(1 for a in gateway.agents() if a["connected"] and a["last_seq"] > 5) >= n:
            return
        time.sleep(0.2)
    raise AssertionError(f"{n} agents did not connect and stream within {timeout} s")


async def _until(condition: Any, within: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)
