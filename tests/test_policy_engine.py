"""Decisions through Cedar: bundles validated on load, the rm -rf table, approvals, quarantine.

The shell table of tests/test_policy_shell.py runs here through a real Cedar
policy that forbids recursive rm outside the workspace (and permits the rest),
so every flagged command must come back "deny" from the engine with that
policy's id, and every allowed one "allow".
"""

from __future__ import annotations

from pathlib import Path

import pytest

from clawtrace.policy import (
    AgentIdentity,
    PolicyBundle,
    PolicyEngine,
    PolicyError,
    compile_bundle,
    load_bundle,
)
from test_policy_shell import ALLOWED, FLAGGED, HOME, WORKSPACE

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "policies"
RM_POLICY = """
@id("everything-else")
permit (principal, action, resource);

@id("no-recursive-rm-outside-workspace")
@reason("recursive rm is only allowed on paths inside the agent's workspace")
forbid (principal, action == ClawTrace::Action::"exec", resource == ClawTrace::Program::"rm")
when
{
  context.flags.contains("recursive") &&
  (context.outside_workspace || context.dynamic || !context.has_paths)
};
"""


def engine_for(files: dict[str, str], env: str = "prod", role: str = "coder") -> PolicyEngine:
    compiled = compile_bundle(PolicyBundle(env=env, files=files).with_version())
    return PolicyEngine(compiled, AgentIdentity("a-1", env, role, "eu"), workspace=WORKSPACE, home=HOME)


@pytest.fixture(scope="module")
def rm_engine() -> PolicyEngine:
    return engine_for({"rm.cedar": RM_POLICY})


@pytest.mark.parametrize("command", FLAGGED)
def test_flagged_commands_are_denied_by_cedar(rm_engine: PolicyEngine, command: str) -> None:
    decision = rm_engine.decide("exec", {"command": command})
    assert decision.decision == "deny", (command, decision)
    # Either the rm rule, or the command did not parse (fail closed, no permit for "unparsed" here
    # would be needed: the blanket permit covers it, so a parse error must still be refused).
    assert decision.rule == "no-recursive-rm-outside-workspace" or "does not parse" in decision.reason, (
        decision
    )


@pytest.mark.parametrize("command", ALLOWED)
def test_allowed_commands_pass_cedar(rm_engine: PolicyEngine, command: str) -> None:
    decision = rm_engine.decide("exec", {"command": command})
    assert decision.decision == "allow", (command, decision)


def test_the_issue_examples_through_the_shipped_prod_bundle() -> None:
    compiled = compile_bundle(load_bundle(EXAMPLES / "prod", "prod"))
    engine = PolicyEngine(compiled, AgentIdentity("a-1", "prod"), workspace=WORKSPACE, home=HOME)
    for command in (
        "rm -rf /",
        "rm -r -f /",
        "/bin/rm --recursive --force /",
        "sudo rm -fr /",
        'bash -c "rm -rf /"',
        "echo / | xargs rm -rf",
        "find / -delete",
    ):
        decision = engine.decide("exec", {"command": command})
        assert decision.decision == "deny", command
        assert decision.rule in ("no-recursive-rm-outside-workspace", "prod-no-privilege"), (
            command,
            decision,
        )
    for command in (
        "rm -rf ./build",
        "echo 'rm -rf /'",
        "grep -r 'rm -rf /' .",
        "git commit -m 'remove rm -rf / footgun'",
    ):
        assert engine.decide("exec", {"command": command}).decision == "allow", command
    inline = engine.decide("exec", {"command": "python -c 'print(1)'"})
    assert (inline.decision, inline.rule) == ("require_approval", "prod-inline-code-needs-approval")
    assert engine.decide("search", {"q": "x"}).decision == "allow"
    unknown_tool = engine.decide("delete_database", {})
    assert unknown_tool.decision == "deny" and unknown_tool.rule is None
    assert "default deny" in unknown_tool.reason


