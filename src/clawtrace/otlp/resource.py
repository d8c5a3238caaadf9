"""Which agent, environment and region an OTLP resource is.

Agent id, the first of: the resource attribute ``clawtrace.agent``; ``service.instance.id``
unless it is a UUID; ``service.name`` unless it is the SDKs' default ``unknown_service...``;
the name of the ``agent`` credential that sent it; that default ``service.name``. Then
sanitized to the protocol's agent id (``sanitize_agent_id``). A UUID instance id is what
SDKs generate when none is configured (the Python SDK always does, Node's
``serviceinstance`` detector too): a new one per process start, where an agent id must
stay the same across restarts.
Environment: ``clawtrace.env``, else ``deployment.environment.name``, else
``deployment.environment``, else the credential's environment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

from clawtrace.otlp.values import Attributes, text

ENV_ATTRIBUTES: Final = ("clawtrace.env", "deployment.environment.name", "deployment.environment")
REGION_ATTRIBUTE: Final = "cloud.region"
# Resource attributes copied into the agent's labels, under the same names ...
LABEL_ATTRIBUTES: Final = ("service.name", "service.namespace", "service.version", "host.name")
# ... and ``clawtrace.label.<name>`` as label ``<name>``.
LABEL_PREFIX: Final = "clawtrace.label."
MAX_LABEL: Final = 200

AGENT_ID_LENGTH: Final = 128
_NOT_IN_ID: Final = re.compile(r"[^A-Za-z0-9_:@-]")
_LEADING: Final = re.compile(r"^[^A-Za-z0-9]+")
_UUID: Final = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
# What SDKs call a service whose name was not configured (unknown_service:python, ...).
UNKNOWN_SERVICE: Final = "unknown_service"
ENV_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def sanitize_agent_id(raw: str) -> str:
    """An agent id from free text: every character outside ``A-Za-z0-9_:@-`` becomes ``-``,
    leading characters that are not a letter or digit are dropped, and the result is cut
    to 128 characters. "" when nothing is left."""
    return _LEADING.sub("", _NOT_IN_ID.sub("-", raw.strip()))[:AGENT_ID_LENGTH]


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a resource's telemetry goes; ``agent`` None: no id could be made (``problem`` says why)."""

    agent: str | None
    env: str
    region: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    problem: str | None = None


def origin_of(attrs: Attributes, default_env: str, default_agent: str | None) -> Origin:
    env = text(attrs, *ENV_ATTRIBUTES) or default_env
    region = (text(attrs, REGION_ATTRIBUTE) or "")[:MAX_LABEL]
    labels = {key: value[:MAX_LABEL] for key in LABEL_ATTRIBUTES if (value := text(attrs, key))}
    for key, value in attrs.items():
        if key.startswith(LABEL_PREFIX) and len(key) > len(LABEL_PREFIX) and isinstance(value, str):
            labels[key[len(LABEL_PREFIX) :]] = value[:MAX_LABEL]
    instance = text(attrs, "service.instance.id")
    if instance is not None and _UUID.match(instance.strip()):
        instance = None
    service = text(attrs, "service.name")
    named = None if service is None or service.startswith(UNKNOWN_SERVICE) else service
    raw = text(attrs, "clawtrace.agent") or instance or named or default_agent or service
    if raw is None:
        return Origin(None, env, region, labels, "the resource names no agent: set service.name")
    agent = sanitize_agent_id(raw)
    if not agent:
        return Origin(None, env, region, labels, f"no agent id can be made of {raw[:100]!r}")
    return Origin(agent, env, region, labels)
