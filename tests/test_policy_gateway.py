"""Tool policy on the gateway, end to end: a real gateway process, real HTTP, real WebSocket agents.

Bundles per environment (apply, validation, RBAC, history, rollback), the
``policy`` command pushed to node agents, ``/v1/authorize``, policy
decisions in the audit log, and approvals.
"""

from __future__ import annotations

import asyncio
import json
import re
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from clawtrace.policy import load_bundle
from gateway_process import GatewayProcess

WAIT = 15.0
EXAMPLES = Path(__file__).parent.parent / "examples" / "policies"
WORKSPACE = "/srv/agents/p-1"


@pytest.fixture(autouse=True)
def no_tracebacks(gateway: GatewayProcess) -> Iterator[None]:
    yield
    log = gateway.log()
    assert "Traceback" not in log, log[-5000:]


def bundle_body(path: Path) -> dict[str, Any]:
    """What an admin PUTs: the directory's .cedar files and its bundle.toml, read from disk."""
    files = {p.name: p.read_text() for p in sorted(path.glob("*.cedar"))}
    settings_file = path / "bundle.toml"
    settings = tomllib.loads(settings_file.read_text()) if settings_file.exists() else {}
    return {"files": files, "settings": settings}


def prod_body() -> dict[str, Any]:
    return bundle_body(EXAMPLES / "prod")


def prod_version() -> str:
    return load_bundle(EXAMPLES / "prod", "prod").version


def call(
    gw: GatewayProcess, method: str, path: str, token: str, body: Any = None, **params: Any
) -> httpx.Response:
    content = None if body is None else json.dumps(body).encode()
    return httpx.request(
        method,
        f"{gw.http_url}{path}",
        content=content,
        params=params,
        headers={"Authorization": f"Bearer {token}"},
        timeout=WAIT,
    )


async def acall(
    gw: GatewayProcess, method: str, path: str, token: str, body: Any = None, **params: Any
) -> httpx.Response:
    return await asyncio.to_thread(call, gw, method, path, token, body, **params)


def apply(gw: GatewayProcess, env: str, body: dict[str, Any], token: str | None = None) -> httpx.Response:
    return call(gw, "PUT", f"/api/v1/policies/{env}", token or gw.token(env, "admin"), body)


def error(response: httpx.Response) -> dict[str, Any]:
    value: dict[str, Any] = response.json()["error"]
    return value


def now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class FakeAgent:
    """A node agent as the gateway sees it: protocol v1 over a real WebSocket."""

    def __init__(self, ws: ClientConnection, name: str) -> None:
        self.ws = ws
        self.name = name
        self.seq = 0
        self.inbox: list[dict[str, Any]] = []

    @classmethod
    async def connect(
        cls, gw: GatewayProcess, name: str, env: str, labels: dict[str, str] | None = None
    ) -> tuple[FakeAgent, dict[str, Any]]:
        """Connect and say hello; returns the agent and its first frame after the welcome, if any."""
        headers = {"Authorization": f"Bearer {gw.token(env, 'agent')}"}
        ws = await connect(f"{gw.ws_url}/v1/agent", additional_headers=headers, open_timeout=WAIT)
        hello = {"type": "hello", "agent": name, "env": env, "region": "eu-west-1", "labels": labels or {}}
        await ws.send(json.dumps(hello))
        welcome = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
        assert welcome["type"] == "welcome", welcome
        return cls(ws, name), welcome

    async def next_frame(self) -> dict[str, Any]:
        message: dict[str, Any] = json.loads(await self.ws.recv())
        return message

    async def command(self, action: str) -> dict[str, Any]:
        """The next command with ``action`` (earlier ones stay in the inbox)."""
        for index, message in enumerate(self.inbox):
            if message["type"] == "command" and message["action"] == action:
                return self.inbox.pop(index)
        async with asyncio.timeout(WAIT):
            while True:
                message = await self.next_frame()
                if message["type"] == "command" and message["action"] == action:
                    return message
                if message["type"] != "ack":
                    self.inbox.append(message)

    async def no_command(self, seconds: float = 0.5) -> None:
        commands = [m for m in self.inbox if m["type"] == "command"]
        try:
            async with asyncio.timeout(seconds):
                while True:
                    message = await self.next_frame()
                    if message["type"] == "command":
                        commands.append(message)
        except TimeoutError:
            pass
        assert commands == [], commands

    async def decide(self, decision: str, tool: str = "exec", **fields: Any) -> None:
        """Report a policy decision and wait until the gateway acks it (stored and audited)."""
        self.seq += 1
        event = {
            "kind": "policy",
            "seq": self.seq,
            "ts": now_iso(),
            "session": "s-1",
            "decision": decision,
            "tool": tool,
            **fields,
        }
        await self.ws.send(json.dumps({"type": "events", "events": [event]}))
        async with asyncio.timeout(WAIT):
            while True:
                message = await self.next_frame()
                if message["type"] == "ack" and message["seq"] >= self.seq:
                    return
                assert message["type"] != "error", message
                if message["type"] != "ack":
                    self.inbox.append(message)

    async def close(self) -> None:
        await self.ws.close()


