"""Tool policy on the gateway: bundles per environment, ``/v1/authorize``, the audit of decisions, approvals.

An environment's bundles are versioned by content and kept with their
history in the store; the active one is pushed as a ``policy`` command to
every connected node agent of the environment when it is applied or rolled
back to, and right after each ``welcome`` (node agents ignore a version they
already hold). Policy decisions the agents report are mirrored into the
audit log, and ``require_approval`` decisions become approvals a person
answers through the API.

In scale mode each gateway pushes to the agents it holds: the one that
applies a bundle announces it, the others reload it from the store and push
it to theirs (and look at the store every ``RECONCILE_SECONDS`` in case a
notice was lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import posixpath
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from clawtrace.alerts.model import AuditEntry
from clawtrace.gateway.cluster import Cluster, Solo
from clawtrace.gateway.commands import CommandService
from clawtrace.gateway.pipeline import Pipeline
from clawtrace.gateway.writer import StoreWriter
from clawtrace.policy import (
    AgentIdentity,
    BundleSettings,
    CompiledBundle,
    Decision,
    PolicyBundle,
    PolicyEngine,
    PolicyError,
    compile_bundle,
)
from clawtrace.policy.engine import QUARANTINE_RULE
from clawtrace.protocol import Command, PolicyDecision
from clawtrace.store import AgentInfo, Store
from clawtrace.store.base import ApprovalRecord, PolicyRecord

log = logging.getLogger("clawtrace.gateway.policies")

# The rule of decisions made where an environment has no bundle (the node agent's default too).
NO_BUNDLE_RULE = "no-bundle"
# The rule of decisions made while the stored bundle does not compile (after an upgrade, say).
INVALID_BUNDLE_RULE = "invalid-bundle"
# For /v1/authorize callers that do not say: the agent's home (for ``~``), and no
# workspace at all, so every path counts as outside it (fail closed).
DEFAULT_HOME = "/home/agent"
DEFAULT_WORKSPACE = ""
ROLE_LABEL = "role"
DEFAULT_ROLE = "default"
ENGINE_CACHE_SIZE = 4096
# In scale mode: how often a gateway compares its active bundles with the store's.
RECONCILE_SECONDS = 10.0
NOTICE_TOPIC = "policy"

_bundle_decoder = msgspec.json.Decoder(PolicyBundle)


@dataclass(frozen=True, slots=True)
class ActivePolicy:
    record: PolicyRecord
    bundle: PolicyBundle
    # None when the stored bundle no longer compiles; ``problems`` say why.
    compiled: CompiledBundle | None
    problems: tuple[str, ...] = ()
    payload: dict[str, Any] = field(default_factory=dict)

    @property
    def version(self) -> str:
        return self.bundle.version


@dataclass(frozen=True, slots=True)
class ApplyResult:
    env: str
    version: str
    previous: str | None
    changed: bool
    delivered: tuple[str, ...] = ()
    not_delivered: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Authorization:
    decision: Decision
    policy_version: str | None
    identity: AgentIdentity


class ApprovalConflict(Exception):
    """An approval that cannot be answered now; ``code`` is the API error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class UnknownVersion(LookupError):
    pass


@dataclass(slots=True)
class _AuditBatch:
    future: asyncio.Future[None]
    entries: list[AuditEntry] = field(default_factory=list)
    opened: list[ApprovalRecord] = field(default_factory=list)
    # (approval id, state, decided_by, decided_at, reason)
    closed: list[tuple[str, str, str, float, str | None]] = field(default_factory=list)

    def write(self, store: Store) -> None:
        store.add_audit(self.entries)
        # Opened before closed: a frame may hold both a require_approval and its outcome.
        store.add_approvals(self.opened)
        for approval_id, state, by, at, reason in self.closed:
            store.decide_approval(approval_id, state, by, at, reason)


def bundle_json(bundle: PolicyBundle) -> str:
    return msgspec.json.encode(bundle).decode()


def decode_bundle(text: str) -> PolicyBundle:
    return _bundle_decoder.decode(text)


