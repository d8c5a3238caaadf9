"""Tool policy enforced by the node agent: the SDK, the shell shim, HTTP authorize, approvals.

Real `clawtrace run` processes against a real gateway, with the bundle
delivered the way a restarted node agent finds it: ``<spool>/policy.json``.
The command handling (policy bundles, approvals, quarantine) also runs
in-process against a real spool, so each outcome can be checked exactly.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import msgspec
import pytest

from clawtrace.node import shim
from clawtrace.node.agent import NodeAgent, NodeConfig
from clawtrace.node.policy import POLICY_FILE, AuthorizeRequest
from clawtrace.node.spool import Spool
from clawtrace.node.supervisor import RestartPolicy
from clawtrace.policy import PolicyBundle, load_bundle
from clawtrace.policy.bundle import BundleSettings
from clawtrace.protocol.codec import decode_event
from clawtrace.protocol.messages import Command, Event, Lifecycle, Log, PolicyDecision, ToolCall, ToolResult
from gateway_process import GatewayProcess
from node_process import AGENTS, PY, NodeAgentProcess
from waiting import wait_for

T = TypeVar("T")

EXAMPLES = Path(__file__).parent.parent / "examples" / "policies"
RM_RULE = "no-recursive-rm-outside-workspace"
RM_REASON = "recursive rm is only allowed on paths inside the agent's workspace"
APPROVAL_CEDAR = """
@id("tools")
permit (principal, action == ClawTrace::Action::"tool", resource)
when { resource != ClawTrace::Tool::"deploy" };

@id("deploy-needs-approval")
@approval
@reason("deploys need a person's go-ahead")
permit (principal, action == ClawTrace::Action::"tool", resource == ClawTrace::Tool::"deploy");
"""


def prod_bundle(env: str = "dev") -> PolicyBundle:
    # The prod example's policies, as the bundle of the test agents' environment.
    return load_bundle(EXAMPLES / "prod", env)


def approval_bundle(timeout: float = 600.0, env: str = "dev") -> PolicyBundle:
    settings = BundleSettings(approval_timeout_seconds=timeout)
    return PolicyBundle(env=env, files={"deploy.cedar": APPROVAL_CEDAR}, settings=settings).with_version()


def seed(spool_dir: Path, bundle: PolicyBundle) -> None:
    spool_dir.mkdir(parents=True, exist_ok=True)
    (spool_dir / POLICY_FILE).write_bytes(msgspec.json.encode(bundle))


async def until(check: Callable[[], object], seconds: float = 20, interval: float = 0.02) -> None:
    for _ in range(int(seconds / interval)):
        if check():
            return
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {seconds:g} s")


def agent_cmd(*args: object) -> list[str]:
    return [PY, str(AGENTS / "policy_agent.py"), *map(str, args)]


def last_json(text: str) -> dict[str, Any]:
    return dict(json.loads(text.strip().splitlines()[-1]))


def stored(gateway: GatewayProcess, agent: str = "a-1") -> list[dict[str, Any]]:
    try:
        return gateway.events(agent)
    except httpx.HTTPError:
        return []


@pytest.fixture
def nodes() -> Iterator[list[NodeAgentProcess]]:
    started: list[NodeAgentProcess] = []
    yield started
    for node in started:
        node.close()


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over the node agent's Unix socket (what `curl --unix-socket` does)."""

    def __init__(self, socket_path: str) -> None:
        super().__init__("localhost", timeout=30)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(30)
        sock.connect(self.socket_path)
        self.sock = sock


def http_call(
    conn: UnixHTTPConnection, method: str, path: str, body: object = None
) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, json.loads(response.read())


def authorize(socket_path: str, body: dict[str, Any]) -> dict[str, Any]:
    conn = UnixHTTPConnection(socket_path)
    try:
        status, answer = http_call(conn, "POST", "/v1/authorize", body)
    finally:
        conn.close()
    assert status == 200, answer
    return answer