# --- bundles -------------------------------------------------------------------------------


def test_apply_is_for_admins_validated_whole_and_versioned(gateway: GatewayProcess) -> None:
    body = prod_body()
    for token in (
        gateway.token("prod", "operator"),
        gateway.token("prod", "viewer"),
        gateway.token("prod", "agent"),
        gateway.token("dev", "admin"),
    ):
        response = apply(gateway, "prod", body, token)
        assert response.status_code == 403, response.text
        assert error(response)["code"] == "forbidden"

    # A misspelt context attribute: Cedar would skip that forbid at run time, so the bundle is refused.
    broken = json.loads(json.dumps(body))
    broken["files"]["policy.cedar"] = broken["files"]["policy.cedar"].replace(
        "when { context.privileged };", "when { context.privilegd };"
    )
    response = apply(gateway, "prod", broken)
    assert response.status_code == 400, response.text
    problems = error(response)["problems"]
    assert error(response)["code"] == "invalid_policy"
    assert problems and all(re.match(r"^policy\.cedar:\d+: policy '[^']+': ", p) for p in problems), problems
    assert any("prod-no-privilege" in p and "privilegd" in p for p in problems), problems
    state = gateway.get("/api/v1/policies/prod").json()
    assert state["version"] is None and state["active"] is None and state["history"] == []

    for bad in (
        {"files": {}},
        {"files": {"../x.cedar": "permit(principal, action, resource);"}},
        {"files": {"a.cedar": "x"}, "settings": {"approval_timeout": 5}},
        {"nope": 1},
    ):
        response = apply(gateway, "prod", bad)
        assert response.status_code == 400, (bad, response.text)

    response = apply(gateway, "prod", body)
    assert response.status_code == 200, response.text
    applied = response.json()
    assert applied["version"] == prod_version()
    assert (applied["changed"], applied["previous"]) == (True, None)
    # The same content again: nothing to do.
    again = apply(gateway, "prod", body, gateway.token("*", "admin")).json()
    assert (again["version"], again["changed"]) == (applied["version"], False)

    state = gateway.get("/api/v1/policies/prod", gateway.token("prod", "viewer")).json()
    assert state["version"] == applied["version"]
    assert state["active"]["files"] == body["files"]
    assert state["active"]["settings"]["approval_timeout_seconds"] == 300
    assert [(h["version"], h["action"], h["active"]) for h in state["history"]] == [
        (applied["version"], "apply", True)
    ]
    assert state["history"][0]["applied_by"].startswith("admin:")
    assert gateway.get("/api/v1/policies/prod", gateway.token("dev", "viewer")).status_code == 403
    listed = gateway.get("/api/v1/policies", gateway.token("prod", "viewer")).json()["environments"]
    assert [(e["env"], e["version"]) for e in listed] == [("prod", applied["version"])]

    [entry] = gateway.get("/api/v1/audit", action="apply_policy").json()["entries"]
    assert (entry["env"], entry["target"], entry["result"]) == ("prod", "prod", "ok")
    assert entry["detail"]["version"] == applied["version"] and entry["actor"].startswith("admin:")


