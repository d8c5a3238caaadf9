"""Where alert notifications go, and what they look like when they get there.

The notifier (notify.py) decides *when* a group of alerts is worth a message
and snapshots it as a ``Notification``; a receiver turns that snapshot into
its own wire format and sends it once. Retrying is the notifier's job: a
receiver only says, through ``DeliveryError.retry``, whether trying again
could help.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol
from urllib.parse import quote

import httpx
import msgspec

from clawtrace.alerts.model import SEVERITIES, Alert, Severity
from clawtrace.alerts.settings import ReceiverConfig

log = logging.getLogger("clawtrace.alerts.notify")

NotificationStatus = Literal["firing", "resolved"]

# What Alertmanager sends as endsAt while an alert still fires (Go's zero time).
ZERO_TIME = "0001-01-01T00:00:00Z"
SLACK_MAX_ALERTS = 10
# Slack rejects a section whose text is longer than this.
SLACK_SECTION_LIMIT = 3000
LOG_MAX_AGENTS = 5
# Enough of an error response to see why it was refused, without flooding the log.
ERROR_BODY_LIMIT = 500


@dataclass(frozen=True, slots=True)
class AlertSnapshot:
    """One alert as it stood when its notification was built; the engine's
    ``Alert`` keeps changing while the message waits in a queue."""

    status: NotificationStatus
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: float
    # None while firing.
    ends_at: float | None
    agent: str
    env: str
    severity: Severity
    fingerprint: str
    acknowledged_by: str | None = None


@dataclass(frozen=True, slots=True)
class Notification:
    """One message for one receiver: a group's alerts that this receiver accepts."""

    receiver: str
    group_labels: Mapping[str, str]
    status: NotificationStatus
    alerts: tuple[AlertSnapshot, ...]
    external_url: str
    created_at: float

    @property
    def firing(self) -> list[AlertSnapshot]:
        return [a for a in self.alerts if a.status == "firing"]

    @property
    def resolved(self) -> list[AlertSnapshot]:
        return [a for a in self.alerts if a.status == "resolved"]


class DeliveryError(Exception):
    """A send failed; ``retry`` says whether the same message could succeed later."""

    def __init__(self, message: str, *, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


class Receiver(Protocol):
    """A destination for notifications.

    ``send`` delivers one notification once, raising ``DeliveryError`` on
    failure; the notifier queues, retries and never calls ``send`` for the
    same receiver concurrently.
    """

    @property
    def name(self) -> str: ...

    @property
    def send_resolved(self) -> bool: ...

    def accepts(self, alert: Alert) -> bool: ...

    async def send(self, notification: Notification) -> None: ...

    async def aclose(self) -> None: ...


def accepts(config: ReceiverConfig, alert: Alert) -> bool:
    """Whether ``alert`` passes the receiver's environment and severity filters."""
    if config.envs and alert.env not in config.envs:
        return False
    return SEVERITIES.index(alert.severity) >= SEVERITIES.index(config.min_severity)


def rfc3339(ts: float) -> str:
    """``ts`` as RFC 3339 UTC with milliseconds, like "2026-11-25T20:31:02.123Z"."""
    # Round in integer milliseconds: float seconds would turn .123 into .122999.
    ms = round(ts * 1000)
    dt = datetime.fromtimestamp(ms // 1000, tz=UTC)
    return f"{dt:%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}Z"


def group_key_string(group_labels: Mapping[str, str]) -> str:
    """Alertmanager's groupKey for a group under its root route: '{}:{alertname="X", env="y"}'."""
    pairs = ", ".join(
        f"{name}={json.dumps(group_labels[name], ensure_ascii=False)}" for name in sorted(group_labels)
    )
    return "{}:{" + pairs + "}"


def _common(maps: Iterable[Mapping[str, str]]) -> dict[str, str]:
    """The pairs every mapping has with the same value."""
    iterator = iter(maps)
    first = next(iterator, None)
    if first is None:
        return {}
    common = dict(first)
    for other in iterator:
        common = {k: v for k, v in common.items() if other.get(k) == v}
        if not common:
            break
    return common


def generator_url(external_url: str, agent: str) -> str:
    if not agent:
        return ""
    return f"{external_url}/agents/{quote(agent, safe='')}"


def webhook_payload(notification: Notification) -> dict[str, Any]:
    """Alertmanager's v4 webhook JSON, so receivers written for Alertmanager work unchanged."""
    n = notification
    return {
        "version": "4",
        "groupKey": group_key_string(n.group_labels),
        "truncatedAlerts": 0,
        "status": n.status,
        "receiver": n.receiver,
        "groupLabels": dict(n.group_labels),
        "commonLabels": _common(a.labels for a in n.alerts),
        "commonAnnotations": _common(a.annotations for a in n.alerts),
        "externalURL": n.external_url,
        "alerts": [
            {
                "status": a.status,
                "labels": dict(a.labels),
                "annotations": dict(a.annotations),
                "startsAt": rfc3339(a.starts_at),
                "endsAt": ZERO_TIME if a.ends_at is None else rfc3339(a.ends_at),
                "generatorURL": generator_url(n.external_url, a.agent),
                "fingerprint": a.fingerprint,
            }
            for a in n.alerts
        ],
    }


def summary_line(notification: Notification) -> str:
    """'[FIRING:300] DeadNode prod', Alertmanager's default title."""
    n = notification
    count = f":{len(n.firing)}" if n.status == "firing" else ""
    return f"[{n.status.upper()}{count}] {' '.join(n.group_labels.values())}".rstrip()


def _slack_escape(text: str) -> str:
    # The three characters Slack's mrkdwn treats as markup for links and mentions.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _alert_summary(alert: AlertSnapshot) -> str:
    return (
        alert.annotations.get("summary")
        or alert.annotations.get("description")
        or alert.labels.get("alertname", "")
    )


def slack_payload(notification: Notification) -> dict[str, Any]:
    """A Slack incoming-webhook message: a one-line summary and up to ten alerts."""
    n = notification
    title = summary_line(n)
    lines = [f"*{_slack_escape(title)}*"]
    for alert in n.alerts[:SLACK_MAX_ALERTS]:
        who = _slack_escape(alert.agent or f"{alert.env} (environment)")
        url = generator_url(n.external_url, alert.agent)
        if url.startswith(("http://", "https://")):
            who = f"<{url}|{who}>"
        line = f"• *{who}*: {_slack_escape(_alert_summary(alert)[:300])}"
        if alert.status == "resolved":
            line += " _(resolved)_"
        elif alert.acknowledged_by:
            line += f" _(acknowledged by {_slack_escape(alert.acknowledged_by)})_"
        lines.append(line)
    if len(n.alerts) > SLACK_MAX_ALERTS:
        lines.append(f"and {len(n.alerts) - SLACK_MAX_ALERTS} more")
    text = "\n".join(lines)
    if len(text) > SLACK_SECTION_LIMIT:
        text = text[: SLACK_SECTION_LIMIT - 1] + "…"
    return {
        "text": title,
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}],
    }


