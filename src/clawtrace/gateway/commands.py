"""Commands to agents (restart, stop, quarantine, release) and the quarantine list.

One path for a person's command through the API and an alert's remediation:
both land here, so a quarantine is recorded the same way whoever asks.
Callers write the audit entry (they know who asked and why).

In scale mode the agent's connection may be on another gateway: ``remote``
(gateway/scale.py) carries the command there over NATS, and ``on_quarantine``
tells every gateway about a quarantine set or lifted here.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable

from clawtrace.alerts.drivers.base import ActionResult, AgentTarget
from clawtrace.gateway.pipeline import Pipeline
from clawtrace.gateway.writer import StoreWriter
from clawtrace.protocol import Command, encode
from clawtrace.protocol.messages import CommandAction
from clawtrace.store import QuarantineRecord


class CommandService:
    def __init__(
        self, pipeline: Pipeline, writer: StoreWriter, clock: Callable[[], float] = time.time
    ) -> None:
        self.pipeline = pipeline
        self.writer = writer
        self.clock = clock
        # Scale mode: (agent, command) -> whether the gateway holding the agent's connection took it.
        self.remote: Callable[[str, bytes], Awaitable[bool]] | None = None
        # Scale mode: told of every quarantine set (the record) or lifted (None), for the other gateways.
        self.on_quarantine: Callable[[str, QuarantineRecord | None], Awaitable[None]] | None = None

    @property
    def quarantined(self) -> dict[str, QuarantineRecord]:
        # Kept on the pipeline: every welcome tells the node agent where it stands.
        return self.pipeline.quarantined

    def load(self) -> None:
        self.quarantined.update({q.agent: q for q in self.pipeline.store.list_quarantines()})

    async def send(
        self, agent: str, action: CommandAction, reason: str, payload: dict[str, object] | None = None
    ) -> tuple[Command, bool]:
        """(the command, whether it reached a connected node agent)."""
        command = Command(id=secrets.token_hex(8), action=action, reason=reason, payload=payload or {})
        data = encode(command)
        delivered = await self.pipeline.send_command(agent, data)
        if not delivered and self.remote is not None:
            delivered = await self.remote(agent, data)
        return command, delivered

    async def quarantine(self, target: AgentTarget, reason: str, actor: str) -> bool:
        """Record the quarantine (deny all tools until released) and tell the node agent;
        returns whether it was told now (otherwise its next welcome says so)."""
        record = QuarantineRecord(
            agent=target.agent, env=target.env, since=self.clock(), reason=reason, actor=actor
        )
        await self.writer.call(lambda store: store.set_quarantine(record))
        self.quarantined[target.agent] = record
        if self.on_quarantine is not None:
            await self.on_quarantine(target.agent, record)
        return (await self.send(target.agent, "quarantine", reason))[1]

    async def release(self, agent: str, reason: str) -> tuple[bool, bool]:
        """(whether the agent was quarantined, whether its node agent was told now)."""
        removed = await self.writer.call(lambda store: store.clear_quarantine(agent))
        self.quarantined.pop(agent, None)
        if self.on_quarantine is not None:
            await self.on_quarantine(agent, None)
        if not removed:
            return False, False
        return True, (await self.send(agent, "release", reason))[1]


def delivery(delivered: bool) -> str:
    return "sent to the node agent" if delivered else "delivered when the agent reconnects"


class NodeAgentDriver:
    """The default driver: commands down the node agent's own connection."""

    name = "node"

    def __init__(self, commands: CommandService) -> None:
        self.commands = commands

    async def _command(self, target: AgentTarget, action: CommandAction, reason: str) -> ActionResult:
        command, delivered = await self.commands.send(target.agent, action, reason)
        if not delivered:
            return ActionResult(False, f"agent {target.agent!r} is not connected; the {action} was not sent")
        return ActionResult(True, f"{action} command {command.id} sent to the node agent")

    async def restart(self, target: AgentTarget, reason: str) -> ActionResult:
        return await self._command(target, "restart", reason)

    async def stop(self, target: AgentTarget, reason: str) -> ActionResult:
        return await self._command(target, "stop", reason)

    async def quarantine(self, target: AgentTarget, reason: str, actor: str) -> ActionResult:
        delivered = await self.commands.quarantine(target, reason, actor)
        return ActionResult(True, f"quarantine recorded; {delivery(delivered)}")
