"""A node agent started with --role: secrets, tool hooks, installed releases, deploys.

Unit-level: secrets against a tiny HTTP server of the test's own that speaks
Vault's KV v2 API (Vault itself cannot be installed here), hooks as real
scripts, releases installed in a real spool directory, the two policies of a
role together. In-process: a real NodeAgent with its real Supervisor and real
child processes, deploy commands given as the gateway would give them, the
release served by the same tiny HTTP server. End to end: a real gateway and a
real `clawtrace run --role` process.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import json
import os
import signal
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest
from click.testing import CliRunner

from clawtrace.cli.main import cli
from clawtrace.envs import MANIFEST_FILE, Release, build_release
from clawtrace.node.agent import NodeAgent, NodeConfig
from clawtrace.node.deploy import role_bundle
from clawtrace.node.fetch import FetchError, ReleaseFetcher
from clawtrace.node.gate import HookedPolicy
from clawtrace.node.hooks import HookError, RecentCalls, ToolHooks, locate
from clawtrace.node.policy import AuthorizeRequest, NodePolicy
from clawtrace.node.release_store import CURRENT_FILE, InstallError, ReleaseStore
from clawtrace.node.secrets import SecretError, resolve_secrets
from clawtrace.node.spool import Spool
from clawtrace.policy import PolicyBundle
from clawtrace.policy.engine import AgentIdentity
from clawtrace.protocol.codec import decode_event
from clawtrace.protocol.messages import Command, Event, Heartbeat, Lifecycle, Log, PolicyDecision, ToolResult
from gateway_process import GatewayProcess
from node_process import AGENTS, PY, NodeAgentProcess
from waiting import wait_for

T = TypeVar("T")

ROLE = "researcher"
API_KEY = "test-api-key-4f9a0c1d"
ALLOW_ALL = """
@id("everything")
permit (principal, action, resource);
"""
NO_SEARCH = """
@id("tools")
permit (principal, action == ClawTrace::Action::"tool", resource);

@id("no-search")
@reason("this role does not search")
forbid (principal, action == ClawTrace::Action::"tool", resource == ClawTrace::Tool::"search");
"""
SEARCH_NEEDS_APPROVAL = """
@id("tools")
permit (principal, action == ClawTrace::Action::"tool", resource)
when { resource != ClawTrace::Tool::"search" };

@id("search-needs-approval")
@approval
permit (principal, action == ClawTrace::Action::"tool", resource == ClawTrace::Tool::"search");
"""


async def until(check: Callable[[], T | None], seconds: float = 20, what: str = "a condition") -> T:
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:g} s waiting for {what}")
        await asyncio.sleep(0.02)


# --- a tiny HTTP server: Vault's KV v2 and the gateway's GET /v1/releases/{id} ------------------------


class FakeServer:
    """Answers GET requests from ``routes`` (path -> (status, JSON body)), recording each request."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, Any]] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        # KV v2: path -> the secret's key/value document, readable with this token only.
        self.vault_token = "vault-token-for-tests"
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                status, body = owner.answer(self.path, {k.lower(): v for k, v in self.headers.items()})
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answer(self, path: str, headers: dict[str, str]) -> tuple[int, Any]:
        if path.startswith("/v1/secret/") and headers.get("x-vault-token") != self.vault_token:
            return 403, {"errors": ["permission denied"]}
        return self.routes.get(path, (404, {"error": {"code": "not_found", "message": f"no {path}"}}))

    def put_secret(self, path: str, data: dict[str, Any]) -> None:
        self.routes[f"/v1/secret/data/{path}"] = (200, {"data": {"data": data, "metadata": {"version": 1}}})

    def serve_release(self, release: Release, body: Any = None) -> None:
        self.routes[f"/v1/releases/{release.id}"] = (
            200,
            body if body is not None else msgspec.to_builtins(release),
        )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server() -> Iterator[FakeServer]:
    fake = FakeServer()
    try:
        yield fake
    finally:
        fake.close()


# --- release directories -------------------------------------------------------------------------


