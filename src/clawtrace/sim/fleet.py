"""Many simulated agents in one asyncio process, one connection each.

Each agent has its own ``UplinkClient`` over a ``MemoryOutbox``, exactly as
a node agent uses one over its disk spool, so the simulator exercises the
real delivery path: a gateway restart costs no event while this process
lives. An agent starts numbering after the gateway's ``welcome`` ack, so
re-running a fleet against the same store continues each agent's sequence
instead of being dropped as duplicates. Given several gateway URLs (comma
separated), agents are spread over them round robin and each fails over to
the next when its gateway goes away (``UplinkClient``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import msgspec

from clawtrace.protocol.client import RefusedError, UplinkClient
from clawtrace.protocol.messages import EVENT_TYPES, Command, Error, Event, Hello
from clawtrace.protocol.tls import client_ssl_context, context_for, is_tls_url
from clawtrace.sim import catalog
from clawtrace.sim.agent import AgentSpec, Pace, SimAgent
from clawtrace.sim.behaviour import StepPool
from clawtrace.sim.outbox import LatencyHistogram, TrackingOutbox
from clawtrace.sim.scenarios import DeadMode, Scenario, ScenarioSpec, assign_scenarios

log = logging.getLogger("clawtrace.sim")

DEFAULT_REGIONS: tuple[str, ...] = ("us-east-1", "eu-west-1", "ap-south-1")
_KIND_OF: dict[type, str] = {cls: kind for kind, cls in EVENT_TYPES.items()}


@dataclass(slots=True)
class FleetConfig:
    # One gateway URL, or several separated by commas (agents spread over them, round robin).
    gateway: str = "ws://127.0.0.1:7420"
    token: str | None = None
    agents: int = 50
    regions: tuple[str, ...] = DEFAULT_REGIONS
    env: str = "dev"
    # Events per second per agent, heartbeats aside. None: realistic pace
    # (about 0.5/s); math.inf: as fast as the gateway acknowledges.
    rate: float | None = None
    # Events produced together (and so, usually, sent in one frame).
    batch: int = 1
    duration: float | None = None
    seed: int = 0
    heartbeat_interval: float = 10.0
    scenarios: dict[Scenario, int] = field(default_factory=dict)
    scenario_after: float = 30.0
    dead_mode: DeadMode = "silent"
    loop_length: int | None = None
    rm_rf_interval: float = 60.0
    id_prefix: str = ""
    first_index: int = 1
    labels: dict[str, str] = field(default_factory=dict)
    release: str | None = None
    # The agents run their environment's desired release of this role (deploy commands).
    role: str | None = None
    # Seconds to wait at the end for outstanding acks.
    drain_timeout: float = 10.0
    # Seconds over which agents open their connections; None: up to 5 s by fleet size.
    ramp: float | None = None
    # At max pace: events an agent may have unacknowledged before it waits.
    max_in_flight: int = 1_000
    # At other paces: an agent that cannot deliver stops producing here
    # instead of growing without bound (it loses nothing, it just waits).
    max_outbox: int = 200_000
    tool_failure_rate: float = 0.05
    secret_rate: float = 0.002
    report_cost: bool = True
    # Names this run's sessions; random unless given.
    session_tag: str | None = None
    # A private CA (PEM) trusted besides the system's for a wss:// gateway.
    ca_file: str | None = None

    def gateways(self) -> list[str]:
        return [url.strip() for url in self.gateway.split(",") if url.strip()]

    def validate(self) -> None:
        if not self.gateways():
            raise ValueError("no gateway URL given")
        if self.agents < 1:
            raise ValueError("agents must be at least 1")
        if not self.regions or any(not r for r in self.regions):
            raise ValueError("at least one non-empty region is needed")
        if self.first_index < 0:
            raise ValueError("first_index must not be negative")
        Pace(self.rate, self.batch, self.heartbeat_interval)
        if sum(self.scenarios.values()) > self.agents:
            raise ValueError(
                f"{sum(self.scenarios.values())} agents with scenarios requested "
                f"but the fleet has only {self.agents}"
            )
        if self.ca_file:
            client_ssl_context(self.ca_file)  # TLSConfigError (a ValueError) says what is wrong with it


def agent_ids(config: FleetConfig) -> list[tuple[str, str]]:
    """(agent id, region) for the fleet: regions round robin, ids URL-path safe.

    Both follow from the agent's index alone, so a fleet split over several
    processes (``first_index``) names its agents as one process would.
    """
    last = config.first_index + config.agents - 1
    width = max(4, len(str(last)))
    out = []
    for index in range(config.first_index, last + 1):
        region = config.regions[(index - 1) % len(config.regions)]
        out.append((f"{config.id_prefix}{region}-a-{index:0{width}d}", region))
    return out


def agent_specs(config: FleetConfig) -> list[AgentSpec]:
    specs = []
    for n, (agent, region) in enumerate(agent_ids(config)):
        # By index over region count, so each region gets every model and team.
        group = (config.first_index + n - 1) // len(config.regions)
        model = catalog.PRIMARY_MODELS[group % len(catalog.PRIMARY_MODELS)]
        labels = {"team": catalog.TEAMS[group % len(catalog.TEAMS)], "model": model, **config.labels}
        if config.role is not None:
            labels["role"] = config.role
        specs.append(AgentSpec(agent, config.env, region, model, labels, config.release, config.role))
    return specs


class AgentStats(msgspec.Struct, kw_only=True):
    agent: str
    region: str
    scenario: str | None
    connected: bool
    # The gateway URL it is connected to (or tries next); None before its first attempt.
    gateway: str | None
    # The seqs this run generated, first..last inclusive (None: none yet).
    first_seq: int | None
    last_seq: int | None
    acked_seq: int
    connects: int
    restarts: int


class FleetStats(msgspec.Struct, kw_only=True):
    agents: int
    connected: int
    ever_connected: int
    refused: int
    events_generated: int
    events_acked: int
    pending: int
    by_kind: dict[str, int]
    reconnects: int
    commands: dict[str, int]
    gateway_errors: dict[str, int]
    last_error: str | None
    elapsed_s: float
    ack_latency_ms: dict[str, float | int | None]
    scenarios: dict[str, list[str]]
    per_agent: list[AgentStats] | None = None


class _Slot:
    __slots__ = (
        "agent",
        "client",
        "client_task",
        "early_commands",
        "first_seq",
        "outbox",
        "refused",
        "scenario",
        "spec",
    )

    def __init__(self, spec: AgentSpec, scenario: ScenarioSpec | None, outbox: TrackingOutbox) -> None:
        self.spec = spec
        self.scenario = scenario
        self.outbox = outbox
        self.client: UplinkClient | None = None
        self.client_task: asyncio.Task[None] | None = None
        self.agent: SimAgent | None = None
        self.first_seq: int | None = None
        self.refused: str | None = None
        # Commands right after the welcome (a deploy) come before the agent exists.
        self.early_commands: list[Command] = []


ProgressCallback = Callable[[FleetStats], None]


class Fleet:
    """A simulated fleet; ``run()`` it once. ``snapshot()`` is safe any time."""

    def __init__(self, config: FleetConfig) -> None:
        config.validate()
        self.config = config
        self.pace = Pace(config.rate, config.batch, config.heartbeat_interval)
        self.session_tag = config.session_tag or f"sim-{secrets.token_hex(4)}"
        self.latency = LatencyHistogram()
        specs = agent_specs(config)
        self.plan = assign_scenarios([s.agent for s in specs], config.scenarios, config.seed)
        self.slots: list[_Slot] = []
        limit = config.max_in_flight if self.pace.is_max else config.max_outbox
        for spec in specs:
            kind = self.plan.get(spec.agent)
            scenario = (
                ScenarioSpec(
                    kind,
                    after=config.scenario_after,
                    dead_mode=config.dead_mode,
                    loop_length=config.loop_length,
                    rm_rf_interval=config.rm_rf_interval,
                )
                if kind is not None
                else None
            )
            self.slots.append(_Slot(spec, scenario, TrackingOutbox(self.latency, low_water=limit // 2)))
        self._limit = limit
        # Realistic pace is cheap enough to draw every step; at a set rate, reuse.
        self._pool = StepPool(config.seed) if config.rate is not None else None
        self._kinds: Counter[str] = Counter()
        self._commands: Counter[str] = Counter()
        self._errors: Counter[str] = Counter()
        self._last_error: str | None = None
        self._started = 0.0
        self._ended: float | None = None
        self._all_refused = asyncio.Event()
        self.gateways = config.gateways()
        # One TLS context for every agent's connection (None for ws://).
        tls = [url for url in self.gateways if is_tls_url(url)]
        self._ssl = context_for(tls[0] if tls else self.gateways[0], config.ca_file)

    def scenario_agents(self, scenario: Scenario) -> list[str]:
        return [agent for agent, kind in self.plan.items() if kind is scenario]

    def snapshot(self, *, per_agent: bool = False) -> FleetStats:
        connected = ever = refused = reconnects = 0
        generated = acked = pending = 0
        agents: list[AgentStats] = []
        for slot in self.slots:
            client = slot.client
            is_connected = client is not None and client.connected.is_set()
            connected += is_connected
            connects = client.connects if client is not None else 0
            ever += connects > 0
            reconnects += max(0, connects - 1)
            refused += slot.refused is not None
            generated += slot.outbox.appended
            acked += slot.outbox.acked_count
            pending += len(slot.outbox)
            if per_agent:
                agent = slot.agent
                agents.append(
                    AgentStats(
                        agent=slot.spec.agent,
                        region=slot.spec.region,
                        scenario=slot.scenario.kind.value if slot.scenario else None,
                        connected=is_connected,
                        gateway=client.url if client is not None else None,
                        first_seq=slot.first_seq,
                        last_seq=agent.next_seq - 1 if agent is not None else None,
                        acked_seq=client.acked_seq if client is not None else 0,
                        connects=connects,
                        restarts=agent.restarts if agent is not None else 0,
                    )
                )
        end = self._ended if self._ended is not None else time.monotonic()
        scenarios: dict[str, list[str]] = {s.value: [] for s in Scenario if self.config.scenarios.get(s)}
        for agent_id, kind in self.plan.items():
            scenarios[kind.value].append(agent_id)
        last_error = self._last_error
        if last_error is None and connected < len(self.slots):
            last_error = next(
                (s.client.last_error for s in self.slots if s.client and s.client.last_error), None
            )
        return FleetStats(
            agents=len(self.slots),
            connected=connected,
            ever_connected=ever,
            refused=refused,
            events_generated=generated,
            events_acked=acked,
            pending=pending,
            by_kind=dict(sorted(self._kinds.items())),
            reconnects=reconnects,
            commands=dict(self._commands),
            gateway_errors=dict(self._errors),
            last_error=last_error,
            elapsed_s=round(end - self._started, 3) if self._started else 0.0,
            ack_latency_ms=self.latency.summary(),
            scenarios=scenarios,
            per_agent=agents if per_agent else None,
        )

    async def run(
        self,
        stop: asyncio.Event,
        *,
        on_progress: ProgressCallback | None = None,
        progress_interval: float = 2.0,
    ) -> FleetStats:
        config = self.config
        self._started = time.monotonic()
        ramp = config.ramp if config.ramp is not None else min(5.0, len(self.slots) / 500)
        drivers = [
            asyncio.create_task(
                self._drive(slot, n, ramp * n / len(self.slots)), name=f"sim:{slot.spec.agent}"
            )
            for n, slot in enumerate(self.slots)
        ]
        try:
            await self._wait_until_done(stop, on_progress, progress_interval)
        finally:
            for task in drivers:
                task.cancel()
            await asyncio.gather(*drivers, return_exceptions=True)
            wall = datetime.now(UTC)
            for slot in self.slots:
                if slot.agent is not None and slot.client is not None:
                    self._push(slot, slot.agent.shutdown(wall))
            await self._drain()
            self._ended = time.monotonic()
        return self.snapshot(per_agent=True)

    async def _wait_until_done(
        self, stop: asyncio.Event, on_progress: ProgressCallback | None, interval: float
    ) -> None:
        deadline = math.inf if self.config.duration is None else time.monotonic() + self.config.duration
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._all_refused.wait())]
        try:
            while not (stop.is_set() or self._all_refused.is_set()):
                timeout = min(interval if on_progress else math.inf, deadline - time.monotonic())
                if timeout <= 0:
                    break
                await asyncio.wait(
                    waiters,
                    timeout=None if math.isinf(timeout) else timeout,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if on_progress is not None and not stop.is_set():
                    on_progress(self.snapshot())
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _drain(self) -> None:
        clients = [slot.client for slot in self.slots if slot.client is not None]
        # close() waits for the acks of what is pending, bounded by drain_timeout.
        await asyncio.gather(
            *(c.close(drain_timeout=self.config.drain_timeout) for c in clients), return_exceptions=True
        )
        tasks = [slot.client_task for slot in self.slots if slot.client_task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- one agent -----------------------------------------------------------

    async def _drive(self, slot: _Slot, index: int, delay: float) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
        config = self.config
        spec = slot.spec
        hello = Hello(
            agent=spec.agent,
            env=spec.env,
            region=spec.region,
            labels=spec.labels,
            release=spec.release,
            role=spec.role,
        )
        # Agent n starts on gateway n mod count; on a reconnect it moves on to the next.
        start = index % len(self.gateways)
        client = UplinkClient(
            self.gateways[start:] + self.gateways[:start],
            hello,
            slot.outbox,
            token=config.token,
            on_command=lambda cmd: self._on_command(slot, cmd),
            on_error=self._on_error,
            ssl_context=self._ssl,
        )
        slot.client = client
        slot.client_task = asyncio.create_task(client.run(), name=f"uplink:{spec.agent}")
        slot.client_task.add_done_callback(lambda task: self._client_done(slot, task))
        await client.connected.wait()
        # Number after what the store already holds for this agent id.
        agent = SimAgent(
            spec,
            session=self.session_tag,
            seed=config.seed,
            pace=self.pace,
            scenario=slot.scenario,
            first_seq=client.acked_seq + 1,
            tool_failure_rate=config.tool_failure_rate,
            secret_rate=config.secret_rate,
            report_cost=config.report_cost,
            pool=self._pool,
        )
        slot.first_seq = agent.next_seq
        slot.agent = agent
        loop = asyncio.get_running_loop()
        outbox = slot.outbox
        self._push(slot, agent.start(loop.time(), datetime.now(UTC)))
        for command in slot.early_commands:
            self._push(slot, agent.command(command, loop.time(), datetime.now(UTC)))
        slot.early_commands.clear()
        while True:
            if agent.dropped:
                await client.close(drain_timeout=config.drain_timeout)
                return
            if len(outbox) >= self._limit:
                outbox.room.clear()
                await outbox.room.wait()
                continue
            now = loop.time()
            due = agent.due()
            if due > now:
                # Capped so a command that revives the agent is noticed promptly.
                await asyncio.sleep(min(due - now, 1.0))
                continue
            self._push(slot, agent.advance(now, datetime.now(UTC)))
            await asyncio.sleep(0)

    def _push(self, slot: _Slot, events: list[Event]) -> None:
        if not events:
            return
        outbox = slot.outbox
        kinds = self._kinds
        for event in events:
            outbox.append(event)
            kinds[_KIND_OF[type(event)]] += 1
        assert slot.client is not None
        slot.client.notify()

    async def _on_command(self, slot: _Slot, cmd: Command) -> None:
        self._commands[cmd.action] += 1
        if slot.agent is None:
            slot.early_commands.append(cmd)
            return
        loop = asyncio.get_running_loop()
        self._push(slot, slot.agent.command(cmd, loop.time(), datetime.now(UTC)))

    def _on_error(self, error: Error) -> None:
        self._errors[error.code] += 1
        self._last_error = f"{error.code}: {error.message}"

    def _client_done(self, slot: _Slot, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if isinstance(exc, RefusedError):
            slot.refused = str(exc)
            self._last_error = f"refused: {exc}"
            if all(s.refused is not None for s in self.slots):
                self._all_refused.set()
        elif exc is not None:
            self._last_error = f"{type(exc).__name__}: {exc}"
            log.error("uplink for %s failed", slot.spec.agent, exc_info=exc)


async def run_fleet(
    config: FleetConfig,
    stop: asyncio.Event,
    *,
    on_progress: ProgressCallback | None = None,
    progress_interval: float = 2.0,
) -> FleetStats:
    """Run a simulated fleet until ``stop`` is set or ``config.duration`` passes.

    Then waits up to ``config.drain_timeout`` s for outstanding acks, closes
    every connection and returns the final figures, per agent included.
    """
    return await Fleet(config).run(stop, on_progress=on_progress, progress_interval=progress_interval)
