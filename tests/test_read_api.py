"""The read side: REST ``/api/v1``, the live WebSocket, commands, redaction, retention."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from clawtrace.gateway import retention
from clawtrace.gateway.redaction import DEFAULT_PATTERNS, Redactor
from clawtrace.gateway.settings import EnvironmentSettings, GatewaySettings
from clawtrace.gateway.writer import StoreWriter
from clawtrace.protocol import CloseCode, ErrorCode
from clawtrace.store import AgentInfo, EventQuery, WriteBatch
from clawtrace.store.sqlite import SQLiteStore
from gateway_process import GatewayProcess

WAIT = 15.0
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def rfc3339(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def event(seq: int, kind: str, session: str, ts: datetime, **fields: Any) -> dict[str, Any]:
    defaults: dict[str, dict[str, Any]] = {
        "log": {"stream": "stdout", "line": f"line {seq}"},
        "thought": {"text": f"thinking {seq}"},
        "llm_call": {"model": "gpt-4o", "input_tokens": 10, "output_tokens": 5, "duration_ms": 800.0},
        "tool_call": {"call_id": f"c{seq}", "tool": "shell", "args": {"cmd": "ls"}},
        "tool_result": {"call_id": f"c{seq - 1}", "ok": True, "duration_ms": 3.0},
        "heartbeat": {"cpu_percent": 1.0, "rss_bytes": 1000},
        "lifecycle": {"state": "exited", "exit_code": 0},
        "policy": {"decision": "allow", "tool": "shell"},
    }
    return {"kind": kind, "seq": seq, "ts": rfc3339(ts), "session": session, **defaults[kind], **fields}


# dev-1: two sessions; s-a one event a minute from 12:00, s-b from 13:00.
DEV1_KINDS = ["log", "thought", "llm_call", "tool_call", "tool_result", "heartbeat",  # s-a: 1..6
              "log", "thought", "log", "lifecycle"]                                   # s-b: 7..10


def dev1_events() -> list[dict[str, Any]]:
    out = []
    for i, kind in enumerate(DEV1_KINDS):
        seq = i + 1
        session, start, offset = ("s-a", T0, i) if seq <= 6 else ("s-b", T0 + timedelta(hours=1), i - 6)
        out.append(event(seq, kind, session, start + timedelta(minutes=offset)))
    return out


def post_events(
    gw: GatewayProcess, token: str, events: list[dict[str, Any]], **params: Any
) -> dict[str, Any]:
    body = b"\n".join(json.dumps(e).encode() for e in events)
    response = httpx.post(f"{gw.http_url}/v1/events", content=body, params=params,
                          headers={"Authorization": f"Bearer {token}"}, timeout=WAIT)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    assert result["errors"] == [], result
    return result


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    process = GatewayProcess(tmp_path_factory.mktemp("gw-read"))
    process.start()
    try:
        post_events(process, process.token("dev", "agent"), dev1_events(), agent="dev-1")
        post_events(process, process.token("dev", "agent"), [event(1, "log", "x", T0)], agent="dev-2")
        post_events(process, process.token("prod", "agent"),
                    [event(s, "thought", "p", T0 + timedelta(minutes=s)) for s in (1, 2, 3)], agent="prod-1")
        yield process
    finally:
        log = process.log()
        process.stop()
        assert "Traceback" not in log, log[-5000:]


def get(gw: GatewayProcess, path: str, token: str | None = "@admin@", **params: Any) -> httpx.Response:
    if token == "@admin@":
        token = gw.token("*", "admin")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{gw.http_url}{path}", params=params, headers=headers, timeout=WAIT)


def seqs(response: httpx.Response) -> list[int]:
    assert response.status_code == 200, response.text
    return [e["seq"] for e in response.json()["events"]]


def error_code(response: httpx.Response) -> str:
    code: str = response.json()["error"]["code"]
    return code


# --- agents and environments ---------------------------------------------------------------


def test_agents_are_scoped_by_the_credentials_environment(gw: GatewayProcess) -> None:
    def envs(token: str | None, **params: Any) -> dict[str, str]:
        """agent -> env of what the credential sees (other tests add agents of their own)."""
        response = get(gw, "/api/v1/agents", token, **params)
        assert response.status_code == 200, response.text
        agents = [a["agent"] for a in response.json()["agents"]]
        assert agents == sorted(agents)
        return {a["agent"]: a["env"] for a in response.json()["agents"]}

    seeded = {"dev-1": "dev", "dev-2": "dev", "prod-1": "prod"}
    everything = envs("@admin@")
    assert seeded.items() <= everything.items()
    dev = envs(gw.token("dev", "viewer"))
    assert {"dev-1", "dev-2"} <= dev.keys() and set(dev.values()) == {"dev"}
    prod = envs(gw.token("prod", "viewer"))
    assert "prod-1" in prod and set(prod.values()) == {"prod"}
    assert dev.keys() | prod.keys() == everything.keys()
    assert envs("@admin@", env="prod") == prod
    response = get(gw, "/api/v1/agents", gw.token("dev", "viewer"), env="prod")
    assert response.status_code == 403 and error_code(response) == ErrorCode.FORBIDDEN


def test_agent_record_fields(gw: GatewayProcess) -> None:
    agents = {a["agent"]: a for a in get(gw, "/api/v1/agents").json()["agents"]}
    dev1 = agents["dev-1"]
    assert dev1["env"] == "dev"
    assert dev1["last_seq"] == 10
    assert dev1["connected"] is False
    assert dev1["cpu_percent"] == 1.0 and dev1["rss_bytes"] == 1000
    assert dev1["heartbeat_age_seconds"] is not None and dev1["heartbeat_age_seconds"] >= 0
    for key in ("region", "labels", "release", "first_seen", "last_event", "last_heartbeat"):
        assert key in dev1
    one = get(gw, "/api/v1/agents/dev-1")
    assert one.status_code == 200 and one.json()["last_seq"] == 10


@pytest.mark.parametrize(
    "path",
    ["/api/v1/agents", "/api/v1/agents/dev-1", "/api/v1/agents/dev-1/sessions",
     "/api/v1/agents/dev-1/events"],
)
def test_every_read_needs_a_credential(gw: GatewayProcess, path: str) -> None:
    for token in (None, "ct_nope", "ct_000000000000_unknownunknownunknown"):
        response = get(gw, path, token)
        assert response.status_code == 401, (token, response.text)
        assert error_code(response) == ErrorCode.UNAUTHORIZED
    # An agent credential is not a person's: it cannot read.
    response = get(gw, path, gw.token("dev", "agent"))
    assert response.status_code == 403 and error_code(response) == ErrorCode.FORBIDDEN


@pytest.mark.parametrize("suffix", ["", "/sessions", "/events"])
def test_unknown_or_unreadable_agent_is_404(gw: GatewayProcess, suffix: str) -> None:
    assert get(gw, f"/api/v1/agents/nobody{suffix}").status_code == 404
    response = get(gw, f"/api/v1/agents/prod-1{suffix}", gw.token("dev", "viewer"))
    assert response.status_code == 404
    assert error_code(response) == "not_found"
    assert get(gw, f"/api/v1/agents/prod-1{suffix}", gw.token("prod", "viewer")).status_code == 200


# --- sessions and events ------------------------------------------------------------------


def test_sessions(gw: GatewayProcess) -> None:
    response = get(gw, "/api/v1/agents/dev-1/sessions", gw.token("dev", "viewer"))
    assert response.status_code == 200
    sessions = response.json()["sessions"]
    assert [(s["session"], s["first_seq"], s["last_seq"], s["events"]) for s in sessions] == [
        ("s-a", 1, 6, 6),
        ("s-b", 7, 10, 4),
    ]
    assert sessions[0]["started"] == T0.timestamp()
    assert sessions[0]["last_ts"] == (T0 + timedelta(minutes=5)).timestamp()
    assert all(s["agent"] == "dev-1" for s in sessions)


def test_events_are_ordered_by_seq_with_all_fields(gw: GatewayProcess) -> None:
    response = get(gw, "/api/v1/agents/dev-1/events", gw.token("dev", "viewer"))
    assert seqs(response) == list(range(1, 11))
    body = response.json()
    assert body["next_after_seq"] is None
    sent = dev1_events()
    for original, stored in zip(sent, body["events"], strict=True):
        assert stored["agent"] == "dev-1"
        assert datetime.fromisoformat(stored["received"]).tzinfo is not None
        assert datetime.fromisoformat(stored["ts"]) == datetime.fromisoformat(original["ts"])
        assert {k: v for k, v in stored.items() if k not in ("agent", "received", "ts")} == {
            k: v for k, v in original.items() if k != "ts"
        }


def test_events_of_one_session(gw: GatewayProcess) -> None:
    assert seqs(get(gw, "/api/v1/agents/dev-1/events", session="s-b")) == [7, 8, 9, 10]
    assert seqs(get(gw, "/api/v1/agents/dev-1/events", session="s-a", after_seq=4)) == [5, 6]
    assert seqs(get(gw, "/api/v1/agents/dev-1/events", session="nope")) == []


def test_events_by_kind(gw: GatewayProcess) -> None:
    path = "/api/v1/agents/dev-1/events"
    assert seqs(get(gw, path, kind="log")) == [1, 7, 9]
    assert seqs(get(gw, path, kind=["log", "thought"])) == [1, 2, 7, 8, 9]
    assert seqs(get(gw, path, kind="log,thought")) == [1, 2, 7, 8, 9]
    assert seqs(get(gw, path, kind="thought", session="s-b")) == [8]
    assert seqs(get(gw, path, kind="policy")) == []
    response = get(gw, path, kind="log,telepathy")
    assert response.status_code == 400 and error_code(response) == "invalid_parameter"
    assert "telepathy" in response.json()["error"]["message"]


def test_events_by_time(gw: GatewayProcess) -> None:
    path = "/api/v1/agents/dev-1/events"
    # since is inclusive, until exclusive; both compare the agent's ts.
    assert seqs(get(gw, path, since="2026-03-01T12:02:00Z", until="2026-03-01T12:04:00Z")) == [3, 4]
    assert seqs(get(gw, path, since="2026-03-01T14:02:00+02:00", until="2026-03-01T14:04:00+02:00")) == [3, 4]
    assert seqs(get(gw, path, since="2026-03-01T12:59:00Z")) == [7, 8, 9, 10]
    assert seqs(get(gw, path, until="2026-03-01T12:01:00.000001Z")) == [1, 2]
    epoch = (T0 + timedelta(hours=1)).timestamp()
    assert seqs(get(gw, path, since=str(epoch), until=str(epoch + 120))) == [7, 8]
    for bad in ("yesterday", "2026-13-01T00:00:00Z", "12:00"):
        response = get(gw, path, since=bad)
        assert response.status_code == 400, bad
        assert error_code(response) == "invalid_parameter"
    assert get(gw, path, until="not a time").status_code == 400


def test_cursor_paging_in_seq_order(gw: GatewayProcess) -> None:
    path = "/api/v1/agents/dev-1/events"
    for params, expected in (({}, list(range(1, 11))), ({"kind": "log,thought"}, [1, 2, 7, 8, 9])):
        pages: list[list[int]] = []
        after = 0
        while True:
            response = get(gw, path, gw.token("dev", "viewer"), limit=2, after_seq=after, **params)
            page = seqs(response)
            pages.append(page)
            assert len(page) <= 2
            following = response.json()["next_after_seq"]
            if following is None:
                break
            assert following == page[-1]
            after = following
            assert len(pages) < 20
        assert [s for page in pages for s in page] == expected
    assert seqs(get(gw, path, after_seq=8)) == [9, 10]
    assert seqs(get(gw, path, after_seq=10)) == []
    assert get(gw, path, limit=3).json()["next_after_seq"] == 3


@pytest.mark.parametrize(
    "params",
    [{"limit": 0}, {"limit": 5001}, {"limit": -1}, {"limit": "ten"}, {"after_seq": -1}, {"after_seq": "x"}],
)
def test_bad_paging_parameters_are_400(gw: GatewayProcess, params: dict[str, Any]) -> None:
    response = get(gw, "/api/v1/agents/dev-1/events", **params)
    assert response.status_code == 400, response.text
    assert error_code(response) == "invalid_parameter"


def test_paging_limit_bounds_are_inclusive(gw: GatewayProcess) -> None:
    assert seqs(get(gw, "/api/v1/agents/dev-1/events", limit=1)) == [1]
    assert seqs(get(gw, "/api/v1/agents/dev-1/events", limit=5000)) == list(range(1, 11))


# --- redaction ---------------------------------------------------------------------------------

OPENAI_KEY = "sk-proj-" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z" * 2
AWS_KEY = "AKIA" + "IOSFODNN7EXAMPLQ"
PASSWORD = "hunter2-correct-horse"
SECRETS = [OPENAI_KEY, AWS_KEY, PASSWORD]


def secret_events(agent_marker: str) -> list[dict[str, Any]]:
    return [
        event(1, "log", "s", T0, line=f"boot {agent_marker}-LOG using key {OPENAI_KEY} now"),
        event(2, "log", "s", T0, line=f"aws configure set aws_access_key_id {AWS_KEY}", stream="stderr"),
        event(3, "log", "s", T0, line=f"mysql -u root password={PASSWORD} db"),
        event(4, "thought", "s", T0, text=f"{agent_marker}-THOUGHT I will log in with "
                                         f"password={PASSWORD} and then call the API with {OPENAI_KEY}"),
        event(5, "tool_call", "s", T0, args={
            "cmd": f"curl -H 'Authorization: Bearer {OPENAI_KEY}' https://api.example.com",
            "env": {"AWS_ACCESS_KEY_ID": AWS_KEY, "marker": f"{agent_marker}-ARGS"},
            "argv": ["login", f"password={PASSWORD}"],
        }),
        event(6, "tool_result", "s", T0, call_id="c5", ok=False, error=f"denied for key {AWS_KEY}",
              output={"echo": f"password={PASSWORD}"}),
    ]


def raw_store_bytes(gw: GatewayProcess) -> bytes:
    """Everything SQLite has on disk: the database file and its write-ahead log."""
    parts = []
    for name in ("clawtrace.db", "clawtrace.db-wal"):
        path = gw.data_dir / name
        if path.exists():
            parts.append(path.read_bytes())
    return b"".join(parts)


def assert_redacted(gw: GatewayProcess, agent: str, marker: str) -> None:
    events = get(gw, f"/api/v1/agents/{agent}/events").json()["events"]
    assert [e["seq"] for e in events] == [1, 2, 3, 4, 5, 6]
    text = json.dumps(events)
    for secret in SECRETS:
        assert secret not in text, secret
    assert "[REDACTED:openai_key]" in events[0]["line"]
    assert "[REDACTED:aws_access_key]" in events[1]["line"]
    assert "[REDACTED:secret_assignment]" in events[2]["line"]
    assert events[0]["line"] == f"boot {marker}-LOG using key [REDACTED:openai_key] now"
    assert events[4]["args"]["env"]["marker"] == f"{marker}-ARGS"
    assert events[4]["args"]["argv"][0] == "login"
    raw = raw_store_bytes(gw)
    for suffix in ("LOG", "THOUGHT", "ARGS"):
        assert f"{marker}-{suffix}".encode() in raw, "the test reads the wrong files"
    for secret in SECRETS:
        assert secret.encode() not in raw, secret


def test_secrets_never_reach_the_store_ndjson(gw: GatewayProcess) -> None:
    post_events(gw, gw.token("dev", "agent"), secret_events("M-POST"), agent="leaky-post")
    assert_redacted(gw, "leaky-post", "M-POST")


async def test_secrets_never_reach_the_store_websocket(gw: GatewayProcess) -> None:
    async with await agent_ws(gw, "leaky-ws") as ws:
        events = secret_events("M-WS")
        await ws.send(json.dumps({"type": "events", "events": events[:3]}))
        # The same secrets hidden behind JSON escapes must not slip through either.
        escaped = json.dumps({"type": "events", "events": events[3:]}).replace("sk-", "s\\u006b-")
        assert "sk-" not in escaped
        await ws.send(escaped)
        await until_ack(ws, 6)
    await asyncio.to_thread(assert_redacted, gw, "leaky-ws", "M-WS")


def test_secret_named_tool_arguments_are_redacted() -> None:
    """``{"password": "..."}`` is how tool arguments usually carry a secret."""
    redactor = Redactor(DEFAULT_PATTERNS)
    args = {"user": "root", "password": PASSWORD, "options": {"api_key": "0123456789abcdef"}}
    frame = json.dumps({"args": args}).encode()
    redacted = json.dumps(redactor.plan(frame).value(args))
    assert "root" in redacted
    assert PASSWORD not in redacted
    assert "0123456789abcdef" not in redacted


# --- live tail ---------------------------------------------------------------------------------


async def agent_ws(gw: GatewayProcess, agent: str, env: str = "dev") -> ClientConnection:
    headers = {"Authorization": f"Bearer {gw.token(env)}"}
    ws = await connect(f"{gw.ws_url}/v1/agent", additional_headers=headers, open_timeout=WAIT)
    await ws.send(json.dumps({"type": "hello", "agent": agent, "env": env}))
    welcome = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
    assert welcome["type"] == "welcome", welcome
    return ws


async def until_ack(ws: ClientConnection, seq: int) -> list[dict[str, Any]]:
    """Read until an ack covers ``seq``; return everything else received."""
    others = []
    async with asyncio.timeout(WAIT):
        while True:
            message = json.loads(await ws.recv())
            if message["type"] == "ack" and message["seq"] >= seq:
                return others
            if message["type"] != "ack":
                others.append(message)


async def live_ws(gw: GatewayProcess, token: str, **params: str) -> ClientConnection:
    query = str(httpx.QueryParams(params))
    headers = {"Authorization": f"Bearer {token}"}
    return await connect(f"{gw.ws_url}/api/v1/live?{query}", additional_headers=headers, open_timeout=WAIT)


async def live_events_until(live: ClientConnection, agent: str, text: str) -> list[dict[str, Any]]:
    """Collect pushed events until the thought ``text`` of ``agent`` arrives."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(WAIT):
        while True:
            message = json.loads(await live.recv())
            assert message["type"] == "events", message
            seen.extend(message["events"])
            if any(e["agent"] == agent and e.get("text") == text for e in message["events"]):
                return seen


