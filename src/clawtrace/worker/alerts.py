"""A worker's alert engine: the agents of the shards it holds, handed over with the shards.

All of an agent's events are in one shard and one worker holds a shard at a
time, so each agent's alerts are evaluated in order, by one process: rules
fire once, not once per gateway.

- **Taking a shard** (before its first event is consumed): the shard's
  agents (the registry, for heartbeat age and the connected flag), their live
  alerts (with what was notified: a firing alert already told is not told
  again), and the remediation budget and backoff spent on them (the audit
  log) are read from the store. Presence news of the shard are listened to
  from then on and applied once that is done.
- **Dropping a shard**: its agents' alerts are forgotten here, neither
  resolved nor notified: the next owner carries them on from the store.
  Given back on purpose, the latest state is saved first; lost (the lease
  ran out), nothing more is written, as the next owner may already be at it.
- **Operator actions** (silences, acknowledgements) come as notices from
  any gateway, and are read again from the store every few seconds in case
  a notice was missed.
- **Remediation** goes through NATS: commands to whichever gateway holds the
  agent, quarantines recorded in the store and announced to every gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

from clawtrace.alerts.drivers.node import AgentCommands
from clawtrace.alerts.engine import AlertEngine
from clawtrace.alerts.model import Alert, AuditEntry
from clawtrace.alerts.settings import AlertSettings
from clawtrace.alerts.wiring import assemble_engine, remediation_history
from clawtrace.bus import Subscription
from clawtrace.bus.commands import CommandSender
from clawtrace.bus.control import (
    AlertAcknowledged,
    PresenceNews,
    QuarantineNews,
    SilenceAdded,
    SilenceExpired,
    decode_notice,
    decode_presence,
    decode_quarantine,
    encode,
)
from clawtrace.bus.layout import shard_of
from clawtrace.bus.scale import EventStreamLink
from clawtrace.gateway.writer import StoreWriter
from clawtrace.metrics import MetricsStage
from clawtrace.store import AgentInfo, AgentRecord, QuarantineRecord, Store

log = logging.getLogger("clawtrace.worker.alerts")

# Silences and acknowledgements are read from the store this often (besides the notices).
RELOAD_SECONDS = 5.0


class _Inbox:
    """A shard's presence news, held while its alert state is being taken over."""

    def __init__(self, apply: Callable[[PresenceNews], None]) -> None:
        self.apply = apply
        self.held: list[PresenceNews] | None = []

    def __call__(self, _subject: str, data: bytes) -> None:
        try:
            news = decode_presence(data)
        except Exception as exc:
            log.warning("ignoring presence news that does not decode: %s", exc)
            return
        if self.held is not None:
            self.held.append(news)
        else:
            self.apply(news)

    def open(self) -> None:
        held, self.held = self.held or [], None
        for news in held:
            self.apply(news)


