"""The ``[gateway.alerts]`` settings: where rules live, how to notify, how to act."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from clawtrace.alerts.model import Severity

ReceiverType = Literal["webhook", "slack", "log"]
# A zero or negative retention would delete the whole history at the next pass.
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
DriverType = Literal["node", "docker", "kubernetes"]


class ReceiverConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One place notifications go. ``webhook`` posts Alertmanager's v4 JSON,
    ``slack`` an incoming-webhook message, ``log`` writes the gateway log."""

    name: str
    type: ReceiverType
    url: str = ""
    # Only alerts of these environments (empty: all) at or above this severity.
    envs: list[str] = []
    min_severity: Severity = "info"
    headers: dict[str, str] = {}
    timeout_seconds: float = 5.0
    send_resolved: bool = True


class DriverConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """How ``restart`` and ``stop`` reach an agent (docs/alerts.md, "Drivers")."""

    type: DriverType = "node"
    # docker: the Engine API address (default: the environment, DOCKER_HOST or the local socket).
    docker_base_url: str | None = None
    # docker: the container of an agent; {agent} and any {label} of the agent are filled in.
    container: str = "{agent}"
    # kubernetes: the pod and namespace of an agent, templates like ``container``.
    pod: str = "{agent}"
    namespace: str = "default"
    # kubernetes: a kubeconfig file; None means in-cluster configuration.
    kubeconfig: str | None = None
    # kubernetes ``stop``: the deployment to scale to zero (template; empty: stop is refused).
    deployment: str = ""


class InhibitRule(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """While an alert matching ``source`` fires, alerts matching ``target`` with
    the same values of the ``equal`` labels are not notified (as in Alertmanager)."""

    source: dict[str, str]
    target: dict[str, str] = {}
    equal: list[str] = []


def _default_inhibitions() -> list[InhibitRule]:
    # A dead agent also stops succeeding at tools and spending: say it once.
    return [InhibitRule(source={"alertname": "DeadNode"}, equal=["agent"])]


class AlertSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    enabled: bool = True
    # One YAML file per environment: <rules_dir>/<env>.yaml (default: <data_dir>/alerts).
    rules_dir: str | None = None
    # The shipped DeadNode, ReasoningLoop and CostSpike rules, unless a file overrides them.
    default_rules: bool = True
    # Time-based conditions (a dead node sends nothing) are checked this often;
    # half a second keeps detection within 1 s of the condition becoming true.
    evaluation_interval_seconds: float = 0.5
    # Notification grouping, as in Alertmanager.
    group_by: list[str] = msgspec.field(default_factory=lambda: ["alertname", "env"])
    group_wait_seconds: float = 5.0
    group_interval_seconds: float = 60.0
    repeat_interval_seconds: float = 4 * 3600.0
    inhibit_rules: list[InhibitRule] = msgspec.field(default_factory=_default_inhibitions)
    receivers: list[ReceiverConfig] = msgspec.field(
        default_factory=lambda: [ReceiverConfig(name="log", type="log")]
    )
    # Remediation safety (docs/alerts.md, "Remediation").
    driver: DriverConfig = DriverConfig()
    dry_run: bool = False
    backoff_initial_seconds: float = 10.0
    backoff_max_seconds: float = 300.0
    backoff_reset_seconds: float = 600.0
    budget_fraction: float = 0.10
    budget_window_seconds: float = 600.0
    give_up_after_restarts: int = 5
    give_up_window_seconds: float = 1800.0
    # Alert transitions and the audit log are deleted after this many days.
    history_retention_days: PositiveFloat = 90.0
    audit_retention_days: PositiveFloat = 365.0
