"""An alert engine put together: rules, notifier, remediation, state kept in the store.

Used by the embedded gateway (gateway/alerting.py: every agent, restored
whole at start) and by scale-mode workers (worker/alerts.py: the agents of
the shards each holds, taken and dropped as shards move).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from clawtrace.alerts.drivers import container_driver
from clawtrace.alerts.drivers.base import RemediationDriver
from clawtrace.alerts.drivers.node import Commander, NodeAgentDriver, StoreCalls
from clawtrace.alerts.engine import AlertEngine
from clawtrace.alerts.model import Alert, AuditEntry, Transition
from clawtrace.alerts.notify import Notifier
from clawtrace.alerts.receivers import build_receivers
from clawtrace.alerts.remediate import Remediator
from clawtrace.alerts.rulebook import RuleBook
from clawtrace.alerts.settings import AlertSettings
from clawtrace.metrics import MetricsStage
from clawtrace.store import Store

log = logging.getLogger("clawtrace.alerts")

# The most audit entries read back to rebuild remediation budgets and backoff.
MAX_AUDIT_RESTORED = 100_000


def assemble_engine(
    settings: AlertSettings,
    rules_path: Path,
    external_url: str,
    writer: StoreCalls,
    metrics: MetricsStage,
    commands: Commander,
) -> AlertEngine:
    """An engine over ``metrics`` whose alert state, history and audit go to the store through
    ``writer``, and whose ``node`` driver and quarantines go through ``commands``. Nothing is
    restored yet."""

    def audit(entry: AuditEntry) -> None:
        writer.call(lambda s: s.add_audit([entry])).add_done_callback(_log_failure)

    def save(alerts: list[Alert], forget: list[tuple[str, str]], transitions: list[Transition]) -> None:
        def write(s: Store) -> None:
            s.add_transitions(transitions)
            s.save_alerts(alerts, forget)

        writer.call(write).add_done_callback(_log_failure)

    node = NodeAgentDriver(commands)
    driver: RemediationDriver = container_driver(settings.driver) or node
    rulebook = RuleBook(rules_path, settings.default_rules)
    # Quarantine is ClawTrace's own (a policy), whichever driver restarts containers.
    # Its environment sizes come from the engine, which wires itself in.
    remediator = Remediator(driver, node.quarantine, audit, lambda env: 0, settings)
    notifier = Notifier(build_receivers(settings.receivers), settings, external_url=external_url)
    return AlertEngine(rulebook, metrics, notifier, remediator, settings, save)


def remediation_history(store: Store, settings: AlertSettings, now: float | None = None) -> list[AuditEntry]:
    """The alert-driven actions that budgets and backoff are rebuilt from, oldest first."""
    window = max(settings.budget_window_seconds, settings.give_up_window_seconds)
    since = (time.time() if now is None else now) - window
    entries = store.query_audit(since=since, actor_prefix="alert:", limit=MAX_AUDIT_RESTORED)
    return list(reversed(entries))


def _log_failure(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("writing alert state or audit failed: %s", future.exception())
