"""The ``node`` driver, and the command path it rides on.

``AgentCommands`` is how any process sends a command to a node agent and
keeps the quarantine list: a gateway (its API, its alert engine in embedded
mode) and a scale-mode worker (its alert engine) alike. A command goes down
``local`` (a connection this process holds) or else ``remote`` (scale mode:
over NATS to whichever gateway holds it); a quarantine is recorded in the
store first, so the agent's next ``welcome`` says so wherever it connects,
and ``on_quarantine`` tells the other processes at once. Callers write the
audit entry (they know who asked and why).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

from clawtrace.alerts.drivers.base import ActionResult, AgentTarget
from clawtrace.protocol import Command, encode
from clawtrace.protocol.messages import CommandAction
from clawtrace.store import QuarantineRecord

if TYPE_CHECKING:
    from clawtrace.store import Store

T = TypeVar("T")
# (agent, encoded command) -> whether a connection of the agent took it.
Route = Callable[[str, bytes], Awaitable[bool]]
QuarantineListener = Callable[[str, QuarantineRecord | None], Awaitable[None]]


class StoreCalls(Protocol):
    """What is needed of the store writer (gateway/writer.py): a call on its thread, in order."""

    def call(self, fn: Callable[[Store], T]) -> asyncio.Future[T]: ...


class Commander(Protocol):
    """What the node driver needs: ``AgentCommands`` or anything that does as it does."""

    async def send(
        self, agent: str, action: CommandAction, reason: str, payload: dict[str, object] | None = None
    ) -> tuple[Command, bool]: ...

    async def quarantine(self, target: AgentTarget, reason: str, actor: str) -> bool: ...


class AgentCommands:
    def __init__(
        self,
        writer: StoreCalls,
        *,
        local: Route | None = None,
        quarantined: dict[str, QuarantineRecord] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.writer = writer
        self.local = local
        self.clock = clock
        # Agents under quarantine, as this process knows them (a gateway: what its welcomes say).
        self.quarantined: dict[str, QuarantineRecord] = {} if quarantined is None else quarantined
        # Scale mode: a command for an agent whose connection is not here.
        self.remote: Route | None = None
        # Scale mode: told of every quarantine set (the record) or lifted (None), for the other processes.
        self.on_quarantine: QuarantineListener | None = None

    async def send(
        self, agent: str, action: CommandAction, reason: str, payload: dict[str, object] | None = None
    ) -> tuple[Command, bool]:
        """(the command, whether it reached a connected node agent)."""
        command = Command(id=secrets.token_hex(8), action=action, reason=reason, payload=payload or {})
        data = encode(command)
        delivered = False
        if self.local is not None:
            delivered = await self.local(agent, data)
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

    def __init__(self, commands: Commander) -> None:
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
