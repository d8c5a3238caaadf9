"""`clawtrace policy` and `clawtrace approvals`: the local commands on the shipped example
bundles, and the gateway commands against a real gateway process with real credentials."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from clawtrace.cli.main import cli
from clawtrace.protocol import Command, Hello, PolicyDecision
from clawtrace.protocol.client import MemoryOutbox, UplinkClient
from gateway_process import GatewayProcess

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "policies"
PROD = EXAMPLES / "prod"
PROD_TESTS = PROD / "tests.yaml"
WAIT = 15.0


def run(gateway: GatewayProcess | None, *args: str, token: str | None = None) -> Result:
    """``clawtrace ARGS`` in-process, as a user with ``token`` would run it."""
    env: dict[str, str | None] = {
        "CLAWTRACE_TOKEN": token,
        "CLAWTRACE_GATEWAY": gateway.http_url if gateway is not None else "http://127.0.0.1:9",
        "COLUMNS": "240",
        "FORCE_COLOR": None,
        "NO_COLOR": None,
    }
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def evaluate(*args: str) -> Result:
    return run(None, "policy", "eval", "--policy", str(PROD), *args)


def broken_copy(tmp_path: Path, old: str, new: str) -> tuple[Path, int]:
    """A copy of the prod bundle with ``old`` replaced by ``new``, and the line it is on."""
    bundle = tmp_path / "prod"
    shutil.copytree(PROD, bundle)
    policy = bundle / "policy.cedar"
    text = policy.read_text()
    assert old in text
    line = text[: text.index(old)].count("\n") + 1
    policy.write_text(text.replace(old, new, 1))
    return bundle, line


def statement_line(text: str, marker: str) -> int:
    """The line of the policy statement (its first annotation) that contains ``marker``."""
    before = text[: text.index(marker)]
    return before[: before.rindex("@id(")].count("\n") + 1


# --- policy check -------------------------------------------------------------------------


@pytest.mark.parametrize("env", ["dev", "staging", "prod"])
def test_check_lists_the_policies_of_each_shipped_bundle(env: str) -> None:
    result = run(None, "policy", "check", str(EXAMPLES / env))
    assert result.exit_code == 0, result.output
    assert re.search(
        rf"{EXAMPLES / env}: \d+ polic(y|ies), version [0-9a-f]{{12}}, no problems", result.output
    )
    assert "no-recursive-rm-outside-workspace" in result.output


def test_check_shows_name_effect_location_and_approval() -> None:
    result = run(None, "policy", "check", str(PROD))
    assert result.exit_code == 0, result.output
    text = (PROD / "policy.cedar").read_text()
    rows = {line.split()[0]: line.split() for line in result.output.splitlines() if line.startswith("prod-")}
    inline = rows["prod-inline-code-needs-approval"]
    line = statement_line(text, "prod-inline-code-needs-approval")
    assert inline[1:4] == ["permit", f"policy.cedar:{line}", "yes"]
    assert rows["prod-no-force-push"][1] == "forbid" and rows["prod-no-force-push"][3] == "-"
    assert "shell tools: exec (command); approvals wait 300s" in result.output


def test_check_of_a_broken_bundle_names_the_file_and_line(tmp_path: Path) -> None:
    bundle, line = broken_copy(tmp_path, "context.privileged };", "context.privilegd };")
    result = run(None, "policy", "check", str(bundle))
    assert result.exit_code == 1
    assert result.stdout == ""
    policy_line = statement_line((bundle / "policy.cedar").read_text(), "context.privilegd")
    assert policy_line < line
    assert f"{bundle / 'policy.cedar'}:{policy_line}: policy 'prod-no-privilege'" in result.stderr
    assert "privilegd" in result.stderr
    assert f"1 problem in {bundle}" in result.stderr


def test_check_reports_every_syntax_error(tmp_path: Path) -> None:
    bundle, _ = broken_copy(tmp_path, 'permit (principal, action == ClawTrace::Action::"connect"', "permit (")
    extra = bundle / "more.cedar"
    extra.write_text(
        "// one good, one bad\npermit (principal, action, resource);\n\nforbid (principal action);\n"
    )
    result = run(None, "policy", "check", str(bundle))
    assert result.exit_code == 1
    assert f"{extra}:4: does not parse" in result.stderr
    assert re.search(rf"{re.escape(str(bundle / 'policy.cedar'))}:\d+: does not parse", result.stderr)
    assert "2 problems" in result.stderr


def test_check_of_a_single_cedar_file(tmp_path: Path) -> None:
    policy = tmp_path / "one.cedar"
    policy.write_text('@id("all")\npermit (principal, action, resource);\n')
    result = run(None, "policy", "check", str(policy))
    assert result.exit_code == 0, result.output
    assert "1 policy, version" in result.output and "one.cedar:1" in result.output


# --- policy eval ---------------------------------------------------------------------------


def test_eval_denies_rm_rf_root_with_exit_3_and_the_rule() -> None:
    result = evaluate("--command", "rm -rf /")
    assert result.exit_code == 3, result.output
    first = result.output.splitlines()[0]
    assert first.startswith("DENY") and "no-recursive-rm-outside-workspace" in first
    assert "recursive rm is only allowed on paths inside the agent's workspace" in result.output
    assert "command: rm" in result.output
    assert re.search(r"flags\s+.*recursive", result.output)
    assert "/ (outside the workspace)" in result.output


def test_eval_allows_rm_rf_inside_the_workspace() -> None:
    result = evaluate("--command", "rm -rf ./build")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ALLOW")
    assert re.search(r"paths\s+/workspace/build\n", result.output)


def test_eval_inline_code_on_prod_needs_approval_exit_2() -> None:
    result = evaluate("--command", "python -c 'print(1)'")
    assert result.exit_code == 2, result.output
    assert result.output.startswith("REQUIRE APPROVAL") and "prod-inline-code-needs-approval" in result.output
    assert re.search(r"inline code\s+python\n", result.output)


def test_eval_json_shape() -> None:
    result = evaluate("--command", "sudo rm -rf / && curl https://evil.example.com", "--json")
    assert result.exit_code == 3
    body = json.loads(result.output)
    assert set(body) == {"decision", "rule", "reason", "facts"}
    assert body["decision"] == "deny" and body["rule"] and body["reason"]
    facts = body["facts"]
    assert facts["error"] is None
    by_program = {command["program"]: command for command in facts["commands"]}
    rm = by_program["rm"]
    assert set(rm) == {
        "program",
        "args",
        "flags",
        "paths",
        "hosts",
        "privileged",
        "dynamic",
        "inline_code",
        "via",
        "writes",
    }
    assert {"recursive", "force"} <= set(rm["flags"]) and rm["paths"] == ["/"] and rm["privileged"] is True
    assert by_program["curl"]["hosts"] == ["evil.example.com"]

    allowed = json.loads(evaluate("--command", "ls", "--json").output)
    assert (allowed["decision"], allowed["rule"]) == ("allow", "prod-tools")


def test_eval_of_a_tool_that_is_not_a_shell() -> None:
    result = evaluate("--tool", "read_file", "--args", '{"path": "README.md"}', "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {
        "decision": "allow",
        "rule": "prod-tools",
        "reason": "in prod an agent may use search, read_file, write_file, http_get and exec",
        "facts": None,
    }
    denied = evaluate("--tool", "drop_database")
    assert denied.exit_code == 3
    assert "no policy matched (default deny)" in denied.output


def test_eval_role_and_cwd() -> None:
    outside = evaluate("--command", "rm -rf cache", "--cwd", "/tmp", "--json")
    assert json.loads(outside.output)["facts"]["commands"][0]["paths"] == ["/tmp/cache"]
    assert outside.exit_code == 3
    inside = evaluate("--command", "rm -rf cache", "--cwd", "src", "--workspace", "/srv/agent")
    assert inside.exit_code == 0, inside.output
    assert "/srv/agent/src/cache" in inside.output
    assert evaluate("--command", "git push --force", "--role", "deployer").exit_code == 3


def test_eval_mistakes_exit_1_not_2_which_means_require_approval() -> None:
    bad_json = evaluate("--command", "ls", "--args", "{path: x}")
    assert bad_json.exit_code == 1 and "--args" in bad_json.output and "not JSON" in bad_json.output
    not_a_shell = evaluate("--tool", "read_file", "--command", "ls")
    assert not_a_shell.exit_code == 1
    assert "tool 'read_file' does not run shell commands in this bundle (its shell tools: exec)" in (
        not_a_shell.output
    )
    typo = evaluate("--comand", "ls")
    assert typo.exit_code == 1 and "--command" in typo.output
    relative = evaluate("--command", "ls", "--workspace", "work")
    assert relative.exit_code == 1 and "not an absolute path" in relative.output


def test_eval_on_a_broken_bundle_prints_the_problems(tmp_path: Path) -> None:
    bundle, _ = broken_copy(tmp_path, "context.privileged };", "context.privilegd };")
    result = run(None, "policy", "eval", "--policy", str(bundle), "--command", "ls")
    assert result.exit_code == 1
    assert "policy.cedar:" in result.stderr and "privilegd" in result.stderr


# --- policy test ---------------------------------------------------------------------------


def test_the_shipped_prod_table_passes() -> None:
    cases = yaml.safe_load(PROD_TESTS.read_text())
    assert len(cases) >= 30
    result = run(None, "policy", "test", str(PROD), str(PROD_TESTS))
    assert result.exit_code == 0, result.output
    assert f"all {len(cases)} cases passed" in result.output


def test_a_wrong_expectation_fails_and_names_the_case(tmp_path: Path) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text(
        "- command: rm -rf ./build\n"
        "  expect: allow\n"
        "- name: root is fine, says nobody\n"
        "  command: rm -rf /\n"
        "  expect: allow\n"
        "- name: wrong rule\n"
        "  command: git push -f\n"
        "  expect: deny\n"
        "  rule: prod-no-privilege\n"
        "- command: curl https://evil.example.com\n"
        "  expect: deny\n"
        "  rule: null\n"
    )
    result = run(None, "policy", "test", str(PROD), str(cases))
    assert result.exit_code == 1
    assert "2 of 4 cases failed" in result.output
    root = next(line for line in result.output.splitlines() if "#2 root is fine, says nobody" in line)
    assert "allow" in root and "deny by no-recursive-rm-outside-workspace" in root and " 3 " in root
    rule = next(line for line in result.output.splitlines() if "#3 wrong rule" in line)
    assert "deny by prod-no-privilege" in rule and "deny by prod-no-force-push" in rule
    assert "#1" not in result.output and "#4" not in result.output

    verbose = run(None, "policy", "test", str(PROD), str(cases), "-v")
    assert "#1" in verbose.output and "#4" in verbose.output and "ok" in verbose.output


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "- command: ls\n  expct: allow\n",
            "cases.yaml:1: case #1: unknown key 'expct' (did you mean 'expect'?)",
        ),
        (
            "- command: ls\n  expect: allow\n- command: ls\n  expect: maybe\n",
            "cases.yaml:3: case #2: expect must be",
        ),
        ("- command: ls\n  expect: allow\n  role: [a]\n", "case #1: role must be a string"),
        ("- tool: exec\n  expect: allow\n", "case #1: give the command exec runs"),
        ("- tool: read_file\n  command: ls\n  expect: allow\n", "does not run shell commands"),
        (
            "- command: ls\n  expect: allow: x\n",
            "cases.yaml:2: not valid YAML: mapping values are not allowed",
        ),
        ("command: ls\n", "expected a YAML list of cases"),
        ("[]\n", "no cases in the file"),
    ],
)
def test_case_file_errors_name_the_file_and_the_case(tmp_path: Path, text: str, expected: str) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text(text)
    result = run(None, "policy", "test", str(PROD), str(cases))
    assert result.exit_code == 1
    assert expected in result.stderr, result.stderr
    assert str(cases) in result.stderr


def test_every_problem_of_a_case_file_is_reported_at_once(tmp_path: Path) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text("- command: ls\n  expect: yes\n- name: second\n  comand: ls\n  expect: deny\n")
    result = run(None, "policy", "test", str(PROD), str(cases))
    assert result.exit_code == 1
    assert "case #1: expect must be one of allow, deny, require_approval (True)" in result.stderr
    assert "case #2 (second): unknown key 'comand' (did you mean 'command'?)" in result.stderr


# --- help ----------------------------------------------------------------------------------


def test_help_leads_to_the_policy_commands() -> None:
    top = run(None, "--help")
    assert "clawtrace policy eval" in top.output and "clawtrace approvals " in top.output
    group = run(None, "policy", "--help")
    for command in ("check", "eval", "test", "apply", "show", "rollback"):
        assert re.search(rf"^\s+{command}\s", group.output, re.MULTILINE), command
    eval_help = run(None, "policy", "eval", "--help")
    assert "0  allow" in eval_help.output and "2  require_approval" in eval_help.output
    assert "3  deny" in eval_help.output
    approvals = run(None, "approvals", "--help")
    for command in ("list", "approve", "reject"):
        assert re.search(rf"^\s+{command}\s", approvals.output, re.MULTILINE), command


# --- against a gateway: apply, show, rollback -----------------------------------------------


def test_apply_checks_locally_first(tmp_path: Path) -> None:
    # No gateway at all: the problems must come from the user's files, not a connection error.
    bundle, _ = broken_copy(tmp_path, "context.privileged };", "context.privilegd };")
    result = run(None, "policy", "apply", str(bundle), "--env", "prod", token="ct_unused")
    assert result.exit_code == 1
    assert f"{bundle / 'policy.cedar'}:" in result.stderr
    assert "cannot reach the gateway" not in result.output


def test_apply_show_rollback(gateway: GatewayProcess, tmp_path: Path) -> None:
    admin = gateway.token("prod", "admin")
    empty = run(gateway, "policy", "show", "--env", "prod", token=admin)
    assert empty.exit_code == 0, empty.output
    assert "prod has no policies applied yet" in empty.output

    first = run(gateway, "policy", "apply", str(PROD), "--env", "prod", token=admin)
    assert first.exit_code == 0, first.output
    version = re.search(r"prod: version ([0-9a-f]{12}) is active, applied from", first.output)
    assert version is not None, first.output
    again = run(gateway, "policy", "apply", str(PROD), "--env", "prod", token=admin)
    assert again.exit_code == 0, again.output
    assert f"prod: version {version[1]} unchanged" in again.output

    changed, _ = broken_copy(tmp_path, "files.pythonhosted.org", "pypi.python.org")
    second = run(gateway, "policy", "apply", str(changed), "--env", "prod", token=admin)
    assert second.exit_code == 0, second.output
    second_version = re.search(r"version ([0-9a-f]{12})", second.output)
    assert second_version is not None and second_version[1] != version[1]

    shown = run(gateway, "policy", "show", "--env", "prod", token=gateway.token("prod", "viewer"))
    assert shown.exit_code == 0, shown.output
    assert f"prod: version {second_version[1]}" in shown.output
    assert "prod-no-force-push" in shown.output and "policy.cedar:" in shown.output
    assert version[1] in shown.output  # in the history

    as_json = json.loads(run(gateway, "policy", "show", "--env", "prod", "--json", token=admin).output)
    assert as_json["active"]["version"] == second_version[1]
    assert "pypi.python.org" in as_json["active"]["files"]["policy.cedar"]
    assert [entry["version"] for entry in as_json["history"]][:2] == [second_version[1], version[1]]

    back = run(gateway, "policy", "rollback", "--env", "prod", "--version", version[1], token=admin)
    assert back.exit_code == 0, back.output
    assert f"prod: version {version[1]} is active again" in back.output
    after = json.loads(run(gateway, "policy", "show", "--env", "prod", "--json", token=admin).output)
    assert after["active"]["version"] == version[1]

    unknown = run(gateway, "policy", "rollback", "--env", "prod", "--version", "000000000000", token=admin)
    assert unknown.exit_code == 1
    assert "clawtrace policy show --env prod" in unknown.output


def test_apply_needs_an_admin(gateway: GatewayProcess) -> None:
    result = run(
        gateway, "policy", "apply", str(PROD), "--env", "prod", token=gateway.token("prod", "operator")
    )
    assert result.exit_code == 1
    assert "403" in result.output and "--token" in result.output


# --- against a gateway: approvals ------------------------------------------------------------


def now_ts() -> datetime:
    return datetime.now(UTC)


def wait_for(check: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def pending_ids(gateway: GatewayProcess, token: str) -> set[str]:
    result = run(gateway, "approvals", "--json", token=token)
    assert result.exit_code == 0, result.output
    return {row["id"] for row in json.loads(result.output)["approvals"]}


def test_no_approvals(gateway: GatewayProcess) -> None:
    result = run(gateway, "approvals", "--env", "dev", token=gateway.token("dev", "viewer"))
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "nothing is waiting for approval in dev"
    unknown = run(gateway, "approvals", "approve", "ap-nope", token=gateway.token("dev", "operator"))
    assert unknown.exit_code == 1
    assert "no approval 'ap-nope'" in unknown.output


async def test_approve_and_reject_reach_the_waiting_agent(gateway: GatewayProcess) -> None:
    received: asyncio.Queue[Command] = asyncio.Queue()

    async def on_command(command: Command) -> None:
        if command.action == "approval":
            await received.put(command)

    outbox = MemoryOutbox()
    client = UplinkClient(
        gateway.ws_url,
        Hello(agent="ap-agent", env="dev", region="eu-west-1"),
        outbox,
        token=gateway.token("dev"),
        on_command=on_command,
    )
    runner = asyncio.create_task(client.run())
    operator = gateway.token("dev", "operator")
    try:
        await asyncio.wait_for(client.connected.wait(), WAIT)
        for seq, approval_id in ((1, "ap-one"), (2, "ap-two")):
            outbox.append(
                PolicyDecision(
                    seq=seq,
                    ts=now_ts(),
                    session="s-1",
                    decision="require_approval",
                    tool="exec",
                    command="python -c 'print(1)'",
                    rule="prod-inline-code-needs-approval",
                    reason="inline code needs a person",
                    approval_id=approval_id,
                )
            )
        client.notify()
        await client.wait_acked(2, WAIT)
        await asyncio.to_thread(
            wait_for, lambda: pending_ids(gateway, operator) >= {"ap-one", "ap-two"}, "the approvals"
        )

        listed = await asyncio.to_thread(run, gateway, "approvals", "--env", "dev", token=operator)
        assert listed.exit_code == 0, listed.output
        row = next(line for line in listed.output.splitlines() if line.startswith("ap-one"))
        assert "pending" in row and "ap-agent" in row and "exec: python -c 'print(1)'" in row
        assert "prod-inline-code-needs-approval" in row and re.search(r"in \d+m", row)

        approved = await asyncio.to_thread(
            run, gateway, "approvals", "approve", "ap-one", "--reason", "one-off, ana", token=operator
        )
        assert approved.exit_code == 0, approved.output
        assert approved.output.startswith("approved ap-one (ap-agent, dev): exec: python -c 'print(1)'")
        command = await asyncio.wait_for(received.get(), WAIT)
        assert command.payload["approval_id"] == "ap-one" and command.payload["approved"] is True

        rejected = await asyncio.to_thread(
            run, gateway, "approvals", "reject", "ap-two", "--reason", "use the tool", token=operator
        )
        assert rejected.exit_code == 0, rejected.output
        assert "the agent is told it was refused: use the tool" in rejected.output
        command = await asyncio.wait_for(received.get(), WAIT)
        assert command.payload["approval_id"] == "ap-two" and command.payload["approved"] is False

        twice = await asyncio.to_thread(run, gateway, "approvals", "approve", "ap-one", token=operator)
        assert twice.exit_code == 1 and "already approved" in twice.output

        assert await asyncio.to_thread(pending_ids, gateway, operator) == set()
        everything = await asyncio.to_thread(run, gateway, "approvals", "--all", token=operator)
        assert everything.exit_code == 0, everything.output
        assert re.search(r"^ap-one\s+approved", everything.output, re.MULTILINE)
        assert re.search(r"^ap-two\s+rejected", everything.output, re.MULTILINE)

        viewer = await asyncio.to_thread(
            run, gateway, "approvals", "approve", "ap-two", token=gateway.token("dev", "viewer")
        )
        assert viewer.exit_code == 1 and "403" in viewer.output
    finally:
        await client.close()
        runner.cancel()