def test_every_shipped_example_bundle_validates() -> None:
    for env in ("dev", "staging", "prod"):
        compiled = compile_bundle(load_bundle(EXAMPLES / env, env))
        assert compiled.policies and compiled.bundle.version


def test_an_invalid_policy_is_refused_with_file_line_and_policy() -> None:
    broken = RM_POLICY.replace("context.outside_workspace", "context.outside_workspce")
    with pytest.raises(PolicyError) as caught:
        compile_bundle(PolicyBundle(env="prod", files={"rm.cedar": broken}))
    [problem] = caught.value.problems
    assert problem.startswith("rm.cedar:5: policy 'no-recursive-rm-outside-workspace': ")
    assert "outside_workspce" in problem
    with pytest.raises(PolicyError, match=r"rm\.cedar:2: does not parse"):
        compile_bundle(PolicyBundle(env="prod", files={"rm.cedar": "\npermit (principal action, resource);"}))


def test_quarantine_denies_everything() -> None:
    engine = engine_for({"rm.cedar": RM_POLICY})
    engine.quarantine = "ReasoningLoop"
    decision = engine.decide("search", {})
    assert (decision.decision, decision.rule) == ("deny", "quarantine")
    engine.quarantine = None
    assert engine.decide("search", {}).decision == "allow"


def test_the_same_policies_give_the_same_version() -> None:
    a = PolicyBundle(env="prod", files={"rm.cedar": RM_POLICY}).with_version()
    b = PolicyBundle(env="prod", files={"rm.cedar": RM_POLICY + "\n"}).with_version()
    c = PolicyBundle(env="prod", files={"rm.cedar": RM_POLICY.replace("everything", "all")}).with_version()
    assert a.version == b.version != c.version


def test_a_shell_tool_without_its_command_is_refused(rm_engine: PolicyEngine) -> None:
    for args in ({"cmd": "rm -rf /"}, {}, {"command": ["rm", "-rf", "/"]}):
        decision = rm_engine.decide("exec", args)
        assert decision.decision == "deny" and "must be called with its command" in decision.reason, args


def test_force_pushes_in_any_spelling_are_refused_in_prod() -> None:
    compiled = compile_bundle(load_bundle(EXAMPLES / "prod", "prod"))
    engine = PolicyEngine(compiled, AgentIdentity("a-1", "prod"), workspace=WORKSPACE, home=HOME)
    for command in (
        "git push --force origin main",
        "git push -f",
        "git push origin +main",
        "git push --force-with-lease origin main",
    ):
        decision = engine.decide("exec", {"command": command})
        assert (decision.decision, decision.rule) == ("deny", "prod-no-force-push"), command
    assert engine.decide("exec", {"command": "git push origin main"}).decision == "allow"


def test_an_unparsed_command_cannot_skip_the_tools_approval() -> None:
    engine = engine_for(
        {
            "p.cedar": """
@id("exec-needs-a-person") @approval
permit (principal, action == ClawTrace::Action::"tool", resource == ClawTrace::Tool::"exec");
@id("unparsed-ok")
permit (principal, action == ClawTrace::Action::"unparsed", resource);
"""
        }
    )
    decision = engine.decide("exec", {"command": 'rm -rf / "'})
    assert (decision.decision, decision.rule) == ("require_approval", "exec-needs-a-person")


def test_requests_carry_only_the_context_the_policies_read() -> None:
    compiled = compile_bundle(PolicyBundle(env="prod", files={"rm.cedar": RM_POLICY}))
    assert compiled.context_attrs == {"flags", "outside_workspace", "dynamic", "has_paths"}
    # A policy that reads `context` as a whole gets all of it.
    connect = 'permit (principal, action == ClawTrace::Action::"connect", resource)'
    whole = f"{RM_POLICY}\n{connect} when {{ context == context }};"
    assert compile_bundle(PolicyBundle(env="prod", files={"rm.cedar": whole})).context_attrs is None