class WorkerAlerts:
    def __init__(
        self,
        engine: AlertEngine,
        store: Store,
        writer: StoreWriter,
        link: EventStreamLink,
        owns_shard: Callable[[int], bool],
        on_hello: Callable[[AgentInfo], None] | None = None,
        reload_seconds: float = RELOAD_SECONDS,
    ) -> None:
        self.engine = engine
        self.store = store
        self.writer = writer
        self.link = link
        self.layout = link.layout
        self.owns_shard = owns_shard
        self.on_hello = on_hello
        self.reload_seconds = reload_seconds
        engine.evaluates = self.evaluates
        # Per shard held: the subscription to its presence news, and where they go.
        self._presence: dict[int, tuple[Subscription, _Inbox]] = {}
        # Each agent's connection as last heard (a disconnect counts only for that connection).
        self._connections: dict[str, str] = {}
        self._subscriptions: list[Subscription] = []
        self._reloader: asyncio.Task[None] | None = None

    @classmethod
    def build(
        cls,
        settings: AlertSettings,
        rules_path: Path,
        external_url: str,
        store: Store,
        writer: StoreWriter,
        metrics: MetricsStage,
        link: EventStreamLink,
        owns_shard: Callable[[int], bool],
        on_hello: Callable[[AgentInfo], None] | None = None,
        reload_seconds: float = RELOAD_SECONDS,
    ) -> WorkerAlerts:
        layout = link.layout
        commands = AgentCommands(writer)
        # No agent connects to a worker: every command goes to the gateway that holds the agent.
        commands.remote = CommandSender(link.nats.client, layout).send

        async def announce(agent: str, record: QuarantineRecord | None) -> None:
            await link.nats.publish(layout.quarantine_subject, encode(QuarantineNews(agent, record)))

        commands.on_quarantine = announce
        engine = assemble_engine(settings, rules_path, external_url, writer, metrics, commands)
        return cls(engine, store, writer, link, owns_shard, on_hello, reload_seconds)

    def evaluates(self, agent: str) -> bool:
        return self.owns_shard(shard_of(agent, self.layout.shards))

    def _mine(self, alert: Alert) -> bool:
        # An environment-wide alert (the remediation budget) is each worker's own.
        return not alert.agent or self.evaluates(alert.agent)

    def shard_agents(self, shard: int) -> set[str]:
        """The agents of ``shard`` that the engine knows of."""
        shards = self.layout.shards
        agents = {agent for agent in self.engine.watched if shard_of(agent, shards) == shard}
        agents.update(
            a.agent for a in self.engine.alerts.values() if a.agent and shard_of(a.agent, shards) == shard
        )
        return agents

    # --- lifecycle ------------------------------------------------------------
    async def start(self) -> None:
        self.engine.set_silences(await asyncio.to_thread(self.store.list_silences))
        nats = self.link.nats
        self._subscriptions.append(await nats.subscribe(self.layout.alerts_subject, self._on_notice))
        self._subscriptions.append(await nats.subscribe(self.layout.quarantine_subject, self._on_quarantine))
        await self.engine.start()
        self._reloader = asyncio.create_task(self._reload_loop(), name="clawtrace-worker-alerts-reload")

    async def close(self) -> None:
        if self._reloader is not None:
            self._reloader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reloader
        for subscription in [*self._subscriptions, *(sub for sub, _ in self._presence.values())]:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
        self._subscriptions.clear()
        self._presence.clear()
        await self.engine.close()

    # --- shards -----------------------------------------------------------------
    async def take(self, shard: int) -> None:
        """The shard's alert state from the store; raises what the store raised (retried by the
        shard's consumer, which starts consuming only once this is done)."""
        listening = self._presence.get(shard)
        if listening is None or listening[1].held is None:
            # (A retry keeps listening, and what it heard meanwhile.)
            await self._stop_listening(shard)
            inbox = _Inbox(self._presence_news)
            subscription = await self.link.nats.subscribe(self.layout.presence_subject(shard), inbox)
            self._presence[shard] = (subscription, inbox)
        else:
            inbox = listening[1]
        shards = self.layout.shards
        now = time.time()

        def load() -> tuple[list[AgentRecord], list[Alert], list[AuditEntry]]:
            agents = [r for r in self.store.list_agents() if shard_of(r.agent, shards) == shard]
            alerts = [a for a in self.store.load_alerts() if a.agent and shard_of(a.agent, shards) == shard]
            names = {r.agent for r in agents} | {a.agent for a in alerts}
            audit = [
                e for e in remediation_history(self.store, self.engine.settings, now) if e.target in names
            ]
            return agents, alerts, audit

        agents, alerts, audit = await asyncio.to_thread(load)
        # What this worker may still hold of the shard from an earlier turn is stale now.
        self.engine.forget(self.shard_agents(shard))
        taken = self.engine.adopt(alerts, agents)
        self.engine.remediator.restore(audit)
        for env in sorted({r.env for r in agents}):
            self.engine.rulebook.rules(env)
        for record in agents:
            self._connections.pop(record.agent, None)
        inbox.open()
        firing = sum(1 for a in taken if a.state == "firing")
        log.info(
            "shard %d: evaluating alerts of %d agents (%d live alerts taken over, %d firing)",
            shard,
            len(agents),
            len(taken),
            firing,
        )

    async def drop(self, shard: int, graceful: bool) -> set[str]:
        """Stop evaluating the shard's agents; returns them. ``graceful``: their latest state is
        saved first (the lease is still ours); otherwise nothing more of theirs is written."""
        await self._stop_listening(shard)
        agents = self.shard_agents(shard)
        if graceful:
            self.engine.flush()
            with contextlib.suppress(Exception):
                # The writer runs calls in order: this returns once the state above is saved.
                await self.writer.call(lambda _store: None)
        self.engine.forget(agents)
        for agent in agents:
            self._connections.pop(agent, None)
        return agents

    async def _stop_listening(self, shard: int) -> None:
        listening = self._presence.pop(shard, None)
        if listening is not None:
            with contextlib.suppress(Exception):
                await listening[0].unsubscribe()

    # --- news -------------------------------------------------------------------
    def _presence_news(self, news: PresenceNews) -> None:
        agent = news.agent
        if news.connected:
            self._connections[agent] = news.connection
            info = news.info()
            self.engine.watch(info)
            if self.on_hello is not None:
                self.on_hello(info)
            return
        current = self._connections.get(agent)
        if current is not None and current != news.connection:
            return  # the end of an older connection: the agent is connected again, elsewhere
        self._connections.pop(agent, None)
        self.engine.disconnected(agent)

    def _on_notice(self, _subject: str, data: bytes) -> None:
        try:
            notice = decode_notice(data)
        except Exception as exc:
            log.warning("ignoring an alert notice that does not decode: %s", exc)
            return
        engine = self.engine
        if isinstance(notice, SilenceAdded):
            engine.add_silence(notice.silence)
        elif isinstance(notice, SilenceExpired):
            engine.expire_silence(notice.id)
        elif isinstance(notice, AlertAcknowledged):
            alert = engine.alerts.get((notice.rule, notice.agent))
            if (
                alert is not None
                and alert.acknowledged_by is None
                and alert.active_since == notice.active_since
                and self._mine(alert)
            ):
                engine.acknowledge(alert, notice.actor, notice.at)

    def _on_quarantine(self, _subject: str, data: bytes) -> None:
        try:
            news = decode_quarantine(data)
        except Exception as exc:
            log.warning("ignoring quarantine news that does not decode: %s", exc)
            return
        if news.record is None and self.evaluates(news.agent):
            # Released by a person: restarting may start over.
            self.engine.remediator.released(news.agent)

    # --- the store, in case a notice was missed -------------------------------
    async def _reload_loop(self) -> None:
        while True:
            await asyncio.sleep(self.reload_seconds)
            try:
                await self.reload()
            except Exception as exc:
                log.warning(
                    "reloading silences and acknowledgements failed (%s: %s)", type(exc).__name__, exc
                )

    async def reload(self) -> None:
        silences, stored = await asyncio.gather(
            asyncio.to_thread(self.store.list_silences, time.time()),
            asyncio.to_thread(self.store.load_alerts),
        )
        self.engine.set_silences(silences)
        for row in stored:
            if row.acknowledged_by is None:
                continue
            alert = self.engine.alerts.get(row.key)
            if (
                alert is not None
                and alert.acknowledged_by is None
                and alert.active_since == row.active_since
                and self._mine(alert)
            ):
                self.engine.acknowledge(alert, row.acknowledged_by, row.acknowledged_at)