async def test_bundles_reach_the_node_agents_of_their_environment(gateway: GatewayProcess) -> None:
    prod, _ = await FakeAgent.connect(gateway, "p-1", "prod")
    dev, _ = await FakeAgent.connect(gateway, "d-1", "dev")
    response = await asyncio.to_thread(apply, gateway, "prod", prod_body())
    assert response.status_code == 200, response.text
    v1 = response.json()["version"]
    assert response.json()["delivered"] == ["p-1"]

    command = await prod.command("policy")
    assert command["payload"]["version"] == v1 and command["payload"]["env"] == "prod"
    assert command["payload"]["files"] == prod_body()["files"]
    assert command["payload"]["settings"]["approval_timeout_seconds"] == 300
    await dev.no_command()

    # An agent that connects later gets the bundle right after its welcome.
    late, _ = await FakeAgent.connect(gateway, "p-2", "prod")
    first = await asyncio.wait_for(late.next_frame(), WAIT)
    assert first["type"] == "command" and first["action"] == "policy" and first["payload"]["version"] == v1
    # An environment without a bundle sends nothing after the welcome.
    await dev.close()
    dev, _ = await FakeAgent.connect(gateway, "d-1", "dev")
    await dev.no_command()

    # A second version, then back to the first.
    body = prod_body()
    body["files"]["extra.cedar"] = (
        '@id("prod-search")\n'
        'permit (principal, action == ClawTrace::Action::"tool", resource == ClawTrace::Tool::"search");\n'
    )
    v2 = (await asyncio.to_thread(apply, gateway, "prod", body)).json()["version"]
    assert v2 != v1
    for agent in (prod, late):
        assert (await agent.command("policy"))["payload"]["version"] == v2

    path = "/api/v1/policies/prod/rollback"
    for token in (gateway.token("prod", "operator"), gateway.token("dev", "admin")):
        assert (await acall(gateway, "POST", path, token, version=v1)).status_code == 403
    response = await acall(gateway, "POST", path, gateway.token("prod", "admin"), version="0123456789ab")
    assert response.status_code == 404 and error(response)["code"] == "not_found"
    response = await acall(gateway, "POST", path, gateway.token("prod", "admin"), version=v1)
    assert response.status_code == 200, response.text
    assert (response.json()["version"], response.json()["previous"]) == (v1, v2)
    for agent in (prod, late):
        command = await agent.command("policy")
        assert command["payload"]["version"] == v1 and "extra.cedar" not in command["payload"]["files"]
    await dev.no_command()

    state = (await asyncio.to_thread(gateway.get, "/api/v1/policies/prod", None, version=v2)).json()
    assert state["version"] == v1 and state["bundle"]["version"] == v2
    assert [(h["version"], h["action"], h["active"]) for h in state["history"]] == [
        (v1, "rollback", True),
        (v2, "apply", False),
        (v1, "apply", False),
    ]
    entries = (await asyncio.to_thread(gateway.get, "/api/v1/audit", None, env="prod")).json()["entries"]
    # The two refused rollbacks above are in the audit log too, between the applies and the rollback.
    assert [e["action"] for e in entries[:5]] == [
        "rollback_policy",
        "refused",
        "refused",
        "apply_policy",
        "apply_policy",
    ]
    for agent in (prod, late, dev):
        await agent.close()


# --- /v1/authorize ----------------------------------------------------------------------------


def authorize(gw: GatewayProcess, token: str, **body: Any) -> httpx.Response:
    return call(gw, "POST", "/v1/authorize", token, body)


