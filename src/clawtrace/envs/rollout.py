"""Rollout: which release each agent of a role should run while a new desired release spreads.

A deployment (the newest desired release of an environment and role) goes
through phases:

- ``canary``: a fraction of the connected agents (at least one) run the new
  release, the others keep the previous one, for ``canary_seconds``;
- ``rolling``: every agent is told to run it;
- ``complete``: every connected agent reports running it;
- ``rolled_back``: an alert tripped it (or a person rolled back), and a newer
  deployment of an earlier release took over;
- ``superseded``: a newer deployment (a deploy or promotion) took over.

Pure: ``plan`` takes the deployment, its agents and the firing alerts, and
says what to send and what changed; the gateway does the sending and saving.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from clawtrace.envs.settings import RolloutSettings
from clawtrace.store.base import DeploymentRecord

# Deployments that are themselves a way back never roll back on their own (no flip-flop).
ROLLBACK_KINDS = frozenset({"rollback", "auto_rollback"})


@dataclass(frozen=True, slots=True)
class Follower:
    """A connected node agent that runs whatever its environment wants for its role."""

    agent: str
    running: str | None


@dataclass(frozen=True, slots=True)
class FiringAlert:
    rule: str
    agent: str


@dataclass
class RolloutPlan:
    # The release each follower should run now.
    targets: dict[str, str] = field(default_factory=dict)
    # A phase change to save (phase, since, canary); None: unchanged.
    phase: tuple[str, float, list[str]] | None = None
    # Why the deployment must be rolled back now (None: it need not).
    rollback: str | None = None
    # The alerts that tripped it.
    tripped: list[FiringAlert] = field(default_factory=list)


def first_phase(settings: RolloutSettings, kind: str, previous: str | None) -> str:
    """A rollback, a first release or a rollout without canaries goes to everyone at once."""
    if kind in ROLLBACK_KINDS or previous is None or settings.canary <= 0:
        return "rolling"
    return "canary"


def pick_canaries(agents: Iterable[str], release: str, fraction: float) -> list[str]:
    """A stable, spread-out choice: the same agents for the same release, different ones for the next."""
    ordered = sorted(agents, key=lambda agent: hashlib.sha256(f"{release}/{agent}".encode()).digest())
    if not ordered:
        return []
    return sorted(ordered[: max(1, math.ceil(fraction * len(ordered)))])


def progress(deployment: DeploymentRecord, followers: Sequence[Follower]) -> tuple[int, int]:
    """(agents running the release, connected agents of the role)."""
    return sum(1 for f in followers if f.running == deployment.release), len(followers)


def plan(
    deployment: DeploymentRecord,
    followers: Sequence[Follower],
    settings: RolloutSettings,
    firing: Iterable[FiringAlert],
    now: float,
) -> RolloutPlan:
    out = RolloutPlan()
    release, previous = deployment.release, deployment.previous
    on_release = {f.agent for f in followers if f.running == release}
    phase, since, canary = deployment.phase, deployment.phase_since, list(deployment.canary)

    watching = phase in ("canary", "rolling") or (
        phase == "complete" and now - since < settings.watch_seconds
    )
    if settings.auto_rollback and watching and previous is not None and deployment.kind not in ROLLBACK_KINDS:
        tripped = [
            alert
            for alert in firing
            if alert.agent in on_release and (not settings.rollback_on or alert.rule in settings.rollback_on)
        ]
        if tripped:
            out.tripped = sorted(tripped, key=lambda a: (a.rule, a.agent))
            names = ", ".join(f"{a.rule} on {a.agent}" for a in out.tripped)
            out.rollback = f"{names} during the rollout"
            return out

    if phase == "canary":
        if not canary:
            canary = pick_canaries((f.agent for f in followers), release, settings.canary)
            if canary:
                out.phase = ("canary", since, canary)
        live_canaries = [agent for agent in canary if any(f.agent == agent for f in followers)]
        if (
            live_canaries
            and all(agent in on_release for agent in live_canaries)
            and now - since >= settings.canary_seconds
        ):
            phase, since = "rolling", now
            out.phase = (phase, since, canary)
    if phase == "canary":
        chosen = set(canary)
        for follower in followers:
            target = release if follower.agent in chosen or previous is None else previous
            out.targets[follower.agent] = target
        return out
    for follower in followers:
        out.targets[follower.agent] = release
    if phase == "rolling" and followers and len(on_release) == len(followers):
        out.phase = ("complete", now, canary)
    return out
