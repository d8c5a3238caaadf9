"""Alerts in the gateway.

Embedded mode: ``build_alert_engine`` runs the alert engine inside the
gateway, over every agent (alerts/wiring.py puts it together).

Scale mode: workers evaluate the alerts (worker/alerts.py), each for the
agents of its shards. A gateway runs no engine (each would fire every
alert once more); its API reads alerts from the store through
``SharedAlerts``, and the actions people take there (acknowledge, silence,
expire a silence) are written to the store and announced on the control
subject, for the worker that evaluates the alert.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import msgspec

from clawtrace.alerts.engine import AlertEngine
from clawtrace.alerts.model import Alert
from clawtrace.alerts.rulebook import RuleBook
from clawtrace.alerts.settings import AlertSettings
from clawtrace.alerts.wiring import assemble_engine, remediation_history
from clawtrace.bus.control import AlertAcknowledged, AlertNotice
from clawtrace.gateway.commands import CommandService
from clawtrace.gateway.pipeline import Pipeline
from clawtrace.gateway.settings import GatewaySettings
from clawtrace.gateway.writer import StoreWriter
from clawtrace.metrics import MetricsStage
from clawtrace.store import Store

log = logging.getLogger("clawtrace.alerts")


def build_alert_engine(
    settings: GatewaySettings,
    pipeline: Pipeline,
    writer: StoreWriter,
    metrics: MetricsStage,
    commands: CommandService,
) -> AlertEngine:
    """Embedded mode: the engine over every agent, restored from the store, told of connections."""
    alert_settings = settings.alerts
    store = pipeline.store
    engine = assemble_engine(
        alert_settings, settings.rules_path, settings.external_url, writer, metrics, commands
    )
    engine.restore(store.load_alerts(), store.list_silences(), store.list_agents())
    engine.remediator.restore(remediation_history(store, alert_settings))
    for env in sorted({w.env for w in engine.watched.values()}):
        engine.rulebook.rules(env)
    pipeline.attach_listeners.append(engine.watch)
    pipeline.detach_listeners.append(engine.disconnected)
    return engine


Announce = Callable[[AlertNotice], Awaitable[None]]


class SharedAlerts:
    """Scale mode: the alerts that the workers evaluate, as the store has them.

    ``rulebook`` reads the same rule files as the workers (the rules directory
    must hold the same files everywhere: a shared volume, or deployed alike).
    """

    def __init__(
        self, settings: GatewaySettings, store: Store, writer: StoreWriter, announce: Announce
    ) -> None:
        self.settings: AlertSettings = settings.alerts
        self.store = store
        self.writer = writer
        self.announce = announce
        self.rulebook = RuleBook(settings.rules_path, settings.alerts.default_rules)

    async def alerts(self) -> list[Alert]:
        return await asyncio.to_thread(self.store.load_alerts)

    async def find(self, fingerprint_or_key: str) -> Alert | None:
        """An alert by fingerprint, or by "RULE/AGENT" ("RULE/@ENV"), as ``AlertEngine.find``."""
        rule, slash, agent = fingerprint_or_key.partition("/")
        for alert in await self.alerts():
            if (alert.key == (rule, agent)) if slash else (alert.fingerprint == fingerprint_or_key):
                return alert
        return None

    async def acknowledge(self, alert: Alert, actor: str) -> Alert:
        """Recorded in the store at once (the API shows it), and told to the worker evaluating it,
        which keeps it (and stops repeat notifications). A worker that missed the notice finds it
        in the store at its next reload."""
        now = time.time()
        acknowledged = msgspec.structs.replace(alert, acknowledged_by=actor, acknowledged_at=now)
        await self.writer.call(lambda s: s.save_alerts([acknowledged]))
        rule, agent = alert.key
        await self.tell(
            AlertAcknowledged(rule=rule, agent=agent, active_since=alert.active_since, actor=actor, at=now)
        )
        return acknowledged

    async def tell(self, notice: AlertNotice) -> None:
        try:
            await self.announce(notice)
        except Exception as exc:
            # Recorded in the store already: workers pick it up at their next reload.
            log.warning(
                "alert notice not published (%s: %s); workers reload it from the store",
                type(exc).__name__,
                exc,
            )
