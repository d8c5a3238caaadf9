"""The node agent: one supervised agent process and its link to the gateway.

Everything the child says (stdout, stderr, SDK events) and everything that
happens to it (started, exited, restarting, stopped, heartbeats) becomes an
event, is written to the spool, and is sent by the ``UplinkClient`` whenever
the gateway is reachable. The child never waits for the gateway.

It is also the agent's policy enforcement point (``NodePolicy``): the SDK,
the shell shim and HTTP clients ask it on the local socket before a tool
call runs, it decides with the last bundle the gateway sent, and streams
every decision as a ``policy`` event.

Started with a role (``clawtrace run --role``), it has no command of its
own: it runs the release the gateway deploys for its environment and role
(``Deployer``), with that release's policy and tool hooks on top.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final, TypeVar

import msgspec
import psutil

from clawtrace.node import shim
from clawtrace.node.deploy import Deployer, Prepared
from clawtrace.node.fetch import ReleaseFetcher
from clawtrace.node.gate import HookedPolicy
from clawtrace.node.hooks import DEFAULT_TIMEOUT, RecentCalls, ToolHooks
from clawtrace.node.local import SOCKET_ENV, LocalServer, PolicyEndpoint
from clawtrace.node.policy import AuthorizeRequest, DefaultVerdict, NodePolicy, Ruling, bundle_from_payload
from clawtrace.node.release_store import ReleaseStore
from clawtrace.node.secrets import NODE_CREDENTIALS
from clawtrace.node.spool import Spool
from clawtrace.node.supervisor import (
    Backoff,
    LifecycleChange,
    RestartPolicy,
    Stream,
    Supervisor,
)
from clawtrace.policy.bundle import PolicyError
from clawtrace.policy.engine import AgentIdentity
from clawtrace.protocol.client import RefusedError, UplinkClient
from clawtrace.protocol.messages import (
    Command,
    Envelope,
    Event,
    Heartbeat,
    Hello,
    Lifecycle,
    Log,
    PolicyDecision,
    ToolCall,
    ToolResult,
    Welcome,
    utc_now,
)
from clawtrace.protocol.tls import context_for

log = logging.getLogger("clawtrace.node.agent")

SESSION_ENV: Final = "CLAWTRACE_SESSION"
AGENT_ENV: Final = "CLAWTRACE_AGENT"
# Tells the SDK to ask before every tool call (the value is "enforce").
POLICY_ENV: Final = "CLAWTRACE_POLICY"
ROLE_LABEL: Final = "role"
SHIM_DIR: Final = "shell-shims"
# Secrets of the node agent that the supervised (and possibly misbehaving)
# agent process has no business reading.
SCRUBBED_ENV: Final = ("CLAWTRACE_TOKEN",)
# With --role the node agent reads Vault for the release's secrets itself, so
# its Vault token is its own credential too (VAULT_TOKEN among them).
SCRUBBED_ENV_WITH_ROLE: Final = tuple(sorted({*SCRUBBED_ENV, *NODE_CREDENTIALS}))
# Kinds the agent process may report itself. Heartbeats and lifecycle
# changes are the node agent's own observations, and policy decisions are the
# audit trail of the enforcement point: an agent must not be able to forge them.
SDK_KINDS: Final = frozenset({"log", "thought", "llm_call", "tool_call", "tool_result"})
# Keeps any one event well under the gateway's 1 MiB frame limit, even
# after JSON escaping, so one huge tool output cannot wedge the spool.
MAX_FIELD_CHARS: Final = 64 * 1024
MAX_EVENT_BYTES: Final = 900 * 1024
PREVIEW_CHARS: Final = 4096
CHILD_FILE: Final = "child.json"
QUARANTINE_FILE: Final = "quarantine.json"
# A child in these states is alive but hung: the node agent stops vouching
# for it with heartbeats, so that DeadNode fires and a restart can follow.
_HUNG_STATES: Final = frozenset({psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP, psutil.STATUS_ZOMBIE})

E = TypeVar("E", bound=Envelope)

_json: Final = msgspec.json.Encoder()


@dataclass(slots=True)
class NodeConfig:
    agent: str
    env: str
    command: list[str]
    gateway: str
    spool_dir: Path
    token: str | None = None
    region: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    release: str | None = None
    heartbeat_interval: float = 10.0
    restart: RestartPolicy = RestartPolicy.ON_FAILURE
    backoff: Backoff = field(default_factory=Backoff)
    stop_timeout: float = 10.0
    drain_timeout: float = 5.0
    # Longest pause between reconnect attempts (jittered by the client):
    # bounds how long a recovered gateway waits for this agent's backlog.
    reconnect_max: float = 10.0
    echo: bool = True
    cwd: str | None = None
    # Paths inside it count as the agent's own (default: the child's cwd).
    workspace: str | None = None
    # Decision when no bundle has arrived yet.
    policy_default: DefaultVerdict = "allow"
    # Put the sh/bash shims first on the child's PATH.
    shell_policy: bool = False
    # Follow the releases the gateway deploys for this role (command is then empty).
    role: str | None = None
    # Seconds a tool hook gets to answer (after that it is killed: a deny).
    hook_timeout: float = DEFAULT_TIMEOUT
    # A private CA (PEM) trusted besides the system's for a wss:// gateway (protocol/tls.py).
    ca_file: str | None = None
    # A failed deploy is tried again after this long, doubling up to deploy_retry_max.
    deploy_retry_initial: float = 30.0
    deploy_retry_max: float = 300.0


class GatewayRefused(Exception):
    """The gateway refused this node agent's credential; retrying will not help."""


