"""Remediation drivers: how a restart or stop reaches an agent (docs/alerts.md, "Drivers").

``node`` (the default) sends commands down the node agent's connection and
lives in the gateway; ``docker`` and ``kubernetes`` act on containers.
"""

from __future__ import annotations

from clawtrace.alerts.drivers.base import ActionResult, AgentTarget, RemediationDriver
from clawtrace.alerts.settings import DriverConfig


def container_driver(config: DriverConfig) -> RemediationDriver | None:
    """The configured container driver, or None for the node agent's own supervisor."""
    if config.type == "docker":
        from clawtrace.alerts.drivers.docker import DockerDriver

        return DockerDriver(config)
    if config.type == "kubernetes":
        from clawtrace.alerts.drivers.kubernetes import KubernetesDriver

        return KubernetesDriver(config)
    return None


__all__ = ["ActionResult", "AgentTarget", "RemediationDriver", "container_driver"]