class Sender:
    """An agent connection that sends one event at a time and waits for its ack."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.seq = 0

    async def send(self, kind: str, **fields: Any) -> None:
        self.seq += 1
        events = [event(self.seq, kind, "live", T0, **fields)]
        await self.ws.send(json.dumps({"type": "events", "events": events}))
        await until_ack(self.ws, self.seq)


WARM_UP_RSS = 1  # heartbeats with this rss_bytes are warm-ups


def is_warm_up(event: dict[str, Any]) -> bool:
    return event.get("text") == "warm-up" or event.get("rss_bytes") == WARM_UP_RSS


async def wait_subscribed(live: ClientConnection, sender: Sender, kind: str = "thought") -> None:
    """The viewer is registered once one of ``sender``'s warm-up events reaches it."""
    async with asyncio.timeout(WAIT):
        while True:
            if kind == "thought":
                await sender.send("thought", text="warm-up")
            else:
                await sender.send("heartbeat", rss_bytes=WARM_UP_RSS)
            try:
                async with asyncio.timeout(0.5):
                    message = json.loads(await live.recv())
                    assert message["type"] == "events"
                    return
            except TimeoutError:
                continue


async def test_live_tail_filters_by_agent_kind_and_environment(gw: GatewayProcess) -> None:
    a = Sender(await agent_ws(gw, "live-a"))
    b = Sender(await agent_ws(gw, "live-b"))
    p = Sender(await agent_ws(gw, "live-p", env="prod"))
    dev_viewer = gw.token("dev", "viewer")
    one_agent = await live_ws(gw, dev_viewer, agent="live-a", kind="thought,log")
    whole_dev = await live_ws(gw, dev_viewer)
    only_prod = await live_ws(gw, gw.token("*", "admin"), env="prod", kind="heartbeat")
    await wait_subscribed(one_agent, a)
    await wait_subscribed(whole_dev, a)
    await wait_subscribed(only_prod, p, kind="heartbeat")

    await a.send("heartbeat")
    await a.send("log", line="a log")
    await b.send("thought", text="b thinks")
    await p.send("thought", text="prod thinks")
    await p.send("heartbeat")
    await a.send("tool_call")
    await a.send("thought", text="a thinks")
    await p.send("thought", text="prod done")
    await a.send("thought", text="done")
    await p.send("heartbeat", rss_bytes=2)

    seen = [e for e in await live_events_until(one_agent, "live-a", "done") if not is_warm_up(e)]
    assert [(e["agent"], e["kind"]) for e in seen] == [
        ("live-a", "log"), ("live-a", "thought"), ("live-a", "thought"),
    ]
    assert seen[0]["line"] == "a log" and "received" in seen[0]

    seen = [e for e in await live_events_until(whole_dev, "live-a", "done") if not is_warm_up(e)]
    assert {e["agent"] for e in seen} == {"live-a", "live-b"}, "a dev viewer never sees prod events"
    assert [e["kind"] for e in seen if e["agent"] == "live-a"] == ["heartbeat", "log", "tool_call", "thought",
                                                                   "thought"]

    seen = await live_events_until_final_heartbeat(only_prod)
    assert [(e["agent"], e["kind"], e["rss_bytes"]) for e in seen] == [
        ("live-p", "heartbeat", 1000), ("live-p", "heartbeat", 2),
    ]

    for ws in (a.ws, b.ws, p.ws, one_agent, whole_dev, only_prod):
        await ws.close()