def write_release(
    root: Path,
    *,
    version: str = "1.0.0",
    greeting: str = "hello",
    secrets: dict[str, str] | None = None,
    hooks: dict[str, str] | None = None,
    policy: str | None = None,
    command: list[str] | None = None,
    role: str = ROLE,
    env: dict[str, str] | None = None,
) -> Path:
    """A release directory whose command is tests/agents/release_agent.py."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "prompts").mkdir(exist_ok=True)
    (root / "prompts" / "system.md").write_text(f"You are the {role}, version {version}.\n")
    for rel, text in (hooks or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    if policy is not None:
        (root / "policy.cedar").write_text(policy)
    secret_refs = secrets if secrets is not None else {"API_KEY": "env:TEST_RELEASE_API_KEY"}
    lines = [
        f'role = "{role}"',
        f'version = "{version}"',
        f"command = {json.dumps(command or [PY, str(AGENTS / 'release_agent.py')])}",
        'prompts = ["prompts/system.md"]',
        f"tool_hooks = {json.dumps(sorted(hooks or {}))}",
        *(['policy = "policy.cedar"'] if policy is not None else []),
        "",
        "[model]",
        'provider = "openai"',
        'name = "gpt-4.1-mini"',
        "temperature = 0.2",
        "max_tokens = 512",
        "",
        "[env]",
        f'GREETING = "{greeting}"',
        *(f"{name} = {json.dumps(value)}" for name, value in (env or {}).items()),
        "",
        "[secrets]",
        *(f'{name} = "{ref}"' for name, ref in secret_refs.items()),
    ]
    (root / MANIFEST_FILE).write_text("\n".join(lines) + "\n")
    return root


def hook_script(body: str) -> str:
    """A Python tool hook (no exec bit: run through its #! line, as an installed release's are)."""
    return f"#!/usr/bin/env python3\nimport json, os, sys, time\n{body}\n"


ALLOW_HOOK = hook_script('json.load(sys.stdin)\nprint(json.dumps({"decision": "allow"}))')
DENY_SEARCH_HOOK = hook_script(
    "call = json.load(sys.stdin)\n"
    'if call["tool"] == "search":\n'
    '    print(json.dumps({"decision": "deny", "reason": "no searching on Sundays"}))\n'
    "else:\n"
    '    print(json.dumps({"decision": "allow"}))'
)


# --- secrets ---------------------------------------------------------------------------------------


async def test_env_and_file_secrets(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("from-a-file\n\n")  # only one trailing newline is not part of it
    crlf = tmp_path / "crlf"
    crlf.write_bytes(b"windows\r\n")
    values = await resolve_secrets(
        {"A": "env:NODE_A", "B": f"file:{key_file}", "C": f"file:{crlf}"}, {"NODE_A": "value-a"}
    )
    assert values == {"A": "value-a", "B": "from-a-file\n", "C": "windows"}


async def test_every_unresolvable_secret_is_reported_at_once_without_values(tmp_path: Path) -> None:
    unreadable = tmp_path / "unreadable"
    unreadable.write_text("top-secret-value")
    unreadable.chmod(0)
    refs = {
        "MISSING": "env:NOT_SET_ANYWHERE",
        "NODE": "env:CLAWTRACE_TOKEN",
        "NOFILE": f"file:{tmp_path / 'nope'}",
        "DIR": f"file:{tmp_path}",
        "VAULTED": "vault:secret/app#token",
    }
    if os.geteuid() != 0:  # root reads any file
        refs["LOCKED"] = f"file:{unreadable}"
    with pytest.raises(SecretError) as raised:
        await resolve_secrets(refs, {"CLAWTRACE_TOKEN": "ct_node_credential"})
    problems = raised.value.problems
    assert len(problems) == len(refs), problems
    text = "\n".join(problems)
    assert (
        "secret MISSING (env:NOT_SET_ANYWHERE): NOT_SET_ANYWHERE is not set in the node agent's environment"
        in text
    )
    assert (
        "secret NODE (env:CLAWTRACE_TOKEN): CLAWTRACE_TOKEN is a credential of the node agent itself" in text
    )
    assert f"no such file {tmp_path / 'nope'} on this node" in text
    assert "is a directory" in text
    assert (
        "secret VAULTED (vault:secret/app#token): VAULT_ADDR and VAULT_TOKEN are not set in the node "
        "agent's environment: export VAULT_ADDR=" in text
    )
    if "LOCKED" in refs:
        assert "cannot read" in text and "fix its owner or mode" in text
    assert "top-secret-value" not in text and "ct_node_credential" not in text


async def test_vault_kv2_secrets(server: FakeServer) -> None:
    server.put_secret("app/search", {"token": "s3arch-t0ken", "user": "bob", "port": 8443})
    server.put_secret("app/db", {"password": "db-pa55"})
    environ = {"VAULT_ADDR": server.url, "VAULT_TOKEN": server.vault_token}
    refs = {
        "SEARCH_TOKEN": "vault:secret/app/search#token",
        "SEARCH_USER": "vault:secret/app/search#user",
        "SEARCH_PORT": "vault:secret/app/search#port",
        "DB_PASSWORD": "vault:secret/app/db#password",
    }
    values = await resolve_secrets(refs, environ)
    assert values == {
        "SEARCH_TOKEN": "s3arch-t0ken",
        "SEARCH_USER": "bob",
        "SEARCH_PORT": "8443",
        "DB_PASSWORD": "db-pa55",
    }
    # One read per Vault secret, with the token in X-Vault-Token.
    assert sorted(path for path, _ in server.requests) == [
        "/v1/secret/data/app/db",
        "/v1/secret/data/app/search",
    ]
    assert {headers["x-vault-token"] for _, headers in server.requests} == {server.vault_token}

    with pytest.raises(SecretError) as raised:
        await resolve_secrets(
            {"NOKEY": "vault:secret/app/db#user", "NOPATH": "vault:secret/app/gone#token"}, environ
        )
    text = "\n".join(raised.value.problems)
    assert (
        "secret NOKEY (vault:secret/app/db#user): the Vault secret secret/app/db has no key 'user'"
        " (its keys: password)" in text
    )
    assert "secret NOPATH (vault:secret/app/gone#token): Vault has no secret at" in text and "(404)" in text
    assert "db-pa55" not in text

    with pytest.raises(SecretError) as raised:
        await resolve_secrets(refs, {**environ, "VAULT_TOKEN": "wrong"})
    assert all("Vault refused VAULT_TOKEN" in p and "(403)" in p for p in raised.value.problems)

    with pytest.raises(SecretError) as raised:
        await resolve_secrets(
            {"X": "vault:secret/app/db#password"}, {**environ, "VAULT_ADDR": "http://127.0.0.1:9"}
        )
    assert "cannot reach Vault at http://127.0.0.1:9" in raised.value.problems[0]


# --- tool hooks ------------------------------------------------------------------------------------


def hooks_in(directory: Path, scripts: dict[str, str], timeout: float = 5.0) -> ToolHooks:
    for rel, text in scripts.items():
        (directory / rel).parent.mkdir(parents=True, exist_ok=True)
        (directory / rel).write_text(text)
    identity = {"agent": "a-1", "env": "dev", "role": ROLE, "release": "f" * 64}
    return ToolHooks(
        locate(directory, list(scripts)), identity=identity, env={"PATH": os.environ["PATH"]}, timeout=timeout
    )


async def test_hooks_allow_deny_and_see_the_call(tmp_path: Path) -> None:
    seen = tmp_path / "seen.json"
    recorder = hook_script(
        "call = json.load(sys.stdin)\n"
        "seen = {'call': call, 'argv': sys.argv[1:], 'cwd': os.getcwd()}\n"
        "seen['hook'] = os.environ['CLAWTRACE_HOOK']\n"
        f"json.dump(seen, open({str(seen)!r}, 'w'))\n"
        'print(json.dumps({"decision": "allow"}))'
    )
    root = str(await asyncio.to_thread(tmp_path.resolve))
    hooks = hooks_in(tmp_path, {"hooks/record.py": recorder, "hooks/sundays.py": DENY_SEARCH_HOOK})
    assert hooks.paths == ["hooks/record.py", "hooks/sundays.py"]

    verdict = await hooks.before("fetch", {"url": "https://example.com"}, "call-1")
    assert verdict.allowed
    record = json.loads(seen.read_text())
    assert record["argv"] == ["before_tool_call"] and record["hook"] == "before_tool_call"
    assert record["cwd"] == root
    assert record["call"] == {
        "agent": "a-1",
        "env": "dev",
        "role": ROLE,
        "release": "f" * 64,
        "tool": "fetch",
        "args": {"url": "https://example.com"},
        "call_id": "call-1",
    }
    denied = await hooks.before("search", {"query": "x"}, None)
    assert (denied.decision, denied.reason, denied.hook) == (
        "deny",
        "no searching on Sundays",
        "hooks/sundays.py",
    )


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "time.sleep(30)",
            "tool hook hooks/h.py did not answer within 0.5 s (--hook-timeout) and was killed (fail closed)",
        ),
        (
            'print("yes")',
            'tool hook hooks/h.py answered \'yes\', not JSON like {"decision": "allow"} (fail closed)',
        ),
        (
            'print(json.dumps({"verdict": "allow"}))',
            'answered without "decision": "allow" or "deny" (fail closed)',
        ),
        (
            'print("database is down", file=sys.stderr); sys.exit(3)',
            "tool hook hooks/h.py exited with status 3: database is down (fail closed)",
        ),
        ('print(json.dumps({"decision": "deny"}))', "denied by tool hook hooks/h.py"),
    ],
    ids=["timeout", "not-json", "no-decision", "exit-3", "deny-without-reason"],
)
async def test_a_broken_hook_denies(tmp_path: Path, body: str, expected: str) -> None:
    # Only the hook that sleeps is meant to time out; a loaded machine may start Python slowly.
    timeout = 0.5 if "sleep" in body else 15.0
    hooks = hooks_in(tmp_path, {"hooks/h.py": hook_script(body)}, timeout=timeout)
    started = time.monotonic()
    verdict = await hooks.before("exec", {"command": "ls"}, "c-1")
    assert time.monotonic() - started < 15
    assert verdict.decision == "deny" and verdict.hook == "hooks/h.py"
    assert expected in verdict.reason, verdict.reason


