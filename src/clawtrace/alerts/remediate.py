"""Remediation: a firing alert's restart / stop / quarantine, made safe.

- Backoff per agent: after an action, the next one for that agent waits
  10 s, doubling to 5 min; the delay resets once the agent has been healthy
  (no firing alert with actions) for 10 min, like Kubernetes' crash-loop backoff.
- Budget per environment: at most 10 % of an environment's agents (at
  least one) restarted or stopped per 10 minutes; beyond it actions are held
  and the environment gets a ``RemediationBudgetExhausted`` alert.
- Giving up: after 5 restarts within 30 min without a recovery, the agent
  is quarantined instead of restarted again, with a ``RemediationGaveUp`` alert.
- Dry run per rule (or globally): decided, audited, never carried out.
- Every decision lands in the audit log: who (the rule), what, why, result.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

from clawtrace.alerts.drivers.base import ActionResult, AgentTarget, RemediationDriver
from clawtrace.alerts.model import Alert, AuditEntry, Rule
from clawtrace.alerts.settings import AlertSettings

log = logging.getLogger("clawtrace.alerts.remediate")

Quarantine = Callable[[AgentTarget, str, str], Awaitable[ActionResult]]
DISRUPTIVE = ("restart", "stop")


@dataclass(slots=True)
class _AgentState:
    delay: float
    next_allowed: float = 0.0
    # Restarts since the agent was last healthy for a whole reset period.
    restarts: collections.deque[float] = field(default_factory=collections.deque)
    troubled: bool = False
    healthy_since: float | None = None
    gave_up: bool = False


class Remediator:
    def __init__(
        self,
        driver: RemediationDriver,
        quarantine: Quarantine,
        audit: Callable[[AuditEntry], None],
        env_size: Callable[[str], int],
        settings: AlertSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.driver = driver
        self._quarantine = quarantine
        self._audit = audit
        self.env_size = env_size
        self.settings = settings
        self.clock = clock
        self._agents: dict[str, _AgentState] = {}
        # Times of restarts and stops per environment, for the budget.
        self._spent: dict[str, collections.deque[float]] = {}
        # Per environment: the agents whose actions the budget holds right now.
        self.held: dict[str, set[str]] = {}
        # Agents quarantined because restarting did not help (engine raises an alert).
        self.gave_up: dict[str, tuple[AgentTarget, str]] = {}
        self._tasks: set[asyncio.Future[object]] = set()

    def _state(self, agent: str) -> _AgentState:
        state = self._agents.get(agent)
        if state is None:
            state = self._agents[agent] = _AgentState(delay=self.settings.backoff_initial_seconds)
        return state

    def budget(self, env: str) -> int:
        return max(1, math.floor(self.settings.budget_fraction * self.env_size(env)))

    def _spent_in_window(self, env: str, now: float) -> collections.deque[float]:
        spent = self._spent.setdefault(env, collections.deque())
        while spent and spent[0] <= now - self.settings.budget_window_seconds:
            spent.popleft()
        return spent

    def restore(self, entries: Sequence[AuditEntry]) -> None:
        """Rebuild budgets and backoff from the audit log after a restart (oldest first),
        so that restarting the gateway does not hand out a fresh budget."""
        now = self.clock()
        horizon = now - max(self.settings.budget_window_seconds, self.settings.give_up_window_seconds)
        for entry in entries:
            by_alert = entry.actor.startswith("alert:")
            if entry.ts < horizon or not by_alert or entry.result != "ok":
                continue
            if entry.action in DISRUPTIVE:
                self._spent.setdefault(entry.env, collections.deque()).append(entry.ts)
                state = self._state(entry.target)
                state.troubled = True
                state.next_allowed = max(state.next_allowed, entry.ts + state.delay)
                state.delay = min(state.delay * 2, self.settings.backoff_max_seconds)
                if entry.action == "restart":
                    state.restarts.append(entry.ts)

    def healthy(self, agent: str, now: float) -> None:
        """The agent has no firing alert with actions any more."""
        state = self._agents.get(agent)
        if state is None or not state.troubled:
            return
        state.troubled = False
        state.healthy_since = now
        for held in self.held.values():
            held.discard(agent)

    def consider(self, alert: Alert, rule: Rule, target: AgentTarget) -> None:
        """Carry out the rule's actions for a firing alert if backoff and budget allow."""
        actions = [a for a in rule.actions if a != "notify"]
        if not actions:
            return
        now = self.clock()
        state = self._state(target.agent)
        if (
            state.healthy_since is not None
            and now - state.healthy_since >= self.settings.backoff_reset_seconds
        ):
            state.delay = self.settings.backoff_initial_seconds
            state.restarts.clear()
        state.troubled = True
        state.healthy_since = None
        if state.gave_up or now < state.next_allowed:
            return
        dry_run = rule.dry_run or self.settings.dry_run
        window = self.settings.give_up_window_seconds
        while state.restarts and state.restarts[0] <= now - window:
            state.restarts.popleft()
        disruptive = [a for a in actions if a in DISRUPTIVE]
        if "restart" in disruptive and len(state.restarts) >= self.settings.give_up_after_restarts:
            self._give_up(alert, rule, target, state, dry_run)
            return
        if alert.actions_taken and "quarantine" in actions:
            # Quarantined at the first action of this alert; only retries of the rest repeat.
            actions.remove("quarantine")
        if not actions:
            return
        if disruptive and not dry_run:
            spent = self._spent_in_window(target.env, now)
            if len(spent) >= self.budget(target.env):
                held = self.held.setdefault(target.env, set())
                if target.agent not in held:
                    held.add(target.agent)
                    alert.last_action = f"{'/'.join(disruptive)} held: environment budget"
                    self._record(
                        alert,
                        rule,
                        target,
                        "/".join(disruptive),
                        "held",
                        f"budget of {self.budget(target.env)} restarts/stops per "
                        f"{self.settings.budget_window_seconds:g} s in {target.env!r} is spent",
                    )
                return
            spent.append(now)
            self.held.get(target.env, set()).discard(target.agent)
            if "restart" in disruptive:
                state.restarts.append(now)
        state.next_allowed = now + state.delay
        state.delay = min(state.delay * 2, self.settings.backoff_max_seconds)
        alert.actions_taken += 1
        # Quarantine first: it protects even if the restart fails.
        ordered = sorted(actions, key=lambda a: a != "quarantine")
        alert.last_action = "+".join(ordered) + (" (dry run)" if dry_run else "")
        if dry_run:
            for action in ordered:
                self._record(alert, rule, target, action, "dry_run", "dry run: not carried out")
            return
        self._spawn(self._act_all(alert, rule, target, ordered, now))

    async def _act_all(
        self, alert: Alert, rule: Rule, target: AgentTarget, actions: Sequence[str], at: float
    ) -> None:
        disrupted = False
        attempted = False
        for action in actions:
            ok = await self._act(alert, rule, target, action)
            if action in DISRUPTIVE:
                attempted = True
                disrupted = disrupted or ok
        if attempted and not disrupted:
            # Nothing was restarted or stopped (an agent that is not connected): that
            # spends no budget and is no step towards giving up; backoff still applies.
            with contextlib.suppress(ValueError):
                self._spent.get(target.env, collections.deque()).remove(at)
            with contextlib.suppress(ValueError):
                self._state(target.agent).restarts.remove(at)

    def _give_up(
        self, alert: Alert, rule: Rule, target: AgentTarget, state: _AgentState, dry_run: bool
    ) -> None:
        state.gave_up = True
        restarts = len(state.restarts)
        why = (
            f"{restarts} restarts within {self.settings.give_up_window_seconds / 60:g} min did not help;"
            " quarantining instead of restarting again"
        )
        alert.last_action = "quarantine (gave up restarting)" + (" (dry run)" if dry_run else "")
        if dry_run:
            self._record(alert, rule, target, "quarantine", "dry_run", why)
            return
        self.gave_up[target.agent] = (target, why)
        self._spawn(self._act(alert, rule, target, "quarantine", why))

    async def _act(self, alert: Alert, rule: Rule, target: AgentTarget, action: str, why: str = "") -> bool:
        reason = why or alert.annotations.get("summary") or f"{rule.name}: {rule.condition}"
        try:
            if action == "restart":
                result = await self.driver.restart(target, reason)
            elif action == "stop":
                result = await self.driver.stop(target, reason)
            else:
                result = await self._quarantine(target, reason, f"alert:{rule.name}")
        except Exception as exc:  # a driver must not take the engine down
            log.exception("%s of %s failed", action, target.agent)
            result = ActionResult(False, f"{type(exc).__name__}: {exc}")
        self._record(alert, rule, target, action, "ok" if result.ok else "failed", result.detail, reason)
        return result.ok

    def _record(
        self,
        alert: Alert,
        rule: Rule,
        target: AgentTarget,
        action: str,
        result: str,
        detail: str,
        reason: str | None = None,
    ) -> None:
        entry = AuditEntry(
            ts=self.clock(),
            env=target.env,
            actor=f"alert:{rule.name}",
            action=action,
            target=target.agent,
            reason=reason or alert.annotations.get("summary") or f"{rule.name}: {rule.condition}",
            result=result,
            detail={"detail": detail, "driver": self.driver.name, "fingerprint": alert.fingerprint},
        )
        log.log(
            logging.WARNING if result in ("failed", "held") else logging.INFO,
            "%s %s of %s: %s (%s)",
            entry.actor,
            action,
            target.agent,
            result,
            detail,
        )
        self._audit(entry)

    def forget(self, agents: Iterable[str]) -> None:
        """Drop what is known of these agents' remediation (another process took them over and
        rebuilds it from the audit log). What they spent of their environment's budget stays spent."""
        for agent in agents:
            self._agents.pop(agent, None)
            self.gave_up.pop(agent, None)
            for held in self.held.values():
                held.discard(agent)

    def released(self, agent: str) -> None:
        """An operator released the agent from quarantine: restarting may start over."""
        self._agents.pop(agent, None)
        self.gave_up.pop(agent, None)

    def _spawn(self, coro: Awaitable[object]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for actions in flight (shutdown, tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