def start_waiting_node(
    tmp_path: Path,
    gateway: GatewayProcess | None,
    nodes: list[NodeAgentProcess],
    options: list[str] | None = None,
) -> tuple[NodeAgentProcess, dict[str, Any], Path]:
    info, stop = tmp_path / "env.json", tmp_path / "stop"
    node = NodeAgentProcess(tmp_path, gateway, agent_cmd("wait", info, stop), options=options)
    nodes.append(node)
    env = wait_for(lambda: info.exists() and json.loads(info.read_text() or "null"), 20, "the child to start")
    return node, env, stop


# --- the SDK under a real node agent -----------------------------------------------


def test_sdk_tool_calls_are_decided_by_the_node_agent_and_audited(
    tmp_path: Path, gateway: GatewayProcess, nodes: list[NodeAgentProcess]
) -> None:
    bundle = prod_bundle()
    seed(tmp_path / "spool", bundle)
    node = NodeAgentProcess(tmp_path, gateway, agent_cmd("sdk"))
    nodes.append(node)
    assert node.wait() == 0, node.stderr()
    result = last_json(node.stdout())
    assert result["enforced"] is True
    root = result["root"]
    assert result["ran_rm_root"] is False
    assert root["rule"] == RM_RULE and root["reason"] == RM_REASON and root["command"] == "rm -rf /"
    assert (
        root["text"]
        == f"tool call 'exec' denied by policy (rule '{RM_RULE}'): {RM_REASON} [command: rm -rf /]"
    )
    assert result["build_authorization"] == "allow" and result["build_removed"] is True
    assert result["async"]["rule"] == "prod-no-privilege"
    assert result["authorize"]["decision"] == "deny" and result["authorize"]["rule"] is None
    assert "no policy permits tool 'delete_database'" in result["authorize"]["reason"]
    assert result["search_allowed"] is True

    def complete() -> list[dict[str, Any]] | None:
        events = stored(gateway)
        return events if len([e for e in events if e["kind"] == "policy"]) >= 5 else None

    events = wait_for(complete, 20, "the policy events at the gateway")
    policy = [e for e in events if e["kind"] == "policy"]
    assert {e["policy_version"] for e in policy} == {bundle.version}
    refused = next(e for e in policy if e.get("rule") == RM_RULE)
    assert (
        refused["decision"] == "deny" and refused["command"] == "rm -rf /" and refused["reason"] == RM_REASON
    )
    # The refused call's own events, in order: the call, its decision, its failed result.
    of_call = [e for e in events if e.get("call_id") == refused["call_id"]]
    assert [e["kind"] for e in of_call] == ["tool_call", "policy", "tool_result"]
    assert of_call[0]["args"] == {"command": "rm -rf /"}
    assert of_call[2]["ok"] is False
    assert of_call[2]["error"] == f"denied by policy: {RM_RULE}: {RM_REASON}"
    allowed = next(e for e in policy if e.get("command") == "rm -rf ./build")
    assert allowed["decision"] == "allow"
    build = [e["kind"] for e in events if e.get("call_id") == allowed["call_id"]]
    assert build == ["tool_call", "policy", "tool_result"]
    # authorize() asks without a call: a decision, no tool_call.
    asked = next(e for e in policy if e["tool"] == "delete_database")
    assert asked["decision"] == "deny" and "call_id" not in asked