async def test_after_tool_call_hooks_run_in_the_background(tmp_path: Path) -> None:
    told = tmp_path / "told.jsonl"
    body = (
        "time.sleep(0.3)\n"
        "record = {'event': sys.argv[1], 'call': json.load(sys.stdin)}\n"
        f"open({str(told)!r}, 'a').write(json.dumps(record) + '\\n')"
    )
    hooks = hooks_in(tmp_path, {"hooks/after.py": hook_script(body)})
    started = time.monotonic()
    hooks.after("search", {"query": "q"}, "c-7", ok=False, error="timeout", duration_ms=12.5)
    assert time.monotonic() - started < 0.2  # nobody waits for it
    await until(lambda: told.exists() and told.read_text(), 10, "the after_tool_call hook")
    (line,) = told.read_text().splitlines()
    record = json.loads(line)
    assert record["event"] == "after_tool_call"
    assert record["call"]["tool"] == "search" and record["call"]["args"] == {"query": "q"}
    assert (record["call"]["ok"], record["call"]["error"], record["call"]["duration_ms"]) == (
        False,
        "timeout",
        12.5,
    )
    await hooks.close()

    calls = RecentCalls(limit=2)
    for n in range(3):
        calls.remember(f"c-{n}", "exec", {"n": n})
    assert calls.take("c-0") == (None, {}) and calls.take("c-2") == ("exec", {"n": 2})


def test_locating_hooks(tmp_path: Path) -> None:
    (tmp_path / "exe").write_text('#!/bin/sh\necho \'{"decision": "allow"}\'\n')
    (tmp_path / "exe").chmod(0o755)
    (tmp_path / "plain.py").write_text("print('no shebang')\n")
    (tmp_path / "alien.py").write_text("#!/opt/nowhere/python9\n")
    (tmp_path / "alien_env.py").write_text("#!/usr/bin/env python9-nowhere\n")
    (exe,) = locate(tmp_path, ["exe"])
    assert exe.argv == (str((tmp_path / "exe").resolve()),)
    with pytest.raises(HookError) as raised:
        locate(tmp_path, ["plain.py", "alien.py", "alien_env.py", "missing.py"])
    text = str(raised.value)
    assert "tool hook 'plain.py' has no #! line naming its interpreter" in text
    assert "names interpreter '/opt/nowhere/python9' in its #! line, which this node does not have" in text
    assert "runs 'python9-nowhere' (#!/usr/bin/env python9-nowhere), which is not on this node's PATH" in text
    assert "tool hook 'missing.py' is not a file" in text


# --- installed releases ------------------------------------------------------------------------------