async def test_authorize_decides_with_the_environments_bundle(gateway: GatewayProcess) -> None:
    assert (await asyncio.to_thread(apply, gateway, "prod", prod_body())).status_code == 200
    agent, _ = await FakeAgent.connect(gateway, "p-1", "prod", labels={"role": "builder"})
    await agent.command("policy")
    token = gateway.token("prod", "agent")

    def ask(command: str, tok: str = token, **extra: Any) -> httpx.Response:
        return authorize(gateway, tok, agent="p-1", tool="exec", args={"command": command}, **extra)

    response = await asyncio.to_thread(ask, "rm -rf /", workspace=WORKSPACE)
    assert response.status_code == 200, response.text
    denied = response.json()
    assert (denied["decision"], denied["rule"]) == ("deny", "no-recursive-rm-outside-workspace")
    assert denied["reason"] == "recursive rm is only allowed on paths inside the agent's workspace"
    assert denied["policy_version"] == prod_version() and denied["role"] == "builder"
    assert [c["program"] for c in denied["facts"]["commands"]] == ["rm"]

    allowed = (await asyncio.to_thread(ask, "rm -rf ./build", workspace=WORKSPACE, cwd=WORKSPACE)).json()
    assert (allowed["decision"], allowed["rule"]) == ("allow", "prod-tools"), allowed
    assert [(c["program"], c["paths"]) for c in allowed["facts"]["commands"]] == [
        ("rm", [f"{WORKSPACE}/build"])
    ]
    # The normaliser the node agent uses sees through rephrasings here too.
    for command in ("rm -r -f /", "/bin/rm --recursive --force /etc", 'bash -c "rm -rf /"'):
        rephrased = (await asyncio.to_thread(ask, command, workspace=WORKSPACE)).json()
        assert (rephrased["decision"], rephrased["rule"]) == ("deny", "no-recursive-rm-outside-workspace"), (
            command
        )
    sudo = (await asyncio.to_thread(ask, "sudo rm -fr /", workspace=WORKSPACE)).json()
    # Two forbids match (privilege, and rm outside the workspace): either may be the one named.
    assert sudo["decision"] == "deny" and sudo["rule"] in (
        "prod-no-privilege",
        "no-recursive-rm-outside-workspace",
    )
    tool = (await asyncio.to_thread(authorize, gateway, token, agent="p-1", tool="delete_database")).json()
    assert (tool["decision"], tool["rule"]) == ("deny", None)

    # People: an operator may ask (a what-if), a viewer may not; nor may another environment's agent.
    operator = await asyncio.to_thread(
        ask, "rm -rf /", gateway.token("prod", "operator"), workspace=WORKSPACE
    )
    assert operator.status_code == 200 and operator.json()["decision"] == "deny"
    others = (
        gateway.token("prod", "viewer"),
        gateway.token("dev", "agent"),
        gateway.token("dev", "operator"),
    )
    for other in others:
        response = await asyncio.to_thread(ask, "ls", other)
        assert response.status_code == 403, response.text
    for bad in (
        {"agent": "p-1"},
        {"agent": "p-1", "tool": "exec", "cwd": "relative"},
        {"agent": "p-1", "tool": "exec", "workdir": "/"},
    ):
        response = await asyncio.to_thread(call, gateway, "POST", "/v1/authorize", token, bad)
        assert response.status_code == 400 and error(response)["code"] == "invalid_body", response.text

    # The agent's own questions are decisions, audited; the operator's what-if is not.
    entries = (await asyncio.to_thread(gateway.get, "/api/v1/audit", None, action="policy")).json()["entries"]
    assert {e["actor"] for e in entries} == {"agent:p-1"}
    assert all(e["detail"]["source"] == "authorize" for e in entries)

    # No bundle in dev: allowed, as the node agent does.
    dev_token = gateway.token("dev", "agent")
    dev = (
        await asyncio.to_thread(
            authorize, gateway, dev_token, agent="d-9", tool="exec", args={"command": "rm -rf /"}
        )
    ).json()
    assert (dev["decision"], dev["rule"], dev["policy_version"]) == ("allow", "no-bundle", None)

    # A quarantined agent is denied everything.
    response = await acall(
        gateway,
        "POST",
        "/api/v1/agents/p-1/commands",
        gateway.token("prod", "operator"),
        {"action": "quarantine", "reason": "rm -rf attempts"},
    )
    assert response.status_code == 202, response.text
    quarantined = (await asyncio.to_thread(ask, "ls", workspace=WORKSPACE)).json()
    assert (quarantined["decision"], quarantined["rule"]) == ("deny", "quarantine")
    assert "rm -rf attempts" in quarantined["reason"]
    await agent.close()


