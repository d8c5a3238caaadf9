"""The ClawTrace plugin for OpenClaw, end to end: a real gateway, a real OpenClaw, a scripted model.

OpenClaw 2026.9.6 runs ``openclaw agent --local`` turns against :class:`ScriptedModel`
(tests/openclaw.py) with the plugin of ``integrations/openclaw`` installed by
``openclaw plugins install --link``. Tool calls really run in OpenClaw's workspace.
What the gateway stored, what the model was told and what happened on disk are checked.

Safety: the ``rm -rf /`` the scripted model asks for must be refused by the policy. In case
the plugin were broken, ``rm`` for OpenClaw's exec tool is a stand-in script that only records
that it ran (``tools.exec.pathPrepend``; OpenClaw puts the system folders before the PATH it
inherits, so only that setting works), and the first, harmless command checks it is in place.
"""

from __future__ import annotations

import json
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway_process import GatewayProcess, free_port
from openclaw import OpenClawHome, ScriptedModel, ToolCall, Turn, Usage
from waiting import wait_for

REPO = Path(__file__).resolve().parent.parent
PLUGIN = REPO / "integrations" / "openclaw"
DEV_BUNDLE = REPO / "examples" / "policies" / "dev"
AGENT = "oc-e2e"
RULE = "no-recursive-rm-outside-workspace"
WAIT = 20.0
# The harmless call: writes a marker and where `rm` resolves for the exec tool (the stand-in).
MARKER = "echo clawtrace-was-here > marker.txt; command -v rm >> marker.txt"

pytestmark = pytest.mark.timeout(420)


def rule_reason(bundle: Path, rule: str) -> str:
    """The @reason of the policy with @id(rule), read from the bundle's files."""
    for path in sorted(bundle.glob("*.cedar")):
        match = re.search(rf'@id\("{re.escape(rule)}"\)\s*@reason\("([^"]*)"\)', path.read_text())
        if match:
            return match.group(1)
    raise AssertionError(f"no policy {rule!r} with a @reason in {bundle}")


def apply_bundle(gateway: GatewayProcess, env: str, bundle: Path) -> None:
    files = {p.name: p.read_text() for p in sorted(bundle.glob("*.cedar"))}
    response = httpx.put(
        f"{gateway.http_url}/api/v1/policies/{env}",
        json={"files": files},
        headers={"Authorization": f"Bearer {gateway.token(env, 'admin')}"},
        timeout=WAIT,
    )
    assert response.status_code == 200, response.text