def test_install_is_atomic_read_only_and_checked_on_load(tmp_path: Path) -> None:
    release = build_release(write_release(tmp_path / "src", hooks={"hooks/allow.py": ALLOW_HOOK}))
    store = ReleaseStore(tmp_path / "spool")
    directory = store.install(release)
    assert directory == tmp_path / "spool" / "releases" / release.id
    assert (directory / "prompts" / "system.md").read_text() == release.files["prompts/system.md"]
    assert not (directory / "prompts" / "system.md").stat().st_mode & stat.S_IWUSR
    assert not directory.stat().st_mode & stat.S_IWUSR
    assert not list(store.directory.glob(".tmp-*"))
    assert store.install(release) == directory  # already there, intact: nothing to do

    store.set_current(release)
    current = store.current()
    assert current is not None and (current.id, current.ref) == (release.id, f"{ROLE}@1.0.0")

    # A file changed on disk is written again from the verified release.
    target = directory / "prompts" / "system.md"
    target.chmod(0o644)
    target.write_text("You are evil now.\n")
    loaded, again = store.load(release.id)
    assert loaded == release and again == directory
    assert target.read_text() == release.files["prompts/system.md"]

    # The saved release itself changed: refused.
    saved = store.directory / f"{release.id}.json"
    saved.write_bytes(saved.read_bytes().replace(b"You are the", b"You are not the"))
    with pytest.raises(InstallError, match="was changed on disk"):
        store.load(release.id)


def test_prune_keeps_the_last_two_and_nothing_leaves_the_directory(tmp_path: Path) -> None:
    store = ReleaseStore(tmp_path / "spool")
    releases = [build_release(write_release(tmp_path / f"v{n}", version=f"1.{n}.0")) for n in range(3)]
    for release in releases:
        store.install(release)
    (store.directory / ".tmp-leftover").mkdir()
    store.prune({releases[2].id, releases[1].id})
    left = sorted(p.name for p in store.directory.iterdir())
    assert left == sorted(
        [releases[1].id, f"{releases[1].id}.json", releases[2].id, f"{releases[2].id}.json"]
    )

    escaping = msgspec.structs.replace(releases[0], files={"../outside.md": "x"})
    with pytest.raises(InstallError, match=r"refusing file '\.\./outside\.md'"):
        store.install(escaping)
    assert not (store.directory / "outside.md").exists() and not (tmp_path / "spool" / "outside.md").exists()


async def test_fetch_says_what_went_wrong(server: FakeServer, tmp_path: Path) -> None:
    release = build_release(write_release(tmp_path / "src"))
    server.serve_release(release)
    fetcher = ReleaseFetcher(f"ws://127.0.0.1:{server.port}", "ct_agent_token", env="dev", first_delay=0.01)
    assert await fetcher.fetch(release.id) == release
    path, headers = server.requests[-1]
    assert path == f"/v1/releases/{release.id}" and headers["authorization"] == "Bearer ct_agent_token"

    other = "ab" * 32
    server.routes[f"/v1/releases/{other}"] = (403, {"error": {"code": "forbidden", "message": "not in dev"}})
    with pytest.raises(
        FetchError, match=r"refused release abababababab to this node agent \(403: not in dev\)"
    ):
        await fetcher.fetch(other)
    with pytest.raises(FetchError, match="the gateway has no release cdcdcdcdcdcd \\(404"):
        await fetcher.fetch("cd" * 32)
    server.routes[f"/v1/releases/{other}"] = (503, {"error": {"code": "unavailable", "message": "busy"}})
    with pytest.raises(FetchError, match=r"after 4 attempts \(HTTP 503: busy\)"):
        await fetcher.fetch(other)
    assert sum(1 for p, _ in server.requests if p.endswith(other)) == 1 + 4
    server.routes[f"/v1/releases/{other}"] = (200, {"not": "a release"})
    with pytest.raises(FetchError, match="is not a release"):
        await fetcher.fetch(other)


# --- the role's own policy on top of the environment's --------------------------------------------------


def role_policy(tmp_path: Path, cedar: str) -> PolicyBundle:
    bundle = role_bundle(build_release(write_release(tmp_path / "src", policy=cedar)), "dev")
    assert bundle is not None
    return bundle


async def test_a_call_must_be_allowed_by_both_bundles(tmp_path: Path) -> None:
    policy = NodePolicy(
        AgentIdentity(agent="a-1", env="dev", role=ROLE),
        spool_dir=tmp_path / "spool",
        workspace=str(tmp_path),
        home="",
    )
    env_bundle = PolicyBundle(env="dev", files={"all.cedar": ALLOW_ALL}).with_version()
    policy.apply(env_bundle)
    mine = role_policy(tmp_path, NO_SEARCH)
    policy.set_role_policy(mine, f"{ROLE}@1.0.0")

    denied = policy.decide(AuthorizeRequest(tool="search"))
    assert (denied.decision, denied.rule, denied.reason) == ("deny", "no-search", "this role does not search")
    assert denied.policy_version == f"{ROLE}@1.0.0:{mine.version}"
    allowed = policy.decide(AuthorizeRequest(tool="fetch"))
    # Both allow: the environment's decision is the one reported.
    assert (allowed.decision, allowed.rule, allowed.policy_version) == (
        "allow",
        "everything",
        env_bundle.version,
    )

    # The environment's deny wins whatever the release says.
    policy.set_quarantine("runaway")
    assert policy.decide(AuthorizeRequest(tool="search")).rule == "quarantine"
    policy.set_quarantine(None)

    # An approval the release asks for waits with the release bundle's timeout.
    approvals = role_policy(tmp_path / "b", SEARCH_NEEDS_APPROVAL)
    approvals = msgspec.structs.replace(
        approvals, settings=msgspec.structs.replace(approvals.settings, approval_timeout_seconds=0.2)
    )
    policy.set_role_policy(approvals, f"{ROLE}@2.0.0")
    answer = await asyncio.wait_for(policy.authorize({"tool": "search"}), 5)
    assert (answer["decision"], answer["decided_by"], answer["rule"]) == (
        "deny",
        "timeout",
        "search-needs-approval",
    )
    assert policy.status()["release_policy_version"] == f"{ROLE}@2.0.0:{approvals.version}"

    # No environment bundle yet: the release's decision is reported.
    fresh = NodePolicy(
        AgentIdentity(agent="a-1", env="dev", role=ROLE),
        spool_dir=tmp_path / "s2",
        workspace=str(tmp_path),
        home="",
    )
    fresh.set_role_policy(mine, f"{ROLE}@1.0.0")
    assert fresh.decide(AuthorizeRequest(tool="fetch")).rule == "tools"
    assert fresh.decide(AuthorizeRequest(tool="search")).rule == "no-search"