async def live_events_until_final_heartbeat(live: ClientConnection) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(WAIT):
        while not any(e.get("rss_bytes") == 2 for e in seen):
            message = json.loads(await live.recv())
            seen.extend(e for e in message["events"] if not is_warm_up(e))
    return seen


@pytest.mark.parametrize(
    ("token", "params", "code", "close"),
    [
        (None, {}, ErrorCode.UNAUTHORIZED, CloseCode.UNAUTHORIZED),
        ("ct_nope", {}, ErrorCode.UNAUTHORIZED, CloseCode.UNAUTHORIZED),
        ("@dev-agent@", {}, ErrorCode.FORBIDDEN, CloseCode.FORBIDDEN),
        ("@dev-viewer@", {"env": "prod"}, ErrorCode.FORBIDDEN, CloseCode.FORBIDDEN),
        ("@dev-viewer@", {"kind": "log,telepathy"}, "invalid_parameter", CloseCode.PROTOCOL_ERROR),
    ],
    ids=["missing", "malformed", "agent-role", "other-env", "unknown-kind"],
)
async def test_live_refusals(
    gw: GatewayProcess, token: str | None, params: dict[str, str], code: str, close: int
) -> None:
    if token == "@dev-agent@":
        token = gw.token("dev", "agent")
    elif token == "@dev-viewer@":
        token = gw.token("dev", "viewer")
    query = str(httpx.QueryParams(params))
    headers = {"Authorization": f"Bearer {token}"} if token else None
    url = f"{gw.ws_url}/api/v1/live?{query}"
    async with connect(url, additional_headers=headers, open_timeout=WAIT) as ws:
        messages = []
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(WAIT):
                while True:
                    messages.append(json.loads(await ws.recv()))
        assert closed.value.rcvd is not None and closed.value.rcvd.code == close
        assert [(m["type"], m["code"]) for m in messages] == [("error", code)]