def fake_bin(root: Path) -> Path:
    """A folder with a stand-in ``rm`` that only leaves a trace (``rm-ran``) next to itself."""
    folder = root / "fakebin"
    folder.mkdir(parents=True, exist_ok=True)
    rm = folder / "rm"
    rm.write_text(f'#!/bin/sh\necho "$@" >> "{folder / "rm-ran"}"\nexit 0\n')
    rm.chmod(rm.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return folder


def openclaw_home(root: Path, model: ScriptedModel, plugin_config: dict[str, Any]) -> OpenClawHome:
    """An OpenClaw home with the plugin linked, enabled and configured (as docs/integrations.md says)."""
    home = OpenClawHome(root, model, {"tools": {"exec": {"pathPrepend": [str(fake_bin(root))]}}})
    home.cli("plugins", "install", "--link", str(PLUGIN), "--force", "--accept-capabilities")
    config = home.update_config(
        {
            "plugins": {
                "entries": {
                    "clawtrace": {
                        "enabled": True,
                        "hooks": {"allowConversationAccess": True},
                        "config": plugin_config,
                    }
                }
            }
        }
    )
    assert str(PLUGIN) in config["plugins"]["load"]["paths"], config["plugins"]
    return home


def tool_messages(request: dict[str, Any]) -> list[str]:
    """The text of every tool result message in one chat-completions request."""
    out: list[str] = []
    for message in request.get("messages", []):
        if message.get("role") != "tool":
            continue
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        out.append(str(content))
    return out


def by_kind(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["kind"] == kind]


@pytest.fixture
def no_tracebacks(gateway: GatewayProcess) -> Iterator[None]:
    yield
    log = gateway.log()
    assert "Traceback" not in log, log[-5000:]


def test_plugin_streams_a_run_and_enforces_policy(
    gateway: GatewayProcess, tmp_path: Path, no_tracebacks: None
) -> None:
    apply_bundle(gateway, "dev", DEV_BUNDLE)
    reason = rule_reason(DEV_BUNDLE, RULE)
    script = [
        Turn(
            reasoning="The user wants a marker file; I will write it with exec.",
            text="Writing the marker.",
            tool_calls=[ToolCall("exec", {"command": MARKER}, id="call-marker")],
            usage=Usage(prompt_tokens=1000, completion_tokens=50, cached_tokens=200, cost=0.0042),
        ),
        Turn(
            reasoning="Now I will clean up the whole disk.",
            tool_calls=[ToolCall("exec", {"command": "rm -rf /"}, id="call-rm")],
            usage=Usage(prompt_tokens=1300, completion_tokens=20),
        ),
        Turn(reasoning="The policy refused it; I stop here.", text="Done: marker written, cleanup refused."),
        Turn(reasoning="A second run of a restarted OpenClaw.", text="Second run done."),
    ]
    with ScriptedModel(script) as model:
        home = openclaw_home(
            tmp_path / "openclaw",
            model,
            {"url": gateway.http_url, "token": gateway.token("dev", "agent"), "agentId": AGENT, "env": "dev"},
        )
        proc = home.agent("Write the marker file, then clean up.")
        assert proc.returncode == 0, home.describe(proc)
        assert model.answered == 3 and model.overflow == 0, home.describe(proc)

        # The harmless call really ran; the refused one did not, and the model was told why.
        fakebin = tmp_path / "openclaw" / "fakebin"
        marker = (home.workspace / "marker.txt").read_text().split()
        assert marker == ["clawtrace-was-here", str(fakebin / "rm")], (
            "the exec tool would not use the stand-in rm"
        )
        assert not (fakebin / "rm-ran").exists(), "rm ran despite the policy"
        told = tool_messages(model.requests[2])
        assert any(reason in text and RULE in text for text in told), told

        def stored() -> list[dict[str, Any]] | None:
            events = gateway.events(AGENT)
            return events if by_kind(events, "lifecycle")[-1:] and events[-1]["kind"] == "lifecycle" else None

        events = wait_for(stored, WAIT, "the run's events, up to its final lifecycle event")
        seqs = [e["seq"] for e in events]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        run = events[0]["session"]
        assert all(e["session"] == run for e in events if e["kind"] != "heartbeat"), events

        assert [e["state"] for e in by_kind(events, "lifecycle")] == ["started", "stopped"]
        assert by_kind(events, "heartbeat") and all(h["rss_bytes"] > 0 for h in by_kind(events, "heartbeat"))
        assert by_kind(events, "lifecycle")[1]["exit_code"] == 0
        assert [e["text"] for e in by_kind(events, "thought")] == [t.reasoning for t in script[:3]]

        calls = by_kind(events, "llm_call")
        assert len(calls) == 3, calls
        assert {c["model"] for c in calls} == {"scripted/scripted-1"}
        first, second, _ = calls
        assert (first["input_tokens"], first["output_tokens"], first["cached_input_tokens"]) == (
            1000,
            50,
            200,
        )
        assert first["cost_usd"] == pytest.approx(0.0042)
        assert (second["input_tokens"], second["output_tokens"]) == (1300, 20)
        assert "cost_usd" not in second  # unknown cost: ClawTrace prices the tokens itself
        assert all(c["duration_ms"] >= 0 for c in calls)

        tool_calls = {e["call_id"]: e for e in by_kind(events, "tool_call")}
        results = {e["call_id"]: e for e in by_kind(events, "tool_result")}
        assert len(by_kind(events, "tool_call")) == len(by_kind(events, "tool_result")) == 2, events
        assert set(tool_calls) == set(results) == {"call-marker", "call-rm"}
        assert tool_calls["call-marker"]["tool"] == "exec"
        assert tool_calls["call-marker"]["args"] == {"command": MARKER}
        assert results["call-marker"]["ok"] is True and results["call-marker"]["duration_ms"] > 0
        assert tool_calls["call-rm"]["args"] == {"command": "rm -rf /"}
        assert results["call-rm"]["ok"] is False
        assert reason in results["call-rm"]["error"] and RULE in results["call-rm"]["error"]
        # Order inside the run: a call's thought and llm_call come before its tool_call and tool_result.
        kinds = [
            e["kind"] for e in events if e["kind"] in ("thought", "llm_call", "tool_call", "tool_result")
        ]
        assert kinds[:4] == ["thought", "llm_call", "tool_call", "tool_result"], kinds

        # Both decisions are in the audit log, made by the gateway for this agent.
        def audited() -> list[dict[str, Any]] | None:
            response = gateway.get(
                "/api/v1/audit", gateway.token("dev", "viewer"), action="policy", target=AGENT
            )
            entries: list[dict[str, Any]] = response.json()["entries"]
            return entries if len(entries) >= 2 else None

        entries = wait_for(audited, WAIT, "two policy decisions in the audit log")
        decisions = {e["result"]: e for e in entries}
        assert set(decisions) == {"allow", "deny"}, entries
        deny = decisions["deny"]
        assert (deny["actor"], deny["env"], deny["reason"]) == (f"agent:{AGENT}", "dev", reason)
        assert deny["detail"]["rule"] == RULE
        assert deny["detail"]["command"] == "rm -rf /"
        assert deny["detail"]["source"] == "authorize"
        assert decisions["allow"]["detail"]["command"] == MARKER

        # A restarted OpenClaw (a new process, same agent id) numbers above the first one: all stored.
        proc = home.agent("Say something.")
        assert proc.returncode == 0, home.describe(proc)

        def second_run() -> list[dict[str, Any]] | None:
            later = [e for e in gateway.events(AGENT) if e["seq"] > seqs[-1]]
            return (
                later
                if [e.get("state") for e in by_kind(later, "lifecycle")] == ["started", "stopped"]
                else None
            )

        later = wait_for(second_run, WAIT, "the second run's events")
        assert [e["text"] for e in by_kind(later, "thought")] == [script[3].reasoning]
        assert len(by_kind(later, "llm_call")) == 1
        assert {e["session"] for e in later if e["kind"] != "heartbeat"} != {run}
    agents = {a["agent"]: a for a in gateway.agents()}
    assert agents[AGENT]["env"] == "dev"


def unreachable_config(gateway: GatewayProcess, env: str, **extra: Any) -> dict[str, Any]:
    """Plugin settings that point at a port where nothing listens."""
    return {
        "url": f"http://127.0.0.1:{free_port()}",
        "token": gateway.token(env, "agent"),
        "agentId": AGENT,
        "env": env,
        **extra,
    }


def test_unreachable_control_plane_in_prod_blocks_tools(gateway: GatewayProcess, tmp_path: Path) -> None:
    """env prod, no failMode: closed; the gateway cannot be reached, so the tool does not run."""
    script = [
        Turn(tool_calls=[ToolCall("exec", {"command": "echo ran > closed.txt"}, id="call-closed")]),
        Turn(text="Could not run it."),
    ]
    with ScriptedModel(script) as model:
        home = openclaw_home(tmp_path / "openclaw", model, unreachable_config(gateway, "prod"))
        proc = home.agent("Write closed.txt.")
        assert proc.returncode == 0, home.describe(proc)
        assert model.answered == 2, home.describe(proc)
        assert not (home.workspace / "closed.txt").exists(), "the tool ran with failMode closed"
        told = tool_messages(model.requests[1])
        assert any("failMode is closed" in text for text in told), told


def test_unreachable_control_plane_fail_open_runs_tools(
    gateway: GatewayProcess, tmp_path: Path, no_tracebacks: None
) -> None:
    """failMode open (explicit, even in prod): the tool runs without a decision; the events that
    could not be sent are spooled at exit and delivered, in order, by the next OpenClaw start."""
    script = [
        Turn(tool_calls=[ToolCall("exec", {"command": "echo ran > open.txt"}, id="call-open")]),
        Turn(text="Ran it."),
        Turn(reasoning="The gateway is back.", text="Back online."),
    ]
    with ScriptedModel(script) as model:
        config = unreachable_config(gateway, "prod", failMode="open", endFlushTimeoutMs=200)
        home = openclaw_home(tmp_path / "openclaw", model, config)
        proc = home.agent("Write open.txt.")
        assert proc.returncode == 0, home.describe(proc)
        assert (home.workspace / "open.txt").read_text().strip() == "ran"

        # What could not be sent was kept, in order, in the OpenClaw state folder.
        spool = home.state_dir / "clawtrace" / "events.spool.ndjson"
        kept = [json.loads(line) for line in spool.read_text().splitlines()]
        kinds = [e["kind"] for e in kept]
        assert "tool_call" in kinds and "tool_result" in kinds and kinds[-1] == "lifecycle", kinds
        assert [e["seq"] for e in kept] == sorted(e["seq"] for e in kept)
        [result] = [e for e in kept if e["kind"] == "tool_result"]
        assert result["ok"] is True and result["call_id"] == "call-open"
        assert any("ran without a policy decision" in e.get("line", "") for e in kept), kept
        assert {e["agent"] for e in kept} == {AGENT}
        assert int((home.state_dir / "clawtrace" / "events.seq").read_text()) >= kept[-1]["seq"]

        # The gateway is reachable again: the next start sends the spool first, then its own run.
        home.update_config({"plugins": {"entries": {"clawtrace": {"config": {"url": gateway.http_url}}}}})
        proc = home.agent("Are you there?")
        assert proc.returncode == 0, home.describe(proc)

    def both_runs() -> list[dict[str, Any]] | None:
        events = gateway.events(AGENT)
        return events if len(by_kind(events, "lifecycle")) == 4 else None

    events = wait_for(both_runs, WAIT, "the spooled run and the new one")
    assert [e["seq"] for e in events[: len(kept)]] == [e["seq"] for e in kept]
    assert [e["state"] for e in by_kind(events, "lifecycle")] == ["started", "stopped"] * 2
    assert [e["text"] for e in by_kind(events, "thought")] == ["The gateway is back."]
    assert not spool.exists()


def test_require_approval_without_an_approval_surface_blocks(
    gateway: GatewayProcess, tmp_path: Path, no_tracebacks: None
) -> None:
    """require_approval goes to OpenClaw's plugin approvals; a `--local` run has no one to ask,
    so OpenClaw refuses the call, and the plugin reports that settlement to the audit log."""
    cedar = (
        '@id("every-command-needs-approval")\n@reason("a person must approve every command")\n'
        "@approval\npermit (principal, action, resource);\n"
    )
    response = httpx.put(
        f"{gateway.http_url}/api/v1/policies/staging",
        json={"files": {"policy.cedar": cedar}},
        headers={"Authorization": f"Bearer {gateway.token('staging', 'admin')}"},
        timeout=WAIT,
    )
    assert response.status_code == 200, response.text
    script = [
        Turn(tool_calls=[ToolCall("exec", {"command": "echo ran > approved.txt"}, id="call-ask")]),
        Turn(text="It needs approval."),
    ]
    with ScriptedModel(script) as model:
        config = {
            "url": gateway.http_url,
            "token": gateway.token("staging", "agent"),
            "agentId": AGENT,
            "env": "staging",
        }
        home = openclaw_home(tmp_path / "openclaw", model, config)
        proc = home.agent("Write approved.txt.")
        assert proc.returncode == 0, home.describe(proc)
        assert model.answered == 2, home.describe(proc)
        assert not (home.workspace / "approved.txt").exists(), "the call ran without an approval"
        told = tool_messages(model.requests[1])
        assert any("approval" in text.lower() for text in told), told

    def audited() -> list[dict[str, Any]] | None:
        response = gateway.get(
            "/api/v1/audit", gateway.token("staging", "viewer"), action="policy", target=AGENT
        )
        entries: list[dict[str, Any]] = response.json()["entries"]
        return entries if len(entries) >= 2 else None

    asked, settled = sorted(wait_for(audited, WAIT, "the decision and its settlement"), key=lambda e: e["ts"])
    assert (asked["result"], asked["detail"]["source"]) == ("require_approval", "authorize")
    assert asked["detail"]["rule"] == settled["detail"]["rule"] == "every-command-needs-approval"
    assert settled["result"] == "deny" and settled["detail"]["decided_by"].startswith("openclaw:")
    [result] = by_kind(gateway.events(AGENT, kind="tool_result"), "tool_result")
    assert result["ok"] is False and result["call_id"] == "call-ask"