def log_line(notification: Notification) -> str:
    """One line per notification: status, group labels, counts and the first few agents."""
    n = notification
    labels = " ".join(f"{k}={v}" for k, v in n.group_labels.items())
    agents = [a.agent or "(environment)" for a in n.alerts[:LOG_MAX_AGENTS]]
    more = f" and {len(n.alerts) - LOG_MAX_AGENTS} more" if len(n.alerts) > LOG_MAX_AGENTS else ""
    return (
        f"alert notification {n.status}: {labels}: {len(n.firing)} firing, {len(n.resolved)} resolved; "
        f"agents {', '.join(agents)}{more}"
    )


class _ConfiguredReceiver:
    """What every receiver shares: its configuration and the filters it implies."""

    def __init__(self, config: ReceiverConfig) -> None:
        self.config = config

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def send_resolved(self) -> bool:
        return self.config.send_resolved

    def accepts(self, alert: Alert) -> bool:
        return accepts(self.config, alert)

    async def aclose(self) -> None:
        return None


def _check_url(config: ReceiverConfig) -> None:
    if not config.url.startswith(("http://", "https://")):
        raise ValueError(f"receiver {config.name!r} ({config.type}) needs an http(s) url, got {config.url!r}")


class _HttpReceiver(_ConfiguredReceiver):
    def __init__(self, config: ReceiverConfig) -> None:
        super().__init__(config)
        _check_url(config)
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(config.timeout_seconds),
            headers={"user-agent": "clawtrace-alerts"},
        )

    async def _post(self, payload: dict[str, Any]) -> None:
        headers = {"content-type": "application/json", **self.config.headers}
        try:
            response = await self._client.post(
                self.config.url, content=msgspec.json.encode(payload), headers=headers
            )
        except httpx.TimeoutException as exc:
            raise DeliveryError(f"timed out after {self.config.timeout_seconds:g} s", retry=True) from exc
        except httpx.TransportError as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}", retry=True) from exc
        status = response.status_code
        if 200 <= status < 300:
            return
        # Rate limits and server errors pass; any other refusal would only be refused again.
        retry = status == 429 or status >= 500
        raise DeliveryError(f"HTTP {status}: {response.text[:ERROR_BODY_LIMIT]}", retry=retry)

    async def aclose(self) -> None:
        await self._client.aclose()


class WebhookReceiver(_HttpReceiver):
    """POSTs Alertmanager's v4 webhook JSON to ``config.url`` with ``config.headers``."""

    async def send(self, notification: Notification) -> None:
        await self._post(webhook_payload(notification))


class SlackReceiver(_HttpReceiver):
    """POSTs to a Slack incoming webhook."""

    async def send(self, notification: Notification) -> None:
        await self._post(slack_payload(notification))


class LogReceiver(_ConfiguredReceiver):
    """Writes one line per notification to the gateway log: WARNING firing, INFO resolved."""

    async def send(self, notification: Notification) -> None:
        level = logging.WARNING if notification.status == "firing" else logging.INFO
        log.log(level, "%s", log_line(notification))


_TYPES: dict[str, type[WebhookReceiver | SlackReceiver | LogReceiver]] = {
    "webhook": WebhookReceiver,
    "slack": SlackReceiver,
    "log": LogReceiver,
}


def check_receivers(configs: Iterable[ReceiverConfig]) -> None:
    """Raise ValueError for a bad or duplicate receiver (settings are checked at load)."""
    seen: set[str] = set()
    for config in configs:
        if config.name in seen:
            raise ValueError(f"two alert receivers are named {config.name!r}")
        seen.add(config.name)
        if config.type != "log":
            _check_url(config)


def build_receivers(configs: Iterable[ReceiverConfig]) -> list[Receiver]:
    """The receivers of ``[gateway.alerts]``; raises ValueError for a bad or duplicate one."""
    configs = list(configs)
    # Check everything before building anything, so a bad entry leaves no open clients behind.
    check_receivers(configs)
    return [_TYPES[config.type](config) for config in configs]