class PolicyService:
    def __init__(
        self,
        pipeline: Pipeline,
        writer: StoreWriter,
        commands: CommandService,
        clock: Callable[[], float] = time.time,
        engine_cache_size: int = ENGINE_CACHE_SIZE,
        cluster: Cluster | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.writer = writer
        self.commands = commands
        self.cluster: Cluster = cluster or Solo()
        self.clock = clock
        self.active: dict[str, ActivePolicy] = {}
        self._engine_cache_size = engine_cache_size
        self._engines: OrderedDict[tuple[str, ...], PolicyEngine] = OrderedDict()
        # Applies and rollbacks one at a time, pushes included, so agents get versions in order.
        self._apply_lock = asyncio.Lock()
        self._approval_lock = asyncio.Lock()
        # (env, version) -> approval timeout, for versions this process has seen.
        self._timeouts: dict[tuple[str, str], float] = {}
        self._batch: _AuditBatch | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._reconciler: asyncio.Task[None] | None = None

    @property
    def store(self) -> Store:
        return self.pipeline.store

    # --- bundles -----------------------------------------------------------

    def load(self) -> None:
        """Read every environment's active bundle (at start, before agents connect)."""
        for record in self.store.active_policies():
            self._set_active(record, *_compile_stored(record))

    async def start(self) -> None:
        """Follow bundles other gateways apply (scale mode)."""
        await self.cluster.listen(NOTICE_TOPIC, self._heard)
        if self.cluster.shared:
            self._reconciler = asyncio.create_task(self._reconcile_loop(), name="clawtrace-policy-reconcile")

    async def close(self) -> None:
        if self._reconciler is not None:
            self._reconciler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconciler

    async def _heard(self, data: bytes) -> None:
        await self.reconcile(data.decode())

    async def _reconcile_loop(self) -> None:
        while True:
            await asyncio.sleep(RECONCILE_SECONDS)
            try:
                await self.reconcile()
            except Exception as exc:
                log.warning("comparing active policy bundles with the store failed: %s", exc)

    async def reconcile(self, env: str | None = None) -> None:
        """Adopt active bundles another gateway applied (of ``env``, or all) and push them to our agents."""
        records = await asyncio.to_thread(self.store.active_policies)
        for record in records:
            if env is not None and record.env != env:
                continue
            current = self.active.get(record.env)
            if current is not None and current.version == record.version:
                continue
            compiled = await asyncio.to_thread(_compile_stored, record)
            async with self._apply_lock:
                current = self.active.get(record.env)
                if current is not None and current.version == record.version:
                    continue
                self._set_active(record, *compiled)
                delivered, missed = await self._push(record.env)
            log.info(
                "policy bundle %s of %s applied elsewhere: pushed to %d agents here (%d not reached)",
                record.version,
                record.env,
                len(delivered),
                len(missed),
            )

    def _set_active(
        self,
        record: PolicyRecord,
        bundle: PolicyBundle,
        compiled: CompiledBundle | None,
        problems: tuple[str, ...] = (),
    ) -> None:
        self.active[record.env] = ActivePolicy(
            record, bundle, compiled, problems, payload=msgspec.to_builtins(bundle)
        )
        self._timeouts[(bundle.env, bundle.version)] = bundle.settings.approval_timeout_seconds
        for key in [k for k in self._engines if k[0] == record.env]:
            del self._engines[key]

    def command_for(self, env: str) -> Command | None:
        """The ``policy`` command that brings a node agent of ``env`` up to date, if there is a bundle."""
        active = self.active.get(env)
        if active is None:
            return None
        return Command(
            id=secrets.token_hex(8), action="policy", reason=_push_reason(active), payload=active.payload
        )

    async def apply(
        self, env: str, files: dict[str, str], settings: BundleSettings, actor: str
    ) -> ApplyResult:
        """Validate, store as active, audit, push; raises PolicyError with every problem found."""
        bundle = PolicyBundle(env=env, files=files, settings=settings).with_version()
        compiled = await asyncio.to_thread(compile_bundle, bundle)
        return await self._activate(compiled, actor, "apply")

    async def rollback(self, env: str, version: str, actor: str) -> ApplyResult:
        """Make an earlier version active again.

        Raises UnknownVersion, or PolicyError if that version no longer compiles.
        """
        record = await asyncio.to_thread(self.store.find_policy, env, version)
        if record is None:
            raise UnknownVersion(version)
        compiled = await asyncio.to_thread(compile_bundle, decode_bundle(record.bundle))
        return await self._activate(compiled, actor, "rollback")

    async def _activate(self, compiled: CompiledBundle, actor: str, action: str) -> ApplyResult:
        bundle = compiled.bundle
        env = bundle.env
        async with self._apply_lock:
            current = self.active.get(env)
            previous = current.version if current is not None else None
            if previous == bundle.version:
                return ApplyResult(env, bundle.version, previous, changed=False)
            now = self.clock()
            record = PolicyRecord(
                env=env,
                version=bundle.version,
                bundle=bundle_json(bundle),
                applied_by=actor,
                applied_at=now,
                action=action,
                active=True,
            )
            await self.writer.call(lambda store: store.activate_policy(record))
            self._set_active(record, bundle, compiled)
            delivered, missed = await self._push(env)
            entry = AuditEntry(
                ts=now,
                env=env,
                actor=actor,
                action=f"{action}_policy",
                target=env,
                reason=bundle.settings.description or f"policy bundle {bundle.version}",
                result="ok",
                detail={
                    "version": bundle.version,
                    "previous": previous,
                    "files": sorted(bundle.files),
                    "delivered": len(delivered),
                    "not_delivered": list(missed),
                },
            )
            await self.writer.call(lambda store: store.add_audit([entry]))
        await self.cluster.announce(NOTICE_TOPIC, env.encode())
        return ApplyResult(env, bundle.version, previous, True, delivered, missed)

    async def _push(self, env: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Send the active bundle to the node agents of ``env`` connected here: (delivered, not delivered)."""
        active = self.active[env]
        targets = sorted(
            agent
            for agent, state in self.pipeline.agents.items()
            if state.link is not None and state.info.env == env
        )
        reason = _push_reason(active)
        results = await asyncio.gather(
            *(self.commands.send(agent, "policy", reason, active.payload) for agent in targets),
            return_exceptions=True,
        )
        delivered, missed = [], []
        for agent, result in zip(targets, results, strict=True):
            if isinstance(result, BaseException) or not result[1]:
                # It gets the bundle after its next welcome.
                missed.append(agent)
            else:
                delivered.append(agent)
        return tuple(delivered), tuple(missed)

    # --- decisions ---------------------------------------------------------

    def authorize(
        self,
        info: AgentInfo,
        tool: str,
        args: Mapping[str, Any],
        *,
        cwd: str | None = None,
        workspace: str = DEFAULT_WORKSPACE,
        home: str = DEFAULT_HOME,
    ) -> Authorization:
        """Decide one tool call for ``info`` the way its node agent would, with the gateway's state."""
        identity = AgentIdentity(
            agent=info.agent,
            env=info.env,
            role=info.labels.get(ROLE_LABEL) or DEFAULT_ROLE,
            region=info.region,
        )
        quarantine = self.pipeline.quarantined.get(info.agent)
        active = self.active.get(info.env)
        if active is None or active.compiled is None:
            if quarantine is not None:
                decision = Decision(
                    "deny", tool, QUARANTINE_RULE, f"the agent is quarantined: {quarantine.reason}"
                )
            elif active is None:
                decision = Decision(
                    "allow",
                    tool,
                    NO_BUNDLE_RULE,
                    f"environment {info.env!r} has no policy bundle:"
                    " every tool is allowed until one is applied",
                )
            else:
                decision = Decision(
                    "deny",
                    tool,
                    INVALID_BUNDLE_RULE,
                    f"the policy bundle {active.version} of {info.env!r} does not compile on this gateway: "
                    + "; ".join(active.problems),
                )
            return Authorization(decision, None if active is None else active.version, identity)
        engine = self._engine(
            active.compiled, identity, posixpath.normpath(workspace) if workspace else "", home
        )
        engine.quarantine = quarantine.reason if quarantine is not None else None
        return Authorization(engine.decide(tool, args, cwd), active.version, identity)

    def _engine(
        self, compiled: CompiledBundle, identity: AgentIdentity, workspace: str, home: str
    ) -> PolicyEngine:
        key = (
            identity.env,
            compiled.bundle.version,
            identity.agent,
            identity.role,
            identity.region,
            workspace,
            home,
        )
        engine = self._engines.get(key)
        if engine is not None:
            self._engines.move_to_end(key)
            return engine
        engine = PolicyEngine(compiled, identity, workspace=workspace, home=home)
        self._engines[key] = engine
        if len(self._engines) > self._engine_cache_size:
            self._engines.popitem(last=False)
        return engine

    def audit_authorization(self, result: Authorization) -> None:
        """Audit a decision /v1/authorize made for an agent (its own enforcement point)."""
        decision = result.decision
        identity = result.identity
        entry = AuditEntry(
            ts=self.clock(),
            env=identity.env,
            actor=f"agent:{identity.agent}",
            action="policy",
            target=identity.agent,
            reason=decision.reason,
            result=decision.decision,
            detail={
                "tool": decision.tool,
                "rule": decision.rule,
                "command": self.pipeline.redactor.text(decision.command) if decision.command else None,
                "policy_version": result.policy_version,
                "approval_id": None,
                "decided_by": None,
                "call_id": None,
                "source": "authorize",
            },
        )
        self._next_batch().entries.append(entry)

    def record_decisions(self, info: AgentInfo, events: Sequence[PolicyDecision]) -> asyncio.Future[None]:
        """Mirror reported decisions into the audit log and the approvals; resolves once written.

        Called by the pipeline after the events themselves are stored. Frames
        that arrive while a write is under way share the next one, so a fleet
        reporting many decisions costs a few transactions, not one per frame.
        The future never fails: a failed write is logged (the events are stored).
        """
        batch = self._next_batch()
        for event in events:
            batch.entries.append(_audit_entry(info, event))
            if not event.approval_id:
                continue
            if event.decision == "require_approval":
                created = event.ts.timestamp()
                timeout = self._approval_timeout(info.env, event.policy_version)
                batch.opened.append(
                    ApprovalRecord(
                        id=event.approval_id,
                        agent=info.agent,
                        env=info.env,
                        tool=event.tool,
                        command=event.command or "",
                        rule=event.rule or "",
                        reason=event.reason or "",
                        call_id=event.call_id,
                        policy_version=event.policy_version,
                        created=created,
                        expires=created + timeout,
                    )
                )
            else:
                # The enforcement point's final word (a person's answer or its own timeout)
                # closes the approval if nobody answered through the gateway.
                by = event.decided_by or f"agent:{info.agent}"
                state = (
                    "approved" if event.decision == "allow" else "expired" if by == "timeout" else "rejected"
                )
                batch.closed.append((event.approval_id, state, by, event.ts.timestamp(), event.reason))
        return batch.future

    def _approval_timeout(self, env: str, version: str | None) -> float:
        if version is not None and (env, version) in self._timeouts:
            return self._timeouts[(env, version)]
        active = self.active.get(env)
        if active is not None:
            return active.bundle.settings.approval_timeout_seconds
        return BundleSettings().approval_timeout_seconds

    def _next_batch(self) -> _AuditBatch:
        if self._batch is None:
            self._batch = _AuditBatch(asyncio.get_running_loop().create_future())
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        return self._batch

    async def _flush(self) -> None:
        try:
            # Yield once so that everything recorded in this turn of the loop joins the batch.
            await asyncio.sleep(0)
            while self._batch is not None:
                batch, self._batch = self._batch, None
                try:
                    await self.writer.call(batch.write)
                except Exception as exc:
                    log.error(
                        "%d policy decisions could not be written to the audit log: %s",
                        len(batch.entries),
                        exc,
                    )
                if not batch.future.done():
                    batch.future.set_result(None)
        finally:
            self._flusher = None

    async def drain(self) -> None:
        """Wait until every decision recorded so far is written (at shutdown)."""
        while self._flusher is not None:
            await asyncio.shield(self._flusher)

    # --- approvals ---------------------------------------------------------

    async def expire_approvals(self) -> None:
        now = self.clock()
        await self.writer.call(lambda store: store.expire_approvals(now))

    async def answer(self, approval_id: str, approve: bool, actor: str, reason: str | None) -> ApprovalRecord:
        """Record a person's answer and send it to the waiting node agent; raises ApprovalConflict."""
        async with self._approval_lock:
            await self.expire_approvals()
            current = await asyncio.to_thread(self.store.get_approval, approval_id)
            if current is None:
                raise ApprovalConflict("not_found", f"no approval {approval_id!r}")
            if current.state != "pending":
                when = "" if current.decided_at is None else f" at {_iso(current.decided_at)}"
                code = "expired" if current.state == "expired" else "already_decided"
                raise ApprovalConflict(
                    code, f"approval {approval_id} is already {current.state} (by {current.decided_by}{when})"
                )
            state = self.pipeline.agents.get(current.agent)
            # In scale mode another gateway may hold it: sending says whether one does.
            if (state is None or state.link is None) and self.commands.remote is None:
                raise ApprovalConflict(
                    "not_connected",
                    f"agent {current.agent!r} is not connected, so it cannot be told;"
                    " the approval stays pending until it reconnects or times out",
                )
            verdict = "approved" if approve else "rejected"
            now = self.clock()
            won = await self.writer.call(
                lambda store: store.decide_approval(approval_id, verdict, actor, now, reason)
            )
            if not won:
                raise ApprovalConflict("already_decided", f"approval {approval_id} was decided meanwhile")
            payload = {"approval_id": approval_id, "approved": approve, "by": actor, "reason": reason or ""}
            text = reason or f"{verdict} by {actor}"
            _command, delivered = await self.commands.send(current.agent, "approval", text, payload)
            if not delivered:
                # Disconnected in between: nobody was told, so nothing was decided.
                await self.writer.call(
                    lambda store: store.decide_approval(
                        approval_id, "pending", None, None, None, from_state=verdict
                    )
                )
                raise ApprovalConflict(
                    "not_connected", f"agent {current.agent!r} disconnected; the approval stays pending"
                )
            return msgspec.structs.replace(
                current, state=verdict, decided_by=actor, decided_at=now, decision_reason=reason
            )


def _compile_stored(record: PolicyRecord) -> tuple[PolicyBundle, CompiledBundle | None, tuple[str, ...]]:
    """A stored bundle compiled again; one that no longer compiles (after an upgrade, say) with why."""
    bundle = decode_bundle(record.bundle)
    try:
        return bundle, compile_bundle(bundle), ()
    except PolicyError as exc:
        log.error(
            "the active policy bundle %s of environment %s no longer compiles; /v1/authorize denies"
            " every call until a valid bundle is applied: %s",
            record.version,
            record.env,
            "; ".join(exc.problems),
        )
        return bundle, None, tuple(exc.problems)


def _push_reason(active: ActivePolicy) -> str:
    return f"policy bundle {active.version} for {active.record.env}"


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _audit_entry(info: AgentInfo, event: PolicyDecision) -> AuditEntry:
    return AuditEntry(
        ts=event.ts.timestamp(),
        env=info.env,
        actor=f"agent:{info.agent}",
        action="policy",
        target=info.agent,
        reason=event.reason or "",
        result=event.decision,
        detail={
            "tool": event.tool,
            "rule": event.rule,
            "command": event.command,
            "policy_version": event.policy_version,
            "approval_id": event.approval_id,
            "decided_by": event.decided_by,
            "call_id": event.call_id,
        },
    )
