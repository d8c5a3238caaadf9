"""Desired releases per environment and role: deploy, promote through gates, roll out, roll back.

Node agents started with ``--role`` follow their environment's desired release
for that role: the gateway sends a ``deploy`` command after every welcome and
whenever what an agent should run changes (``envs/rollout.py`` decides, per
agent, during a canary). A tick watches every rollout: it moves phases on and
rolls a release back when it trips an alert.

Every change (deploy, promotion, approval, rollback, automatic rollback) and
every refused promotion is written to the audit log.

In scale mode every gateway re-reads the deployments, the fleet's connected
followers and the firing alerts from the store on each tick and sends
``deploy`` commands to the agents it holds; only the gateway leading the
``rollouts`` duty moves phases on and rolls back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from clawtrace.alerts.model import Alert, AuditEntry
from clawtrace.envs.environments import Environments, UnknownEnvironment
from clawtrace.envs.gates import GateFacts, GateResult, evaluate
from clawtrace.envs.release import SHORT_ID
from clawtrace.envs.rollout import FiringAlert, Follower, first_phase, plan, progress
from clawtrace.gateway.cluster import Cluster, Solo
from clawtrace.gateway.commands import CommandService
from clawtrace.gateway.pipeline import Pipeline
from clawtrace.gateway.writer import StoreWriter
from clawtrace.metrics import MetricsStage
from clawtrace.metrics.buckets import Bucket, decode_rollup
from clawtrace.metrics.scopes import agent_scope
from clawtrace.protocol import Command
from clawtrace.store import AgentInfo, Store, StoreError
from clawtrace.store.base import AmbiguousRelease, DeploymentRecord, PromotionApproval, ReleaseRecord

log = logging.getLogger("clawtrace.gateway.deployments")

TICK_SECONDS = 1.0
ROLLOUT_DUTY = "rollouts"


class DeploymentRefused(Exception):
    """A deploy, promotion, approval or rollback that cannot be done; nothing was changed."""

    def __init__(self, status: int, code: str, message: str, gates: list[GateResult] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.gates = gates


@dataclass
class PromotionOutcome:
    release: ReleaseRecord
    target: str
    gates: list[GateResult]
    deployment: DeploymentRecord | None = None


def ref_of(record: ReleaseRecord) -> str:
    return f"{record.role}@{record.version}"


class DeploymentService:
    def __init__(
        self,
        environments: Environments,
        pipeline: Pipeline,
        writer: StoreWriter,
        commands: CommandService,
        metrics: MetricsStage,
        firing: Callable[[str], Iterable[FiringAlert]],
        clock: Callable[[], float] = time.time,
        cluster: Cluster | None = None,
    ) -> None:
        self.environments = environments
        self.pipeline = pipeline
        self.writer = writer
        self.commands = commands
        self.metrics = metrics
        # The firing alerts of an environment (the alert engine's, or none without one).
        self.firing = firing
        self.clock = clock
        self.current: dict[tuple[str, str], DeploymentRecord] = {}
        # agent -> the release id it was last told to run (forgotten when it disconnects).
        self._sent: dict[str, str] = {}
        self._refs: dict[str, str] = {}
        self._lock = asyncio.Lock()
        self._ticker: asyncio.Task[None] | None = None
        self.cluster: Cluster = cluster or Solo()
        # Scale mode: the fleet's followers per (env, role) and firing alerts, as the store had them.
        self._fleet: dict[tuple[str, str], list[Follower]] = {}
        self._stored_firing: list[Alert] = []

    @property
    def store(self) -> Store:
        return self.pipeline.store

    # --- wiring -------------------------------------------------------------
    def load(self) -> None:
        for record in self.store.current_deployments():
            self.current[(record.env, record.role)] = record
        for release in self.store.list_releases():
            self._refs[release.id] = ref_of(release)

    async def start(self) -> None:
        self.pipeline.welcome_commands.append(self.welcome_command)
        self.pipeline.detach_listeners.append(self._forget)
        await self.cluster.campaign(ROLLOUT_DUTY)
        self._ticker = asyncio.create_task(self._tick_loop())

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker

    def _forget(self, agent: str) -> None:
        self._sent.pop(agent, None)

    def ref(self, release: str | None) -> str | None:
        if release is None:
            return None
        return self._refs.get(release, release[:SHORT_ID])

    # --- what each agent should run ------------------------------------------
    def _held_here(self, env: str, role: str) -> list[Follower]:
        return [
            Follower(state.info.agent, state.info.release)
            for state in self.pipeline.agents.values()
            if state.link is not None and state.info.env == env and state.info.role == role
        ]

    def followers(self, env: str, role: str) -> list[Follower]:
        """The role's connected agents in ``env``: ours, and in scale mode the other gateways' too."""
        here = self._held_here(env, role)
        if not self.cluster.shared:
            return here
        ours = {f.agent for f in here}
        return here + [f for f in self._fleet.get((env, role), ()) if f.agent not in ours]

    def _firing(self, env: str, stored: Iterable[Alert] | None = None) -> Iterable[FiringAlert]:
        """The engine's firing alerts of ``env``; in scale mode, the workers' as the store had them."""
        if not self.cluster.shared:
            return self.firing(env)
        alerts = self._stored_firing if stored is None else stored
        return [
            FiringAlert(a.rule, a.agent) for a in alerts if a.state == "firing" and a.env == env and a.agent
        ]

    def welcome_command(self, info: AgentInfo) -> Command | None:
        """The ``deploy`` that a node agent following a role gets after its welcome."""
        if info.role is None:
            return None
        deployment = self.current.get((info.env, info.role))
        if deployment is None:
            return None
        followers = [f for f in self.followers(info.env, info.role) if f.agent != info.agent]
        followers.append(Follower(info.agent, info.release))
        now = self.clock()
        target = plan(deployment, followers, self.environments.rollout(info.env), (), now).targets.get(
            info.agent
        )
        if target is None:
            return None
        self._sent[info.agent] = target
        return self._deploy_command(deployment, target)

    def _deploy_command(self, deployment: DeploymentRecord, target: str) -> Command:
        ref = self.ref(target)
        return Command(
            id=secrets.token_hex(8),
            action="deploy",
            reason=f"{deployment.kind} of {self.ref(deployment.release)} in {deployment.env}",
            payload={"release": target, "ref": ref},
        )

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            try:
                await self.tick()
            except StoreError as exc:
                # The store away (it says so itself): one line a tick, not a traceback.
                log.warning("advancing rollouts failed, retrying on the next tick: %s", exc)
            except Exception:
                log.exception("advancing rollouts failed; retrying on the next tick")

    async def tick(self) -> None:
        async with self._lock:
            if self.cluster.shared:
                await self._sync()
            for deployment in list(self.current.values()):
                await self._advance(deployment)

    async def _sync(self) -> None:
        """Scale mode: what other gateways changed, which agents they hold, what workers see firing.
        Under the lock, so that a deploy made here meanwhile is not overwritten by an older read."""
        store = self.store
        records = await asyncio.to_thread(store.current_deployments)
        envs = sorted({r.env for r in records})
        agents = await asyncio.to_thread(store.list_agents, envs) if envs else []
        firing = await asyncio.to_thread(store.load_alerts) if self.cluster.leads(ROLLOUT_DUTY) else []
        for record in records:
            if record.release not in self._refs:
                release = await asyncio.to_thread(store.get_release, record.release)
                if release is not None:
                    self._refs[release.id] = ref_of(release)
        fleet: dict[tuple[str, str], list[Follower]] = {}
        for agent in agents:
            if agent.connected and agent.role is not None:
                fleet.setdefault((agent.env, agent.role), []).append(Follower(agent.agent, agent.release))
        self.current = {(r.env, r.role): r for r in records}
        self._fleet = fleet
        self._stored_firing = firing

    async def _advance(self, deployment: DeploymentRecord) -> None:
        env, role = deployment.env, deployment.role
        settings = self.environments.rollout(env)
        followers = self.followers(env, role)
        firing = list(self._firing(env))
        now = self.clock()
        outcome = plan(deployment, followers, settings, firing, now)
        targets = outcome.targets
        if self.cluster.shared:
            # Each gateway tells the agents it holds.
            held = {f.agent for f in self._held_here(env, role)}
            targets = {agent: target for agent, target in targets.items() if agent in held}
        if not self.cluster.leads(ROLLOUT_DUTY):
            # Another gateway moves this rollout on (phases, rollbacks).
            await self._tell(targets, deployment)
            return
        if outcome.rollback is not None and deployment.previous is not None:
            await self._roll_back(
                deployment,
                deployment.previous,
                kind="auto_rollback",
                actor="rollout",
                reason=outcome.rollback,
                detail={"alerts": [f"{a.rule} on {a.agent}" for a in outcome.tripped]},
            )
            return
        if outcome.phase is not None:
            phase, since, canary = outcome.phase
            done = self._progress_text(deployment, followers)
            deployment.phase, deployment.phase_since, deployment.canary = phase, since, canary
            deployment.detail = done
            record_id = deployment.id
            await self.writer.call(lambda s: s.update_rollout(record_id, phase, since, canary, done))
            log.info("rollout of %s in %s: %s (%s)", self.ref(deployment.release), env, phase, done)
        await self._tell(targets, deployment)

    async def _tell(self, targets: dict[str, str], deployment: DeploymentRecord) -> None:
        """Send ``deploy`` to each agent whose target changed since it was last told."""
        for agent, target in targets.items():
            if self._sent.get(agent) == target:
                continue
            self._sent[agent] = target
            command = self._deploy_command(deployment, target)
            _, delivered = await self.commands.send(agent, "deploy", command.reason or "", command.payload)
            if not delivered:
                self._sent.pop(agent, None)

    def _progress_text(self, deployment: DeploymentRecord, followers: list[Follower]) -> str:
        running, total = progress(deployment, followers)
        return f"{running} of {total} connected agents run {self.ref(deployment.release)}"

    # --- reading ----------------------------------------------------------------
    async def release(self, ref: str) -> ReleaseRecord:
        try:
            record = await asyncio.to_thread(self.store.get_release, ref)
        except AmbiguousRelease as exc:
            raise DeploymentRefused(409, "ambiguous", str(exc)) from None
        if record is None:
            raise DeploymentRefused(
                404, "not_found", f"no release {ref!r}: list them with `clawtrace release list`"
            )
        self._refs[record.id] = ref_of(record)
        return record

    def _env(self, env: str) -> str:
        try:
            return self.environments.check(env)
        except UnknownEnvironment as exc:
            raise DeploymentRefused(404, "unknown_environment", str(exc)) from None

    def status(self, env: str, role: str) -> dict[str, Any]:
        """The deployment in force, its rollout progress and every follower's release."""
        deployment = self.current.get((env, role))
        followers = self.followers(env, role)
        view: dict[str, Any] = {"env": env, "role": role, "deployment": None, "agents": []}
        if deployment is None:
            return view
        running, total = progress(deployment, followers)
        view["deployment"] = self.describe(deployment)
        view["progress"] = {
            "running": running,
            "total": total,
            "text": self._progress_text(deployment, followers),
        }
        view["agents"] = [
            {
                "agent": f.agent,
                "release": f.running,
                "ref": self.ref(f.running),
                "current": f.running == deployment.release,
                "canary": f.agent in deployment.canary,
            }
            for f in sorted(followers, key=lambda f: f.agent)
        ]
        return view

    def describe(self, deployment: DeploymentRecord) -> dict[str, Any]:
        return {
            "id": deployment.id,
            "env": deployment.env,
            "role": deployment.role,
            "release": deployment.release,
            "ref": self.ref(deployment.release),
            "previous": deployment.previous,
            "previous_ref": self.ref(deployment.previous),
            "kind": deployment.kind,
            "actor": deployment.actor,
            "reason": deployment.reason,
            "created": deployment.created,
            "phase": deployment.phase,
            "phase_since": deployment.phase_since,
            "canary": deployment.canary,
            "detail": deployment.detail,
        }

    # --- changes ----------------------------------------------------------------
    async def deploy(self, ref: str, env: str, actor: str, reason: str = "") -> DeploymentRecord:
        """Make a release the desired one of its role in the first environment."""
        self._env(env)
        if env != self.environments.entry:
            raise DeploymentRefused(
                409,
                "not_entry_environment",
                f"releases enter through {self.environments.entry}; {env} is reached by promotion: "
                f"`clawtrace promote ROLE@VERSION --to {env}`",
            )
        record = await self.release(ref)
        async with self._lock:
            current = self.current.get((env, record.role))
            if current is not None and current.release == record.id:
                raise DeploymentRefused(409, "already_live", f"{ref_of(record)} is already live in {env}")
            deployment = await self._add(record, env, "deploy", actor, reason)
        return deployment

    async def gate_facts(self, record: ReleaseRecord, previous_env: str, target: str) -> GateFacts:
        live = self.current.get((previous_env, record.role))
        approval = await asyncio.to_thread(self.store.get_promotion_approval, record.id, target)
        facts = GateFacts(
            previous_env=previous_env,
            live_since=live.created if live is not None and live.release == record.id else None,
            approved_by=approval.approved_by if approval is not None else None,
        )
        if facts.live_since is None:
            return facts
        agents = [
            a.agent
            for a in await asyncio.to_thread(self.store.list_agents, [previous_env])
            if a.release == record.id
        ]
        on_release = set(agents)
        stored = await asyncio.to_thread(self.store.load_alerts) if self.cluster.shared else None
        facts.firing = sorted(
            f"{alert.rule} on {alert.agent}"
            for alert in self._firing(previous_env, stored)
            if alert.agent in on_release
        )
        totals = await asyncio.to_thread(self._window_totals, agents, facts.live_since)
        for bucket in self.metrics.open_buckets(agents).values():
            totals.merge(bucket)
        facts.tool_ok = totals.tool_ok
        facts.tool_results = totals.tool_ok + totals.tool_failed + totals.tool_timeouts
        facts.actions = totals.actions
        facts.cost_usd = totals.cost_usd
        return facts

    def _window_totals(self, agents: list[str], since: float) -> Bucket:
        total = Bucket()
        first, last = int(since // 60), int(self.clock() // 60)
        for agent in agents:
            for _minute, data in self.store.query_rollups(agent_scope(agent), first, last):
                total.merge(decode_rollup(data).bucket())
        return total

    async def promote(
        self, ref: str, target: str, actor: str, *, check_only: bool = False, reason: str = ""
    ) -> PromotionOutcome:
        """Copy a release live in the environment before ``target`` into it, if every gate passes.

        Raises DeploymentRefused (with the gates) when one fails; ``check_only``
        evaluates the gates and changes nothing.
        """
        self._env(target)
        previous_env = self.environments.previous(target)
        if previous_env is None:
            raise DeploymentRefused(
                409,
                "not_promotable",
                f"{target} is the first environment: nothing is promoted into it; "
                f"use `clawtrace deploy ROLE@VERSION --env {target}`",
            )
        record = await self.release(ref)
        name = ref_of(record)
        async with self._lock:
            live = self.current.get((previous_env, record.role))
            if live is None or live.release != record.id:
                running = f" ({previous_env} runs {self.ref(live.release)})" if live is not None else ""
                raise DeploymentRefused(
                    409,
                    "not_live",
                    f"{name} is not live in {previous_env}, the environment before {target}{running}: "
                    f"promote it to {previous_env} first (environments go "
                    f"{' -> '.join(self.environments.order)})",
                )
            current = self.current.get((target, record.role))
            if current is not None and current.release == record.id:
                raise DeploymentRefused(409, "already_live", f"{name} is already live in {target}")
            facts = await self.gate_facts(record, previous_env, target)
            gates = evaluate(
                self.environments.gates(target),
                self.environments.needs_approval(target),
                facts,
                self.clock(),
                approve_hint=f"clawtrace promote {name} --to {target} --approve (admin)",
            )
            outcome = PromotionOutcome(release=record, target=target, gates=gates)
            failed = [gate for gate in gates if not gate.passed]
            if check_only:
                return outcome
            if failed:
                await self._audit(
                    target,
                    actor,
                    "promote",
                    name,
                    reason,
                    "refused",
                    {"release": record.id, "failed": [f"{g.gate}: {g.detail}" for g in failed]},
                )
                raise DeploymentRefused(
                    409,
                    "gate_failed",
                    f"{name} cannot enter {target}: "
                    + "; ".join(f"{gate.gate} gate: {gate.detail}" for gate in failed),
                    gates,
                )
            outcome.deployment = await self._add(
                record, target, "promote", actor, reason, {"gates": [f"{g.gate}: {g.detail}" for g in gates]}
            )
        return outcome

    async def approve(self, ref: str, target: str, actor: str, reason: str = "") -> PromotionApproval:
        """An admin's approval for a release to enter ``target`` (one of its promotion gates)."""
        self._env(target)
        record = await self.release(ref)
        if not self.environments.needs_approval(target):
            raise DeploymentRefused(
                409, "no_approval_needed", f"promotions into {target} need no approval (its gates say so)"
            )
        approval = PromotionApproval(
            release=record.id, env=target, approved_by=actor, approved_at=self.clock(), reason=reason
        )
        await self.writer.call(lambda s: s.approve_promotion(approval))
        await self._audit(
            target, actor, "approve_promotion", ref_of(record), reason, "ok", {"release": record.id}
        )
        return approval

    async def rollback(
        self, role: str, env: str, actor: str, to: str | None = None, reason: str = ""
    ) -> DeploymentRecord:
        """Go back to the release before the one in force (or to ``to``, which must have run there)."""
        self._env(env)
        async with self._lock:
            current = self.current.get((env, role))
            if current is None:
                raise DeploymentRefused(
                    404, "not_found", f"no release of role {role!r} was ever deployed in {env}"
                )
            if to is None:
                history = await asyncio.to_thread(
                    lambda: self.store.deployment_history(env=env, role=role, limit=1000)
                )
                # The newest other release that was not itself rolled back: rolling back twice
                # goes further back instead of returning to what was just rolled back.
                earlier = next(
                    (d for d in history if d.release != current.release and d.phase != "rolled_back"), None
                )
                if earlier is None:
                    raise DeploymentRefused(
                        409,
                        "nothing_to_roll_back_to",
                        f"no release of {role} ran in {env} before {self.ref(current.release)} "
                        "(other than ones rolled back): there is nothing to go back to",
                    )
                target = earlier.release
            else:
                record = await self.release(to)
                if record.role != role:
                    raise DeploymentRefused(
                        400, "wrong_role", f"{ref_of(record)} is a release of {record.role}, not {role}"
                    )
                history = await asyncio.to_thread(
                    lambda: self.store.deployment_history(env=env, role=role, release=record.id, limit=1)
                )
                if not history:
                    raise DeploymentRefused(
                        409,
                        "never_deployed",
                        f"{ref_of(record)} never ran in {env}: a rollback goes back to a release that did",
                    )
                target = record.id
            if target == current.release:
                raise DeploymentRefused(409, "already_live", f"{self.ref(target)} is already live in {env}")
            return await self._roll_back(current, target, kind="rollback", actor=actor, reason=reason)

    async def _roll_back(
        self,
        current: DeploymentRecord,
        target: str,
        *,
        kind: str,
        actor: str,
        reason: str,
        detail: dict[str, object] | None = None,
    ) -> DeploymentRecord:
        now = self.clock()
        why = reason or f"{kind} of {self.ref(current.release)}"
        record_id = current.id
        await self.writer.call(lambda s: s.update_rollout(record_id, "rolled_back", now, current.canary, why))
        current.phase, current.phase_since, current.detail = "rolled_back", now, why
        release = await self.release(target)
        deployment = await self._add(release, current.env, kind, actor, why, detail)
        log.warning(
            "%s of %s in %s: back to %s (%s)",
            kind,
            self.ref(current.release),
            current.env,
            ref_of(release),
            why,
        )
        return deployment

    async def _add(
        self,
        release: ReleaseRecord,
        env: str,
        kind: str,
        actor: str,
        reason: str,
        detail: dict[str, object] | None = None,
    ) -> DeploymentRecord:
        now = self.clock()
        current = self.current.get((env, release.role))
        previous = current.release if current is not None else None
        if current is not None and current.phase != "rolled_back":
            old = current
            await self.writer.call(
                lambda s: s.update_rollout(old.id, "superseded", now, old.canary, old.detail)
            )
            current.phase, current.phase_since = "superseded", now
        record = DeploymentRecord(
            env=env,
            role=release.role,
            release=release.id,
            previous=previous,
            kind=kind,
            actor=actor,
            reason=reason,
            created=now,
            phase=first_phase(self.environments.rollout(env), kind, previous),
            phase_since=now,
        )
        record = await self.writer.call(lambda s: s.add_deployment(record))
        self.current[(env, release.role)] = record
        await self._audit(
            env,
            actor,
            kind,
            ref_of(release),
            reason,
            "ok",
            {
                "release": release.id,
                "previous": previous,
                "previous_ref": self.ref(previous),
                **(detail or {}),
            },
        )
        await self._advance(record)
        return record

    async def _audit(
        self,
        env: str,
        actor: str,
        action: str,
        target: str,
        reason: str,
        result: str,
        detail: dict[str, object],
    ) -> None:
        entry = AuditEntry(
            ts=self.clock(),
            env=env,
            actor=actor,
            action=action,
            target=target,
            reason=reason,
            result=result,
            detail=detail,
        )
        await self.writer.call(lambda s: s.add_audit([entry]))
