"""What an alert rule says, and what an alert is: the vocabulary of the alerts package.

A rule is a condition on one metric of one agent (``tool_success_rate < 0.5``),
held for a while (``for``), within a scope (environments, regions, labels, an
agent glob). Each (rule, agent) pair is one alert that moves through
inactive -> pending -> firing -> resolved, like Prometheus' alerting rules.
"""

from __future__ import annotations

import fnmatch
import hashlib
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import msgspec

Severity = Literal["info", "warning", "critical"]
ActionName = Literal["notify", "restart", "stop", "quarantine"]
Comparison = Literal[">", ">=", "<", "<=", "==", "!="]
# What a condition does when its metric has no samples: "ok" treats it as not
# breached (the alert resolves), "keep_state" changes nothing, "alerting" as breached.
NoData = Literal["ok", "keep_state", "alerting"]
AlertState = Literal["inactive", "pending", "firing", "resolved"]

SEVERITIES: tuple[Severity, ...] = ("info", "warning", "critical")
ACTIONS: tuple[ActionName, ...] = ("notify", "restart", "stop", "quarantine")
COMPARISONS: dict[Comparison, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}


@dataclass(frozen=True, slots=True)
class Metric:
    """A per-agent number a rule can test (see docs/alerts.md)."""

    name: str
    description: str
    unit: str
    # Changes with time alone (a dead node sends nothing), so the evaluation tick
    # must evaluate it; the others change only when events arrive.
    time_based: bool = False
    # What counts as a sample for ``min_samples`` (None: the metric has no count).
    samples: str | None = None


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric(
            "heartbeat_age_s",
            "seconds since the agent's last heartbeat (else its last event or connection)",
            "s",
            time_based=True,
        ),
        Metric(
            "consecutive_failed_tool_calls",
            "tool calls in a row that failed or timed out, reset by a success",
            "calls",
        ),
        Metric(
            "tool_success_rate",
            "successful tool results / tool results over the metrics window",
            "ratio",
            time_based=True,
            samples="tool results",
        ),
        Metric(
            "cost_usd_per_hour",
            "token cost over the metrics window, as a rate per hour",
            "USD/h",
            time_based=True,
            samples="LLM calls",
        ),
        Metric(
            "cost_usd_last_hour",
            "token cost of the last 60 minutes (0 when the agent made no LLM call)",
            "USD",
            time_based=True,
        ),
        Metric(
            "tokens_per_action",
            "tokens spent per tool result over the metrics window",
            "tokens",
            time_based=True,
            samples="tool results",
        ),
        Metric(
            "reasoning_latency_p95_ms",
            "95th percentile of reasoning latency over the metrics window",
            "ms",
            time_based=True,
            samples="latency samples",
        ),
        Metric(
            "error_lines_per_s",
            "stderr lines per second over the metrics window",
            "1/s",
            time_based=True,
            samples="events",
        ),
        Metric(
            "events_per_s",
            "events per second over the metrics window",
            "1/s",
            time_based=True,
            samples="events",
        ),
        Metric("cpu_percent", "CPU of the agent process at the last heartbeat", "%"),
        Metric("rss_bytes", "resident memory of the agent process at the last heartbeat", "bytes"),
        Metric(
            "restarts_last_hour",
            "restarts of the agent process in the last 60 minutes",
            "restarts",
            time_based=True,
        ),
    )
}


class Condition(msgspec.Struct, frozen=True):
    metric: str
    op: Comparison
    threshold: float

    def holds(self, value: float) -> bool:
        return COMPARISONS[self.op](value, self.threshold)

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.threshold:g}"