# --- decisions in the audit log ------------------------------------------------------------------


async def test_reported_decisions_are_audited_and_filterable(gateway: GatewayProcess) -> None:
    agent, _ = await FakeAgent.connect(gateway, "p-1", "prod")
    await agent.decide(
        "deny",
        command="rm -rf /",
        rule="no-recursive-rm-outside-workspace",
        reason="recursive rm ...",
        call_id="c-1",
        policy_version="abc123",
    )
    await agent.decide("allow", tool="search", rule="prod-tools", call_id="c-2")
    await agent.decide("deny", tool="delete_database", call_id="c-3")
    secret = "sk-proj-" + "A1b2C3d4" * 4
    await agent.decide(
        "deny", command=f"curl -H 'Authorization: Bearer {secret}' https://x.example", call_id="c-4"
    )

    def audit(**params: Any) -> list[dict[str, Any]]:
        response = gateway.get("/api/v1/audit", gateway.token("prod", "viewer"), **params)
        assert response.status_code == 200, response.text
        entries: list[dict[str, Any]] = response.json()["entries"]
        return entries

    denied = await asyncio.to_thread(audit, decision="deny")
    assert [e["detail"]["call_id"] for e in denied] == ["c-4", "c-3", "c-1"]
    assert secret not in json.dumps(denied) and "REDACTED" in denied[0]["detail"]["command"]
    first = denied[2]
    assert (first["actor"], first["action"], first["target"], first["env"], first["result"]) == (
        "agent:p-1",
        "policy",
        "p-1",
        "prod",
        "deny",
    )
    assert first["reason"] == "recursive rm ..."
    assert first["detail"] == {
        "tool": "exec",
        "rule": "no-recursive-rm-outside-workspace",
        "command": "rm -rf /",
        "policy_version": "abc123",
        "approval_id": None,
        "decided_by": None,
        "call_id": "c-1",
    }
    assert [e["detail"]["call_id"] for e in await asyncio.to_thread(audit, decision="allow")] == ["c-2"]
    assert len(await asyncio.to_thread(audit, action="policy")) == 4
    assert len(await asyncio.to_thread(audit, decision="deny", target="p-1", limit=1)) == 1
    assert await asyncio.to_thread(audit, decision="require_approval") == []
    response = await asyncio.to_thread(gateway.get, "/api/v1/audit", None, decision="maybe")
    assert response.status_code == 400 and error(response)["code"] == "invalid_parameter"
    response = await asyncio.to_thread(gateway.get, "/api/v1/audit", None, decision="deny", action="restart")
    assert response.status_code == 400
    assert (
        await asyncio.to_thread(
            lambda: gateway.get("/api/v1/audit", gateway.token("dev", "viewer"), decision="deny").json()[
                "entries"
            ]
        )
        == []
    )
    await agent.close()


# --- approvals ------------------------------------------------------------------------------------


