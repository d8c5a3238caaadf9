"""The node agent's policy holder: the compiled bundle, its decisions, and pending approvals.

The node agent decides every tool call of its agent locally, in its own event
loop, with the last good bundle the gateway sent (kept in
``<spool_dir>/policy.json`` so a restart without a gateway still enforces it).
Every decision goes to ``record``, which the node agent turns into ``policy``
events: the audit trail comes from the enforcement point, never from the agent.

A ``require_approval`` decision gets an approval id and waits for an
``approval`` command from the gateway; after the bundle's
``approval_timeout_seconds`` it becomes a deny decided by "timeout".

A node agent that runs a role's release (``clawtrace run --role``) also
holds the release's own policy (``set_role_policy``). A call must then be
allowed by both bundles: the stricter decision wins (deny, then
require_approval, then allow), and its ``policy_version`` says which bundle
made it: the environment's version, or ``ROLE@VERSION:<version>`` for the
release's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import posixpath
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import msgspec

from clawtrace.policy.bundle import PolicyBundle, PolicyError, compile_bundle
from clawtrace.policy.engine import QUARANTINE_RULE, AgentIdentity, PolicyEngine, Verdict

log = logging.getLogger("clawtrace.node.policy")

POLICY_FILE: Final = "policy.json"
NO_BUNDLE_RULE: Final = "no-bundle"
# A shell request whose tool the bundle does not treat as a shell tool.
NOT_A_SHELL_TOOL_RULE: Final = "not-a-shell-tool"
EVALUATION_FAILED_RULE: Final = "evaluation-failed"
# How strict a decision is: with two bundles, the stricter one decides.
_STRICTNESS: Final = {"allow": 0, "require_approval": 1, "deny": 2}
# Decided approvals stay answerable (GET /v1/approvals/<id>) for a while.
SETTLED_KEPT: Final = 256
MAX_APPROVAL_WAIT: Final = 600.0

DefaultVerdict = Literal["allow", "deny"]
Identifier = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class BadRequest(ValueError):
    """An authorize request that cannot be decided as sent; the message says what to fix."""


class AuthorizeRequest(msgspec.Struct, kw_only=True):
    """One question to the node agent: may this tool call run?

    Sent by the SDK and the shell shim as a JSON line on the local socket
    (with ``"type": "authorize"`` and an ``id``), or as the body of
    ``POST /v1/authorize``. Unknown fields are ignored.
    """

    tool: Identifier
    args: dict[str, Any] = {}
    # Where relative paths in a shell command point (default: the workspace).
    cwd: str | None = None
    call_id: Identifier | None = None
    # Also record the call as tool_call (and a refusal as a failed tool_result):
    # the SDK sends its tool_call this way so that it precedes its decision.
    report: bool = False
    # The SDK's time of the call, for the tool_call event.
    ts: str | None = None
    # From the shell shim: the command must be inspected as a shell command.
    shell: bool = False
    # False: answer require_approval at once instead of waiting for a person.
    wait: bool = True
    id: str | int | None = None


class Ruling(msgspec.Struct, frozen=True, kw_only=True):
    """A decision as the node agent reports and answers it."""

    decision: Verdict
    tool: str
    rule: str | None
    reason: str
    command: str = ""
    policy_version: str | None = None
    call_id: str | None = None
    approval_id: str | None = None
    # Set on the decision that settles an approval: who, or "timeout".
    decided_by: str | None = None

    @property
    def final(self) -> bool:
        return self.decision != "require_approval"

    def answer(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__struct_fields__}


Recorder = Callable[[Ruling, AuthorizeRequest], None]


@dataclass(slots=True)
class _Pending:
    ruling: Ruling
    request: AuthorizeRequest
    future: asyncio.Future[Ruling]
    timer: asyncio.TimerHandle
    timeout: float


def parse_request(body: Mapping[str, Any]) -> AuthorizeRequest:
    try:
        return msgspec.convert(body, AuthorizeRequest)
    except msgspec.ValidationError as exc:
        raise BadRequest(
            f"not an authorize request ({exc}); send "
            '{"tool": "exec", "args": {"command": "ls"}, "cwd": "/path"} (only "tool" is required)'
        ) from None


def bundle_from_payload(payload: Mapping[str, Any] | PolicyBundle) -> PolicyBundle:
    if isinstance(payload, PolicyBundle):
        bundle = payload
    else:
        try:
            bundle = msgspec.convert(payload, PolicyBundle)
        except msgspec.ValidationError as exc:
            raise PolicyError([f"the payload is not a policy bundle: {exc}"]) from None
    return bundle if bundle.version else bundle.with_version()


class NodePolicy:
    """The current bundle compiled for this agent, plus quarantine and pending approvals."""

    def __init__(
        self,
        identity: AgentIdentity,
        *,
        spool_dir: Path,
        workspace: str,
        home: str,
        env: Mapping[str, str] | None = None,
        default: DefaultVerdict = "allow",
        record: Recorder | None = None,
    ) -> None:
        self.identity = identity
        self.spool_dir = spool_dir
        self.workspace = posixpath.normpath(os.path.abspath(workspace))
        self.home = home
        self.env = dict(env or {})
        self.default: DefaultVerdict = default
        self.record = record
        self.engine: PolicyEngine | None = None
        # The running release's own policy (clawtrace run --role), and its ROLE@VERSION.
        self.role_engine: PolicyEngine | None = None
        self.role_label: str | None = None
        self.quarantine: str | None = None
        self._pending: dict[str, _Pending] = {}
        self._settled: OrderedDict[str, Ruling] = OrderedDict()

    @property
    def bundle(self) -> PolicyBundle | None:
        return self.engine.compiled.bundle if self.engine is not None else None

    @property
    def version(self) -> str | None:
        return self.engine.version if self.engine is not None else None

    @property
    def role_version(self) -> str | None:
        """``ROLE@VERSION:<bundle version>`` of the release's policy, the policy_version of its decisions."""
        engine = self.role_engine
        return f"{self.role_label}:{engine.version}" if engine is not None else None

    @property
    def path(self) -> Path:
        return self.spool_dir / POLICY_FILE

    # --- the bundle -----------------------------------------------------------

    def apply(self, payload: Mapping[str, Any] | PolicyBundle, *, save: bool = True) -> PolicyBundle:
        """Compile and use a new bundle; raises PolicyError (the current one stays) if it is unusable."""
        bundle = bundle_from_payload(payload)
        if bundle.env != self.identity.env:
            raise PolicyError(
                [
                    f"the bundle is for environment {bundle.env!r}, "
                    f"but this agent runs in {self.identity.env!r}"
                ]
            )
        compiled = compile_bundle(bundle)
        engine = PolicyEngine(compiled, self.identity, workspace=self.workspace, home=self.home, env=self.env)
        engine.quarantine = self.quarantine
        if save:
            # Saved before it is used: what decides is always what a restart would load.
            self._save(bundle)
        self.engine = engine
        return bundle

    def set_role_policy(self, bundle: PolicyBundle | None, label: str | None = None) -> None:
        """Enforce a release's policy on top of the environment's (None: the release has none).

        Raises PolicyError (and changes nothing) if it does not compile. Not
        saved: the installed release holds it, and is loaded again on restart.
        """
        if bundle is None:
            self.role_engine = None
            self.role_label = None
            return
        compiled = compile_bundle(bundle if bundle.version else bundle.with_version())
        self.role_engine = PolicyEngine(
            compiled, self.identity, workspace=self.workspace, home=self.home, env=self.env
        )
        self.role_label = label or bundle.env

    def load_saved(self) -> PolicyBundle | None:
        """The last good bundle from an earlier run, if there is one; raises PolicyError if it is unusable."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise PolicyError([f"{self.path}: cannot read it: {exc}"]) from None
        try:
            bundle = msgspec.json.decode(raw, type=PolicyBundle)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise PolicyError([f"{self.path}: not a policy bundle: {exc}"]) from None
        return self.apply(bundle, save=False)

    def _save(self, bundle: PolicyBundle) -> None:
        # Write, fsync, rename: a crash leaves the old bundle or the new one, never half of one.
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{POLICY_FILE}.{os.getpid()}.tmp")
        try:
            with tmp.open("wb") as f:
                f.write(msgspec.json.encode(bundle))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise PolicyError([f"{self.path}: cannot save the bundle: {exc}"]) from None
        with contextlib.suppress(OSError):
            fd = os.open(self.spool_dir, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def set_quarantine(self, reason: str | None) -> None:
        """Deny every tool call (reason) or stop doing so (None); pending approvals are denied."""
        self.quarantine = reason
        if self.engine is not None:
            self.engine.quarantine = reason
        if reason is not None:
            for approval_id in list(self._pending):
                self.resolve(
                    approval_id,
                    approved=False,
                    by="quarantine",
                    reason=f"the agent was quarantined while waiting: {reason}",
                )

    # --- deciding ---------------------------------------------------------------

    def decide(self, request: AuthorizeRequest) -> Ruling:
        """Decide one request and record it; a require_approval ruling carries its approval id."""
        ruling = self._decide(request)
        if ruling.decision == "require_approval":
            ruling = self._hold(ruling, request)
        self._record(ruling, request)
        return ruling

    def _decide(self, request: AuthorizeRequest) -> Ruling:
        ruling = self._decide_for_env(request)
        role_engine = self.role_engine
        if role_engine is None:
            return ruling
        by_role = self._decide_with(role_engine, self.role_version, request)
        stricter = _STRICTNESS[by_role.decision] - _STRICTNESS[ruling.decision]
        # On a tie the environment's decision is the one reported, unless nothing
        # but --policy-default made it (no bundle yet): the release's then says more.
        if stricter > 0 or (stricter == 0 and ruling.rule == NO_BUNDLE_RULE):
            return by_role
        return ruling

    def _decide_for_env(self, request: AuthorizeRequest) -> Ruling:
        tool = request.tool
        engine = self.engine
        if engine is None:
            if self.quarantine is not None:
                reason = f"the agent is quarantined: {self.quarantine}"
                return Ruling(
                    decision="deny", tool=tool, rule=QUARANTINE_RULE, reason=reason, call_id=request.call_id
                )
            if self.default == "allow":
                reason = "no policy bundle has reached this node agent yet; allowed by --policy-default allow"
            else:
                reason = (
                    "no policy bundle has reached this node agent yet, and --policy-default deny refuses "
                    "every tool call until the gateway sends one"
                )
            command = _command_of(request)
            return Ruling(
                decision=self.default,
                tool=tool,
                rule=NO_BUNDLE_RULE,
                reason=reason,
                command=command,
                call_id=request.call_id,
            )
        return self._decide_with(engine, engine.version, request)

    def _decide_with(self, engine: PolicyEngine, version: str | None, request: AuthorizeRequest) -> Ruling:
        tool = request.tool
        shell_arg = engine.compiled.bundle.settings.shell_tools.get(tool)
        if request.shell and engine.quarantine is None and shell_arg is None:
            # The shim's command would otherwise be decided as a plain tool, unread.
            reason = (
                f"the bundle does not list {tool!r} in settings.shell_tools, so its command cannot be "
                "checked; add it to the bundle's [shell_tools]"
            )
            return Ruling(
                decision="deny",
                tool=tool,
                rule=NOT_A_SHELL_TOOL_RULE,
                reason=reason,
                command=_command_of(request),
                policy_version=version,
                call_id=request.call_id,
            )
        args: Mapping[str, Any] = request.args
        if request.shell and shell_arg is not None and shell_arg not in args:
            args = {**args, shell_arg: _command_of(request)}
        try:
            decision = engine.decide(tool, args, self._cwd(request.cwd))
        except Exception as exc:
            # A decision that cannot be made is a refusal, never a silent allow.
            log.exception("policy evaluation failed for tool %r", tool)
            return Ruling(
                decision="deny",
                tool=tool,
                rule=EVALUATION_FAILED_RULE,
                reason=f"the policy could not be evaluated ({type(exc).__name__}: {exc}); call refused",
                command=_command_of(request),
                policy_version=version,
                call_id=request.call_id,
            )
        return Ruling(
            decision=decision.decision,
            tool=tool,
            rule=decision.rule,
            reason=decision.reason,
            command=decision.command,
            policy_version=version,
            call_id=request.call_id,
        )

    def _cwd(self, cwd: str | None) -> str:
        if not cwd:
            return self.workspace
        return posixpath.normpath(posixpath.join(self.workspace, cwd))

    def _record(self, ruling: Ruling, request: AuthorizeRequest) -> None:
        if self.record is None:
            return
        try:
            self.record(ruling, request)
        except Exception:
            # The decision stands whether or not its audit event could be written.
            log.exception("could not record a policy decision for tool %r", ruling.tool)

    # --- approvals --------------------------------------------------------------

    def _hold(self, ruling: Ruling, request: AuthorizeRequest) -> Ruling:
        approval_id = uuid.uuid4().hex
        ruling = msgspec.structs.replace(ruling, approval_id=approval_id)
        bundle = self.bundle
        role_engine = self.role_engine
        if role_engine is not None and ruling.policy_version == self.role_version:
            bundle = role_engine.compiled.bundle  # the release's policy asked for the approval
        timeout = bundle.settings.approval_timeout_seconds if bundle is not None else 0.0
        loop = asyncio.get_running_loop()
        timer = loop.call_later(max(timeout, 0.0), self._expire, approval_id)
        self._pending[approval_id] = _Pending(ruling, request, loop.create_future(), timer, timeout)
        log.warning(
            "tool %r waits for approval %s (%s): %s", ruling.tool, approval_id, ruling.rule, ruling.reason
        )
        return ruling

    def _expire(self, approval_id: str) -> None:
        pending = self._pending.get(approval_id)
        if pending is not None:
            reason = f"no one approved it within {pending.timeout:g} s ({pending.ruling.reason})"
            self.resolve(approval_id, approved=False, by="timeout", reason=reason)

    def timeout_of(self, approval_id: str) -> float | None:
        pending = self._pending.get(approval_id)
        return pending.timeout if pending is not None else None

    def pending(self) -> list[Ruling]:
        return [p.ruling for p in self._pending.values()]

    def resolve(self, approval_id: str, *, approved: bool, by: str, reason: str = "") -> Ruling | None:
        """Settle a pending approval and record the outcome; None if it is not pending here."""
        pending = self._pending.pop(approval_id, None)
        if pending is None:
            return None
        pending.timer.cancel()
        if by in ("timeout", "quarantine"):
            text = reason
        else:
            text = f"{'approved' if approved else 'rejected'} by {by}" + (f": {reason}" if reason else "")
        final = msgspec.structs.replace(
            pending.ruling, decision="allow" if approved else "deny", reason=text, decided_by=by
        )
        self._settled[approval_id] = final
        while len(self._settled) > SETTLED_KEPT:
            self._settled.popitem(last=False)
        if not pending.future.done():
            pending.future.set_result(final)
        self._record(final, pending.request)
        return final

    async def settle(self, ruling: Ruling) -> Ruling:
        """The final ruling of a require_approval one (waits for it); others are returned as they are."""
        if ruling.final or ruling.approval_id is None:
            return ruling
        return await self.approval(ruling.approval_id, None) or ruling

    async def approval(self, approval_id: str, wait: float | None = 0.0) -> Ruling | None:
        """The state of an approval: final once decided, require_approval while pending; None if unknown."""
        settled = self._settled.get(approval_id)
        if settled is not None:
            return settled
        pending = self._pending.get(approval_id)
        if pending is None:
            return None
        if wait is None or wait > 0:
            # Shielded: a waiter that goes away must not cancel the approval itself.
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(asyncio.shield(pending.future), wait)
        return pending.ruling

    def close(self) -> None:
        """Deny what still waits for a person: nobody will be able to answer it."""
        for approval_id in list(self._pending):
            self.resolve(
                approval_id,
                approved=False,
                by="shutdown",
                reason="the node agent stopped before anyone approved it",
            )

    # --- the local socket's endpoint ------------------------------------------

    async def authorize(
        self, body: Mapping[str, Any], interim: Callable[[dict[str, Any]], None] | None = None
    ) -> dict[str, Any]:
        """Answer one authorize request (SDK line or HTTP body); raises BadRequest."""
        request = parse_request(body)
        ruling = self.decide(request)
        if not ruling.final and ruling.approval_id is not None:
            answer = ruling.answer()
            answer["timeout_seconds"] = self.timeout_of(ruling.approval_id)
            if not request.wait:
                return answer
            if interim is not None:
                interim(answer)
            ruling = await self.settle(ruling)
        return ruling.answer()

    async def approval_state(self, approval_id: str, wait: float) -> dict[str, Any] | None:
        ruling = await self.approval(approval_id, min(max(wait, 0.0), MAX_APPROVAL_WAIT))
        return ruling.answer() if ruling is not None else None

    def status(self) -> dict[str, Any]:
        bundle = self.bundle
        return {
            "agent": self.identity.agent,
            "env": self.identity.env,
            "role": self.identity.role,
            "region": self.identity.region,
            "workspace": self.workspace,
            "policy_version": bundle.version if bundle is not None else None,
            "release_policy_version": self.role_version,
            "default": None if bundle is not None else self.default,
            "quarantined": self.quarantine,
            "pending_approvals": [p.answer() for p in self.pending()],
        }


def _command_of(request: AuthorizeRequest) -> str:
    command = request.args.get("command")
    return command if isinstance(command, str) else ""