def test_sdk_refuses_tool_calls_when_the_enforcing_node_agent_is_unreachable(tmp_path: Path) -> None:
    code = (
        "from clawtrace import sdk\n"
        "try:\n"
        "    with sdk.tool_call('search', {'q': 'x'}):\n"
        "        print('ran')\n"
        "except sdk.PolicyDenied as exc:\n"
        "    print(exc.rule, '|', exc)\n"
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith("CLAWTRACE_")}
    gone = str(tmp_path / "gone.sock")
    enforcing = subprocess.run(
        [PY, "-c", code],
        env={**base, "CLAWTRACE_SOCKET": gone, "CLAWTRACE_POLICY": "enforce"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    rule, text = enforcing.stdout.strip().split(" | ")
    assert rule == "node-agent-unreachable"
    assert f"the node agent at {gone} did not answer" in text, text
    # Without a node agent that says it enforces policy, nothing is enforced (as before).
    plain = subprocess.run([PY, "-c", code], env=base, capture_output=True, text=True, timeout=30)
    assert plain.stdout.strip() == "ran"


# --- the shell shim ------------------------------------------------------------------


def test_shell_shim_refuses_rm_outside_the_workspace_and_runs_the_rest(
    tmp_path: Path, gateway: GatewayProcess, nodes: list[NodeAgentProcess]
) -> None:
    seed(tmp_path / "spool", prod_bundle())
    # Outside the workspace, and harmless if the shim ever let it through: the test would see it gone.
    canary = tmp_path.parent / f"canary-{uuid.uuid4().hex}"
    canary.mkdir()
    try:
        node = NodeAgentProcess(tmp_path, gateway, agent_cmd("shell", canary), options=["--shell-policy"])
        nodes.append(node)
        assert node.wait() == 0, node.stderr()
        result = last_json(node.stdout())
        assert canary.exists() and result["canary_kept"] is True
    finally:
        shutil.rmtree(canary, ignore_errors=True)
    assert result["echo"] == {"status": 0, "stdout": "hi\n", "stderr": ""}
    assert result["rm"]["status"] == 126 and result["rm"]["stdout"] == ""
    assert result["rm"]["stderr"] == f"clawtrace: denied by policy {RM_RULE}: {RM_REASON}\n"
    assert result["nested"]["status"] == 126 and RM_RULE in result["nested"]["stderr"]
    assert result["bash"] == {"status": 0, "stdout": "from bash\n", "stderr": ""}
    assert result["script"]["status"] == 0 and result["script"]["stdout"] == "built\n"
    assert result["shell_env"] == str((tmp_path / "spool" / "shell-shims" / "bash").resolve())

    def decisions() -> list[dict[str, Any]] | None:
        policy = [e for e in stored(gateway) if e["kind"] == "policy"]
        return policy if len(policy) >= 5 else None

    policy = wait_for(decisions, 20, "the shim's decisions at the gateway")
    assert {e["tool"] for e in policy} == {"exec"}
    by_command = {e["command"]: e for e in policy}
    assert by_command["echo hi"]["decision"] == "allow"
    assert by_command[f"rm -rf {canary}"]["decision"] == "deny"
    assert by_command[f"rm -rf {canary}"]["rule"] == RM_RULE
    assert by_command["sh build.sh"]["decision"] == "allow"


def test_shim_reads_the_command_like_a_shell_does() -> None:
    assert shim.command_of("sh", ["-c", "echo hi"]) == "echo hi"
    assert shim.command_of("bash", ["-lc", "rm -rf /", "name", "arg"]) == "rm -rf /"
    assert shim.command_of("bash", ["-o", "pipefail", "-e", "-c", "ls | wc"]) == "ls | wc"
    assert shim.command_of("bash", ["--norc", "--rcfile", "x", "-c", "--", "ls"]) == "ls"
    assert shim.command_of("sh", ["build.sh", "fast"]) == "sh build.sh fast"
    assert shim.command_of("sh", ["-e", "my script.sh"]) == "sh -e 'my script.sh'"
    assert shim.command_of("bash", []) == "bash"
    assert shim.command_of("bash", ["-s"]) == "bash -s"


def test_shim_fails_closed_without_a_node_agent(tmp_path: Path) -> None:
    gone = tmp_path / "gone.sock"
    done = subprocess.run(
        [PY, "-I", shim.__file__, "--socket", str(gone), "--shell", "/bin/sh", "--", "sh", "-c", "echo hi"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 126 and done.stdout == ""
    assert done.stderr.startswith(f"clawtrace: the node agent is not reachable at {gone} (")
    assert "refusing to run: echo hi. Is `clawtrace run` still running?" in done.stderr


# --- HTTP authorize on the local socket --------------------------------------------------


def test_http_authorize_over_the_unix_socket(
    tmp_path: Path, gateway: GatewayProcess, nodes: list[NodeAgentProcess]
) -> None:
    bundle = prod_bundle()
    seed(tmp_path / "spool", bundle)
    node, env, stop = start_waiting_node(tmp_path, gateway, nodes)
    sock = env["CLAWTRACE_SOCKET"]
    assert env["CLAWTRACE_POLICY"] == "enforce"
    conn = UnixHTTPConnection(sock)
    # One keep-alive connection for several requests, as HTTP clients do.
    status, denied = http_call(
        conn, "POST", "/v1/authorize", {"tool": "exec", "args": {"command": "rm -rf /"}, "cwd": str(tmp_path)}
    )
    assert status == 200
    assert denied == {
        "decision": "deny",
        "tool": "exec",
        "rule": RM_RULE,
        "reason": RM_REASON,
        "command": "rm -rf /",
        "policy_version": bundle.version,
        "call_id": None,
        "approval_id": None,
        "decided_by": None,
    }
    status, allowed = http_call(conn, "POST", "/v1/authorize", {"tool": "search", "args": {"q": "x"}})
    assert status == 200 and allowed["decision"] == "allow" and allowed["rule"] == "prod-tools"
    status, error = http_call(conn, "POST", "/v1/authorize", b"{not json")
    assert status == 400 and "not JSON" in error["error"]
    status, error = http_call(conn, "POST", "/v1/authorize", {"args": {}})
    assert status == 400 and 'only "tool" is required' in error["error"]
    status, error = http_call(conn, "GET", "/v1/authorize")
    assert status == 405 and "use POST" in error["error"]
    status, error = http_call(conn, "GET", "/v2/nothing")
    assert status == 404 and "POST /v1/authorize" in error["error"]
    status, info = http_call(conn, "GET", "/v1/policy")
    assert status == 200
    assert info["policy_version"] == bundle.version and info["role"] == "default" and info["env"] == "dev"
    assert info["workspace"] == str(tmp_path.resolve())
    conn.close()

    if shutil.which("curl"):
        curl = subprocess.run(
            [
                "curl", "-sS", "--unix-socket", sock, "http://localhost/v1/authorize",
                "-d", json.dumps({"tool": "exec", "args": {"command": "rm -rf ./build"}}),
            ],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert curl.returncode == 0, curl.stderr
        assert json.loads(curl.stdout)["decision"] == "allow"

    # The line protocol on the same socket: a malformed question gets an error line, not silence.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.settimeout(10)
        raw.connect(sock)
        raw.sendall(b'{"type": "authorize", "id": 7, "args": {}}\n')
        answer = json.loads(raw.makefile("rb").readline())
    assert answer["type"] == "error" and answer["id"] == 7 and "tool" in answer["message"]

    stop.touch()
    assert node.wait() == 0, node.stderr()
    policy = wait_for(
        lambda: [e for e in stored(gateway) if e["kind"] == "policy"][2:] and stored(gateway), 20, "decisions"
    )
    tools = [e["tool"] for e in policy if e["kind"] == "policy"]
    assert tools.count("exec") >= 2 and "search" in tools


def test_quarantine_denies_every_call_and_release_restores(
    tmp_path: Path, gateway: GatewayProcess, nodes: list[NodeAgentProcess]
) -> None:
    seed(tmp_path / "spool", prod_bundle())
    node, env, stop = start_waiting_node(tmp_path, gateway, nodes)
    sock = env["CLAWTRACE_SOCKET"]
    operator = gateway.token("dev", "operator")
    wait_for(lambda: any(a["connected"] for a in gateway.agents()), 20, "the node agent to connect")
    assert authorize(sock, {"tool": "search"})["decision"] == "allow"

    def command(action: str) -> None:
        response = httpx.post(
            f"{gateway.http_url}/api/v1/agents/a-1/commands",
            json={"action": action, "reason": f"test {action}"},
            headers={"Authorization": f"Bearer {operator}"},
            timeout=10,
        )
        assert response.status_code == 202, response.text

    command("quarantine")
    denied = wait_for(
        lambda: (a := authorize(sock, {"tool": "search"}))["decision"] == "deny" and a, 20, "the quarantine"
    )
    assert denied["rule"] == "quarantine" and "test quarantine" in denied["reason"]
    # Whatever the call: the deny-all bundle.
    assert authorize(sock, {"tool": "exec", "args": {"command": "ls"}})["rule"] == "quarantine"
    command("release")
    wait_for(lambda: authorize(sock, {"tool": "search"})["decision"] == "allow", 20, "the release")
    stop.touch()
    assert node.wait() == 0, node.stderr()


# --- the node agent's command handling, in-process -------------------------------------


def make_agent(tmp_path: Path, **options: Any) -> NodeAgent:
    config = NodeConfig(
        agent="a-1",
        env="dev",
        command=["true"],
        gateway="ws://127.0.0.1:9",
        spool_dir=tmp_path / "spool",
        workspace=str(tmp_path),
        **options,
    )
    agent = NodeAgent(config)
    agent.spool = Spool(config.spool_dir, "a-1")
    return agent


def spooled(agent: NodeAgent) -> list[Event]:
    assert agent.spool is not None
    return [decode_event(raw) for _, raw in agent.spool.pending(0, 10_000)]


def ask(agent: NodeAgent, tool: str, command: str | None = None, **fields: Any) -> Any:
    args = {"command": command} if command is not None else {}
    return agent.policy.decide(AuthorizeRequest(tool=tool, args=args, **fields))


def policy_command(bundle: PolicyBundle | dict[str, Any], command_id: str) -> Command:
    payload = bundle if isinstance(bundle, dict) else msgspec.to_builtins(bundle)
    return Command(id=command_id, action="policy", reason="test", payload=payload)


async def test_policy_command_swaps_the_bundle_and_refuses_an_invalid_one(tmp_path: Path) -> None:
    agent = make_agent(tmp_path)
    no_bundle = ask(agent, "exec", "rm -rf /")
    assert (no_bundle.decision, no_bundle.rule) == ("allow", "no-bundle")
    assert "--policy-default allow" in no_bundle.reason

    good = prod_bundle()
    await agent._on_command(policy_command(good, "c-1"))
    assert agent.policy.version == good.version
    saved = (tmp_path / "spool" / POLICY_FILE).read_bytes()
    assert msgspec.json.decode(saved, type=PolicyBundle) == good
    refused = ask(agent, "exec", "rm -rf /")
    assert (refused.decision, refused.rule, refused.policy_version) == ("deny", RM_RULE, good.version)

    broken = PolicyBundle(
        env="dev", files={"broken.cedar": "permit (principal, action, resource"}
    ).with_version()
    await agent._on_command(policy_command(broken, "c-2"))
    elsewhere = prod_bundle(env="prod")
    await agent._on_command(policy_command(elsewhere, "c-3"))
    await agent._on_command(policy_command({"files": "nope"}, "c-4"))
    # The last good bundle stays in force and on disk.
    assert agent.policy.version == good.version
    assert (tmp_path / "spool" / POLICY_FILE).read_bytes() == saved
    assert ask(agent, "exec", "rm -rf /").rule == RM_RULE
    notes = [e.line for e in spooled(agent) if isinstance(e, Log)]
    assert len(notes) == 3 and all(e.startswith("clawtrace: policy bundle ") for e in notes)
    assert (
        f"bundle {broken.version} refused, keeping bundle {good.version}: broken.cedar:1: does not parse"
        in notes[0]
    )
    assert "is for environment 'prod', but this agent runs in 'dev'" in notes[1]
    assert "(not a bundle) refused" in notes[2] and "not a policy bundle" in notes[2]

    # A restarted node agent starts with the last good bundle.
    assert agent.spool is not None
    agent.spool.close()
    again = make_agent(tmp_path)
    again._load_saved_policy()
    assert again.policy.version == good.version
    assert ask(again, "exec", "rm -rf ./build").decision == "allow"
    assert again.spool is not None
    again.spool.close()


async def test_without_a_bundle_the_policy_default_decides_and_is_recorded(tmp_path: Path) -> None:
    agent = make_agent(tmp_path, policy_default="deny")
    ruling = ask(agent, "search", call_id="c-9")
    assert (ruling.decision, ruling.rule) == ("deny", "no-bundle")
    assert "--policy-default deny" in ruling.reason
    decisions = [e for e in spooled(agent) if isinstance(e, PolicyDecision)]
    assert [(d.decision, d.rule, d.call_id, d.policy_version) for d in decisions] == [
        ("deny", "no-bundle", "c-9", None)
    ]


async def test_quarantine_is_the_deny_all_bundle_and_survives_a_restart(tmp_path: Path) -> None:
    agent = make_agent(tmp_path)
    agent.policy.apply(approval_bundle())
    pending = asyncio.create_task(agent.policy.authorize({"tool": "deploy"}))
    await until(agent.policy.pending)
    await agent._on_command(Command(id="q-1", action="quarantine", reason="runaway"))
    answer = await asyncio.wait_for(pending, 5)
    assert (answer["decision"], answer["decided_by"]) == ("deny", "quarantine")
    ruling = ask(agent, "search")
    assert (ruling.decision, ruling.rule) == ("deny", "quarantine") and "runaway" in ruling.reason
    assert agent.spool is not None
    agent.spool.close()

    restarted = make_agent(tmp_path)
    assert ask(restarted, "search").rule == "quarantine"  # before any bundle is loaded, too
    restarted._load_saved_policy()
    assert ask(restarted, "search").rule == "quarantine"
    await restarted._on_command(Command(id="r-1", action="release"))
    assert ask(restarted, "search").decision == "allow"
    states = [e.state for e in spooled(restarted) if isinstance(e, Lifecycle)]
    assert states == ["quarantined", "released"]
    assert restarted.spool is not None
    restarted.spool.close()


async def test_require_approval_waits_for_the_approval_command_or_times_out(tmp_path: Path) -> None:
    agent = make_agent(tmp_path)
    agent.policy.apply(approval_bundle(timeout=0.5))
    interims: list[dict[str, Any]] = []

    async def call(call_id: str) -> dict[str, Any]:
        body = {"tool": "deploy", "args": {"service": "web"}, "call_id": call_id, "report": True}
        return await agent.policy.authorize(body, interims.append)

    async def answer(call_id: str, approved: bool) -> dict[str, Any]:
        task = asyncio.create_task(call(call_id))
        await until(lambda: any(p.call_id == call_id for p in agent.policy.pending()))
        approval_id = next(p.approval_id for p in agent.policy.pending() if p.call_id == call_id)
        payload = {"approval_id": approval_id, "approved": approved, "by": "operator:alice", "reason": "ok"}
        await agent._on_command(Command(id=f"cmd-{call_id}", action="approval", payload=payload))
        return await asyncio.wait_for(task, 5)

    approved = await answer("c-1", True)
    assert approved["decision"] == "allow" and approved["decided_by"] == "operator:alice"
    assert (
        approved["reason"] == "approved by operator:alice: ok" and approved["rule"] == "deploy-needs-approval"
    )
    rejected = await answer("c-2", False)
    assert (rejected["decision"], rejected["reason"]) == ("deny", "rejected by operator:alice: ok")
    started = time.monotonic()
    expired = await asyncio.wait_for(call("c-3"), 5)
    assert time.monotonic() - started >= 0.45
    assert (expired["decision"], expired["decided_by"]) == ("deny", "timeout")
    assert expired["reason"].startswith("no one approved it within 0.5 s")
    assert [i["decision"] for i in interims] == ["require_approval"] * 3
    assert all(i["timeout_seconds"] == 0.5 and i["approval_id"] for i in interims)
    # An answer for an approval that is no longer pending changes nothing.
    stale = {"approval_id": interims[0]["approval_id"], "approved": False, "by": "operator:bob"}
    await agent._on_command(Command(id="late", action="approval", payload=stale))

    events = spooled(agent)
    decisions = [(e.call_id, e.decision, e.decided_by) for e in events if isinstance(e, PolicyDecision)]
    assert decisions == [
        ("c-1", "require_approval", None),
        ("c-1", "allow", "operator:alice"),
        ("c-2", "require_approval", None),
        ("c-2", "deny", "operator:alice"),
        ("c-3", "require_approval", None),
        ("c-3", "deny", "timeout"),
    ]
    ids = {e.approval_id for e in events if isinstance(e, PolicyDecision) and e.call_id == "c-1"}
    assert ids == {interims[0]["approval_id"]}
    assert [e.call_id for e in events if isinstance(e, ToolCall)] == ["c-1", "c-2", "c-3"]
    failed = [(e.call_id, e.error) for e in events if isinstance(e, ToolResult)]
    assert failed == [
        ("c-2", "denied by policy: deploy-needs-approval: rejected by operator:alice: ok"),
        ("c-3", f"denied by policy: deploy-needs-approval: {expired['reason']}"),
    ]
    assert agent.spool is not None
    agent.spool.close()


async def test_the_sdk_blocks_until_a_person_decides(tmp_path: Path, gateway: GatewayProcess) -> None:
    # The node agent in this process (so the test can answer as the gateway
    # would), its child a real SDK agent, its events stored by a real gateway.
    seed(tmp_path / "spool", approval_bundle())
    config = NodeConfig(
        agent="a-1",
        env="dev",
        command=agent_cmd("approval"),
        gateway=gateway.ws_url,
        token=gateway.token("dev", "agent"),
        spool_dir=tmp_path / "spool",
        cwd=str(tmp_path),
        restart=RestartPolicy.NEVER,
        reconnect_max=0.5,
        echo=False,
    )
    agent = NodeAgent(config)
    run = asyncio.create_task(agent.run())
    try:
        for number, approved in ((1, True), (2, False)):
            await until(lambda: agent.policy.pending())
            (waiting,) = agent.policy.pending()
            await asyncio.sleep(0.3)  # the child really is waiting meanwhile
            payload = {"approval_id": waiting.approval_id, "approved": approved, "by": "admin:carol"}
            await agent._on_command(Command(id=f"a-{number}", action="approval", payload=payload))
            await until(lambda: not agent.policy.pending())
        assert await asyncio.wait_for(run, 30) == 0
    finally:
        if not run.done() and agent.supervisor is not None:
            agent.supervisor.shutdown(signal.SIGTERM)
            await asyncio.wait_for(run, 30)

    def result() -> dict[str, Any] | None:
        lines = [e["line"] for e in stored(gateway) if e["kind"] == "log" and e["stream"] == "stdout"]
        return last_json(lines[-1]) if lines else None

    out = wait_for(result, 20, "the child's summary at the gateway")
    assert out["first"]["ran"] is True and out["first"]["decided_by"] == "admin:carol"
    assert out["first"]["waited"] >= 0.3
    assert out["second"]["ran"] is False and out["second"]["decided_by"] == "admin:carol"
    assert out["second"]["rule"] == "deploy-needs-approval"
    assert out["second"]["text"].startswith(
        "tool call 'deploy' denied by policy (rule 'deploy-needs-approval')"
    )
    policy = [e for e in stored(gateway) if e["kind"] == "policy"]
    assert [(e["decision"], e.get("decided_by")) for e in policy] == [
        ("require_approval", None),
        ("allow", "admin:carol"),
        ("require_approval", None),
        ("deny", "admin:carol"),
    ]


async def test_http_clients_can_wait_for_an_approval_or_poll_it(tmp_path: Path) -> None:
    agent = make_agent(tmp_path)
    agent.policy.apply(approval_bundle(timeout=60))
    sock = await agent.local.start()

    def call(method: str, path: str, body: object = None) -> tuple[int, dict[str, Any]]:
        conn = UnixHTTPConnection(sock)
        try:
            return http_call(conn, method, path, body)
        finally:
            conn.close()

    try:
        # "wait": false answers require_approval at once; the approval is then polled.
        status, asked = await asyncio.to_thread(
            call, "POST", "/v1/authorize", {"tool": "deploy", "wait": False}
        )
        assert status == 200 and asked["decision"] == "require_approval" and asked["timeout_seconds"] == 60
        approval_id = asked["approval_id"]
        status, state = await asyncio.to_thread(call, "GET", f"/v1/approvals/{approval_id}")
        assert (status, state["decision"]) == (200, "require_approval")
        status, info = await asyncio.to_thread(call, "GET", "/v1/policy")
        assert [p["approval_id"] for p in info["pending_approvals"]] == [approval_id]
        polled = asyncio.create_task(asyncio.to_thread(call, "GET", f"/v1/approvals/{approval_id}?wait=20"))
        payload = {"approval_id": approval_id, "approved": True, "by": "operator:dan"}
        await asyncio.sleep(0.2)
        await agent._on_command(Command(id="ok-1", action="approval", payload=payload))
        status, state = await asyncio.wait_for(polled, 10)
        assert (status, state["decision"], state["decided_by"]) == (200, "allow", "operator:dan")

        # By default the request itself waits for the person.
        waiting = asyncio.create_task(asyncio.to_thread(call, "POST", "/v1/authorize", {"tool": "deploy"}))
        await until(agent.policy.pending)
        (pending,) = agent.policy.pending()
        payload = {
            "approval_id": pending.approval_id,
            "approved": False,
            "by": "operator:dan",
            "reason": "no",
        }
        await agent._on_command(Command(id="no-1", action="approval", payload=payload))
        status, final = await asyncio.wait_for(waiting, 10)
        assert (status, final["decision"], final["reason"]) == (200, "deny", "rejected by operator:dan: no")
        status, missing = await asyncio.to_thread(call, "GET", "/v1/approvals/nope")
        assert status == 404 and "no approval 'nope' here" in missing["error"]
    finally:
        await agent.local.close()
        assert agent.spool is not None
        agent.spool.close()


def test_a_bundle_and_approvals_from_the_gateway(
    tmp_path: Path, gateway: GatewayProcess, nodes: list[NodeAgentProcess]
) -> None:
    # The whole path: an admin applies a bundle at the gateway, the node agent enforces it,
    # a require_approval waits at the gateway until an operator answers it there.
    node, env, stop = start_waiting_node(tmp_path, gateway, nodes)
    sock = env["CLAWTRACE_SOCKET"]
    wait_for(lambda: any(a["connected"] for a in gateway.agents()), 20, "the node agent to connect")
    assert authorize(sock, {"tool": "deploy"})["rule"] == "no-bundle"
    admin, operator = gateway.token("dev", "admin"), gateway.token("dev", "operator")
    bundle = approval_bundle(timeout=60)
    applied = httpx.put(
        f"{gateway.http_url}/api/v1/policies/dev",
        json={"files": bundle.files, "settings": msgspec.to_builtins(bundle.settings)},
        headers={"Authorization": f"Bearer {admin}"},
        timeout=10,
    )
    assert applied.status_code == 200, applied.text
    version = applied.json()["version"]
    wait_for(lambda: authorize(sock, {"tool": "search"})["policy_version"] == version, 20, "the new bundle")
    saved = msgspec.json.decode((tmp_path / "spool" / POLICY_FILE).read_bytes(), type=PolicyBundle)
    assert saved.version == version

    def answer(approve: bool) -> dict[str, Any]:
        asked = authorize(sock, {"tool": "deploy", "wait": False})
        assert asked["decision"] == "require_approval" and asked["rule"] == "deploy-needs-approval"
        approval_id = asked["approval_id"]
        url = f"{gateway.http_url}/api/v1/approvals/{approval_id}"
        headers = {"Authorization": f"Bearer {operator}"}
        wait_for(lambda: httpx.get(url, headers=headers, timeout=10).status_code == 200, 20, "the approval")
        response = httpx.post(
            url, json={"approve": approve, "reason": "checked"}, headers=headers, timeout=10
        )
        assert response.status_code == 200, response.text
        conn = UnixHTTPConnection(sock)
        try:
            status, final = http_call(conn, "GET", f"/v1/approvals/{approval_id}?wait=20")
        finally:
            conn.close()
        assert status == 200
        return final

    approved = answer(True)
    assert approved["decision"] == "allow" and approved["decided_by"].startswith("operator:")
    rejected = answer(False)
    assert rejected["decision"] == "deny" and rejected["reason"].endswith(": checked")
    stop.touch()
    assert node.wait() == 0, node.stderr()