async def test_hooks_are_asked_once_a_person_approves_a_polled_call(tmp_path: Path) -> None:
    policy = NodePolicy(
        AgentIdentity(agent="a-1", env="dev", role=ROLE),
        spool_dir=tmp_path / "spool",
        workspace=str(tmp_path),
        home="",
    )
    policy.apply(PolicyBundle(env="dev", files={"approve.cedar": SEARCH_NEEDS_APPROVAL}).with_version())
    hooks = hooks_in(tmp_path, {"hooks/sundays.py": DENY_SEARCH_HOOK})
    refusals: list[tuple[str, str | None]] = []
    gate = HookedPolicy(
        policy, lambda: hooks, lambda ruling, request: refusals.append((ruling.tool, ruling.rule))
    )

    asked = await gate.authorize({"tool": "search", "wait": False})
    assert asked["decision"] == "require_approval"
    policy.resolve(asked["approval_id"], approved=True, by="operator:ana")
    for _ in range(2):  # polled twice: the hooks are asked once
        state = await gate.approval_state(asked["approval_id"], 0)
        assert state is not None
        assert (state["decision"], state["rule"], state["reason"]) == (
            "deny",
            "hook:hooks/sundays.py",
            "no searching on Sundays",
        )
    assert refusals == [("search", "hook:hooks/sundays.py")]
    allowed = await gate.authorize({"tool": "fetch"})
    assert allowed["decision"] == "allow" and gate.status()["tool_hooks"] == ["hooks/sundays.py"]


# --- a node agent with --role, in-process ------------------------------------------------------------


def spooled(agent: NodeAgent) -> list[Event]:
    assert agent.spool is not None
    return [decode_event(raw) for _, raw in agent.spool.pending(0, 100_000)]


def lifecycle(agent: NodeAgent) -> list[tuple[str, str]]:
    return lifecycle_of(spooled(agent))


def lifecycle_of(events: list[Event]) -> list[tuple[str, str]]:
    return [(e.state, e.reason or "") for e in events if isinstance(e, Lifecycle)]


def child_facts(agent: NodeAgent) -> list[dict[str, Any]]:
    lines = [e.line for e in spooled(agent) if isinstance(e, Log) and e.stream == "stdout"]
    return [json.loads(line) for line in lines if line.startswith('{"release"')]


def failures(agent: NodeAgent) -> int:
    return sum(state == "deploy_failed" for state, _ in lifecycle(agent))


def deploy(agent: NodeAgent, release: Release, number: int) -> Command:
    return Command(
        id=f"deploy-{number}", action="deploy", payload={"release": release.id, "ref": release.ref}
    )


def role_agent(tmp_path: Path, server: FakeServer, **options: Any) -> NodeAgent:
    config = NodeConfig(
        agent="a-1",
        env="dev",
        command=[],
        gateway=f"ws://127.0.0.1:{server.port}",  # releases come from here; no WebSocket: it stays offline
        token="ct_agent_token",
        spool_dir=tmp_path / "spool",
        labels={"role": ROLE},
        role=ROLE,
        heartbeat_interval=0.2,
        stop_timeout=5,
        reconnect_max=1,
        echo=False,
        workspace=str(tmp_path),
        **options,
    )
    return NodeAgent(config)


@contextlib.asynccontextmanager
async def running(agent: NodeAgent) -> Any:
    task = asyncio.create_task(agent.run())
    try:
        await until(lambda: agent.supervisor is not None and agent.spool is not None, 10, "the node agent")
        yield task
    finally:
        if agent.supervisor is not None:
            agent.supervisor.shutdown(signal.SIGTERM)
        await asyncio.wait_for(task, 30)


@pytest.fixture
def release_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_RELEASE_API_KEY", API_KEY)
    monkeypatch.setenv("VAULT_TOKEN", "node-vault-token")  # the node agent's, never the agent's


