"""Commands to agents (restart, stop, quarantine, release) and the quarantine list.

One path for a person's command through the API and an alert's remediation:
both land here, so a quarantine is recorded the same way whoever asks.
Callers write the audit entry (they know who asked and why).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable

from clawtrace.alerts.drivers.base import ActionResult, AgentTarget
from clawtrace.gateway.pipeline import Pipeline
from clawtrace.gateway.writer import StoreWriter
from clawtrace.protocol import Command, encode
from clawtrace.protocol.messages import CommandAction
from clawtrace.store import AgentInfo, QuarantineRecord

log = logging.getLogger("clawtrace.gateway.commands")


class CommandService:
    def __init__(
        self, pipeline: Pipeline, writer: StoreWriter, clock: Callable[[], float] = time.time
    ) -> None:
        self.pipeline = pipeline
        self.writer = writer
        self.clock = clock
        self.quarantined: dict[str, QuarantineRecord] = {}

    def load(self) -> None:
        self.quarantined = {q.agent: q for q in self.pipeline.store.list_quarantines()}

    async def send(
        self, agent: str, action: CommandAction, reason: str, payload: dict[str, object] | None = None
    ) -> tuple[Command, ActionResult]:
        command = Command(id=secrets.token_hex(8), action=action, reason=reason, payload=payload or {})
        delivered = await self.pipeline.send_command(agent, encode(command))
        if not delivered:
            return command, ActionResult(
                False, f"agent {agent!r} is not connected; the {action} was not sent"
            )
        return command, ActionResult(True, f"{action} command {command.id} sent to the node agent")

    async def quarantine(self, target: AgentTarget, reason: str, actor: str) -> ActionResult:
        """Record the quarantine (deny all tools until released) and tell the node agent.

        The record stands even if the agent is offline: it gets the command
        again when it reconnects.
        """
        record = QuarantineRecord(
            agent=target.agent, env=target.env, since=self.clock(), reason=reason, actor=actor
        )
        await self.writer.call(lambda store: store.set_quarantine(record))
        self.quarantined[target.agent] = record
        _, sent = await self.send(target.agent, "quarantine", reason)
        detail = "quarantine recorded; " + (sent.detail if sent.ok else "delivered when the agent reconnects")
        return ActionResult(True, detail)

    async def release(self, agent: str, reason: str) -> ActionResult:
        removed = await self.writer.call(lambda store: store.clear_quarantine(agent))
        self.quarantined.pop(agent, None)
        if not removed:
            return ActionResult(False, f"agent {agent!r} is not quarantined")
        _, sent = await self.send(agent, "release", reason)
        return ActionResult(True, "quarantine lifted; " + (sent.detail if sent.ok else "agent not connected"))

    async def on_welcome(self, info: AgentInfo) -> None:
        """A quarantined agent that reconnects is told again (it may have restarted)."""
        record = self.quarantined.get(info.agent)
        if record is not None:
            await self.send(info.agent, "quarantine", record.reason)


class NodeAgentDriver:
    """The default driver: commands down the node agent's own connection."""

    name = "node"

    def __init__(self, commands: CommandService) -> None:
        self.commands = commands

    async def restart(self, target: AgentTarget, reason: str) -> ActionResult:
        return (await self.commands.send(target.agent, "restart", reason))[1]

    async def stop(self, target: AgentTarget, reason: str) -> ActionResult:
        return (await self.commands.send(target.agent, "stop", reason))[1]