class Scope(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Which agents a rule watches; every field left empty matches everything."""

    envs: tuple[str, ...] = ()
    regions: tuple[str, ...] = ()
    labels: dict[str, str] = {}
    agent: str = "*"

    def matches(self, agent: str, env: str, region: str, labels: Mapping[str, str]) -> bool:
        if self.envs and env not in self.envs:
            return False
        if self.regions and region not in self.regions:
            return False
        for key, value in self.labels.items():
            if labels.get(key) != value:
                return False
        return self.agent == "*" or fnmatch.fnmatchcase(agent, self.agent)


class Rule(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    name: str
    condition: Condition
    for_seconds: float = 0.0
    # Stays firing this long after the condition clears (damps flapping).
    keep_firing_for_seconds: float = 0.0
    min_samples: int = 0
    no_data: NoData = "ok"
    scope: Scope = Scope()
    severity: Severity = "warning"
    # Jinja2 templates; see render_annotations for the variables.
    annotations: dict[str, str] = {}
    labels: dict[str, str] = {}
    actions: tuple[ActionName, ...] = ("notify",)
    # Actions are decided and audited but not carried out.
    dry_run: bool = False
    enabled: bool = True
    # Where the rule came from ("defaults" or a file path), for error messages and the API.
    source: str = ""

    @property
    def metric(self) -> Metric:
        return METRICS[self.condition.metric]


def fingerprint(labels: Mapping[str, str]) -> str:
    """A stable id of a label set (what Alertmanager calls the fingerprint)."""
    digest = hashlib.sha256()
    for key in sorted(labels):
        digest.update(key.encode())
        digest.update(b"\xff")
        digest.update(labels[key].encode())
        digest.update(b"\xff")
    return digest.hexdigest()[:16]


class Alert(msgspec.Struct, kw_only=True):
    """One (rule, agent) pair and where it stands. ``agent`` is "" for an
    environment-wide alert (the remediation budget)."""

    rule: str
    agent: str
    env: str
    region: str = ""
    state: AlertState = "inactive"
    severity: Severity = "warning"
    value: float | None = None
    # When the condition became true (pending since), when it fired, resolved.
    active_since: float | None = None
    fired_at: float | None = None
    resolved_at: float | None = None
    # The last evaluation that found the condition true (for keep_firing_for).
    last_breach: float | None = None
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    fingerprint: str = ""
    acknowledged_by: str | None = None
    acknowledged_at: float | None = None
    silenced_by: str | None = None
    # The fingerprint of a firing alert that mutes this one's notifications
    # (an inhibition rule: a dead node's other alerts are noise).
    inhibited_by: str | None = None
    # Remediation actions carried out (or held) while this alert fired.
    actions_taken: int = 0
    last_action: str | None = None
    # The last notification this alert was part of, firing or resolved; kept
    # across restarts so that a restart does not notify everything again.
    notified_at: float | None = None
    notified_state: AlertState | None = None

    @property
    def key(self) -> tuple[str, str]:
        """(rule, agent), or (rule, "@env") for an environment-wide alert
        ("@" cannot start an agent id)."""
        return (self.rule, self.agent or f"@{self.env}")


class Transition(msgspec.Struct, kw_only=True, frozen=True):
    """A row of alert history: every state change with the values behind it."""

    ts: float
    rule: str
    agent: str
    env: str
    from_state: AlertState
    to_state: AlertState
    value: float | None
    threshold: float | None
    fingerprint: str
    detail: str = ""


class Silence(msgspec.Struct, kw_only=True, frozen=True):
    """Mutes notifications and remediation of matching alerts until ``ends``.

    ``target`` is a rule name or an agent id (globs allowed); ``env`` None
    matches every environment.
    """

    id: str
    target: str
    env: str | None
    starts: float
    ends: float
    created_by: str
    reason: str
    expired_by: str | None = None

    def matches(self, alert: Alert, now: float) -> bool:
        if not (self.starts <= now < self.ends) or self.expired_by is not None:
            return False
        if self.env is not None and alert.env != self.env:
            return False
        return fnmatch.fnmatchcase(alert.rule, self.target) or fnmatch.fnmatchcase(alert.agent, self.target)


class AuditEntry(msgspec.Struct, kw_only=True, frozen=True):
    """Who did what to which agent, why, and how it went."""

    ts: float
    env: str
    actor: str
    action: str
    target: str
    reason: str
    result: str
    detail: dict[str, object] = {}