async def test_deploys_replace_the_child_and_a_failed_one_keeps_the_old(
    tmp_path: Path, server: FakeServer, release_env: None
) -> None:
    first = build_release(write_release(tmp_path / "v1", greeting="hello"))
    second = build_release(write_release(tmp_path / "v2", version="2.0.0", greeting="bonjour"))
    broken = build_release(
        write_release(tmp_path / "v3", version="3.0.0", secrets={"API_KEY": "env:NOT_SET_ON_THIS_NODE"})
    )
    for release in (first, second, broken):
        server.serve_release(release)
    agent = role_agent(tmp_path, server)
    async with running(agent):
        assert agent.client is not None and agent.client.hello.role == ROLE
        assert agent.client.hello.release is None
        await asyncio.sleep(0.5)
        beats = [e for e in spooled(agent) if isinstance(e, Heartbeat)]
        assert beats and all(b.release is None and b.cpu_percent is None for b in beats)

        await agent._on_command(deploy(agent, first, 1))
        await agent._on_command(deploy(agent, first, 2))  # the gateway may say it again: nothing more
        facts = (await until(lambda: child_facts(agent), 20, "the first release's child"))[0]
        release_dir = tmp_path / "spool" / "releases" / first.id
        assert facts["release"] == first.id and facts["ref"] == f"{ROLE}@1.0.0" and facts["role"] == ROLE
        assert facts["cwd"] == str(release_dir) and facts["release_dir"] == str(release_dir)
        assert facts["prompt"] == "You are the researcher, version 1.0.0."
        assert facts["greeting"] == "hello"
        assert facts["api_key_sha256"] == hashlib.sha256(API_KEY.encode()).hexdigest()
        assert facts["model"] == {
            "CLAWTRACE_MODEL_PROVIDER": "openai",
            "CLAWTRACE_MODEL_NAME": "gpt-4.1-mini",
            "CLAWTRACE_MODEL_TEMPERATURE": "0.2",
            "CLAWTRACE_MODEL_MAX_TOKENS": "512",
        }
        assert facts["leaked"] == []
        await until(
            lambda: ("deployed", f"{first.ref} ({first.short_id})") in lifecycle(agent), 10, "deployed"
        )
        assert agent.client.hello.release == first.id
        await until(
            lambda: any(isinstance(e, Heartbeat) and e.release == first.id for e in spooled(agent)),
            5,
            "a heartbeat",
        )
        assert json.loads((tmp_path / "spool" / CURRENT_FILE).read_text())["id"] == first.id
        fetched = [p for p, _ in server.requests if p.startswith("/v1/releases/")]
        assert fetched == [f"/v1/releases/{first.id}"]

        await agent._on_command(deploy(agent, second, 3))
        await until(lambda: len(child_facts(agent)) == 2, 20, "the second release's child")
        assert child_facts(agent)[1]["greeting"] == "bonjour"
        await until(
            lambda: ("deployed", f"{second.ref} ({second.short_id})") in lifecycle(agent), 10, "deployed"
        )
        states = [state for state, _ in lifecycle(agent)]
        assert states == ["started", "deployed", "exited", "restarting", "started", "deployed"], lifecycle(
            agent
        )
        exited = dict(lifecycle(agent))["exited"]
        assert f"deploy of release {second.ref} ({second.short_id})" in exited
        running_pid = child_facts(agent)[1]["pid"]

        await agent._on_command(deploy(agent, broken, 4))
        failed = await until(
            lambda: [r for s, r in lifecycle(agent) if s == "deploy_failed"], 20, "the deploy to fail"
        )
        assert failed[0].startswith(
            f"{broken.ref} ({broken.short_id}): secret API_KEY (env:NOT_SET_ON_THIS_NODE): "
        )
        assert f"release {second.ref} ({second.short_id}) keeps running" in failed[0]
        assert "tried again in 30 s or when the gateway sends it again" in failed[0]
        assert agent.supervisor is not None and agent.supervisor.pid == running_pid
        assert agent.deployer is not None and agent.deployer.running_id == second.id
        # Sent again (as after a reconnect): tried again at once, and fails again.
        await agent._on_command(deploy(agent, broken, 5))
        await until(lambda: sum(s == "deploy_failed" for s, _ in lifecycle(agent)) == 2, 20, "a second try")
        assert agent.supervisor.pid == running_pid
        # Only the running release and the one before it are kept.
        kept = sorted(
            p.name for p in (tmp_path / "spool" / "releases").iterdir() if not p.name.endswith(".json")
        )
        assert kept == sorted([first.id, second.id, broken.id])  # broken: installed, never run
    # Secrets are nowhere on disk.
    for path in (tmp_path / "spool").rglob("*"):
        if path.is_file() and path.suffix != ".sock":
            assert API_KEY.encode() not in path.read_bytes(), path
    earlier = spooled_after(tmp_path)
    assert all(API_KEY not in json.dumps(msgspec.to_builtins(e)) for e in earlier)

    # Offline first: a restarted node agent runs the last release before any gateway answers.
    server.routes.clear()
    asked = len(server.requests)
    restarted = role_agent(tmp_path, server)
    async with running(restarted):
        assert restarted.client is not None and restarted.client.hello.release == second.id
        facts = (await until(lambda: child_facts(restarted), 20, "the restored child"))[-1]
        assert facts["release"] == second.id and facts["greeting"] == "bonjour"
        # (The spool still holds the first run's events: nothing acked them.)
        reason = await until(
            lambda: [r for s, r in lifecycle(restarted)[len(lifecycle_of(earlier)) :] if s == "deployed"],
            10,
            "the restored release",
        )
        assert "the release that ran before this node agent restarted" in reason[-1]
        assert not [p for p, _ in server.requests[asked:] if p.startswith("/v1/releases/")]


def spooled_after(tmp_path: Path) -> list[Event]:
    with Spool(tmp_path / "spool", "a-1") as spool:
        return [decode_event(raw) for _, raw in spool.pending(0, 100_000)]


