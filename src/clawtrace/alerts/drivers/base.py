"""The interface every remediation driver implements."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class AgentTarget:
    """The agent an action is for, as the gateway knows it."""

    agent: str
    env: str
    region: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)

    def fill(self, template: str) -> str:
        """``template`` with {agent}, {env}, {region} and the agent's labels filled in.

        Raises KeyError naming a placeholder the agent has no value for.
        """
        values = {**self.labels, "agent": self.agent, "env": self.env, "region": self.region}
        return template.format_map(values)


@dataclass(frozen=True, slots=True)
class ActionResult:
    ok: bool
    # What happened, for the audit log and the alert ("restart sent to node agent", "pod deleted").
    detail: str


class RemediationDriver(Protocol):
    """Restarts or stops an agent's process or container.

    Implementations never raise for a failed action: they return
    ``ActionResult(ok=False, detail=why)`` so the remediator can audit it.
    """

    name: str

    async def restart(self, target: AgentTarget, reason: str) -> ActionResult: ...

    async def stop(self, target: AgentTarget, reason: str) -> ActionResult: ...