async def test_approvals_are_answered_by_operators_and_reach_the_agent(gateway: GatewayProcess) -> None:
    assert (await asyncio.to_thread(apply, gateway, "prod", prod_body())).status_code == 200
    agent, _ = await FakeAgent.connect(gateway, "p-1", "prod")
    await agent.command("policy")
    await agent.decide(
        "require_approval",
        command="python -c 'print(1)'",
        rule="prod-inline-code-needs-approval",
        reason="inline code needs a person",
        approval_id="ap-1",
        call_id="c-1",
        policy_version=prod_version(),
    )
    viewer, operator = gateway.token("prod", "viewer"), gateway.token("prod", "operator")

    listed = (await acall(gateway, "GET", "/api/v1/approvals", viewer, state="pending")).json()["approvals"]
    assert [a["id"] for a in listed] == ["ap-1"]
    pending = listed[0]
    assert (pending["agent"], pending["env"], pending["tool"], pending["state"]) == (
        "p-1",
        "prod",
        "exec",
        "pending",
    )
    assert (
        pending["command"] == "python -c 'print(1)'" and pending["rule"] == "prod-inline-code-needs-approval"
    )
    assert pending["expires"] - pending["created"] == 300  # the bundle's approval_timeout_seconds
    assert 0 < pending["expires_in_seconds"] <= 300
    other_env = await acall(gateway, "GET", "/api/v1/approvals", gateway.token("dev", "viewer"))
    assert other_env.json()["approvals"] == []

    path = "/api/v1/approvals/ap-1"
    response = await acall(gateway, "POST", path, viewer, {"approve": True})
    assert response.status_code == 403 and error(response)["code"] == "forbidden"
    assert (
        await acall(gateway, "POST", path, gateway.token("dev", "operator"), {"approve": True})
    ).status_code == 404
    assert (
        await acall(gateway, "POST", "/api/v1/approvals/nope", operator, {"approve": True})
    ).status_code == 404
    assert (await acall(gateway, "POST", path, operator, {"approve": "yes"})).status_code == 400

    response = await acall(gateway, "POST", path, operator, {"approve": True, "reason": "one-off, ana"})
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "approved" and response.json()["decided_by"].startswith("operator:")
    command = await agent.command("approval")
    assert command["payload"] == {
        "approval_id": "ap-1",
        "approved": True,
        "by": response.json()["decided_by"],
        "reason": "one-off, ana",
    }
    again = await acall(gateway, "POST", path, operator, {"approve": False})
    assert again.status_code == 409 and error(again)["code"] == "already_decided"
    # The node agent's own record of the outcome does not change it.
    await agent.decide("allow", approval_id="ap-1", decided_by=response.json()["decided_by"], call_id="c-1")
    assert (await acall(gateway, "GET", path, viewer)).json()["state"] == "approved"
    [entry] = (await acall(gateway, "GET", "/api/v1/audit", viewer, action="approve")).json()["entries"]
    assert (entry["target"], entry["result"], entry["detail"]["approval_id"]) == ("p-1", "ok", "ap-1")
    assert (
        len(
            (await acall(gateway, "GET", "/api/v1/audit", viewer, decision="require_approval")).json()[
                "entries"
            ]
        )
        == 1
    )

    # The node agent timing out closes an approval nobody answered.
    await agent.decide("require_approval", approval_id="ap-2", rule="prod-inline-code-needs-approval")
    await agent.decide("deny", approval_id="ap-2", decided_by="timeout", reason="nobody approved in time")
    ap2 = (await acall(gateway, "GET", "/api/v1/approvals/ap-2", viewer)).json()
    assert (ap2["state"], ap2["decided_by"]) == ("expired", "timeout")
    response = await acall(gateway, "POST", "/api/v1/approvals/ap-2", operator, {"approve": True})
    assert response.status_code == 409 and error(response)["code"] == "expired"

    # An agent that is not connected cannot be told: the approval stays pending.
    await agent.decide("require_approval", approval_id="ap-3", rule="prod-inline-code-needs-approval")
    await agent.close()
    async with asyncio.timeout(WAIT):
        while True:
            response = await acall(gateway, "POST", "/api/v1/approvals/ap-3", operator, {"approve": False})
            if response.status_code == 409:
                break
            await asyncio.sleep(0.05)
    assert error(response)["code"] == "not_connected"
    assert (await acall(gateway, "GET", "/api/v1/approvals/ap-3", viewer)).json()["state"] == "pending"
    states = {
        a["id"]: a["state"]
        for a in (await acall(gateway, "GET", "/api/v1/approvals", viewer)).json()["approvals"]
    }
    assert states == {"ap-1": "approved", "ap-2": "expired", "ap-3": "pending"}
    # It reconnects: now it can be told.
    agent, _ = await FakeAgent.connect(gateway, "p-1", "prod")
    response = await acall(
        gateway, "POST", "/api/v1/approvals/ap-3", operator, {"approve": False, "reason": "no"}
    )
    assert response.status_code == 200 and response.json()["state"] == "rejected"
    assert (await agent.command("approval"))["payload"]["approved"] is False
    await agent.close()