def _hung(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() in _HUNG_STATES
    except psutil.Error:
        return False


class _Usage:
    """CPU % and RSS of a process tree, summed over the child and its descendants."""

    def __init__(self) -> None:
        # psutil computes cpu_percent against the previous call on the same
        # Process object, so the objects are kept between samples.
        self._procs: dict[int, psutil.Process] = {}

    def sample(self, pid: int) -> tuple[float, int] | None:
        try:
            root = psutil.Process(pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            return None
        cpu = 0.0
        rss = 0
        seen: dict[int, psutil.Process] = {}
        for proc in tree:
            cached = self._procs.get(proc.pid)
            if cached is None or cached != proc:
                cached = proc
            try:
                with cached.oneshot():
                    cpu += cached.cpu_percent(None)
                    rss += cached.memory_info().rss
            except psutil.Error:
                continue
            seen[proc.pid] = cached
        self._procs = seen
        return round(cpu, 1), rss

    def reset(self) -> None:
        self._procs.clear()


def _truncate_text(value: str) -> str:
    cut = len(value) - MAX_FIELD_CHARS
    return value[:MAX_FIELD_CHARS] + f" ...[{cut} chars truncated]"


def bound_event(event: E) -> E | None:
    """Cut oversized fields so the event fits in a frame; None if it cannot."""
    changes: dict[str, Any] = {}
    for name in event.__struct_fields__:
        value = getattr(event, name)
        if isinstance(value, str):
            if len(value) > MAX_FIELD_CHARS:
                changes[name] = _truncate_text(value)
        elif isinstance(value, dict | list) and value:
            raw = _json.encode(value)
            if len(raw) > MAX_FIELD_CHARS:
                preview = raw[:PREVIEW_CHARS].decode("utf-8", errors="ignore")
                note = f"[{len(raw)} bytes of JSON truncated] {preview}"
                changes[name] = {"_truncated": note} if isinstance(value, dict) else note
    if changes:
        event = msgspec.structs.replace(event, **changes)
    if len(_json.encode(event)) > MAX_EVENT_BYTES:
        return None
    return event


def _parse_ts(value: object) -> datetime | None:
    if value is None:
        return None
    try:
        ts = msgspec.convert(value, datetime)
    except msgspec.ValidationError:
        return None
    return ts if ts.tzinfo is not None else None


class NodeAgent:
    """Supervises one agent process and streams what it does to the gateway."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.session = str(uuid.uuid4())
        # One TLS context for the uplink and release fetches (None for ws://).
        self._ssl = context_for(config.gateway, config.ca_file)
        self.spool: Spool | None = None
        self.client: UplinkClient | None = None
        self.supervisor: Supervisor | None = None
        self._usage = _Usage()
        self._echo = config.echo
        self._seen_commands: deque[str] = deque(maxlen=256)
        # Set by a quarantine command, kept across restarts of the node agent
        # until released: {"since": ..., "reason": ...}.
        self.quarantine: dict[str, Any] | None = self._load_quarantine()
        scrubbed = SCRUBBED_ENV_WITH_ROLE if config.role else SCRUBBED_ENV
        self._base_env = {k: v for k, v in os.environ.items() if k not in scrubbed}
        identity = AgentIdentity(
            agent=config.agent,
            env=config.env,
            role=config.labels.get(ROLE_LABEL) or config.role or "default",
            region=config.region,
        )
        self.policy = NodePolicy(
            identity,
            spool_dir=config.spool_dir,
            workspace=config.workspace or config.cwd or os.getcwd(),
            home=os.environ.get("HOME", ""),
            env=self._base_env,
            default=config.policy_default,
            record=self._record_ruling,
        )
        if self.quarantine is not None:
            self.policy.set_quarantine(str(self.quarantine.get("reason") or "quarantined"))
        self.deployer: Deployer | None = None
        self._recent_calls = RecentCalls()
        endpoint: PolicyEndpoint = self.policy
        if config.role:
            self.deployer = Deployer(
                agent=config.agent,
                env_name=config.env,
                role=config.role,
                fetcher=ReleaseFetcher(config.gateway, config.token, env=config.env, ssl_context=self._ssl),
                store=ReleaseStore(config.spool_dir),
                policy=self.policy,
                node_env=os.environ,
                child_env=self._base_env,
                report=self._report_deploy,
                on_running=self._on_release_running,
                cwd=config.cwd,
                hook_timeout=config.hook_timeout,
                retry_initial=config.deploy_retry_initial,
                retry_max=config.deploy_retry_max,
            )
            endpoint = HookedPolicy(self.policy, self.deployer.hooks, self._record_hook_denial)
        self.local = LocalServer(self._on_sdk_messages, prefer_dir=str(config.spool_dir), policy=endpoint)
        self.shims: shim.ShellShims | None = None
        self.sdk_rejected = 0
        self.events_dropped = 0
        self._draining = False
        self._stop_draining = asyncio.Event()

    # --- emitting events ----------------------------------------------------

    def _stamp(self, cls: type[E], **fields: Any) -> E:
        # seq=1 is a placeholder: the spool assigns the real one.
        return cls(seq=1, ts=utc_now(), session=self.session, **fields)

    def emit(self, events: list[Event]) -> None:
        """Write events to the spool (durably) and wake the sender."""
        spool = self.spool
        if spool is None or not events:
            return
        try:
            spool.append(events)
        except Exception:
            # Disk full or the spool file gone: the child must keep running,
            # so count the loss and say so instead of crashing.
            first = self.events_dropped == 0
            self.events_dropped += len(events)
            if first or self.events_dropped % 1000 < len(events):
                log.exception(
                    "could not write events to the spool in %s; %d lost so far",
                    self.config.spool_dir,
                    self.events_dropped,
                )
            return
        if self.client is not None:
            self.client.notify()

    def _on_lines(self, stream: Stream, lines: list[str]) -> None:
        if self._echo:
            out = sys.stdout if stream == "stdout" else sys.stderr
            try:
                out.write("".join(line + "\n" for line in lines))
                out.flush()
            except (OSError, ValueError):
                self._echo = False
        self.emit([self._stamp(Log, stream=stream, line=line) for line in lines])

    def _on_lifecycle(self, change: LifecycleChange) -> None:
        if change.state == "started" and change.pid is not None:
            self._usage.reset()
            self._usage.sample(change.pid)  # primes cpu_percent for the first heartbeat
            self._remember_child(change.pid)
        elif change.state == "exited":
            self._forget_child()
        self.emit(
            [self._stamp(Lifecycle, state=change.state, exit_code=change.exit_code, reason=change.reason)]
        )

    def _on_sdk_messages(self, messages: list[dict[str, Any]]) -> None:
        events: list[Event] = []
        for message in messages:
            event = self._from_sdk(message)
            if event is not None:
                events.append(event)
        self.emit(events)
        hooks = self.deployer.hooks() if self.deployer is not None else None
        if hooks:
            self._tell_hooks(hooks, events)

    def _tell_hooks(self, hooks: ToolHooks, events: list[Event]) -> None:
        """Run the release's after_tool_call hooks for the results the agent reported."""
        for event in events:
            if isinstance(event, ToolCall):
                self._recent_calls.remember(event.call_id, event.tool, event.args)
            elif isinstance(event, ToolResult):
                tool, args = self._recent_calls.take(event.call_id)
                hooks.after(
                    tool, args, event.call_id, ok=event.ok, error=event.error, duration_ms=event.duration_ms
                )

    def _from_sdk(self, message: dict[str, Any]) -> Event | None:
        kind = message.get("kind")
        if kind not in SDK_KINDS:
            allowed = ", ".join(sorted(SDK_KINDS))
            self._reject_sdk(f"kind {kind!r} cannot be sent by the SDK (allowed: {allowed})")
            return None
        # The SDK stamps ts when the call happened; the envelope's other
        # fields are the node agent's to assign.
        fields = {k: v for k, v in message.items() if k not in ("seq", "session", "agent", "received", "ts")}
        fields["ts"] = _parse_ts(message.get("ts")) or utc_now()
        fields["seq"] = 1
        fields["session"] = self.session
        try:
            event: Event = msgspec.convert(fields, Event)
        except msgspec.ValidationError as exc:
            self._reject_sdk(f"invalid {kind} event: {exc}")
            return None
        bounded = bound_event(event)
        if bounded is None:
            self._reject_sdk(f"{kind} event too large even after truncation")
        return bounded

    def _reject_sdk(self, why: str) -> None:
        self.sdk_rejected += 1
        # The first few tell the developer what is wrong; after that, a
        # buggy agent must not flood the node agent's own log.
        if self.sdk_rejected <= 10 or self.sdk_rejected % 1000 == 0:
            log.warning("ignoring an SDK message (%d so far): %s", self.sdk_rejected, why)

    # --- child bookkeeping ----------------------------------------------------

    def _child_env(self) -> Mapping[str, str]:
        self.session = str(uuid.uuid4())
        env = dict(self._base_env)
        # A Python child writing to a pipe would otherwise buffer its output
        # in 8 KiB blocks and its lines would arrive late.
        env.setdefault("PYTHONUNBUFFERED", "1")
        if self.local.path is not None:
            env[SOCKET_ENV] = self.local.path
            env[POLICY_ENV] = "enforce"
        if self.deployer is not None:
            # The release's [env], secrets and CLAWTRACE_RELEASE*; the node agent's own variables win.
            env.update(self.deployer.child_env())
        if self.shims is not None:
            env.update(self.shims.child_env(env))
        env[SESSION_ENV] = self.session
        env[AGENT_ENV] = self.config.agent
        return env

    def _remember_child(self, pid: int) -> None:
        try:
            created = psutil.Process(pid).create_time()
        except psutil.Error:
            return
        path = self.config.spool_dir / CHILD_FILE
        with contextlib.suppress(OSError):
            path.write_text(json.dumps({"pid": pid, "create_time": created}))

    def _forget_child(self) -> None:
        with contextlib.suppress(OSError):
            (self.config.spool_dir / CHILD_FILE).unlink()

    def _reap_orphan(self) -> None:
        """Stop a child left running by a node agent that was killed (kill -9)."""
        path = self.config.spool_dir / CHILD_FILE
        try:
            info = json.loads(path.read_text())
            pid, created = int(info["pid"]), float(info["create_time"])
        except (OSError, ValueError, KeyError, TypeError):
            return
        try:
            proc = psutil.Process(pid)
            # Same pid and start time: really our old child, not a reused pid.
            if abs(proc.create_time() - created) > 0.01:
                return
        except psutil.Error:
            return
        finally:
            self._forget_child()
        log.warning("stopping pid %d, left running by a previous node agent for this spool", pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        try:
            proc.wait(self.config.stop_timeout)
        except psutil.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        except psutil.Error:
            pass

    # --- gateway commands ---------------------------------------------------

    async def _on_command(self, command: Command) -> None:
        # Runs inside the client's receive loop: must return at once (acks
        # are read by the same loop), so it only flags the supervisor.
        if command.id in self._seen_commands:
            return
        self._seen_commands.append(command.id)
        supervisor = self.supervisor
        why = f"{command.action} command {command.id}" + (f": {command.reason}" if command.reason else "")
        if command.action in ("quarantine", "release"):
            self._set_quarantine(command.action == "quarantine", why)
            return
        if command.action == "policy":
            self._apply_policy(command.payload, why)
            return
        if command.action == "approval":
            self._on_approval(command.payload, why)
            return
        if command.action == "deploy":
            if self.deployer is None:
                log.warning(
                    "ignoring %s: this node agent runs its own command; start it with --role ROLE "
                    "(and no command) to run the releases the gateway deploys",
                    why,
                )
            else:
                self.deployer.request(command.payload, why)
            return
        if supervisor is None:
            return
        if command.action == "restart":
            log.info("gateway asked for a restart (%s)", why)
            supervisor.restart(why)
        elif command.action == "stop":
            log.info("gateway asked for a stop (%s)", why)
            supervisor.stop(why)
        else:
            log.warning("ignoring %s: this node agent does not support %r commands yet", why, command.action)

    def _on_welcome(self, welcome: Welcome) -> None:
        # The gateway's record wins: a quarantine or a release sent while this
        # node agent was offline takes effect on connect.
        if welcome.quarantine is not None:
            self._set_quarantine(True, welcome.quarantine)
        elif self.quarantine is not None:
            self._set_quarantine(False, "not quarantined at the gateway")

    def _load_quarantine(self) -> dict[str, Any] | None:
        try:
            value = json.loads((self.config.spool_dir / QUARANTINE_FILE).read_text())
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def _set_quarantine(self, on: bool, why: str) -> None:
        """Record the quarantine (tool policy deny-all, enforced by the policy engine)."""
        path = self.config.spool_dir / QUARANTINE_FILE
        if on == (self.quarantine is not None):
            return  # told again on reconnect: nothing changes
        if on:
            log.warning("agent quarantined (%s): its tool calls are denied until released", why)
            self.quarantine = {"since": time.time(), "reason": why}
            with contextlib.suppress(OSError):
                path.write_text(json.dumps(self.quarantine))
            # The lifecycle event goes first: pending approvals it denies follow it.
            self.emit([self._stamp(Lifecycle, state="quarantined", reason=why)])
            self.policy.set_quarantine(why)
        else:
            log.warning("quarantine released (%s)", why)
            self.quarantine = None
            self.policy.set_quarantine(None)
            with contextlib.suppress(OSError):
                path.unlink()
            self.emit([self._stamp(Lifecycle, state="released", reason=why)])

    # --- releases ---------------------------------------------------------------------

    def _report_deploy(self, state: str, reason: str) -> None:
        # A reason lists every problem found: long, perhaps, but never more than a frame.
        event = bound_event(self._stamp(Lifecycle, state=state, reason=reason))
        if event is not None:
            self.emit([event])

    def _on_release_running(self, prepared: Prepared | None) -> None:
        """A new release runs (or none): say so in the next hello, and in a heartbeat now."""
        release = prepared.id if prepared is not None else None
        client = self.client
        if client is not None:
            client.hello = msgspec.structs.replace(client.hello, release=release)
        self.emit([self._heartbeat()])

    # --- tool policy --------------------------------------------------------------

    def _apply_policy(self, payload: Mapping[str, Any], why: str) -> None:
        previous = self.policy.version
        version = "(not a bundle)"
        try:
            bundle = bundle_from_payload(payload)
            version = bundle.version
            if bundle.version == previous and bundle.env == self.config.env:
                # The gateway sends its bundle on every connect: the same version changes nothing.
                log.debug("policy bundle %s is already in force (%s)", previous, why)
                return
            self.policy.apply(bundle)
        except PolicyError as exc:
            keeping = f"keeping bundle {previous}" if previous else "no bundle is in force yet"
            problems = "; ".join(exc.problems)
            log.error("refused policy bundle %s (%s): %s; %s", version, why, problems, keeping)
            line = f"clawtrace: policy bundle {version} refused, {keeping}: {problems}"
            self.emit([self._stamp(Log, stream="stderr", line=line)])
            return
        log.info(
            "policy bundle %s for env %s in force (was %s; %s)", version, bundle.env, previous or "none", why
        )

    def _load_saved_policy(self) -> None:
        try:
            bundle = self.policy.load_saved()
        except PolicyError as exc:
            problems = "; ".join(exc.problems)
            fallback = (
                f"deciding with --policy-default {self.policy.default} until the gateway sends a bundle"
            )
            log.error("cannot use the saved policy bundle: %s; %s", problems, fallback)
            line = f"clawtrace: saved policy bundle refused, {fallback}: {problems}"
            self.emit([self._stamp(Log, stream="stderr", line=line)])
            return
        if bundle is not None:
            log.info("policy bundle %s (saved by an earlier run) in force", bundle.version)

    def _on_approval(self, payload: Mapping[str, Any], why: str) -> None:
        approval_id = payload.get("approval_id")
        approved = payload.get("approved")
        if not isinstance(approval_id, str) or not isinstance(approved, bool):
            log.warning(
                "ignoring %s: the payload must be %s",
                why,
                '{"approval_id": str, "approved": bool, "by": str, "reason": str}',
            )
            return
        by = payload.get("by")
        reason = payload.get("reason")
        final = self.policy.resolve(
            approval_id,
            approved=approved,
            by=by if isinstance(by, str) and by else "unknown",
            reason=reason if isinstance(reason, str) else "",
        )
        if final is None:
            log.warning(
                "ignoring %s: approval %s is not pending here (already decided, timed out, or from before "
                "this node agent started)",
                why,
                approval_id,
            )
        else:
            log.info("approval %s: %s (%s)", approval_id, final.decision, final.reason)

    def _record_hook_denial(self, ruling: Ruling, request: AuthorizeRequest) -> None:
        # The policy's allow was recorded with the tool_call already: only the refusal follows.
        try:
            self._record_ruling(ruling, request, call_recorded=True)
        except Exception:
            log.exception("could not record a tool hook's refusal of %r", ruling.tool)

    def _record_ruling(
        self, ruling: Ruling, request: AuthorizeRequest, *, call_recorded: bool = False
    ) -> None:
        """A decision as events: the policy event, and for a reported call its tool_call and refusal."""
        events: list[Event] = []
        reported = request.report and ruling.call_id is not None
        if reported and ruling.decided_by is None and not call_recorded:
            call = self._stamp(ToolCall, call_id=ruling.call_id, tool=ruling.tool, args=request.args)
            ts = _parse_ts(request.ts)
            events.append(msgspec.structs.replace(call, ts=ts) if ts is not None else call)
            if self.deployer is not None and ruling.call_id is not None:
                self._recent_calls.remember(ruling.call_id, ruling.tool, request.args)
        events.append(
            self._stamp(
                PolicyDecision,
                decision=ruling.decision,
                tool=ruling.tool,
                rule=ruling.rule,
                reason=ruling.reason,
                call_id=ruling.call_id,
                command=ruling.command or None,
                policy_version=ruling.policy_version,
                approval_id=ruling.approval_id,
                decided_by=ruling.decided_by,
            )
        )
        if reported and ruling.decision == "deny":
            started = _parse_ts(request.ts)
            waited = (utc_now() - started).total_seconds() * 1000 if started is not None else 0.0
            error = (
                f"denied by policy: {ruling.rule}: {ruling.reason}"
                if ruling.rule
                else f"denied by policy: {ruling.reason}"
            )
            events.append(
                self._stamp(
                    ToolResult,
                    call_id=ruling.call_id,
                    ok=False,
                    duration_ms=round(max(waited, 0.0), 3),
                    error=error,
                )
            )
        bounded = [bound_event(event) for event in events]
        self.emit([event for event in bounded if event is not None])

    # --- loops ----------------------------------------------------------------

    async def _heartbeats(self) -> None:
        interval = self.config.heartbeat_interval
        while True:
            await asyncio.sleep(interval)
            pid = self.supervisor.pid if self.supervisor is not None else None
            if pid is not None and _hung(pid):
                log.warning("agent process %d is stopped or a zombie: no heartbeat", pid)
                continue
            self.emit([self._heartbeat(pid)])

    def _heartbeat(self, pid: int | None = None) -> Heartbeat:
        usage = self._usage.sample(pid) if pid is not None else None
        # Only a node agent following a role's releases reports one: it is the one that knows.
        release = self.deployer.running_id if self.deployer is not None else None
        if usage is None:
            return self._stamp(Heartbeat, release=release)
        cpu, rss = usage
        return self._stamp(Heartbeat, cpu_percent=cpu, rss_bytes=rss, release=release)

    async def _uplink(self, client: UplinkClient) -> None:
        # client.run() only returns on close(); anything unexpected is logged
        # and the link restarted, because the child must not notice.
        while True:
            try:
                await client.run()
                return
            except RefusedError:
                raise
            except Exception:
                log.exception("gateway link failed unexpectedly; reconnecting in 5 s")
                await asyncio.sleep(5)

    def _on_shutdown_signal(self, supervisor: Supervisor, signum: int) -> None:
        if self._draining:
            # Asked again while only waiting for acks: the spool keeps the
            # rest, so there is no reason to make the user wait.
            self._stop_draining.set()
            return
        supervisor.shutdown(signum)

    def _install_signals(self, supervisor: Supervisor) -> list[int]:
        loop = asyncio.get_running_loop()
        installed: list[int] = []
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_shutdown_signal, supervisor, signum)
            installed.append(signum)
        for signum in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
            loop.add_signal_handler(signum, supervisor.forward, signum)
            installed.append(signum)
        return installed

    async def run(self) -> int:
        """Run until the child is done for good; returns the exit status to use.

        Raises ``GatewayRefused`` (after stopping the child) when the gateway
        rejects the credential, ``SpoolError`` when the spool is unusable and
        ``SpawnError`` when the command cannot be started.
        """
        cfg = self.config
        self.spool = spool = Spool(cfg.spool_dir, cfg.agent)
        installed: list[int] = []
        tasks: list[asyncio.Task[Any]] = []
        loop = asyncio.get_running_loop()
        try:
            self._reap_orphan()
            self._load_saved_policy()
            socket_path = await self.local.start()
            if cfg.shell_policy:
                self.shims = shim.install(
                    cfg.spool_dir / SHIM_DIR, socket_path, path=self._base_env.get("PATH", os.defpath)
                )
                log.info(
                    "shell shims for %s in %s",
                    ", ".join(self.shims.shells) or "no shell",
                    self.shims.directory,
                )
            release = cfg.release
            if self.deployer is not None:
                # Offline-first: the release that ran last is started again at once, so say so.
                current = self.deployer.store.current()
                release = current.id if current is not None else None
            hello = Hello(
                agent=cfg.agent,
                env=cfg.env,
                region=cfg.region,
                labels=cfg.labels,
                release=release,
                role=cfg.role,
            )
            self.client = client = UplinkClient(
                cfg.gateway,
                hello,
                spool,
                token=cfg.token,
                on_command=self._on_command,
                on_welcome=self._on_welcome,
                reconnect_max=cfg.reconnect_max,
                ssl_context=self._ssl,
            )
            self.supervisor = supervisor = Supervisor(
                cfg.command,
                on_lines=self._on_lines,
                on_lifecycle=self._on_lifecycle,
                env=self._child_env,
                cwd=cfg.cwd,
                policy=cfg.restart,
                backoff=cfg.backoff,
                stop_timeout=cfg.stop_timeout,
                # With a role, the releases come and go; the node agent stays.
                idle_when_done=self.deployer is not None,
            )
            installed = self._install_signals(supervisor)
            uplink = asyncio.create_task(self._uplink(client), name="clawtrace-uplink")
            child = asyncio.create_task(supervisor.run(), name="clawtrace-supervisor")
            heartbeats = asyncio.create_task(self._heartbeats(), name="clawtrace-heartbeat")
            tasks = [uplink, child, heartbeats]
            if self.deployer is not None:
                tasks.append(asyncio.create_task(self._follow_releases(supervisor), name="clawtrace-deploy"))
            await asyncio.wait({uplink, child}, return_when=asyncio.FIRST_COMPLETED)
            if not child.done():
                # The uplink ended first: only a refused credential does that.
                exc = uplink.exception()
                reason = str(exc) if exc is not None else "connection closed"
                log.error("gateway %s refused this node agent: %s; stopping the child", client.url, reason)
                supervisor.shutdown(signal.SIGTERM)
                await child
                raise GatewayRefused(reason)
            status = child.result()
            # The child is gone for good: nothing left to beat for.
            heartbeats.cancel()
            await self._drain(client, spool)
            return status
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if self.deployer is not None:
                await self.deployer.close()
            # Still-pending approvals are denied (and recorded) while the spool is open.
            self.policy.close()
            if self.client is not None:
                with contextlib.suppress(Exception):
                    await self.client.close()
            await self.local.close()
            spool.close()

    async def _follow_releases(self, supervisor: Supervisor) -> None:
        deployer = self.deployer
        assert deployer is not None
        # Like the uplink: the agent must not notice a bug here, so log it and carry on.
        while True:
            try:
                await deployer.run(supervisor)
                return
            except Exception:
                log.exception("following the gateway's releases failed unexpectedly; resuming in 5 s")
                await asyncio.sleep(5)

    async def _drain(self, client: UplinkClient, spool: Spool) -> None:
        """Give the gateway a few seconds to ack what is spooled; the rest waits on disk."""
        last = spool.last_seq
        if client.acked_seq >= last or spool.count() == 0:
            return
        self._draining = True
        acked = asyncio.ensure_future(client.wait_acked(last, self.config.drain_timeout))
        interrupted = asyncio.ensure_future(self._stop_draining.wait())
        await asyncio.wait({acked, interrupted}, return_when=asyncio.FIRST_COMPLETED)
        interrupted.cancel()
        if not acked.done():
            acked.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await acked
        if client.acked_seq < last:
            log.warning(
                "%d events not yet acknowledged by the gateway; they stay in %s and are sent "
                "the next time this agent runs",
                spool.count(),
                self.config.spool_dir,
            )
