"""Deciding one tool call: the tool itself, then every command and host a shell tool would touch.

The node agent holds one engine per agent (its bundle, its identity, its
workspace), so a decision costs microseconds and needs no network. The
gateway uses the same engine for ``POST /v1/authorize`` and ``clawtrace policy eval``.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import cedarpy

from clawtrace.policy.bundle import CompiledBundle, PolicyInfo
from clawtrace.policy.shell import CommandFact, ShellFacts, normalise

Verdict = Literal["allow", "deny", "require_approval"]
NAMESPACE = "ClawTrace"
QUARANTINE_RULE = "quarantine"
# Cedar's answers per (action, resource, context), reused: agents run the same
# commands over and over, and a Cedar call is most of a decision's cost.
ANSWER_CACHE_SIZE = 4096
# (action, resource uid, context)
Request = tuple[str, dict[str, str], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class AgentIdentity:
    agent: str
    env: str
    role: str = "default"
    region: str = ""


@dataclass(frozen=True, slots=True)
class Decision:
    decision: Verdict
    tool: str
    # The deciding policy's @id (None: nothing permitted it, the default deny).
    rule: str | None
    # What the agent is told: the policy's @reason, or a sentence saying why.
    reason: str
    # For a shell tool: the command the decision is about, and all the facts.
    command: str = ""
    facts: ShellFacts | None = field(default=None, compare=False)

    @property
    def allowed(self) -> bool:
        return self.decision == "allow"


def _uid(kind: str, name: str) -> dict[str, str]:
    return {"type": f"{NAMESPACE}::{kind}", "id": name}


def within(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


class PolicyEngine:
    def __init__(
        self,
        compiled: CompiledBundle,
        identity: AgentIdentity,
        *,
        workspace: str,
        home: str,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.compiled = compiled
        self.identity = identity
        # "" means no workspace: every path counts as outside it.
        self.workspace = posixpath.normpath(workspace) if workspace else ""
        self.home = home
        # None: only $HOME and $PWD are known (an empty mapping would mean "nothing is").
        self.env = dict(env) if env is not None else None
        # Set by a quarantine: every tool call is denied, whatever the policies say.
        self.quarantine: str | None = None
        self._principal = _uid("Agent", identity.agent)
        entity = {
            "uid": self._principal,
            "attrs": {"env": identity.env, "role": identity.role, "region": identity.region},
            "parents": [],
        }
        self._entities = cedarpy.Entities.from_json_str(json.dumps([entity]))
        self._roots = (self.workspace,) if self.workspace else ()
        self._answers: dict[tuple[str, str, str], tuple[bool, tuple[PolicyInfo, ...]]] = {}

    @property
    def version(self) -> str:
        return self.compiled.bundle.version

    def forget_answers(self) -> None:
        """Drop the cached Cedar answers (benchmarks measure first-seen commands this way)."""
        self._answers.clear()

    def decide(self, tool: str, args: Mapping[str, Any] | None = None, cwd: str | None = None) -> Decision:
        if self.quarantine is not None:
            return Decision("deny", tool, QUARANTINE_RULE, f"the agent is quarantined: {self.quarantine}")
        args = args or {}
        shell_arg = self.compiled.bundle.settings.shell_tools.get(tool)
        command = args.get(shell_arg) if shell_arg else None
        shell = isinstance(command, str)
        text = command if isinstance(command, str) else ""
        tool_request: Request = ("tool", _uid("Tool", tool), {"shell": shell, "command": text})
        if not shell:
            return self._decisions([tool_request], tool)[0]
        facts = normalise(text, cwd=cwd or self.workspace, home=self.home, env=self.env)
        if facts.error is not None:
            verdict = self._decisions([tool_request], tool)[0]
            if verdict.decision == "deny":
                return verdict
            context = {"command": text, "error": facts.error}
            # Fail closed: only a policy that names the "unparsed" action can let such a
            # command through (a blanket `permit (principal, action, resource)` does not).
            [unparsed] = self._decisions(
                [("unparsed", _uid("Tool", tool), context)], tool, text, facts, only_named=True
            )
            if unparsed.decision == "deny" and unparsed.rule is None:
                reason = f"the command does not parse ({facts.error}), so it is refused"
                return Decision("deny", tool, None, reason, text, facts)
            return unparsed
        requests = [tool_request]
        for fact in facts.commands:
            requests.append(("exec", _uid("Program", fact.program), self._exec_context(tool, text, fact)))
            for host in fact.hosts:
                requests.append(("connect", _uid("Host", host), {"tool": tool, "program": fact.program}))
        # One call into Cedar for the tool and every command and host it would touch.
        decisions = self._decisions(requests, tool, text, facts)
        verdict = decisions[0]
        # A forbid that matched says more than "nothing permitted cd": report it first.
        denies = [d for d in decisions if d.decision == "deny"]
        if denies:
            return next((d for d in denies if d.rule is not None), denies[0])
        for decision in decisions:
            if decision.decision == "require_approval":
                return decision
        return Decision("allow", tool, verdict.rule, verdict.reason, text, facts)

    def _exec_context(self, tool: str, command: str, fact: CommandFact) -> dict[str, Any]:
        words = [a for a in fact.args if not a.startswith("-")]
        return {
            "tool": tool,
            "command": command,
            "subcommand": words[0] if words else "",
            "args": list(fact.args),
            "flags": sorted(fact.flags),
            "paths": list(fact.paths),
            "has_paths": bool(fact.paths),
            "outside_workspace": any(not within(p, self._roots) for p in fact.paths),
            "writes": list(fact.writes),
            "writes_outside_workspace": any(not within(p, self._roots) for p in fact.writes),
            "privileged": fact.privileged,
            "dynamic": fact.dynamic,
            "inline_code": fact.inline_code or "",
            "via": list(fact.via),
        }

    def _decisions(
        self,
        requests: list[Request],
        tool: str,
        command: str = "",
        facts: ShellFacts | None = None,
        only_named: bool = False,
    ) -> list[Decision]:
        """A decision per request; ``only_named``: permits count only if their scope names the action."""
        keys = [(action, resource["id"], json.dumps(context)) for action, resource, context in requests]
        missing = [n for n, key in enumerate(keys) if key not in self._answers]
        if missing:
            batch = [
                {
                    "principal": self._principal,
                    "action": _uid("Action", requests[n][0]),
                    "resource": requests[n][1],
                    "context": keys[n][2],
                }
                for n in missing
            ]
            results = cedarpy.is_authorized_batch(batch, self.compiled.policy_set, self._entities)
            if len(self._answers) + len(missing) > ANSWER_CACHE_SIZE:
                self._answers.clear()  # agents repeat themselves; a rare full reset is cheap
            for n, result in zip(missing, results, strict=True):
                # In file order, so that when two policies decide, the one named is always the same.
                infos = sorted(
                    (
                        self.compiled.policies[r]
                        for r in result.diagnostics.reasons
                        if r in self.compiled.policies
                    ),
                    key=lambda info: info.index,
                )
                self._answers[keys[n]] = (result.allowed, tuple(infos))
        return [
            self._decision(*self._answers[key], request, tool, command, facts, only_named)
            for key, request in zip(keys, requests, strict=True)
        ]

    def _decision(
        self,
        allowed: bool,
        infos: tuple[PolicyInfo, ...],
        request: Request,
        tool: str,
        command: str,
        facts: ShellFacts | None,
        only_named: bool,
    ) -> Decision:
        action, resource, _ = request
        if allowed and only_named:
            infos = tuple(i for i in infos if i.actions is not None and action in i.actions)
            allowed = bool(infos)
        what = f"{action} {resource['id']!r}" if action != "tool" else f"tool {resource['id']!r}"
        if not allowed:
            forbid = next((i for i in infos if i.effect == "forbid"), None)
            if forbid is None:
                reason = (
                    f"no policy permits {what} for role {self.identity.role!r} in {self.identity.env!r}"
                    " (default deny)"
                )
                return Decision("deny", tool, None, reason, command, facts)
            return Decision("deny", tool, forbid.name, _reason(forbid, what), command, facts)
        approval = next((i for i in infos if i.approval), None)
        if approval is not None:
            return Decision("require_approval", tool, approval.name, _reason(approval, what), command, facts)
        permit = infos[0] if infos else None
        return Decision(
            "allow",
            tool,
            permit.name if permit else None,
            _reason(permit, what) if permit else "",
            command,
            facts,
        )


def _reason(info: PolicyInfo, what: str) -> str:
    if info.reason:
        return info.reason
    verb = {"forbid": "forbids", "permit": "permits"}.get(info.effect, info.effect)
    return f"policy {info.name!r} {verb} {what}" + (" once a person approves" if info.approval else "")