async def test_a_release_that_cannot_run_is_refused_and_nothing_starts(
    tmp_path: Path, server: FakeServer, release_env: None
) -> None:
    good = build_release(write_release(tmp_path / "good"))
    tampered = msgspec.to_builtins(good)
    tampered["files"]["prompts/system.md"] = "You are someone else.\n"
    server.serve_release(good, tampered)
    writer = build_release(write_release(tmp_path / "writer", role="writer"))
    server.serve_release(writer)
    nowhere = build_release(
        write_release(tmp_path / "nowhere", version="9.0.0", command=["agent-not-installed-here"])
    )
    server.serve_release(nowhere)
    faulty_hook = build_release(
        write_release(tmp_path / "hook", version="9.1.0", hooks={"hooks/plain.py": "print('no #! line')\n"})
    )
    server.serve_release(faulty_hook)
    agent = role_agent(tmp_path, server)
    async with running(agent):
        for number, release in enumerate((good, writer, nowhere, faulty_hook), 1):
            await agent._on_command(deploy(agent, release, number))
            await until(lambda n=number: failures(agent) >= n, 20, "a refusal")
        reasons = [r for s, r in lifecycle(agent) if s == "deploy_failed"]
        assert reasons[0].startswith(
            f"{good.ref} ({good.short_id}): the release from the gateway fails verification"
        )
        assert "it was changed after it was built" in reasons[0]
        assert "is for role 'writer', but this node agent runs role 'researcher' (--role)" in reasons[1]
        assert "its command 'agent-not-installed-here' is not on this node's PATH" in reasons[2]
        assert "tool hook 'hooks/plain.py' has no #! line naming its interpreter" in reasons[3]
        assert all("no release runs" in r for r in reasons)
        assert [s for s, _ in lifecycle(agent)] == ["deploy_failed"] * 4
        assert agent.supervisor is not None and agent.supervisor.pid is None
        # The tampered release was never written to disk.
        assert not (tmp_path / "spool" / "releases" / good.id).exists()
        assert not (tmp_path / "spool" / CURRENT_FILE).exists()


async def test_a_failed_deploy_is_tried_again_on_its_own(
    tmp_path: Path, server: FakeServer, release_env: None
) -> None:
    key_file = tmp_path / "api-key"
    release = build_release(write_release(tmp_path / "src", secrets={"API_KEY": f"file:{key_file}"}))
    server.serve_release(release)
    agent = role_agent(tmp_path, server, deploy_retry_initial=0.5, deploy_retry_max=1.0)
    async with running(agent):
        await agent._on_command(deploy(agent, release, 1))
        await until(lambda: failures(agent) >= 2, 20, "two failed tries")
        reasons = [r for s, r in lifecycle(agent) if s == "deploy_failed"]
        assert f"no such file {key_file} on this node" in reasons[0] and "tried again in 0.5 s" in reasons[0]
        assert "tried again in 1 s" in reasons[1]
        key_file.write_text(API_KEY + "\n")  # the operator fixes the node
        facts = (await until(lambda: child_facts(agent), 20, "the retried release to run"))[0]
        assert facts["api_key_sha256"] == hashlib.sha256(API_KEY.encode()).hexdigest()
        assert ("deployed", f"{release.ref} ({release.short_id})") in lifecycle(agent)
        # Fetched once: the later tries found it installed.
        assert [p for p, _ in server.requests].count(f"/v1/releases/{release.id}") == 1


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: str) -> None:
        super().__init__("localhost", timeout=30)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(30)
        sock.connect(self.socket_path)
        self.sock = sock


def authorize(socket_path: str, body: dict[str, Any]) -> dict[str, Any]:
    conn = UnixHTTPConnection(socket_path)
    try:
        conn.request("POST", "/v1/authorize", body=json.dumps(body).encode())
        answer: dict[str, Any] = json.loads(conn.getresponse().read())
        return answer
    finally:
        conn.close()