async def test_live_token_may_be_a_query_parameter(gw: GatewayProcess) -> None:
    sender = Sender(await agent_ws(gw, "live-q"))
    query = str(httpx.QueryParams({"token": gw.token("dev", "viewer"), "agent": "live-q"}))
    async with connect(f"{gw.ws_url}/api/v1/live?{query}", open_timeout=WAIT) as live:
        await wait_subscribed(live, sender)
    await sender.ws.close()


# --- commands ----------------------------------------------------------------------------------


def command(gw: GatewayProcess, agent: str, token: str, body: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{gw.http_url}/api/v1/agents/{agent}/commands", content=content,
                      headers={"Authorization": f"Bearer {token}"}, timeout=WAIT)


async def test_commands_reach_the_connected_agent(gw: GatewayProcess) -> None:
    ws = await agent_ws(gw, "cmd-1")
    operator = gw.token("dev", "operator")

    def post(body: Any, token: str = operator, agent: str = "cmd-1") -> httpx.Response:
        return command(gw, agent, token, body)

    response = await asyncio.to_thread(post, {"action": "restart"}, gw.token("dev", "viewer"))
    assert response.status_code == 403 and error_code(response) == ErrorCode.FORBIDDEN
    response = await asyncio.to_thread(post, {"action": "restart"}, gw.token("dev", "agent"))
    assert response.status_code == 403
    response = await asyncio.to_thread(post, {"action": "restart"}, gw.token("prod", "operator"))
    assert response.status_code == 404
    for bad in ({"action": "explode"}, {"reason": "no action"}, b"{not json",
                {"action": "stop", "unexpected": 1}):
        response = await asyncio.to_thread(post, bad)
        assert response.status_code == 400, (bad, response.text)
        assert error_code(response) == "invalid_body"
    with pytest.raises(TimeoutError):  # none of the refused ones reached the agent
        async with asyncio.timeout(0.05):
            await ws.recv()

    response = await asyncio.to_thread(post, {"action": "restart", "reason": "loop detected",
                                              "payload": {"grace_seconds": 5}})
    assert response.status_code == 202, response.text
    sent = response.json()["command"]
    assert response.json()["delivered"] is True
    received = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
    assert received == {"type": "command", "id": sent["id"], "action": "restart", "reason": "loop detected",
                        "payload": {"grace_seconds": 5}}

    response = await asyncio.to_thread(post, {"action": "stop"}, gw.token("*", "admin"))
    assert response.status_code == 202, response.text
    received = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
    assert received["type"] == "command" and received["action"] == "stop"
    assert received["id"] and received["id"] != sent["id"]
    assert received["reason"]  # a default reason names who asked
    assert received.get("payload", {}) == {}

    # Quarantine is recorded (the fleet shows it), then sent; release lifts it.
    response = await asyncio.to_thread(post, {"action": "quarantine", "reason": "rm -rf attempts"})
    assert response.status_code == 202, response.text
    received = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
    assert (received["action"], received["reason"]) == ("quarantine", "rm -rf attempts")
    fleet = (await asyncio.to_thread(gw.get, "/api/v1/fleet", operator, status="quarantined")).json()
    assert [row["agent"] for row in fleet["agents"]] == ["cmd-1"]
    response = await asyncio.to_thread(post, {"action": "release"})
    assert response.status_code == 202, response.text
    assert json.loads(await asyncio.wait_for(ws.recv(), WAIT))["action"] == "release"
    response = await asyncio.to_thread(post, {"action": "release"})
    assert response.status_code == 409 and error_code(response) == "not_quarantined"

    await ws.close()
    async with asyncio.timeout(WAIT):
        while True:  # the gateway notices the disconnect
            response = await asyncio.to_thread(post, {"action": "restart"})
            if response.status_code == 409:
                break
            await asyncio.sleep(0.05)
    assert error_code(response) == "not_connected"


