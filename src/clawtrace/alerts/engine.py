"""The rules manager: evaluates every rule for every agent, keeps alert state.

Evaluation runs after each batch of an agent's events (so an 11th failed
tool call fires at once) and on a tick (every 0.5 s by default) for
conditions that change with time alone (a dead node sends nothing). Each (rule, agent) is one alert:
inactive -> pending (condition true, waiting ``for``) -> firing -> resolved.
Transitions are recorded with their values; live alerts are saved so that a
restart neither forgets a firing alert nor notifies it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection, Iterable, Sequence

import msgspec

from clawtrace.alerts.drivers.base import AgentTarget
from clawtrace.alerts.model import Alert, AlertState, Rule, Silence, Transition, fingerprint
from clawtrace.alerts.notify import Notifier
from clawtrace.alerts.remediate import Remediator
from clawtrace.alerts.rulebook import RuleBook
from clawtrace.alerts.sample import AgentSample, Watched
from clawtrace.alerts.settings import AlertSettings
from clawtrace.alerts.templates import render_annotations
from clawtrace.metrics.agent import AgentMetrics
from clawtrace.metrics.stage import MetricsStage
from clawtrace.store import AgentInfo, AgentRecord

log = logging.getLogger("clawtrace.alerts")

# Alerts the remediator raises itself; they have no condition to evaluate.
BUDGET_ALERT = "RemediationBudgetExhausted"
GAVE_UP_ALERT = "RemediationGaveUp"
SYSTEM_RULES = (BUDGET_ALERT, GAVE_UP_ALERT)
# How often rule files are checked for edits.
RULES_CHECK_SECONDS = 5.0
# A resolved alert stays listed (and in the store) this long, then is forgotten.
RESOLVED_RETENTION_SECONDS = 900.0

SaveState = Callable[[list[Alert], list[tuple[str, str]], list[Transition]], object]


def _exact(metric: str, metrics: AgentMetrics | None) -> bool:
    """Whether a metric reads the same for a process that has seen only the latest events of an
    agent: heartbeat age (the store has the last heartbeat), and a run of failed tool calls once
    a success ended it."""
    if metric == "heartbeat_age_s":
        return True
    if metric == "consecutive_failed_tool_calls" and metrics is not None:
        return any(b.tool_ok or (b.late is not None and b.late.tool_ok) for b in metrics.buckets.values())
    return False


class AlertEngine:
    def __init__(
        self,
        rulebook: RuleBook,
        stage: MetricsStage,
        notifier: Notifier,
        remediator: Remediator,
        settings: AlertSettings,
        save: SaveState,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.rulebook = rulebook
        self.stage = stage
        self.notifier = notifier
        self.remediator = remediator
        # The budget counts this engine's agents; the notifier tells what it sent (to be saved).
        remediator.env_size = self.env_size
        notifier.on_sent = self.mark_notified
        self.settings = settings
        self._save = save
        self.clock = clock
        self.watched: dict[str, Watched] = {}
        self.alerts: dict[tuple[str, str], Alert] = {}
        self.silences: dict[str, Silence] = {}
        self._agent_rules: dict[str, tuple[int, list[Rule]]] = {}
        self._dirty: dict[tuple[str, str], Alert] = {}
        self._forget: list[tuple[str, str]] = []
        self._transitions: list[Transition] = []
        self._ticker: asyncio.Task[None] | None = None
        self._next_rules_check = 0.0
        self.evaluations = 0
        # Scale mode: whether this process evaluates an agent now (a worker: it holds the agent's
        # shard). None: every agent it knows.
        self.evaluates: Callable[[str], bool] | None = None
        # Agents taken over from another process, until when their metrics may still lack history.
        self._inherited: dict[str, float] = {}

    # --- wiring -------------------------------------------------------------
    def restore(
        self, alerts: Iterable[Alert], silences: Iterable[Silence], agents: Iterable[AgentRecord]
    ) -> None:
        """State from the store at startup: known agents, live alerts, silences."""
        for record in agents:
            self.watched[record.agent] = self._from_record(record, connected=False)
        now = self.clock()
        for silence in silences:
            if silence.ends > now and silence.expired_by is None:
                self.silences[silence.id] = silence
        restored = list(alerts)
        for alert in restored:
            self.alerts[alert.key] = alert
        # While the gateway was down nobody could hear from agents: their heartbeat
        # age counts from now, or a long outage would make every agent a dead node.
        # Agents with a heartbeat alert still firing keep their age (it stays firing).
        firing = {a.agent for a in restored if a.state == "firing" and self._about_heartbeats(a)}
        for watched in self.watched.values():
            if watched.agent not in firing:
                watched.alive_at = max(watched.alive_at, now)
                if watched.last_heartbeat is not None:
                    watched.last_heartbeat = max(watched.last_heartbeat, now)
        self.notifier.restore(restored)
        log.info("alert engine restored %d live alerts, %d silences", len(restored), len(self.silences))

    def adopt(self, alerts: Iterable[Alert], agents: Iterable[AgentRecord]) -> list[Alert]:
        """Agents handed over by another process (a worker took their shard over): their live
        alerts carry on where that one left them in the store, notified or not, silenced,
        acknowledged. Returns the alerts taken.

        As after a restart, heartbeat age counts from now for agents without a firing heartbeat
        alert. The other metrics start empty here, so for one metrics window their alerts may
        fire but not clear (no data, or a reading below the threshold, keeps the state): what
        would clear them may be history that stayed with the previous owner. Heartbeat age, and
        a run of failed tool calls that a success ended, are exact and clear at once.
        """
        now = self.clock()
        records = list(agents)
        for record in records:
            watched = self._from_record(record, connected=record.connected)
            known = self.watched.get(record.agent)
            if known is not None:
                watched.connected = known.connected
                watched.alive_at = max(watched.alive_at, known.alive_at)
            self.watched[record.agent] = watched
            self._agent_rules.pop(record.agent, None)
        taken = list(alerts)
        for alert in taken:
            self.alerts[alert.key] = alert
            self._dirty.pop(alert.key, None)
        firing = {a.agent for a in taken if a.state == "firing" and self._about_heartbeats(a)}
        until = now + self.stage.settings.window_seconds
        for record in records:
            self._inherited[record.agent] = until
            watched = self.watched[record.agent]
            if watched.agent not in firing:
                watched.alive_at = max(watched.alive_at, now)
                if watched.last_heartbeat is not None:
                    watched.last_heartbeat = max(watched.last_heartbeat, now)
        self.notifier.restore(taken)
        return taken

    def forget(self, agents: Collection[str]) -> None:
        """Drop these agents and their alerts from memory, resolving and notifying nothing:
        another process carries them on. Their unsaved changes are dropped too (``flush`` first
        to keep them)."""
        gone = set(agents)
        if not gone:
            return
        keys = [key for key, alert in self.alerts.items() if alert.agent and alert.agent in gone]
        for key in keys:
            del self.alerts[key]
            self._dirty.pop(key, None)
        self._forget = [key for key in self._forget if key[1] not in gone]
        self._transitions = [t for t in self._transitions if t.agent not in gone]
        for agent in gone:
            self.watched.pop(agent, None)
            self._agent_rules.pop(agent, None)
            self._inherited.pop(agent, None)
        self.notifier.forget(keys)
        self.remediator.forget(gone)

    def _from_record(self, record: AgentRecord, connected: bool) -> Watched:
        return Watched(
            agent=record.agent,
            env=record.env,
            region=record.region,
            labels=dict(record.labels),
            last_heartbeat=record.last_heartbeat,
            alive_at=record.last_event or record.last_connect or record.first_seen,
            connected=connected,
            lifecycle=record.lifecycle,
        )

    def _mine(self, agent: str) -> bool:
        return self.evaluates is None or not agent or self.evaluates(agent)

    def _in_grace(self, agent: str, now: float) -> bool:
        until = self._inherited.get(agent)
        if until is None:
            return False
        if now < until:
            return True
        del self._inherited[agent]
        return False

    async def start(self) -> None:
        self.stage.listeners.append(self.on_events)
        await self.notifier.start()
        self._ticker = asyncio.create_task(self._tick_loop(), name="clawtrace-alerts")

    async def close(self) -> None:
        with contextlib.suppress(ValueError):
            self.stage.listeners.remove(self.on_events)
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        await self.remediator.drain()
        self.flush()
        await self.notifier.close()
        self.flush()

    async def _tick_loop(self) -> None:
        interval = self.settings.evaluation_interval_seconds
        loop = asyncio.get_running_loop()
        next_at = loop.time() + interval
        while True:
            # On a fixed grid, so the time an evaluation takes does not stretch the period.
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at = max(next_at + interval, loop.time())
            try:
                self.tick()
            except Exception:
                log.exception("alert evaluation failed; will retry")

    # --- agents -------------------------------------------------------------
    def watch(self, info: AgentInfo) -> None:
        """An agent (re)connected: its environment, region and labels may have changed."""
        watched = self.watched.get(info.agent)
        now = self.clock()
        if watched is None:
            watched = self.watched[info.agent] = Watched(info.agent, info.env, info.region)
        watched.env, watched.region, watched.labels = info.env, info.region, dict(info.labels)
        watched.alive_at = max(watched.alive_at, now)
        watched.connected = True
        self._agent_rules.pop(info.agent, None)

    def disconnected(self, agent: str) -> None:
        watched = self.watched.get(agent)
        if watched is not None:
            watched.connected = False

    def env_size(self, env: str) -> int:
        return sum(1 for w in self.watched.values() if w.env == env)

    def _watched(self, agent: str) -> Watched | None:
        watched = self.watched.get(agent)
        if watched is None:
            known = self.stage.group_of(agent)
            if known is None:
                return None
            watched = self.watched[agent] = Watched(
                agent, known.env, known.region, dict(known.labels), alive_at=self.clock()
            )
        return watched

    def _rules_for(self, watched: Watched) -> list[Rule]:
        cached = self._agent_rules.get(watched.agent)
        if cached is not None and cached[0] == self.rulebook.version:
            return cached[1]
        rules = [
            rule
            for rule in self.rulebook.rules(watched.env)
            if rule.enabled and rule.scope.matches(watched.agent, watched.env, watched.region, watched.labels)
        ]
        self._agent_rules[watched.agent] = (self.rulebook.version, rules)
        return rules

    # --- evaluation ---------------------------------------------------------
    def on_events(self, agent: str, metrics: AgentMetrics) -> None:
        if not self._mine(agent):
            return
        watched = self._watched(agent)
        if watched is not None:
            self._evaluate_agent(watched, metrics, self.clock())

    def tick(self, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        if now >= self._next_rules_check:
            self._next_rules_check = now + RULES_CHECK_SECONDS
            self.rulebook.refresh()
        agents = self.stage.agents
        for watched in self.watched.values():
            if self.evaluates is None or self.evaluates(watched.agent):
                self._evaluate_agent(watched, agents.get(watched.agent), now)
        self._retire_orphans(now)
        # After evaluation, so that what just fired inhibits at once.
        self._refresh_silences(now)
        self._remediate(now)
        self._forget_resolved(now)
        self.flush()

    def _evaluate_agent(self, watched: Watched, metrics: AgentMetrics | None, now: float) -> None:
        rules = self._rules_for(watched)
        if not rules:
            return
        sample = AgentSample(watched, metrics, now, self.stage.settings.window_seconds)
        for rule in rules:
            self.evaluations += 1
            value, samples = sample.read(rule.condition.metric)
            breached: bool | None
            if value is None or samples < rule.min_samples:
                breached = {"ok": False, "keep_state": None, "alerting": True}[rule.no_data]
                detail = "no data" if value is None else f"{samples} samples < min_samples {rule.min_samples}"
            else:
                breached = rule.condition.holds(value)
                detail = ""
            if (
                breached is not True
                and self._inherited
                and self._in_grace(watched.agent, now)
                and not _exact(rule.condition.metric, metrics)
            ):
                breached = None  # taken over: what clears it may be with the previous owner
            if breached is not None:
                self._apply(rule, watched, value, breached, now, detail)
        if metrics is not None:
            metrics.failure_peak = 0

    def _apply(
        self, rule: Rule, watched: Watched, value: float | None, breached: bool, now: float, detail: str
    ) -> None:
        key = (rule.name, watched.agent)
        alert = self.alerts.get(key)
        if breached:
            if alert is None or alert.state in ("inactive", "resolved"):
                alert = self._activate(rule, watched, alert, now)
                self.alerts[key] = alert
                alert.value = value
                if rule.for_seconds > 0:
                    self._transition(alert, "pending", now, rule, detail)
                else:
                    # Without ``for`` there is nothing to wait for: straight to firing.
                    alert.state = "pending"
            alert.value = value
            alert.last_breach = now
            if alert.state == "pending" and now - (alert.active_since or now) >= rule.for_seconds:
                self._render(alert, rule, watched)
                if rule.for_seconds == 0:
                    alert.state = "inactive"  # recorded as inactive -> firing
                self._transition(alert, "firing", now, rule, detail)
            return
        if alert is None or alert.state in ("inactive", "resolved"):
            return
        # The alert keeps the value (and annotations) of its last breach; the
        # history row records what cleared it.
        if alert.state == "pending":
            self._transition(alert, "inactive", now, rule, detail, value)
            del self.alerts[key]
            self._forget.append(key)
            return
        last_breach = alert.last_breach or now
        if now - last_breach < rule.keep_firing_for_seconds:
            return
        alert.resolved_at = now
        self._transition(alert, "resolved", now, rule, detail, value)

    def _activate(self, rule: Rule, watched: Watched, previous: Alert | None, now: float) -> Alert:
        labels = {**watched.labels, **rule.labels}
        labels.update(
            alertname=rule.name,
            agent=watched.agent,
            env=watched.env,
            region=watched.region,
            severity=rule.severity,
        )
        alert = previous or Alert(rule=rule.name, agent=watched.agent, env=watched.env)
        alert.region = watched.region
        alert.severity = rule.severity
        alert.labels = labels
        alert.fingerprint = fingerprint(labels)
        alert.active_since = now
        alert.fired_at = alert.resolved_at = None
        alert.acknowledged_by = alert.acknowledged_at = None
        alert.actions_taken = 0
        alert.last_action = None
        alert.silenced_by = self._silence_for(alert, now)
        return alert

    def _render(self, alert: Alert, rule: Rule, watched: Watched) -> None:
        alert.annotations = render_annotations(
            rule.annotations,
            rule=rule.name,
            agent=watched.agent,
            env=watched.env,
            region=watched.region,
            value=alert.value,
            threshold=rule.condition.threshold,
            labels=alert.labels,
        )

    def _transition(
        self,
        alert: Alert,
        to: AlertState,
        now: float,
        rule: Rule | None,
        detail: str = "",
        value: float | None = None,
        notify: bool | None = None,
    ) -> None:
        """Record a state change; ``notify`` None: as the rule's actions say (system alerts: yes)."""
        before = alert.state
        alert.state = to
        if to == "firing":
            alert.fired_at = now
        self._transitions.append(
            Transition(
                ts=now,
                rule=alert.rule,
                agent=alert.agent,
                env=alert.env,
                from_state=before,
                to_state=to,
                value=alert.value if value is None else value,
                threshold=None if rule is None else rule.condition.threshold,
                fingerprint=alert.fingerprint,
                detail=detail,
            )
        )
        if to != "inactive":
            self._dirty[alert.key] = alert
        if notify is None:
            notify = rule is None or "notify" in rule.actions
        if to == "firing":
            alert.inhibited_by = self._inhibitor(alert, self._inhibiting_sources())
            log.warning(
                "alert %s firing for %s (value %s)", alert.rule, alert.agent or alert.env, alert.value
            )
            if notify:
                self.notifier.update(alert)
            if rule is not None and alert.silenced_by is None:
                self.remediator.consider(alert, rule, self._target(alert))
        elif to == "resolved":
            log.info("alert %s resolved for %s", alert.rule, alert.agent or alert.env)
            if notify and before == "firing":
                self.notifier.update(alert)

    def _target(self, alert: Alert) -> AgentTarget:
        watched = self.watched.get(alert.agent)
        labels = watched.labels if watched is not None else {}
        return AgentTarget(alert.agent, alert.env, alert.region, labels)

    # --- remediation and system alerts --------------------------------------
    def _remediate(self, now: float) -> None:
        troubled: set[str] = set()
        for alert in self.alerts.values():
            if alert.state != "firing" or alert.rule in SYSTEM_RULES or not self._mine(alert.agent):
                continue
            rule = self._rule(alert)
            if rule is None or not any(a != "notify" for a in rule.actions):
                continue
            troubled.add(alert.agent)
            if alert.silenced_by is None:
                self.remediator.consider(alert, rule, self._target(alert))
        for watched in self.watched.values():
            if watched.agent not in troubled and self._mine(watched.agent):
                self.remediator.healthy(watched.agent, now)
        held_envs = {env for env, agents in self.remediator.held.items() if agents}
        for env in held_envs:
            held = self.remediator.held[env]
            self._system_alert(
                BUDGET_ALERT,
                "",
                env,
                now,
                True,
                summary=f"Remediation held for {len(held)} agents in {env}",
                description=(
                    f"At most {self.remediator.budget(env)} agents of {env} are restarted or stopped per "
                    f"{self.settings.budget_window_seconds / 60:g} min; held: {', '.join(sorted(held)[:20])}"
                ),
            )
        for alert in list(self.alerts.values()):
            if alert.rule == BUDGET_ALERT and alert.state == "firing" and alert.env not in held_envs:
                self._system_alert(BUDGET_ALERT, "", alert.env, now, False)
            if (
                alert.rule == GAVE_UP_ALERT
                and alert.state == "firing"
                and alert.agent not in self.remediator.gave_up
            ):
                self._system_alert(GAVE_UP_ALERT, alert.agent, alert.env, now, False)
        for agent, (target, why) in self.remediator.gave_up.items():
            self._system_alert(
                GAVE_UP_ALERT,
                agent,
                target.env,
                now,
                True,
                summary=f"{agent} quarantined: restarting did not help",
                description=why,
            )

    def _system_alert(
        self, rule: str, agent: str, env: str, now: float, firing: bool, **annotations: str
    ) -> None:
        key = (rule, agent or f"@{env}")
        alert = self.alerts.get(key)
        if firing:
            if alert is not None and alert.state == "firing":
                return
            watched = self.watched.get(agent)
            labels = {"alertname": rule, "agent": agent, "env": env, "severity": "critical"}
            if watched is not None:
                labels["region"] = watched.region
            alert = Alert(
                rule=rule,
                agent=agent,
                env=env,
                region=labels.get("region", ""),
                severity="critical",
                labels=labels,
                annotations=annotations,
                fingerprint=fingerprint(labels),
                active_since=now,
                last_breach=now,
            )
            alert.silenced_by = self._silence_for(alert, now)
            self.alerts[key] = alert
            self._transition(alert, "firing", now, None)
        elif alert is not None and alert.state == "firing":
            alert.resolved_at = now
            self._transition(alert, "resolved", now, None)

    def _about_heartbeats(self, alert: Alert) -> bool:
        rule = next((r for r in self.rulebook.rules(alert.env) if r.name == alert.rule), None)
        return rule is not None and rule.condition.metric == "heartbeat_age_s"

    def _rule(self, alert: Alert) -> Rule | None:
        watched = self.watched.get(alert.agent)
        if watched is None:
            return None
        for rule in self._rules_for(watched):
            if rule.name == alert.rule:
                return rule
        return None

    def _retire_orphans(self, now: float) -> None:
        """Alerts whose rule was removed, disabled or no longer covers the agent end:
        nothing would ever evaluate them again."""
        for key, alert in list(self.alerts.items()):
            if alert.state not in ("pending", "firing") or alert.rule in SYSTEM_RULES:
                continue
            if self._rule(alert) is not None:
                continue
            why = "its rule was removed, disabled or no longer covers the agent"
            if alert.state == "pending":
                self._transition(alert, "inactive", now, None, why)
                del self.alerts[key]
                self._forget.append(key)
            else:
                alert.resolved_at = now
                # Its receivers hear it ended only if they heard it fire.
                self._transition(alert, "resolved", now, None, why, notify=alert.notified_state == "firing")

    def _forget_resolved(self, now: float) -> None:
        for key, alert in list(self.alerts.items()):
            if alert.state == "resolved" and now - (alert.resolved_at or now) > RESOLVED_RETENTION_SECONDS:
                del self.alerts[key]
                self._dirty.pop(key, None)
                self._forget.append(key)

    # --- silences and acknowledgements --------------------------------------
    def _silence_for(self, alert: Alert, now: float) -> str | None:
        for silence in self.silences.values():
            if silence.matches(alert, now):
                return silence.id
        return None

    def _refresh_silences(self, now: float) -> None:
        for silence_id, silence in list(self.silences.items()):
            if silence.ends <= now:
                del self.silences[silence_id]
        sources = self._inhibiting_sources()
        for alert in self.alerts.values():
            if not self._mine(alert.agent):
                continue
            silenced_by = self._silence_for(alert, now)
            inhibited_by = self._inhibitor(alert, sources)
            if silenced_by != alert.silenced_by or inhibited_by != alert.inhibited_by:
                alert.silenced_by, alert.inhibited_by = silenced_by, inhibited_by
                self._dirty[alert.key] = alert
                self.notifier.update(alert)

    def _inhibiting_sources(self) -> list[list[Alert]]:
        """Per inhibition rule, the firing alerts that match its source."""
        return [
            [
                a
                for a in self.alerts.values()
                if a.state == "firing" and all(a.labels.get(k) == v for k, v in rule.source.items())
            ]
            for rule in self.settings.inhibit_rules
        ]

    def _inhibitor(self, alert: Alert, sources: list[list[Alert]]) -> str | None:
        if alert.rule in SYSTEM_RULES:
            return None  # what remediation says about itself is never noise
        for rule, firing in zip(self.settings.inhibit_rules, sources, strict=True):
            if not firing or not all(alert.labels.get(k) == v for k, v in rule.target.items()):
                continue
            for source in firing:
                same = all(source.labels.get(k) == alert.labels.get(k) for k in rule.equal)
                if source is not alert and same:
                    return source.fingerprint
        return None

    def add_silence(self, silence: Silence) -> None:
        self.silences[silence.id] = silence
        self._refresh_silences(self.clock())

    def expire_silence(self, silence_id: str) -> None:
        self.silences.pop(silence_id, None)
        self._refresh_silences(self.clock())

    def set_silences(self, silences: Iterable[Silence]) -> None:
        """The silences in force, as the store has them (scale mode: created or expired through
        any gateway)."""
        now = self.clock()
        self.silences = {
            silence.id: silence for silence in silences if silence.ends > now and silence.expired_by is None
        }
        self._refresh_silences(now)

    def acknowledge(self, alert: Alert, actor: str, at: float | None = None) -> None:
        alert.acknowledged_by = actor
        alert.acknowledged_at = self.clock() if at is None else at
        self._dirty[alert.key] = alert
        self.notifier.update(alert)
        self.flush()

    def find(self, fingerprint_or_key: str) -> Alert | None:
        """An alert by fingerprint, or by "RULE/AGENT" ("RULE/@ENV" for an environment's)."""
        rule, slash, agent = fingerprint_or_key.partition("/")
        if slash:
            return self.alerts.get((rule, agent))
        for alert in self.alerts.values():
            if alert.fingerprint == fingerprint_or_key:
                return alert
        return None

    def mark_notified(self, alerts: Sequence[Alert]) -> None:
        for alert in alerts:
            self._dirty[alert.key] = alert

    # --- persistence ----------------------------------------------------------
    def flush(self) -> None:
        if not (self._dirty or self._forget or self._transitions):
            return
        # Copies: the store writes on its own thread while these keep changing.
        alerts = [msgspec.structs.replace(a) for a in self._dirty.values()]
        forget, transitions = self._forget, self._transitions
        self._dirty, self._forget, self._transitions = {}, [], []
        try:
            self._save(alerts, forget, transitions)
        except Exception:
            log.exception("saving alert state failed")