async def test_the_release_policy_and_hooks_decide_the_agents_tool_calls(
    tmp_path: Path, server: FakeServer, release_env: None
) -> None:
    told = tmp_path / "after.jsonl"
    hook = hook_script(
        "call = json.load(sys.stdin)\n"
        "if sys.argv[1] == 'after_tool_call':\n"
        "    open(os.environ['HOOK_LOG'], 'a').write(json.dumps(call) + '\\n')\n"
        "elif call['tool'] == 'search':\n"
        '    print(json.dumps({"decision": "deny", "reason": "no searching on Sundays"}))\n'
        "else:\n"
        '    print(json.dumps({"decision": "allow"}))'
    )
    forbid_delete = (
        '@id("tools")\npermit (principal, action == ClawTrace::Action::"tool", resource);\n\n'
        '@id("no-delete")\n@reason("researchers do not delete")\n'
        'forbid (principal, action == ClawTrace::Action::"tool", resource == ClawTrace::Tool::"delete");\n'
    )
    release = build_release(
        write_release(
            tmp_path / "src",
            hooks={"hooks/sundays.py": hook},
            policy=forbid_delete,
            command=[PY, str(AGENTS / "release_agent.py"), "search", "fetch"],
            env={"HOOK_LOG": str(told)},
        )
    )
    server.serve_release(release)
    agent = role_agent(tmp_path, server)
    async with running(agent):
        await agent._on_command(deploy(agent, release, 1))
        lines = await until(
            lambda: [e.line for e in spooled(agent) if isinstance(e, Log) and '"outcomes"' in e.line],
            30,
            "the agent's tool calls",
        )
        outcomes = json.loads(lines[0])["outcomes"]
        assert outcomes == [
            {
                "tool": "search",
                "ran": False,
                "rule": "hook:hooks/sundays.py",
                "reason": "no searching on Sundays",
            },
            {"tool": "fetch", "ran": True},
        ]
        # The allowed call's result reached the hook, with the call it belongs to.
        after = json.loads(
            (await until(lambda: told.exists() and told.read_text(), 10, "after hook")).splitlines()[0]
        )
        assert (after["tool"], after["args"], after["ok"], after["release"]) == (
            "fetch",
            {"query": "weather"},
            True,
            release.id,
        )
        decisions = [(e.tool, e.decision, e.rule) for e in spooled(agent) if isinstance(e, PolicyDecision)]
        # No environment bundle here (--policy-default allow): the release's policy reports its allows.
        assert decisions == [
            ("search", "allow", "tools"),
            ("search", "deny", "hook:hooks/sundays.py"),
            ("fetch", "allow", "tools"),
        ]
        refused = [e for e in spooled(agent) if isinstance(e, ToolResult) and not e.ok]
        assert [e.error for e in refused] == [
            "denied by policy: hook:hooks/sundays.py: no searching on Sundays"
        ]

        socket_path = agent.local.path
        assert socket_path is not None
        denied = await asyncio.to_thread(authorize, socket_path, {"tool": "delete"})
        assert (denied["decision"], denied["rule"], denied["reason"]) == (
            "deny",
            "no-delete",
            "researchers do not delete",
        )
        assert denied["policy_version"].startswith(f"{ROLE}@1.0.0:")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--role", ROLE, "--", "python", "agent.py"], "with --role the release's own `command` runs"),
        (["--role", ROLE, "--label", "role=writer"], "--label role=writer contradicts --role researcher"),
        (["--role", ROLE, "--release", "abc"], "with --role the gateway says which release runs"),
        (["--role", "Not A Role"], "--role 'Not A Role' is not a role name"),
        ([], "nothing to run: give the command after `--`"),
    ],
    ids=["command", "label", "release", "bad-role", "nothing"],
)
def test_run_usage_errors(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["run", "--agent", "a-1", "--env", "dev", "--token", "t", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output, result.output


def test_run_help_shows_a_role_example() -> None:
    result = CliRunner().invoke(cli, ["run", "--help"])
    assert result.exit_code == 0
    assert "clawtrace run --role researcher --env dev --agent r-1" in result.output


# --- end to end: a real gateway and a real `clawtrace run --role` ------------------------------------


def cli_ok(*args: str, gateway: GatewayProcess, token: str) -> str:
    env = {"CLAWTRACE_TOKEN": token, "CLAWTRACE_GATEWAY": gateway.http_url, "COLUMNS": "200"}
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_a_role_follows_the_releases_deployed_to_its_environment(
    tmp_path: Path, gateway: GatewayProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    operator = gateway.token("dev", "operator")
    # The node agent inherits this: its env: secret.
    monkeypatch.setenv("TEST_RELEASE_API_KEY", API_KEY)
    sources = {
        "1.0.0": write_release(tmp_path / "v1", greeting="hello"),
        "2.0.0": write_release(tmp_path / "v2", version="2.0.0", greeting="bonjour"),
        "3.0.0": write_release(
            tmp_path / "v3", version="3.0.0", secrets={"API_KEY": "env:NOT_SET_ON_THIS_NODE"}
        ),
    }
    releases = {version: build_release(path) for version, path in sources.items()}
    for path in sources.values():
        cli_ok("release", "create", str(path), gateway=gateway, token=operator)

    node = NodeAgentProcess(tmp_path, gateway, [], options=["--role", ROLE])
    try:
        wait_for(
            lambda: "waiting for the gateway to send a release of role researcher in dev" in node.stderr(),
            20,
            "the node agent to wait",
        )

        def agent_release() -> str | None:
            response = gateway.get("/api/v1/agents/a-1")
            return str(response.json().get("release")) if response.status_code == 200 else None

        def facts() -> list[dict[str, Any]]:
            return [json.loads(line) for line in node.stdout().splitlines() if line.startswith('{"release"')]

        def lifecycle_events() -> list[tuple[str, str]]:
            try:
                return [
                    (e["state"], e.get("reason") or "")
                    for e in gateway.events("a-1")
                    if e["kind"] == "lifecycle"
                ]
            except Exception:
                return []

        cli_ok("deploy", f"{ROLE}@1.0.0", "--env", "dev", gateway=gateway, token=operator)
        wait_for(lambda: agent_release() == releases["1.0.0"].id, 30, "the agent to report release 1.0.0")
        first = wait_for(facts, 20, "the first child's output")[0]
        assert (first["ref"], first["greeting"]) == (f"{ROLE}@1.0.0", "hello")
        assert first["api_key_sha256"] == hashlib.sha256(API_KEY.encode()).hexdigest()
        assert first["cwd"] == str(tmp_path / "spool" / "releases" / releases["1.0.0"].id)
        assert first["leaked"] == []

        cli_ok("deploy", f"{ROLE}@2.0.0", "--env", "dev", gateway=gateway, token=operator)
        wait_for(lambda: agent_release() == releases["2.0.0"].id, 30, "the agent to report release 2.0.0")
        second = wait_for(lambda: len(facts()) >= 2 and facts()[1], 20, "the second child's output")
        assert (second["ref"], second["greeting"]) == (f"{ROLE}@2.0.0", "bonjour")
        assert not psutil_alive(first["pid"])

        cli_ok("deploy", f"{ROLE}@3.0.0", "--env", "dev", gateway=gateway, token=operator)
        failed = wait_for(
            lambda: [r for s, r in lifecycle_events() if s == "deploy_failed"], 30, "a deploy_failed event"
        )
        assert failed[0].startswith(
            f"{ROLE}@3.0.0 ({releases['3.0.0'].short_id}): secret API_KEY (env:NOT_SET_ON_THIS_NODE)"
        )
        assert f"release {ROLE}@2.0.0 ({releases['2.0.0'].short_id}) keeps running" in failed[0]
        deployed = [r for s, r in lifecycle_events() if s == "deployed"]
        assert deployed == [
            f"{ROLE}@1.0.0 ({releases['1.0.0'].short_id})",
            f"{ROLE}@2.0.0 ({releases['2.0.0'].short_id})",
        ]
        # The old child keeps running, and the agent keeps reporting its release.
        time.sleep(1)
        assert psutil_alive(second["pid"]) and len(facts()) == 2
        assert agent_release() == releases["2.0.0"].id
        assert node.proc.poll() is None
        assert API_KEY not in node.stdout() + node.stderr() + json.dumps(gateway.events("a-1"))
    finally:
        node.close()
    assert node.proc.returncode == 0, node.stderr()


def psutil_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
