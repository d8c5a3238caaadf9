"""Converging to the release the gateway wants: ``deploy`` commands in, a restarted agent process out.

A node agent started with ``--role`` runs whatever release its environment
wants for that role. The gateway says which in ``deploy`` commands (after
every welcome, and whenever it changes); the ``Deployer`` keeps the latest
wish and works towards it, one release at a time:

1. the release: from the spool if it is installed and intact, else fetched
   from the gateway, verified (its id must be the hash of its content) and
   installed (release_store);
2. everything that can fail without touching the running agent: its role,
   its tool hooks (how to run them), its policy (it must compile), its
   secrets (resolved on the node), its command (it must exist);
3. the switch: the release's policy and hooks take over, the supervisor
   stops the old process (SIGTERM, then SIGKILL after --stop-timeout) and
   starts the release's command in the release's directory;
4. the report: a ``lifecycle`` event ``deployed`` once the new process has
   started, or ``deploy_failed`` with what failed and what to do, in which
   case the previous release keeps running (or nothing, if there was none).

A failed deploy is tried again when the gateway sends it again (it does on
every reconnect) and by itself after 30 s, doubling up to 5 min. Which release
runs is kept in the spool, so a restarted node agent starts it again at once,
without waiting for the gateway.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Final

import msgspec

from clawtrace.envs.release import (
    POLICY_SETTINGS_FILE,
    Release,
    ReleaseError,
    policy_files,
    verify_release,
)
from clawtrace.node.fetch import FetchError, ReleaseFetcher
from clawtrace.node.hooks import HookError, ToolHooks, locate
from clawtrace.node.policy import NodePolicy
from clawtrace.node.release_store import InstallError, ReleaseStore, is_release_id
from clawtrace.node.secrets import SecretError, resolve_secrets
from clawtrace.node.supervisor import SpawnError, Supervisor
from clawtrace.policy.bundle import BundleSettings, PolicyBundle, PolicyError, compile_bundle

log = logging.getLogger("clawtrace.node.deploy")

RETRY_INITIAL: Final = 30.0
RETRY_MAX: Final = 300.0
DEPLOYED: Final = "deployed"
DEPLOY_FAILED: Final = "deploy_failed"

# ROLE@VERSION is at most 63 + 1 + 64 characters; anything longer is not one.
MAX_REF_CHARS: Final = 128
RELEASE_ENV: Final = "CLAWTRACE_RELEASE"
RELEASE_REF_ENV: Final = "CLAWTRACE_RELEASE_REF"
RELEASE_DIR_ENV: Final = "CLAWTRACE_RELEASE_DIR"
ROLE_ENV: Final = "CLAWTRACE_ROLE"

Reporter = Callable[[str, str], None]


class DeployError(Exception):
    """One line: what failed, and what to do about it."""


@dataclass(frozen=True, slots=True)
class Target:
    """A release the gateway asked for: its full id and, for people, ROLE@VERSION."""

    id: str
    ref: str
    # The release that ran before this node agent restarted, started again from the spool.
    restored: bool = False

    @property
    def label(self) -> str:
        return f"{self.ref} ({self.id[:12]})"


@dataclass(frozen=True, slots=True)
class Prepared:
    """A release installed and checked, ready to run (or running)."""

    release: Release
    directory: Path
    cwd: str
    # The release's [env], its secrets and the CLAWTRACE_RELEASE* / MODEL variables.
    env: dict[str, str] = field(repr=False)
    hooks: ToolHooks
    policy: PolicyBundle | None

    @property
    def id(self) -> str:
        return self.release.id

    @property
    def label(self) -> str:
        return f"{self.release.ref} ({self.release.short_id})"


def release_env(release: Release, directory: Path, secrets: Mapping[str, str]) -> dict[str, str]:
    """What a release adds to its agent process's environment (the node agent's own CLAWTRACE_* come last)."""
    manifest = release.manifest
    model = manifest.model
    env = dict(manifest.env)
    env.update(secrets)
    env[RELEASE_ENV] = release.id
    env[RELEASE_REF_ENV] = release.ref
    env[RELEASE_DIR_ENV] = str(directory)
    env[ROLE_ENV] = manifest.role
    env["CLAWTRACE_MODEL_PROVIDER"] = model.provider
    env["CLAWTRACE_MODEL_NAME"] = model.name
    for name, value in (
        ("TEMPERATURE", model.temperature),
        ("MAX_TOKENS", model.max_tokens),
        ("TOP_P", model.top_p),
    ):
        if value is not None:
            env[f"CLAWTRACE_MODEL_{name}"] = str(value)
    if model.options:
        env["CLAWTRACE_MODEL_OPTIONS"] = json.dumps(model.options, sort_keys=True)
    return env


def role_bundle(release: Release, env: str) -> PolicyBundle | None:
    """The release's policy as a bundle (None if it has none); raises PolicyError if it does not compile."""
    manifest = release.manifest
    if manifest.policy is None:
        return None
    members = policy_files(manifest, release.files)
    cedar = {PurePosixPath(k).name: members[k] for k in sorted(members) if k.endswith(".cedar")}
    settings = BundleSettings()
    settings_text = members.get(f"{manifest.policy}/{POLICY_SETTINGS_FILE}")
    if settings_text is not None:
        try:
            settings = msgspec.convert(tomllib.loads(settings_text), BundleSettings)
        except (tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
            raise PolicyError([f"{manifest.policy}/{POLICY_SETTINGS_FILE}: {exc}"]) from None
    bundle = PolicyBundle(env=env, files=cedar, settings=settings).with_version()
    compile_bundle(bundle)
    return bundle


class Deployer:
    """Keeps this node agent on the release the gateway wants for its role."""

    def __init__(
        self,
        *,
        agent: str,
        env_name: str,
        role: str,
        fetcher: ReleaseFetcher,
        store: ReleaseStore,
        policy: NodePolicy,
        node_env: Mapping[str, str],
        child_env: Mapping[str, str],
        report: Reporter,
        on_running: Callable[[Prepared | None], None],
        cwd: str | None = None,
        hook_timeout: float = 5.0,
        retry_initial: float = RETRY_INITIAL,
        retry_max: float = RETRY_MAX,
    ) -> None:
        self.agent = agent
        self.env_name = env_name
        self.role = role
        self.fetcher = fetcher
        self.store = store
        self.policy = policy
        # Where env: secrets and VAULT_* come from (the node agent's own environment).
        self.node_env = dict(node_env)
        # What the agent process inherits (node env minus the node agent's credentials).
        self.child_base_env = dict(child_env)
        self.report = report
        self.on_running = on_running
        self.cwd = cwd
        self.hook_timeout = hook_timeout
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        # What the next start of the agent process uses (set just before the switch)...
        self.active: Prepared | None = None
        # ...and what is known to run (reported in hello and heartbeats).
        self.running: Prepared | None = None
        self.supervisor: Supervisor | None = None
        self._desired: Target | None = None
        self._busy: str | None = None
        self._wake = asyncio.Event()
        self._delay = retry_initial

    # --- asked from outside -------------------------------------------------------

    @property
    def running_id(self) -> str | None:
        return self.running.id if self.running is not None else None

    def child_env(self) -> dict[str, str]:
        """The release's part of the agent process's environment (empty before the first release)."""
        return dict(self.active.env) if self.active is not None else {}

    def hooks(self) -> ToolHooks | None:
        return self.active.hooks if self.active is not None else None

    def request(self, payload: Mapping[str, Any], why: str) -> None:
        """A ``deploy`` command: aim for its release (nothing to do if it runs or is being installed)."""
        release_id = payload.get("release")
        if not is_release_id(release_id):
            log.warning(
                'ignoring %s: its payload must be {"release": <64 hex digits>, "ref": "ROLE@VERSION"}, '
                "got release=%.80r",
                why,
                release_id,
            )
            return
        assert isinstance(release_id, str)
        ref = payload.get("ref")
        if not isinstance(ref, str) or not ref or len(ref) > MAX_REF_CHARS:
            ref = release_id[:12]
        target = Target(release_id, ref)
        # The newest wish wins, whatever was asked for before.
        self._desired = target
        if self._busy == release_id:
            log.debug("release %s is being installed already (%s)", target.label, why)
            return
        if self.running_id == release_id:
            log.debug("release %s runs already (%s)", target.label, why)
            return
        log.info("the gateway wants release %s (%s)", target.label, why)
        self._wake.set()

    # --- the worker ---------------------------------------------------------------------

    async def run(self, supervisor: Supervisor) -> None:
        """Start the release that ran last (if any), then follow deploy requests; runs until cancelled."""
        self.supervisor = supervisor
        current = await asyncio.to_thread(self.store.current)
        if current is not None:
            log.info(
                "starting release %s (%s), which ran before this node agent restarted",
                current.ref,
                current.id[:12],
            )
            if self._desired is None:
                self._desired = Target(current.id, current.ref, restored=True)
        else:
            log.info("waiting for the gateway to send a release of role %s in %s", self.role, self.env_name)
        loop = asyncio.get_running_loop()
        retry_at: float | None = None
        while True:
            target = self._desired
            self._wake.clear()
            if target is not None and target.id != self.running_id:
                if await self._attempt(target):
                    self._delay = self.retry_initial
                    retry_at = None
                else:
                    retry_at = loop.time() + self._delay
                    self._delay = min(self._delay * 2, self.retry_max)
                if self._desired is not None and self._desired.id != target.id:
                    # Asked for another release meanwhile: go for it now, with its own backoff.
                    self._delay = self.retry_initial
                    continue
            timeout = None if retry_at is None else max(retry_at - loop.time(), 0.0)
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass
            else:
                if self._desired is not None and (target is None or self._desired.id != target.id):
                    self._delay = self.retry_initial  # a new release: its own backoff
            retry_at = None

    async def close(self) -> None:
        for prepared in {id(p): p for p in (self.active, self.running) if p is not None}.values():
            await prepared.hooks.close()

    # --- one attempt -----------------------------------------------------------------------

    async def _attempt(self, target: Target) -> bool:
        self._busy = target.id
        try:
            prepared = await self._prepare(target)
            pid = await self._switch(prepared)
        except DeployError as exc:
            keeping = (
                f"release {self.running.label} keeps running"
                if self.running is not None
                else "no release runs"
            )
            reason = (
                f"{target.label}: {exc}; {keeping}; tried again in {self._delay:g} s or when the gateway "
                "sends it again"
            )
            log.error("deploy of %s", reason)
            self.report(DEPLOY_FAILED, reason)
            return False
        finally:
            self._busy = None
        note = ""
        if target.restored:
            note = " (the release that ran before this node agent restarted)"
        if pid is None:
            note += "; the agent is stopped: it runs this release on the next restart"
        log.info("release %s runs (pid %s)", prepared.label, pid)
        self.report(DEPLOYED, prepared.label + note)
        return True

    async def _prepare(self, target: Target) -> Prepared:
        release, directory = await self._obtain(target)
        manifest = release.manifest
        if manifest.role != self.role:
            raise DeployError(
                f"the release is for role {manifest.role!r}, but this node agent runs role {self.role!r} "
                f"(--role): deploy a release of role {self.role!r} to it"
            )
        cwd = self.cwd or str(directory)
        try:
            policy = role_bundle(release, self.env_name)
        except PolicyError as exc:
            raise DeployError(f"its policy does not compile: {'; '.join(exc.problems)}") from None
        try:
            secrets = await resolve_secrets(manifest.secrets, self.node_env)
        except SecretError as exc:
            raise DeployError("; ".join(exc.problems)) from None
        env = release_env(release, directory, secrets)
        for name, value in manifest.env.items():
            if "\0" in value:
                raise DeployError(
                    f"[env] {name} holds a NUL byte, which an environment variable cannot: "
                    "fix clawtrace.agent.toml and create a new release"
                )
        child_env = {**self.child_base_env, **env}
        path = child_env.get("PATH", os.defpath)
        try:
            hook_list = await asyncio.to_thread(locate, directory, list(manifest.tool_hooks), path)
        except HookError as exc:
            raise DeployError(str(exc)) from None
        self._check_command(manifest.command, cwd, path)
        identity = {"agent": self.agent, "env": self.env_name, "role": self.role, "release": release.id}
        hooks = ToolHooks(hook_list, identity=identity, env=child_env, timeout=self.hook_timeout)
        return Prepared(release=release, directory=directory, cwd=cwd, env=env, hooks=hooks, policy=policy)

    async def _obtain(self, target: Target) -> tuple[Release, Path]:
        """The release, installed: from the spool when it is there and intact, else from the gateway."""
        if (self.store.directory / f"{target.id}.json").exists():
            try:
                return await asyncio.to_thread(self.store.load, target.id)
            except InstallError as exc:
                log.warning("installed release %s is unusable (%s); fetching it again", target.label, exc)
        try:
            release = await self.fetcher.fetch(target.id)
        except FetchError as exc:
            raise DeployError(str(exc)) from None
        if release.id != target.id:
            raise DeployError(
                f"asked for release {target.id[:12]}, the gateway answered with {release.id[:12]!r}: refused"
            )
        try:
            verify_release(release)
        except ReleaseError as exc:
            raise DeployError(
                f"the release from the gateway fails verification and is refused: {'; '.join(exc.problems)}"
            ) from None
        try:
            directory = await asyncio.to_thread(self.store.install, release)
        except InstallError as exc:
            raise DeployError(str(exc)) from None
        return release, directory

    def _check_command(self, command: list[str], cwd: str, path: str) -> None:
        # Checked before the running agent is stopped: a typo must not take it down.
        program = command[0]
        if "/" in program:
            full = Path(cwd, program)
            if not full.is_file() or not os.access(full, os.X_OK):
                raise DeployError(
                    f"its command {program!r} is not an executable file (looked in {cwd}): "
                    "install it on this node or fix `command` in clawtrace.agent.toml"
                )
        elif shutil.which(program, path=path) is None:
            raise DeployError(
                f"its command {program!r} is not on this node's PATH: install it, or fix `command` in "
                "clawtrace.agent.toml and create a new release"
            )

    async def _switch(self, prepared: Prepared) -> int | None:
        supervisor = self.supervisor
        assert supervisor is not None, "run() attaches the supervisor"
        previous = self.active
        try:
            self.policy.set_role_policy(prepared.policy, prepared.release.ref)
        except PolicyError as exc:
            raise DeployError(f"its policy does not compile: {'; '.join(exc.problems)}") from None
        self.active = prepared
        try:
            pid = await supervisor.switch(
                prepared.release.manifest.command, prepared.cwd, f"deploy of release {prepared.label}"
            )
        except SpawnError as exc:
            await self._fall_back(previous)
            raise DeployError(
                f"its command cannot be started ({exc}): fix `command` in clawtrace.agent.toml and create "
                "a new release"
            ) from None
        self.running = prepared
        await self._remember(prepared, previous)
        self.on_running(prepared)
        if previous is not None and previous is not prepared:
            await previous.hooks.close()
        return pid

    async def _fall_back(self, previous: Prepared | None) -> None:
        """After the new command failed to start: the previous release again, or nothing."""
        supervisor = self.supervisor
        assert supervisor is not None
        self.active = previous
        self.running = None
        if previous is None:
            self.policy.set_role_policy(None)
            self.on_running(None)
            return
        # It compiled when it was deployed: it compiles now.
        self.policy.set_role_policy(previous.policy, previous.release.ref)
        try:
            await supervisor.switch(
                previous.release.manifest.command, previous.cwd, f"back to release {previous.label}"
            )
        except SpawnError as exc:
            log.error("the previous release %s cannot be started again either: %s", previous.label, exc)
            self.active = None
            self.policy.set_role_policy(None)
            self.on_running(None)
            return
        self.running = previous
        self.on_running(previous)

    async def _remember(self, prepared: Prepared, previous: Prepared | None) -> None:
        try:
            await asyncio.to_thread(self.store.set_current, prepared.release)
        except OSError as exc:
            log.warning(
                "could not record release %s in %s (%s): a restarted node agent waits for the gateway",
                prepared.label,
                self.store.spool_dir,
                exc,
            )
        keep = {prepared.id} | ({previous.id} if previous is not None else set())
        await asyncio.to_thread(self.store.prune, keep)
