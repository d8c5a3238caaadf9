"""`clawtrace alerts`, `clawtrace audit` and `clawtrace agent` against a real gateway
process with real credentials; assertions are on what a user sees (and, where
the CLI changed something, on what the API then says)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from clawtrace.cli.main import cli
from clawtrace.protocol import Command, Hello
from clawtrace.protocol.client import MemoryOutbox, UplinkClient
from gateway_process import GatewayProcess

WAIT = 15.0

GOOD_RULES = """\
rules:
  - name: SlowThinking
    condition: reasoning_latency_p95_ms > 5000
    for: 5m
    severity: warning
    actions: [notify]
  - name: CostSpike          # overrides the shipped rule
    condition: cost_usd_per_hour > 20
    for: 2m
"""

# Line 3: an unknown metric; line 5: an unknown severity.
BAD_RULES = """\
rules:
  - name: Broken
    condition: tool_sucess_rate < 0.5
    for: 1m
    severity: urgent
"""


def run(gateway: GatewayProcess | None, *args: str, token: str | None = None, color: bool = False) -> Result:
    """``clawtrace ARGS`` in-process, as a user with ``token`` would run it."""
    env: dict[str, str | None] = {
        "CLAWTRACE_TOKEN": token,
        "COLUMNS": "200",
        "FORCE_COLOR": "1" if color else None,
        "NO_COLOR": None,
    }
    env["CLAWTRACE_GATEWAY"] = gateway.http_url if gateway is not None else "http://127.0.0.1:9"
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def table_row(output: str, first_cell: str) -> list[str]:
    """The cells of the table row that contains ``first_cell``, split on runs of spaces."""
    for line in output.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if first_cell in cells:
            return cells
    raise AssertionError(f"no row with {first_cell!r} in:\n{output}")


def post_events(gateway: GatewayProcess, agent: str, env: str, events: list[dict[str, Any]]) -> None:
    body = b"\n".join(json.dumps(e).encode() for e in events)
    response = httpx.post(
        f"{gateway.http_url}/v1/events",
        content=body,
        params={"agent": agent},
        headers={"Authorization": f"Bearer {gateway.token(env, 'agent')}"},
        timeout=WAIT,
    )
    assert response.status_code == 200, response.text
    assert response.json()["errors"] == [], response.text


def now_ts() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def a_log_line(gateway: GatewayProcess, agent: str, env: str) -> None:
    post_events(
        gateway,
        agent,
        env,
        [{"kind": "log", "seq": 1, "ts": now_ts(), "session": "s-1", "stream": "stdout", "line": "hello"}],
    )


def failed_tool_calls(count: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for i in range(count):
        at = now_ts()
        events.append(
            {
                "kind": "tool_call",
                "seq": 2 * i + 1,
                "ts": at,
                "session": "s-1",
                "call_id": f"c{i}",
                "tool": "shell",
                "args": {"cmd": "make"},
            }
        )
        events.append(
            {
                "kind": "tool_result",
                "seq": 2 * i + 2,
                "ts": at,
                "session": "s-1",
                "call_id": f"c{i}",
                "ok": False,
                "duration_ms": 12.0,
                "error": "exit status 2",
            }
        )
    return events


def eventually(check: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + WAIT
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


# --- silences ---------------------------------------------------------------------


def test_silence_is_created_listed_and_lifted(gateway: GatewayProcess) -> None:
    operator = gateway.token("*", "operator")
    viewer = gateway.token("*", "viewer")

    result = run(
        gateway, "alerts", "silence", "eu-*", "--for", "2h", "--reason", "maintenance, ana", token=operator
    )
    assert result.exit_code == 0, result.output
    assert "silenced eu-* in every environment" in result.output
    assert "(2h)" in result.output
    assert "matches 0 alerts now" in result.output
    match = re.search(r"silence id ([0-9a-f]+)", result.output)
    assert match, result.output
    silence_id = match.group(1)
    assert f"clawtrace alerts unsilence {silence_id}" in result.output

    # The API has it, for two hours.
    silences = gateway.get("/api/v1/silences").json()["silences"]
    assert [s["id"] for s in silences] == [silence_id]
    assert silences[0]["target"] == "eu-*"
    assert silences[0]["reason"] == "maintenance, ana"
    assert silences[0]["ends"] - silences[0]["starts"] == pytest.approx(7200, abs=1)

    listed = run(gateway, "alerts", "silences", token=viewer)
    assert listed.exit_code == 0, listed.output
    row = table_row(listed.output, silence_id)
    assert row[1:3] == ["eu-*", "all"]
    assert row[3].startswith("active, 1h59m left") or row[3].startswith("active, 2h00m left")
    assert row[5].startswith("operator:") and row[6] == "maintenance, ana"

    as_json = run(gateway, "alerts", "silences", "--json", token=viewer)
    assert json.loads(as_json.output)["silences"][0]["id"] == silence_id

    # A viewer may look but not lift it.
    refused = run(gateway, "alerts", "unsilence", silence_id, token=viewer)
    assert refused.exit_code == 1
    assert "403" in refused.output and "needs the operator role" in refused.output

    lifted = run(gateway, "alerts", "unsilence", silence_id, token=operator)
    assert lifted.exit_code == 0, lifted.output
    assert f"silence {silence_id} of eu-* ended at" in lifted.output
    assert "lifted by operator:" in lifted.output
    assert gateway.get("/api/v1/silences").json()["silences"] == []

    after = run(gateway, "alerts", "silences", token=viewer)
    assert "no silences in force" in after.output
    ended = run(gateway, "alerts", "silences", "--all", token=viewer)
    assert "lifted by operator:" in table_row(ended.output, silence_id)[3]

    unknown = run(gateway, "alerts", "unsilence", "nope", token=operator)
    assert unknown.exit_code == 1
    assert "no silence 'nope'" in unknown.output and "silences --all" in unknown.output


def test_silence_options_are_checked_before_anything_is_sent(gateway: GatewayProcess) -> None:
    operator = gateway.token("*", "operator")
    for bad in ("2x", "soon", "0"):
        result = run(gateway, "alerts", "silence", "a-1", "--for", bad, "--reason", "r", token=operator)
        assert result.exit_code == 2, result.output
        assert "Invalid value for '--for'" in result.output
        assert "30m" in result.output or "1h30m" in result.output, result.output
    missing_reason = run(gateway, "alerts", "silence", "a-1", "--for", "1h", token=operator)
    assert missing_reason.exit_code == 2 and "--reason" in missing_reason.output
    assert gateway.get("/api/v1/silences").json()["silences"] == []

    viewer = run(
        gateway,
        "alerts",
        "silence",
        "a-1",
        "--for",
        "1h",
        "--reason",
        "r",
        token=gateway.token("*", "viewer"),
    )
    assert viewer.exit_code == 1
    assert "needs the operator role" in viewer.output and "--token" in viewer.output


# --- rules ----------------------------------------------------------------------------


def test_rules_lists_the_shipped_rules_of_an_environment_with_an_agent(gateway: GatewayProcess) -> None:
    a_log_line(gateway, "st-1", "staging")
    viewer = gateway.token("*", "viewer")

    def listed() -> Result | None:
        result = run(gateway, "alerts", "rules", token=viewer)
        assert result.exit_code == 0, result.output
        return result if "staging" in result.output else None

    result = eventually(listed, "the staging environment in `alerts rules`")
    for name, condition in (
        ("DeadNode", "heartbeat_age_s > 45"),
        ("ReasoningLoop", "consecutive_failed_tool_calls > 10"),
        ("CostSpike", "cost_usd_per_hour > 5"),
    ):
        row = table_row(result.output, name)
        assert row[1] == condition
        assert row[6:] == ["defaults", "0", "0"]  # source, pending, firing
    assert table_row(result.output, "DeadNode")[3:6] == ["critical", "notify, restart", "no"]

    # The explicit subcommand and --env say the same; --json is the API's answer.
    explicit = run(gateway, "alerts", "rules", "list", "--env", "staging", token=viewer)
    assert explicit.exit_code == 0 and "ReasoningLoop" in explicit.output
    body = json.loads(run(gateway, "alerts", "rules", "--env", "staging", "--json", token=viewer).output)
    [staging] = body["environments"]
    assert [r["name"] for r in staging["rules"]] == ["DeadNode", "ReasoningLoop", "CostSpike"]


def test_rules_check_validates_a_file_without_a_gateway(tmp_path: Path) -> None:
    good = tmp_path / "prod.yaml"
    good.write_text(GOOD_RULES)
    result = run(None, "alerts", "rules", "check", str(good), "--env", "prod")
    assert result.exit_code == 0, result.output
    assert f"{good}: 2 rules, no problems" in result.output
    row = table_row(result.output, "SlowThinking")
    assert row[1:6] == ["reasoning_latency_p95_ms > 5000", "5m", "warning", "notify", "envs prod"]
    assert table_row(result.output, "CostSpike")[1:3] == ["cost_usd_per_hour > 20", "2m"]

    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_RULES)
    result = run(None, "alerts", "rules", "check", str(bad))
    assert result.exit_code == 1, result.output
    errors = result.stderr.splitlines()
    assert errors[0].startswith(f"{bad}:3: rules[0].condition: unknown metric 'tool_sucess_rate'")
    assert "did you mean 'tool_success_rate'" in errors[0]
    assert errors[1].startswith(f"{bad}:5: rules[0].severity: unknown severity 'urgent'")
    assert errors[2] == f"2 problems in {bad}"
    assert result.stdout == ""

    missing = run(None, "alerts", "rules", "check", str(tmp_path / "nope.yaml"))
    assert missing.exit_code == 1
    assert "nope.yaml: no such rules file" in missing.stderr

    wrong_env = tmp_path / "dev.yaml"
    wrong_env.write_text("rules:\n  - name: X\n    condition: cpu_percent > 90\n    scope: {envs: [prod]}\n")
    result = run(None, "alerts", "rules", "check", str(wrong_env), "--env", "dev")
    assert result.exit_code == 1
    assert f"{wrong_env}:4: rules[0].scope.envs[0]: 'prod' is another environment" in result.stderr


def test_rules_push_needs_an_admin_and_loads_the_file(gateway: GatewayProcess, tmp_path: Path) -> None:
    rules_file = tmp_path / "prod.yaml"
    rules_file.write_text(GOOD_RULES)

    refused = run(
        gateway,
        "alerts",
        "rules",
        "push",
        str(rules_file),
        "--env",
        "prod",
        token=gateway.token("*", "viewer"),
    )
    assert refused.exit_code == 1
    assert "403" in refused.output
    assert "needs the admin role in environment 'prod'" in refused.output
    operator = run(
        gateway,
        "alerts",
        "rules",
        "push",
        str(rules_file),
        "--env",
        "prod",
        token=gateway.token("prod", "operator"),
    )
    assert operator.exit_code == 1 and "needs the admin role" in operator.output
    assert not (gateway.data_dir / "alerts" / "prod.yaml").exists()

    admin = gateway.token("prod", "admin")
    pushed = run(gateway, "alerts", "rules", "push", str(rules_file), "--env", "prod", token=admin)
    assert pushed.exit_code == 0, pushed.output
    assert f"pushed {rules_file} as the rules of prod" in pushed.output
    assert "in force now (4): DeadNode, ReasoningLoop, CostSpike, SlowThinking" in pushed.output
    assert (gateway.data_dir / "alerts" / "prod.yaml").read_text() == GOOD_RULES

    listed = run(gateway, "alerts", "rules", "--env", "prod", token=admin)
    assert f"prod  rules file {gateway.data_dir / 'alerts' / 'prod.yaml'}" in listed.output
    assert table_row(listed.output, "SlowThinking")[6] == "file"
    assert table_row(listed.output, "CostSpike")[1:3] == ["cost_usd_per_hour > 20", "2m"]
    assert table_row(listed.output, "CostSpike")[6] == "file"
    assert table_row(listed.output, "DeadNode")[6] == "defaults"

    # The change is audited.
    audit = gateway.get("/api/v1/audit", target="prod").json()["entries"]
    assert audit[0]["action"] == "replace_rules" and audit[0]["actor"].startswith("admin:")

    # A bad file is refused here, before it reaches the gateway, naming the local file.
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_RULES)
    result = run(gateway, "alerts", "rules", "push", str(bad), "--env", "prod", token=admin)
    assert result.exit_code == 1
    assert f"{bad}:3: rules[0].condition" in result.stderr
    assert (gateway.data_dir / "alerts" / "prod.yaml").read_text() == GOOD_RULES


def test_rules_show_a_file_that_failed_to_load(gateway: GatewayProcess) -> None:
    rules_dir = gateway.data_dir / "alerts"
    rules_dir.mkdir(parents=True, exist_ok=True)
    (rules_dir / "qa.yaml").write_text(BAD_RULES)
    result = run(gateway, "alerts", "rules", "--env", "qa", token=gateway.token("*", "viewer"))
    assert result.exit_code == 0, result.output
    assert "rules file not loaded, previous rules kept:" in result.output
    assert f"{rules_dir / 'qa.yaml'}:5: rules[0].severity: unknown severity 'urgent'" in result.output
    # The environment goes on with the shipped rules.
    assert table_row(result.output, "ReasoningLoop")[6] == "defaults"

    coloured = run(gateway, "alerts", "rules", "--env", "qa", token=gateway.token("*", "viewer"), color=True)
    assert re.search(r"\x1b\[1;31m[^\x1b]*unknown severity 'urgent'", coloured.output), coloured.output


# --- a firing alert -----------------------------------------------------------------


def test_reasoning_loop_fires_shows_in_history_and_is_acknowledged(gateway: GatewayProcess) -> None:
    post_events(gateway, "loop-1", "dev", failed_tool_calls(11))
    viewer = gateway.token("dev", "viewer")

    def firing() -> dict[str, Any] | None:
        alerts = gateway.get("/api/v1/alerts", agent="loop-1").json()["alerts"]
        return next((a for a in alerts if a["rule"] == "ReasoningLoop" and a["state"] == "firing"), None)

    eventually(firing, "ReasoningLoop to fire")

    result = run(gateway, "alerts", token=viewer)
    assert result.exit_code == 0, result.output
    assert "1 alert: 1 firing" in result.output
    row = table_row(result.output, "ReasoningLoop/loop-1")
    assert row[0] == "firing"
    assert row[2:4] == ["dev", "11"]
    assert re.fullmatch(r"for \d+(\.\d)?s", row[4]), row
    assert row[5] == "critical"
    assert row[6] == "-"  # neither silenced nor acknowledged yet

    filtered = run(gateway, "alerts", "--rule", "CostSpike", token=viewer)
    assert filtered.exit_code == 0 and "no active alerts for rule CostSpike" in filtered.output
    as_json = json.loads(run(gateway, "alerts", "--json", token=viewer).output)
    assert [a["key"] for a in as_json["alerts"]] == ["ReasoningLoop/loop-1"]

    # Transitions reach the store on the engine's next tick (1 s).
    eventually(
        lambda: gateway.get("/api/v1/alerts/history", agent="loop-1").json()["transitions"],
        "the transition to be stored",
    )
    history = run(gateway, "alerts", "history", "--agent", "loop-1", "--since", "1h", token=viewer)
    assert history.exit_code == 0, history.output
    row = table_row(history.output, "ReasoningLoop/loop-1")
    assert row[2:5] == ["dev", "inactive -> firing", "11 (threshold 10)"]
    assert re.fullmatch(r"\d\d:\d\d:\d\d", row[0]) or re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", row[0])
    bad_since = run(gateway, "alerts", "history", "--since", "an hour", token=viewer)
    assert bad_since.exit_code == 2 and "Invalid value for '--since'" in bad_since.output

    # A viewer cannot acknowledge; an operator can, by key.
    refused = run(gateway, "alerts", "ack", "ReasoningLoop/loop-1", token=viewer)
    assert refused.exit_code == 1 and "needs the operator role" in refused.output
    unknown = run(gateway, "alerts", "ack", "ReasoningLoop/nobody", token=gateway.token("dev", "operator"))
    assert unknown.exit_code == 1
    assert "no live alert 'ReasoningLoop/nobody'" in unknown.output
    acked = run(gateway, "alerts", "ack", "ReasoningLoop/loop-1", token=gateway.token("dev", "operator"))
    assert acked.exit_code == 0, acked.output
    assert "acknowledged ReasoningLoop/loop-1 (firing, dev)" in acked.output

    alert = firing()
    assert alert is not None and alert["acknowledged_by"].startswith("operator:")
    after = run(gateway, "alerts", token=viewer)
    assert table_row(after.output, "ReasoningLoop/loop-1")[6].startswith("acked by operator:")

    # The remediation it tried (the agent posts over HTTP, so it is not connected) is audited.
    audit = run(gateway, "audit", "--target", "loop-1", token=viewer)
    assert audit.exit_code == 0, audit.output
    row = table_row(audit.output, "alert:ReasoningLoop")
    assert row[2:6] == ["restart", "loop-1", "dev", "failed"]
    assert "is not connected" in audit.output
    assert table_row(audit.output, "acknowledge")[5] == "ok"


# --- commands and the audit log ---------------------------------------------------------


def fleet_status(gateway: GatewayProcess, agent: str) -> str:
    rows = gateway.get("/api/v1/fleet", env="dev").json()["agents"]
    return next(str(r["status"]) for r in rows if r["agent"] == agent)


def test_quarantine_is_audited_and_release_lifts_it(gateway: GatewayProcess) -> None:
    a_log_line(gateway, "q-1", "dev")
    operator = gateway.token("dev", "operator")

    refused = run(gateway, "agent", "quarantine", "q-1", token=gateway.token("dev", "viewer"))
    assert refused.exit_code == 1
    # Refused on the role alone, before the agent is looked up: the fix names the credential's environment.
    assert "needs the operator role" in refused.output and "--env dev --role operator" in refused.output
    other_env = run(gateway, "agent", "quarantine", "q-1", token=gateway.token("prod", "operator"))
    assert other_env.exit_code == 1 and "no agent 'q-1'" in other_env.output

    result = run(
        gateway, "agent", "quarantine", "q-1", "--reason", "deleting files it should not", token=operator
    )
    assert result.exit_code == 0, result.output
    assert "quarantine q-1: quarantine recorded; delivered when the agent reconnects" in result.output
    eventually(lambda: fleet_status(gateway, "q-1") == "quarantined", "q-1 to be quarantined")

    audit = run(gateway, "audit", "--target", "q-1", "--since", "10m", token=operator)
    assert audit.exit_code == 0, audit.output
    row = table_row(audit.output, "quarantine")
    assert row[1].startswith("operator:")
    assert row[3:7] == ["q-1", "dev", "ok", "deleting files it should not"]
    assert "quarantine recorded" in row[7]

    released = run(gateway, "agent", "release", "q-1", token=operator)
    assert released.exit_code == 0, released.output
    assert "release q-1: quarantine lifted" in released.output
    eventually(lambda: fleet_status(gateway, "q-1") != "quarantined", "q-1 to be released")
    again = run(gateway, "agent", "release", "q-1", token=operator)
    assert again.exit_code == 1 and "agent 'q-1' is not quarantined" in again.output

    entries = json.loads(run(gateway, "audit", "--target", "q-1", "--json", token=operator).output)["entries"]
    assert [(e["action"], e["result"]) for e in entries] == [
        ("release", "failed"),
        ("release", "ok"),
        ("quarantine", "ok"),
    ]
    assert entries[1]["reason"].startswith("requested by operator credential")

    restart = run(gateway, "agent", "restart", "q-1", token=operator)
    assert restart.exit_code == 1
    assert "agent 'q-1' is not connected; the restart was not sent" in restart.output
    assert "clawtrace top" in restart.output


async def test_restart_reaches_a_connected_agent(gateway: GatewayProcess) -> None:
    received: asyncio.Queue[Command] = asyncio.Queue()

    async def on_command(command: Command) -> None:
        await received.put(command)

    client = UplinkClient(
        gateway.ws_url,
        Hello(agent="r-1", env="dev", region="eu-west-1"),
        MemoryOutbox(),
        token=gateway.token("dev"),
        on_command=on_command,
    )
    runner = asyncio.create_task(client.run())
    try:
        await asyncio.wait_for(client.connected.wait(), WAIT)
        result = await asyncio.to_thread(
            run,
            gateway,
            "agent",
            "restart",
            "r-1",
            "--reason",
            "stuck after the deploy",
            token=gateway.token("dev", "operator"),
        )
        assert result.exit_code == 0, result.output
        command = await asyncio.wait_for(received.get(), WAIT)
        assert (command.action, command.reason) == ("restart", "stuck after the deploy")
        assert result.output.strip() == f"restart r-1: restart command {command.id} sent to the node agent"
    finally:
        await client.close()
        runner.cancel()


def test_commands_without_a_credential_or_a_gateway_say_what_to_do(tmp_path: Path) -> None:
    no_token = run(None, "alerts")
    assert no_token.exit_code == 2 and "--token" in no_token.output
    unreachable = run(None, "audit", token="ct_x")
    assert unreachable.exit_code == 1
    assert "cannot reach the gateway at http://127.0.0.1:9" in unreachable.output
    assert "clawtrace up" in unreachable.output


def test_help_leads_to_the_new_commands() -> None:
    top = run(None, "--help")
    for line in ("clawtrace alerts ", "clawtrace agent quarantine", "clawtrace audit "):
        assert line in top.output
    alerts = run(None, "alerts", "--help")
    for command in ("list", "history", "ack", "silence", "silences", "unsilence", "rules"):
        assert re.search(rf"^\s+{command}\s", alerts.output, re.MULTILINE), command
    rules = run(None, "alerts", "rules", "--help")
    assert "check" in rules.output and "push" in rules.output
    typo = run(None, "alerts", "histroy")
    assert typo.exit_code == 2 and "No such command 'histroy'" in typo.output