def test_command_to_an_agent_that_never_connected_is_409(gw: GatewayProcess) -> None:
    response = command(gw, "dev-1", gw.token("dev", "operator"), {"action": "restart"})
    assert response.status_code == 409 and error_code(response) == "not_connected"
    assert command(gw, "nobody", gw.token("dev", "operator"), {"action": "restart"}).status_code == 404
    assert command(gw, "dev-1", "ct_nope", {"action": "restart"}).status_code == 401


# --- retention ----------------------------------------------------------------------------------


def _batch(agent: str, seqs: range, received: float) -> WriteBatch:
    batch = WriteBatch()
    for seq in seqs:
        data = json.dumps(event(seq, "log", "s", T0)).encode()
        batch.add((agent, seq, "s", "log", received, received, data))
    return batch


async def test_retention_prunes_each_environment_by_its_own_age(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small slices, so that a pass takes several short transactions.
    monkeypatch.setattr(retention, "SLICE_ROWS", 3)
    store = SQLiteStore(tmp_path / "clawtrace.db")
    store.migrate()
    now = time.time()
    day = 86_400.0
    for agent, env in (("d-1", "dev"), ("d-2", "dev"), ("p-1", "prod")):
        store.register_agent(AgentInfo(agent, env, "", {}, None), now - 60 * day)
    # Insertion (id) order follows receive time, as in the gateway.
    store.write(_batch("p-1", range(1, 5), now - 40 * day))   # prod, older than prod's 30 days
    store.write(_batch("d-1", range(1, 8), now - 2 * day))    # dev, older than dev's 1 day
    store.write(_batch("p-1", range(5, 9), now - 2 * day))    # prod, young enough
    store.write(_batch("d-2", range(1, 6), now - 1.5 * day))  # dev, old
    store.write(_batch("d-1", range(8, 11), now - 0.5 * day))  # dev, young
    store.write(_batch("p-1", range(9, 11), now - 60))        # prod, new
    settings = GatewaySettings(retention_days=30, environments={"dev": EnvironmentSettings(retention_days=1)})
    assert settings.retention_for("dev") == 1 and settings.retention_for("prod") == 30
    writer = StoreWriter(store)
    writer.start()
    try:
        deleted = await retention.prune_once(settings, writer, now=now)
        assert deleted == 4 + 7 + 5

        def left(agent: str) -> list[int]:
            return [seq for seq, _ in store.query_events(EventQuery(agent=agent, limit=100))]

        assert left("d-1") == [8, 9, 10]
        assert left("d-2") == []
        assert store.list_sessions("d-2") == []  # its only session is gone with its events
        assert left("p-1") == [5, 6, 7, 8, 9, 10]
        # A second pass has nothing left to do; ingest afterwards is unaffected.
        assert await retention.prune_once(settings, writer, now=now) == 0
        await writer.submit(_batch("d-2", range(6, 8), time.time()))
        assert left("d-2") == [6, 7]
        assert store.count_events() == 3 + 2 + 6
    finally:
        writer.stop()
        store.close()


async def test_retention_prunes_metric_rollups_older_than_their_retention(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "clawtrace.db")
    store.migrate()
    now = time.time()
    minute = int(now // 60)
    store.write_rollups(
        [
            ("fleet", minute - 91 * 1440, b"{}"),  # older than the default 90 days
            ("fleet", minute - 89 * 1440, b"{}"),
            ("agent:a", minute, b"{}"),
        ]
    )
    writer = StoreWriter(store)
    writer.start()
    try:
        await retention.prune_once(GatewaySettings(), writer, now=now)
        kept = store.query_rollups("fleet", minute - 100 * 1440, minute)
        assert [m for m, _ in kept] == [minute - 89 * 1440]
        assert store.query_rollups("agent:a", minute, minute) == [(minute, b"{}")]
        await retention.prune_once(GatewaySettings(rollup_retention_days=0.5), writer, now=now)
        assert store.query_rollups("fleet", minute - 100 * 1440, minute) == []
    finally:
        writer.stop()
        store.close()
