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

    def forget_commands(self) -> None:
        """Drop the cached answers about commands and hosts, keeping those about tools
        (the benchmark measures commands seen for the first time this way)."""
        self._answers = {key: answer for key, answer in self._answers.items() if key[0] == "tool"}

    def decide(self, tool: str, args: Mapping[str, Any] | None = None, cwd: str | None = None) -> Decision:
        if self.quarantine is not None:
            return Decision("deny", tool, QUARANTINE_RULE, f"the agent is quarantined: {self.quarantine}")
        args = args or {}
        shell_arg = self.compiled.bundle.settings.shell_tools.get(tool)
        command = args.get(shell_arg) if shell_arg else None
        shell = shell_arg is not None
        if shell and not isinstance(command, str):
            # A shell tool called without its command (or with it under another name)
            # cannot be inspected: fail closed rather than judge the tool alone.
            reason = (
                f"shell tool {tool!r} must be called with its command as a string in {shell_arg!r}"
                " (bundle.toml [shell_tools]); nothing to inspect, so it is refused"
            )
            return Decision("deny", tool, None, reason)
        text = command if isinstance(command, str) else ""
        # Without the command in it, the tool's own answer is cached after its first call.
        tool_request: Request = ("tool", _uid("Tool", tool), {"shell": shell})
        if not shell:
            return self._decide([tool_request], tool)
        facts = normalise(text, cwd=cwd or self.workspace, home=self.home, env=self.env)
        if facts.error is not None:
            verdict = self._decide([tool_request], tool)
            if verdict.decision == "deny":
                return verdict
            context = {"command": text, "error": facts.error}
            # Fail closed: only a policy that names the "unparsed" action can let such a
            # command through (a blanket `permit (principal, action, resource)` does not).
            unparsed = self._decide([("unparsed", _uid("Tool", tool), context)], tool, text, facts, True)
            if unparsed.decision == "deny" and unparsed.rule is None:
                reason = f"the command does not parse ({facts.error}), so it is refused"
                return Decision("deny", tool, None, reason, text, facts)
            if unparsed.decision == "allow" and verdict.decision == "require_approval":
                return verdict  # the tool itself still needs a person
            return unparsed
        requests = [tool_request]
        for fact in facts.commands:
            requests.append(("exec", _uid("Program", fact.program), self._exec_context(tool, text, fact)))
            for host in fact.hosts:
                requests.append(("connect", _uid("Host", host), {"tool": tool, "program": fact.program}))
        return self._decide(requests, tool, text, facts)

    def _exec_context(self, tool: str, command: str, fact: CommandFact) -> dict[str, Any]:
        words = [a for a in fact.args if not a.startswith("-")]
        context = {
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
        # Only what the bundle's policies read: Cedar's cost grows with the context it parses.
        wanted = self.compiled.context_attrs
        return context if wanted is None else {k: v for k, v in context.items() if k in wanted}

    def _decide(
        self,
        requests: list[Request],
        tool: str,
        command: str = "",
        facts: ShellFacts | None = None,
        only_named: bool = False,
    ) -> Decision:
        """One decision for all ``requests`` (a tool call and what it would run), from one call into Cedar.

        A forbid that matched wins (it says more than "nothing permitted cd"), then a
        default deny, then an approval, then allow (named after the tool's permit).
        ``only_named``: permits count only if their scope names the action.
        """
        keys = [(action, resource["id"], json.dumps(context)) for action, resource, context in requests]
        answers = self._answers
        missing = [n for n, key in enumerate(keys) if key not in answers]
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
            if len(answers) + len(missing) > ANSWER_CACHE_SIZE:
                answers.clear()  # agents repeat themselves; a rare full reset is cheap
            policies = self.compiled.policies
            for n, result in zip(missing, results, strict=True):
                # In file order, so that when two policies decide, the one named is always the same.
                reasons = result.diagnostics.reasons
                ordered = sorted((policies[r] for r in reasons if r in policies), key=_index)
                answers[keys[n]] = (result.allowed, tuple(ordered))
        default_deny: Request | None = None
        approval: tuple[Request, PolicyInfo] | None = None
        for key, request in zip(keys, requests, strict=True):
            allowed, infos = answers[key]
            if allowed and only_named:
                infos = tuple(i for i in infos if i.actions is not None and request[0] in i.actions)
                allowed = bool(infos)
            if not allowed:
                forbid = next((i for i in infos if i.effect == "forbid"), None)
                if forbid is not None:
                    return Decision("deny", tool, forbid.name, _reason(forbid, request), command, facts)
                default_deny = default_deny or request
            elif approval is None:
                needs = next((i for i in infos if i.approval), None)
                if needs is not None:
                    approval = (request, needs)
        if default_deny is not None:
            reason = (
                f"no policy permits {_what(default_deny)} for role {self.identity.role!r}"
                f" in {self.identity.env!r} (default deny)"
            )
            return Decision("deny", tool, None, reason, command, facts)
        if approval is not None:
            request, needs = approval
            return Decision("require_approval", tool, needs.name, _reason(needs, request), command, facts)
        tool_infos = answers[keys[0]][1]
        permit = tool_infos[0] if tool_infos else None
        if permit is None:
            return Decision("allow", tool, None, "", command, facts)
        return Decision("allow", tool, permit.name, _reason(permit, requests[0]), command, facts)


def _index(info: PolicyInfo) -> int:
    return info.index


def _what(request: Request) -> str:
    action, resource, _ = request
    return f"tool {resource['id']!r}" if action == "tool" else f"{action} {resource['id']!r}"


def _reason(info: PolicyInfo, request: Request) -> str:
    if info.reason:
        return info.reason
    verb = {"forbid": "forbids", "permit": "permits"}.get(info.effect, info.effect)
    return f"policy {info.name!r} {verb} {_what(request)}" + (
        " once a person approves" if info.approval else ""
    )
