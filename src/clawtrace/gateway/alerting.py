"""Puts the alert engine together inside the gateway: rules, notifier, remediation, store."""

from __future__ import annotations

import asyncio
import logging
import time

from clawtrace.alerts.drivers import container_driver
from clawtrace.alerts.drivers.base import RemediationDriver
from clawtrace.alerts.engine import AlertEngine
from clawtrace.alerts.model import Alert, AuditEntry, Transition
from clawtrace.alerts.notify import Notifier
from clawtrace.alerts.receivers import build_receivers
from clawtrace.alerts.remediate import Remediator
from clawtrace.alerts.rulebook import RuleBook
from clawtrace.gateway.commands import CommandService, NodeAgentDriver
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
    alert_settings = settings.alerts
    store = pipeline.store

    def audit(entry: AuditEntry) -> None:
        writer.call(lambda s: s.add_audit([entry])).add_done_callback(_log_failure)

    def save(alerts: list[Alert], forget: list[tuple[str, str]], transitions: list[Transition]) -> None:
        def write(s: Store) -> None:
            s.add_transitions(transitions)
            s.save_alerts(alerts, forget)

        writer.call(write).add_done_callback(_log_failure)

    node = NodeAgentDriver(commands)
    driver: RemediationDriver = container_driver(alert_settings.driver) or node
    rulebook = RuleBook(settings.rules_path, alert_settings.default_rules)
    # Quarantine is the gateway's own (a policy), whichever driver restarts containers.
    # Its environment sizes come from the engine, which wires itself in.
    remediator = Remediator(driver, node.quarantine, audit, lambda env: 0, alert_settings)
    notifier = Notifier(
        build_receivers(alert_settings.receivers), alert_settings, external_url=settings.external_url
    )
    engine = AlertEngine(rulebook, metrics, notifier, remediator, alert_settings, save)
    engine.restore(store.load_alerts(), store.list_silences(), store.list_agents())
    window = max(alert_settings.budget_window_seconds, alert_settings.give_up_window_seconds)
    remediator.restore(
        list(reversed(store.query_audit(since=time.time() - window, actor_prefix="alert:", limit=100_000)))
    )
    for env in sorted({w.env for w in engine.watched.values()}):
        rulebook.rules(env)
    pipeline.attach_listeners.append(engine.watch)
    pipeline.detach_listeners.append(engine.disconnected)
    return engine


def _log_failure(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("writing alert state or audit failed: %s", future.exception())
