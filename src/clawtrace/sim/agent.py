"""One simulated agent as a clock-driven state machine.

``SimAgent`` knows nothing about sockets or asyncio: the fleet runner asks
it what is due at a given time and ships what it returns. That keeps it
deterministic and lets tests drive it with a fake clock.

Three paces:

- realistic (``rate=None``): events follow the durations they describe (an
  LLM call's event arrives when the call would finish), about 0.5 events/s;
- fixed (``rate=R``): ``batch`` events every ``batch/R`` seconds, for
  benchmarks at a known load;
- max (``rate=inf``): ``batch`` events whenever asked; the runner throttles
  on unacknowledged events, to find a gateway's ceiling.

Heartbeats come every ``heartbeat_interval`` seconds at any pace, on top of
the rate.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from clawtrace.protocol.messages import Command, Envelope, Event, Heartbeat, Lifecycle
from clawtrace.sim import catalog
from clawtrace.sim.behaviour import Behaviour, Spec, StepPool
from clawtrace.sim.scenarios import Scenario, ScenarioSpec

# A generator that fell behind (a paused process, a full outbox) resumes at
# the current time rather than bursting everything it owes.
MAX_CATCH_UP_S = 1.0


@dataclass(frozen=True, slots=True)
class AgentSpec:
    """Who an agent is: what it says in ``hello``."""

    agent: str
    env: str
    region: str
    model: str
    labels: dict[str, str] = field(default_factory=dict)
    release: str | None = None
    # Follows its environment's desired release of this role (as `clawtrace run --role` does).
    role: str | None = None


@dataclass(frozen=True, slots=True)
class Pace:
    rate: float | None = None
    batch: int = 1
    heartbeat_interval: float = 10.0

    def __post_init__(self) -> None:
        if self.rate is not None and not self.rate > 0:
            raise ValueError("rate must be positive (or None for realistic pace, inf for max)")
        if self.batch < 1:
            raise ValueError("batch must be at least 1")
        if not self.heartbeat_interval > 0:
            raise ValueError("heartbeat_interval must be positive")

    @property
    def is_max(self) -> bool:
        return self.rate is not None and math.isinf(self.rate)


class SimAgent:
    def __init__(
        self,
        spec: AgentSpec,
        *,
        session: str,
        seed: int = 0,
        pace: Pace | None = None,
        scenario: ScenarioSpec | None = None,
        first_seq: int = 1,
        tool_failure_rate: float = 0.05,
        secret_rate: float = 0.002,
        report_cost: bool = True,
        pool: StepPool | None = None,
    ) -> None:
        self.spec = spec
        self.pace = pace or Pace()
        self.scenario = scenario
        self._session_root = session
        self.session = session
        self.next_seq = first_seq
        # Content and timing noise use separate generators, so the event
        # content for a seed does not depend on when the runner wakes up.
        self.behaviour = Behaviour(
            random.Random(f"{seed}:{spec.agent}"),
            model=spec.model,
            call_prefix=session,
            tool_failure_rate=tool_failure_rate,
            secret_rate=secret_rate,
            report_cost=report_cost,
            pool=pool.steps_for(spec.model) if pool is not None else None,
        )
        self._noise = random.Random(f"{seed}:{spec.agent}:noise")
        self._queue: deque[Spec] = deque()
        self._head: Spec | None = None
        self._next_event = math.inf
        self._next_heartbeat = math.inf
        self._scenario_at = math.inf
        self._rm_rf_left: list[str] = []
        self._cpu = self._noise.uniform(2.0, 20.0)
        self._rss = self._noise.randint(150, 400) * 1024 * 1024
        self.started = False
        self.dead = False
        self.dropped = False
        self.stopped = False
        self.restarts = 0
        # The release it runs: a deploy command changes it (agents with a role).
        self.release = spec.release

    # --- driving -------------------------------------------------------------

    def start(self, now: float, wall: datetime) -> list[Event]:
        """The agent process starts: lifecycle, a first heartbeat, then work."""
        self.started = True
        if self.scenario is not None:
            self._scenario_at = now + self.scenario.after
            if self.scenario.kind is Scenario.RM_RF:
                self._rm_rf_left = list(catalog.RM_RF_COMMANDS)
        out = [self._emit(Lifecycle, {"state": "started", "reason": "simulated agent"}, wall)]
        out.append(self._heartbeat(wall))
        self._next_heartbeat = now + self.pace.heartbeat_interval
        self._reset_work(now)
        return out

    def due(self) -> float:
        """When ``advance`` next has something to do (``inf``: never on its own)."""
        if self.dead or not self.started:
            return math.inf
        if self.stopped:
            return min(self._next_heartbeat, self._scenario_at)
        return min(self._next_event, self._next_heartbeat, self._scenario_at)

    def advance(self, now: float, wall: datetime) -> list[Event]:
        if self.dead or not self.started:
            return []
        if now >= self._scenario_at:
            self._trigger_scenario(now)
            if self.dead:
                return []
        out: list[Event] = []
        if now >= self._next_heartbeat:
            out.append(self._heartbeat(wall))
            self._next_heartbeat += self.pace.heartbeat_interval
            if self._next_heartbeat <= now:
                self._next_heartbeat = now + self.pace.heartbeat_interval
        if self.stopped:
            return out
        pace = self.pace
        if pace.rate is None:
            self._advance_realistic(now, wall, out)
        elif pace.is_max:
            for _ in range(pace.batch):
                out.append(self._emit_spec(self._pull(), wall))
        else:
            if now - self._next_event > MAX_CATCH_UP_S:
                self._next_event = now
            interval = pace.batch / pace.rate
            while self._next_event <= now:
                for _ in range(pace.batch):
                    out.append(self._emit_spec(self._pull(), wall))
                self._next_event += interval * self._noise.uniform(0.9, 1.1)
        return out

    def command(self, cmd: Command, now: float, wall: datetime) -> list[Event]:
        """React to a command from the control plane as a supervised agent would."""
        if self.dropped or not self.started:
            return []
        reason = cmd.reason or f"{cmd.action} command {cmd.id}"
        if cmd.action == "restart":
            return self._restart(now, wall, reason)
        if cmd.action == "stop":
            self.dead = False
            self.stopped = True
            self._scenario_at = math.inf
            return [self._emit(Lifecycle, {"state": "stopped", "exit_code": -15, "reason": reason}, wall)]
        if cmd.action == "quarantine":
            self.behaviour.quarantined = True
            return [self._emit(Lifecycle, {"state": "quarantined", "reason": reason}, wall)]
        if cmd.action == "deploy" and self.spec.role is not None:
            release = cmd.payload.get("release")
            if not isinstance(release, str) or release == self.release or self.dead:
                return []
            # The node agent restarts its agent process on the new release, then says so.
            self.release = release
            out = self._restart(now, wall, reason)
            deployed = {"state": "deployed", "reason": str(cmd.payload.get("ref") or release[:12])}
            out.insert(-1, self._emit(Lifecycle, deployed, wall))
            return out
        if cmd.action == "policy":
            # A new policy bundle replaces whatever deny-all a quarantine set.
            self.behaviour.quarantined = False
        return []

    def shutdown(self, wall: datetime) -> list[Event]:
        """The simulation ends: a running agent stops as under a node agent's SIGTERM.

        A dead (hung) agent says nothing: it stays dead for the control plane."""
        if not self.started or self.dead or self.dropped or self.stopped:
            return []
        self.stopped = True
        stopped = {"state": "stopped", "exit_code": -15, "reason": "simulation ended"}
        return [self._emit(Lifecycle, stopped, wall)]

    # --- internals -----------------------------------------------------------

    def _restart(self, now: float, wall: datetime, reason: str) -> list[Event]:
        out: list[Event] = []
        if not self.dead and not self.stopped:
            out.append(self._emit(Lifecycle, {"state": "stopped", "exit_code": -15, "reason": reason}, wall))
        self.restarts += 1
        self.session = f"{self._session_root}.{self.restarts}"
        self.behaviour.call_prefix = self.session
        self.behaviour.reset()
        self.dead = self.stopped = False
        self._rm_rf_left = []
        self._scenario_at = math.inf
        out.append(self._emit(Lifecycle, {"state": "started", "reason": reason}, wall))
        out.append(self._heartbeat(wall))
        self._next_heartbeat = now + self.pace.heartbeat_interval
        self._reset_work(now)
        return out

    def _trigger_scenario(self, now: float) -> None:
        scenario = self.scenario
        assert scenario is not None
        self._scenario_at = math.inf
        if scenario.kind is Scenario.DEAD:
            self.dead = True
            self.dropped = scenario.dead_mode == "drop"
        elif scenario.kind is Scenario.LOOP:
            self.behaviour.start_loop(scenario.loop_length)
        elif scenario.kind is Scenario.COST_SPIKE:
            self.behaviour.spiking = True
        elif scenario.kind is Scenario.RM_RF and self._rm_rf_left:
            # Queued behind the step in progress, so it reads as the agent's next decision.
            self._queue.extend(self.behaviour.rm_rf_step(self._rm_rf_left.pop(0)))
            if self._rm_rf_left:
                self._scenario_at = now + scenario.rm_rf_interval

    def _reset_work(self, now: float) -> None:
        self._queue.clear()
        if self.pace.rate is None:
            self._head = self._pull()
            self._next_event = now + self._head.delay
        else:
            # Spread agents over the first interval so a fleet does not tick in lockstep.
            interval = 0.0 if self.pace.is_max else self.pace.batch / self.pace.rate
            self._next_event = now + interval * self._noise.random()

    def _advance_realistic(self, now: float, wall: datetime, out: list[Event]) -> None:
        if now - self._next_event > MAX_CATCH_UP_S:
            self._next_event = now
        while self._next_event <= now:
            assert self._head is not None
            out.append(self._emit_spec(self._head, wall))
            self._head = self._pull()
            self._next_event += self._head.delay

    def _pull(self) -> Spec:
        if not self._queue:
            self._queue.extend(self.behaviour.next_step())
        return self._queue.popleft()

    def _emit_spec(self, spec: Spec, wall: datetime) -> Event:
        return self._emit(spec.kind, spec.fields, wall)

    def _emit(self, kind: type[Envelope], fields: dict[str, Any], wall: datetime) -> Event:
        event: Event = kind(seq=self.next_seq, ts=wall, session=self.session, **fields)  # type: ignore[assignment]
        self.next_seq += 1
        return event

    def _heartbeat(self, wall: datetime) -> Event:
        noise = self._noise
        busy = self.behaviour.looping or self.behaviour.spiking
        target = 70.0 if busy else 12.0
        self._cpu = min(99.0, max(0.1, self._cpu + (target - self._cpu) * 0.2 + noise.gauss(0.0, 3.0)))
        self._rss = max(64 << 20, self._rss + int(noise.gauss(0.5, 2.0) * (1 << 20)))
        release = {"release": self.release} if self.spec.role is not None and self.release else {}
        if self.stopped:
            return self._emit(Heartbeat, release, wall)
        return self._emit(
            Heartbeat, {"cpu_percent": round(self._cpu, 1), "rss_bytes": self._rss, **release}, wall
        )
