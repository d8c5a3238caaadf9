"""Protocol v1 against a real gateway process over real sockets.

Every bad input gets its structured answer (an ``error`` frame naming the
event, or a close code), the valid events beside it are kept, and the
gateway goes on serving other connections.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from clawtrace.protocol import CloseCode, ErrorCode
from gateway_process import GatewayProcess

TS = "2026-03-01T12:00:00Z"
WAIT = 15.0  # upper bound for anything we wait for; normally milliseconds

_names = itertools.count(1)


def new_agent(prefix: str = "a") -> str:
    return f"{prefix}-{next(_names)}"


def log(seq: int, line: str | None = None, session: str = "s1", **extra: Any) -> dict[str, Any]:
    return {"kind": "log", "seq": seq, "ts": TS, "session": session, "stream": "stdout",
            "line": line if line is not None else f"line {seq}", **extra}


def heartbeat(seq: int) -> dict[str, Any]:
    return {"kind": "heartbeat", "seq": seq, "ts": TS, "session": "s1"}


def one_of_each(start: int, session: str = "s1") -> list[dict[str, Any]]:
    """One event of every kind, with seqs start, start+1, ..."""
    base = [
        {"kind": "log", "stream": "stderr", "line": "warming up"},
        {"kind": "thought", "text": "I should list the files first"},
        {"kind": "llm_call", "model": "gpt-4o", "input_tokens": 812, "output_tokens": 96,
         "duration_ms": 1530.5, "cost_usd": 0.0031},
        {"kind": "tool_call", "call_id": "c1", "tool": "shell", "args": {"cmd": "ls -la", "cwd": "/tmp"}},
        {"kind": "tool_result", "call_id": "c1", "ok": True, "duration_ms": 12.0, "output": {"files": 3}},
        {"kind": "heartbeat", "cpu_percent": 12.5, "rss_bytes": 104857600},
        {"kind": "lifecycle", "state": "running"},
        {"kind": "policy", "decision": "deny", "tool": "shell", "rule": "no-rm", "reason": "rm -rf"},
    ]
    return [{**fields, "seq": start + i, "ts": "2026-03-01T14:00:00+02:00", "session": session}
            for i, fields in enumerate(base)]


def frame(*events: Any) -> str:
    return json.dumps({"type": "events", "events": list(events)})


def hello_frame(agent: str, env: str = "dev", **fields: Any) -> str:
    return json.dumps({"type": "hello", "agent": agent, "env": env, **fields})


class Conn:
    """A raw agent connection and what came back on it."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.welcome: dict[str, Any] | None = None
        self.acked = 0
        self.errors: list[dict[str, Any]] = []
        self.commands: list[dict[str, Any]] = []

    async def send(self, data: str | bytes) -> None:
        await self.ws.send(data)

    async def recv(self, within: float = WAIT) -> dict[str, Any]:
        message = json.loads(await asyncio.wait_for(self.ws.recv(), within))
        assert isinstance(message, dict)
        return message

    def _note(self, message: dict[str, Any]) -> None:
        if message["type"] == "ack":
            assert message["seq"] >= self.acked, "acks never go backwards"
            self.acked = message["seq"]
        elif message["type"] == "error":
            self.errors.append(message)
        elif message["type"] == "command":
            self.commands.append(message)

    async def until_ack(self, seq: int, within: float = WAIT) -> list[dict[str, Any]]:
        """Read until the ack covers ``seq``; return the errors received meanwhile."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        first_error = len(self.errors)
        while self.acked < seq:
            self._note(await self.recv(max(0.01, deadline - loop.time())))
        return self.errors[first_error:]

    async def until_error(self, within: float = WAIT) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        seen = len(self.errors)
        while len(self.errors) == seen:
            self._note(await self.recv(max(0.01, deadline - loop.time())))
        return self.errors[seen]

    async def until_closed(self, within: float = WAIT) -> int | None:
        """Read everything until the gateway closes; return its close code."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        try:
            while True:
                self._note(await self.recv(max(0.01, deadline - loop.time())))
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd is not None else None

    async def close(self) -> None:
        await self.ws.close()


async def open_ws(gw: GatewayProcess, token: str | None) -> ClientConnection:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    return await connect(f"{gw.ws_url}/v1/agent", additional_headers=headers, max_size=None,
                         open_timeout=WAIT, close_timeout=2)


async def agent_conn(
    gw: GatewayProcess, agent: str, env: str = "dev", token: str | None = None, **hello: Any
) -> Conn:
    """Connect, say hello, and return the connection after its ``welcome``."""
    conn = Conn(await open_ws(gw, token or gw.token(env, "agent")))
    await conn.send(hello_frame(agent, env, **hello))
    welcome = await conn.recv()
    assert welcome["type"] == "welcome", welcome
    conn.welcome = welcome
    conn.acked = welcome["ack"]
    return conn


async def stored(gw: GatewayProcess, agent: str) -> list[dict[str, Any]]:
    return await asyncio.to_thread(gw.events, agent)


async def stored_seqs(gw: GatewayProcess, agent: str) -> list[int]:
    return [event["seq"] for event in await stored(gw, agent)]


async def assert_serving(gw: GatewayProcess) -> None:
    """The gateway still takes a new connection and stores and acks its events."""
    agent = new_agent("probe")
    conn = await agent_conn(gw, agent)
    await conn.send(frame(log(1), log(2)))
    assert await conn.until_ack(2) == []
    await conn.close()
    assert await stored_seqs(gw, agent) == [1, 2]


def assert_error(error: dict[str, Any], code: str, seq: int | None) -> None:
    assert error["type"] == "error"
    assert error["code"] == code, error
    assert error["seq"] == seq, error
    assert isinstance(error["message"], str) and error["message"], error


def start_gateway(directory: Path, extra_args: list[str]) -> GatewayProcess:
    gw = GatewayProcess(directory, extra_args=extra_args)
    gw.start()
    return gw


def stop_gateway(gw: GatewayProcess) -> None:
    log_text = gw.log()
    gw.stop()
    # "never a crash": no connection handler died with an exception.
    assert "Traceback" not in log_text, log_text[-5000:]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """One gateway with default limits for most tests (each uses its own agent ids)."""
    process = start_gateway(tmp_path_factory.mktemp("gw-default"), [])
    try:
        yield process
    finally:
        stop_gateway(process)


RATE = 200  # events/s per connection on the limited gateway
BURST = 100
MAX_DELAY = 0.5
SMALL_FRAME = 64 * 1024


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A gateway with a small frame limit and a low per-connection rate limit."""
    directory = tmp_path_factory.mktemp("gw-limited")
    config = directory / "gateway.toml"
    config.write_text(
        "[gateway]\n"
        f"rate_limit_events_per_second = {RATE}\n"
        f"rate_limit_burst = {BURST}\n"
        f"rate_limit_max_delay_seconds = {MAX_DELAY}\n"
    )
    args = ["--config", str(config), "--max-frame-bytes", str(SMALL_FRAME)]
    process = start_gateway(directory / "data", args)
    try:
        yield process
    finally:
        stop_gateway(process)


# --- handshake, storage, acks -------------------------------------------------------


async def test_hello_welcome_for_a_new_agent(gw: GatewayProcess) -> None:
    agent = new_agent()
    conn = await agent_conn(gw, agent, region="eu-west-1", labels={"team": "search"}, release="r-41")
    welcome = conn.welcome
    assert welcome is not None
    assert (welcome["type"], welcome["ack"], welcome["protocol"]) == ("welcome", 0, 1)
    assert (welcome["max_frame_bytes"], welcome["max_events_per_frame"]) == (1 << 20, 10_000)
    records = {a["agent"]: a for a in await asyncio.to_thread(gw.agents)}
    record = records[agent]
    assert record["env"] == "dev"
    assert record["region"] == "eu-west-1"
    assert record["labels"] == {"team": "search"}
    assert record["release"] == "r-41"
    assert record["connected"] is True
    await conn.close()


async def test_token_may_be_sent_in_hello_instead_of_header(gw: GatewayProcess) -> None:
    agent = new_agent()
    conn = Conn(await open_ws(gw, None))
    await conn.send(hello_frame(agent, token=gw.token("dev", "agent")))
    assert (await conn.recv())["type"] == "welcome"
    await conn.send(frame(log(1)))
    assert await conn.until_ack(1) == []
    await conn.close()


async def test_every_kind_is_stored_with_receive_time_and_acked(gw: GatewayProcess) -> None:
    agent = new_agent()
    conn = await agent_conn(gw, agent)
    sent = one_of_each(1)
    await conn.send(frame(*sent[:3]))
    await conn.send(frame(*sent[3:]))
    assert await conn.until_ack(len(sent)) == []
    assert conn.acked == len(sent)
    events = await stored(gw, agent)
    assert [e["seq"] for e in events] == list(range(1, len(sent) + 1))
    for original, event in zip(sent, events, strict=True):
        assert event["agent"] == agent
        assert "received" in event
        for key, value in original.items():
            if key != "ts":
                assert event[key] == value, (key, event)
    # ts keeps the instant the agent gave, offset and all.
    assert events[0]["ts"] in ("2026-03-01T12:00:00Z", "2026-03-01T14:00:00+02:00")
    await conn.close()


async def test_ack_after_reconnect_and_resend_is_deduplicated(gw: GatewayProcess) -> None:
    agent = new_agent()
    conn = await agent_conn(gw, agent)
    await conn.send(frame(*(log(s) for s in range(1, 6))))
    await conn.until_ack(5)
    await conn.close()

    conn = await agent_conn(gw, agent)
    assert conn.welcome is not None and conn.welcome["ack"] == 5
    # A node agent that lost its ack resends everything it has; only 6..8 are new.
    await conn.send(frame(*(log(s) for s in range(1, 9))))
    assert await conn.until_ack(8) == []
    await conn.close()

    assert await stored_seqs(gw, agent) == list(range(1, 9))
    sessions = (await asyncio.to_thread(gw.get, f"/api/v1/agents/{agent}/sessions")).json()["sessions"]
    assert [(s["session"], s["first_seq"], s["last_seq"], s["events"]) for s in sessions] == [("s1", 1, 8, 8)]
    conn = await agent_conn(gw, agent)
    assert conn.welcome is not None and conn.welcome["ack"] == 8
    await conn.close()


async def test_welcome_ack_survives_a_gateway_restart(gateway: GatewayProcess) -> None:
    agent = new_agent()
    conn = await agent_conn(gateway, agent)
    await conn.send(frame(*(heartbeat(s) for s in range(1, 11))))
    await conn.until_ack(10)
    await asyncio.to_thread(gateway.stop)
    await asyncio.to_thread(gateway.start)
    conn = await agent_conn(gateway, agent)
    assert conn.welcome is not None and conn.welcome["ack"] == 10
    await conn.send(frame(*(heartbeat(s) for s in range(5, 13))))
    await conn.until_ack(12)
    await conn.close()
    assert await stored_seqs(gateway, agent) == list(range(1, 13))


async def test_second_hello_on_a_connection_is_an_error_not_a_close(gw: GatewayProcess) -> None:
    agent = new_agent()
    conn = await agent_conn(gw, agent)
    await conn.send(hello_frame(agent))
    assert_error(await conn.until_error(), ErrorCode.UNEXPECTED_MESSAGE, None)
    await conn.send(frame(log(1)))
    await conn.until_ack(1)
    await conn.close()


# --- bad input inside a connection ------------------------------------------------------


async def test_malformed_json(gw: GatewayProcess) -> None:
    agent = new_agent()
    conn = await agent_conn(gw, agent)
    await conn.send(frame(log(1)))
    await conn.until_ack(1)
    for garbage in ('{"type":"events","events":[' + json.dumps(log(2)), "not json at all", "{'a': 1}"):
        await conn.send(garbage)
        assert_error(await conn.until_error(), ErrorCode.INVALID_JSON, None)
    await conn.send(frame(log(2)))
    assert await conn.until_ack(2) == []
    await conn.close()
    assert await stored_seqs(gw, agent) == [1, 2]
    await assert_serving(gw)


async def test_not_an_events_frame(gw: GatewayProcess) -> None:
    agent = new_agent()
    conn = await agent_conn(gw, agent)
    for document in ('{"type":"events"}', '{"type":"mystery","events":[]}', "[1,2]", '{"events":"x"}'):
        await conn.send(document)
        assert_error(await conn.until_error(), ErrorCode.INVALID_FRAME, None)
    await conn.send(frame(log(1)))
    assert await conn.until_ack(1) == []
    await conn.close()


async def test_invalid_utf8_in_a_binary_frame(gw: GatewayProcess) -> None:
    agent = new_agent()
    conn = await agent_conn(gw, agent)
    # Binary frames holding UTF-8 JSON are accepted like text frames ...
    await conn.send(frame(log(1)).encode())
    await conn.until_ack(1)
    # ... but one with invalid UTF-8 is refused as a whole (it cannot be split safely).
    bad = frame(log(2), log(3, line="@BAD@")).encode().replace(b"@BAD@", b"caf\xe9 \xff")
    await conn.send(bad)
    assert_error(await conn.until_error(), ErrorCode.INVALID_UTF8, None)
    await conn.send(frame(log(2), log(3)))
    assert await conn.until_ack(3) == []
    await conn.close()
    assert await stored_seqs(gw, agent) == [1, 2, 3]
    await assert_serving(gw)


async def test_deeply_nested_json_is_refused_without_dropping_the_connection(gw: GatewayProcess) -> None:
    agent = new_agent()
    conn = await agent_conn(gw, agent)
    deep = "[" * 50_000 + "]" * 50_000
    await conn.send('{"type":"events","events":[' + json.dumps(log(1)) + ',{"kind":"log","x":' + deep + "}]}")
    error = await conn.until_error()
    assert error["code"] in (ErrorCode.INVALID_JSON, ErrorCode.INVALID_EVENT), error
    await conn.send(frame(log(1), log(2)))
    await conn.until_ack(2)
    await conn.close()
    assert await stored_seqs(gw, agent) == [1, 2]
    await assert_serving(gw)


async def test_unknown_kind_costs_only_that_event(gw: GatewayProcess) -> None:
    agent = new_agent()
    conn = await agent_conn(gw, agent)
    mystery = {"kind": "telepathy", "seq": 2, "ts": TS, "session": "s1", "text": "?"}
    await conn.send(frame(log(1), mystery, log(3)))
    errors = await conn.until_ack(3)
    assert len(errors) == 1
    assert_error(errors[0], ErrorCode.UNKNOWN_KIND, 2)
    assert "telepathy" in errors[0]["message"]
    await conn.close()
    assert await stored_seqs(gw, agent) == [1, 3]
    await assert_serving(gw)


def without(event: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k != key}


def tool(kind: str, seq: int, **fields: Any) -> dict[str, Any]:
    return {"kind": kind, "seq": seq, "ts": TS, "session": "s1", **fields}


# (what is wrong, the bad event given its seq, whether the error can name that seq)
BAD_EVENTS: list[tuple[str, Any, bool]] = [
    ("missing line", lambda s: without(log(s), "line"), True),
    ("missing seq", lambda s: without(log(s), "seq"), False),
    ("missing ts", lambda s: without(log(s), "ts"), True),
    ("missing session", lambda s: without(log(s), "session"), True),
    ("missing kind", lambda s: without(log(s), "kind"), True),
    ("seq is a string", lambda s: {**log(s), "seq": str(s)}, False),
    ("seq is a float", lambda s: {**log(s), "seq": s + 0.5}, False),
    ("ts without offset", lambda s: {**log(s), "ts": "2026-03-01T12:00:00"}, True),
    ("ts is not a time", lambda s: {**log(s), "ts": "noon"}, True),
    ("session is empty", lambda s: {**log(s), "session": ""}, True),
    ("stream not stdout/stderr", lambda s: {**log(s), "stream": "stdin"}, True),
    ("line is a number", lambda s: {**log(s), "line": 7}, True),
    ("negative tokens", lambda s: tool("llm_call", s, model="m", input_tokens=-1, output_tokens=1,
                                       duration_ms=1.0), True),
    ("tool args not an object", lambda s: tool("tool_call", s, call_id="c", tool="shell",
                                               args=["rm", "-rf", "/"]), True),
    ("ok is a string", lambda s: tool("tool_result", s, call_id="c", ok="yes", duration_ms=1.0), True),
    ("decision unknown", lambda s: tool("policy", s, decision="maybe", tool="shell"), True),
    ("agent id with a slash", lambda s: {**log(s), "agent": "eu-west-1/a-0417"}, True),
    ("event is not an object", lambda s: [s], False),
]


async def test_missing_or_wrong_typed_fields_cost_only_that_event(gw: GatewayProcess) -> None:
    agent = new_agent()
    conn = await agent_conn(gw, agent)
    expected_stored: list[int] = []
    for i, (what, make, names_seq) in enumerate(BAD_EVENTS):
        before, bad_seq, after = 3 * i + 1, 3 * i + 2, 3 * i + 3
        await conn.send(frame(log(before), make(bad_seq), log(after)))
        errors = await conn.until_ack(after)
        assert len(errors) == 1, (what, errors)
        assert_error(errors[0], ErrorCode.INVALID_EVENT, bad_seq if names_seq else None)
        assert conn.acked == after
        expected_stored += [before, after]
    # A seq beyond the 63-bit range is named, but must not become the ack: the client
    # would drop everything it has not sent yet, and every later seq would be "not increasing".
    n = len(BAD_EVENTS) * 3
    await conn.send(frame(log(n + 1), {**log(n + 2), "seq": 2**63}, log(n + 3)))
    errors = await conn.until_ack(n + 3)
    assert [(e["code"], e["seq"]) for e in errors] == [(ErrorCode.INVALID_EVENT, 2**63)]
    await conn.send(frame(log(n + 4)))
    assert await conn.until_ack(n + 4) == []
    assert conn.acked == n + 4
    expected_stored += [n + 1, n + 3, n + 4]
    # seq 0 is named as such (it is an int, just not >= 1).
    await conn.send(frame(log(0), log(n + 5)))
    errors = await conn.until_ack(n + 5)
    assert [(e["code"], e["seq"]) for e in errors] == [(ErrorCode.INVALID_EVENT, 0)]
    expected_stored.append(n + 5)
    await conn.close()
    assert await stored_seqs(gw, agent) == expected_stored
    await assert_serving(gw)


async def test_event_naming_another_agent_is_rejected(gw: GatewayProcess) -> None:
    agent = new_agent()
    conn = await agent_conn(gw, agent)
    await conn.send(frame(log(1, agent=agent), log(2, agent="someone-else"), log(3)))
    errors = await conn.until_ack(3)
    assert len(errors) == 1
    assert_error(errors[0], ErrorCode.INVALID_EVENT, 2)
    await conn.close()
    assert await stored_seqs(gw, agent) == [1, 3]


async def test_seq_going_backwards_within_a_connection(gw: GatewayProcess) -> None:
    agent = new_agent()
    conn = await agent_conn(gw, agent)
    await conn.send(frame(log(1), log(2), log(3)))
    await conn.until_ack(3)
    # Across frames: 2 goes back, 4 is fine.
    await conn.send(frame(log(2, line="again"), log(4)))
    errors = await conn.until_ack(4)
    assert len(errors) == 1
    assert_error(errors[0], ErrorCode.SEQ_NOT_INCREASING, 2)
    # Within a frame: 6 then 5, and 6 twice.
    await conn.send(frame(log(6), log(5), log(6, line="dup"), log(7)))
    errors = await conn.until_ack(7)
    assert [(e["code"], e["seq"]) for e in errors] == [
        (ErrorCode.SEQ_NOT_INCREASING, 5), (ErrorCode.SEQ_NOT_INCREASING, 6),
    ]
    # A frame of nothing but old seqs is answered with errors and no new ack.
    await conn.send(frame(log(3)))
    assert_error(await conn.until_error(), ErrorCode.SEQ_NOT_INCREASING, 3)
    await conn.send(frame(log(8)))
    await conn.until_ack(8)
    await conn.close()
    events = await stored(gw, agent)
    assert [e["seq"] for e in events] == [1, 2, 3, 4, 6, 7, 8]
    assert all(e["line"] == f"line {e['seq']}" for e in events)


async def test_more_than_10000_events_in_one_frame(gw: GatewayProcess) -> None:
    agent = new_agent()
    conn = await agent_conn(gw, agent)
    await conn.send(frame(*(heartbeat(s) for s in range(1, 10_002))))
    error = await conn.until_error()
    assert_error(error, ErrorCode.TOO_MANY_EVENTS, None)
    assert conn.acked == 0
    # Nothing of it was stored; the limit itself is fine, on the same connection.
    await conn.send(frame(*(heartbeat(s) for s in range(1, 10_001))))
    assert await conn.until_ack(10_000) == []
    await conn.close()
    seqs = await stored_seqs(gw, agent)
    assert len(seqs) == 10_000 and seqs == sorted(set(seqs))
    await assert_serving(gw)


async def test_frame_over_the_size_limit_closes_with_1009(limited: GatewayProcess) -> None:
    agent = new_agent()
    conn = await agent_conn(limited, agent)
    assert conn.welcome is not None and conn.welcome["max_frame_bytes"] == SMALL_FRAME
    await conn.send(frame(log(1), log(2)))
    await conn.until_ack(2)
    await conn.send(frame(log(3), log(4, line="x" * SMALL_FRAME)))
    code = await conn.until_closed()
    assert code == CloseCode.TOO_BIG or any(e["code"] == ErrorCode.FRAME_TOO_LARGE for e in conn.errors)
    # What was acked is kept; the client resends the rest in smaller frames.
    conn = await agent_conn(limited, agent)
    assert conn.welcome is not None and conn.welcome["ack"] == 2
    await conn.send(frame(log(3), log(4)))
    await conn.until_ack(4)
    await conn.close()
    assert await stored_seqs(limited, agent) == [1, 2, 3, 4]
    await assert_serving(limited)


# --- refusals at connect time ---------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [None, "nonsense", "ct_000000000000_unknownsecretunknownsecret", "@WRONG_SECRET@"],
    ids=["missing", "malformed", "unknown", "wrong-secret"],
)
async def test_bad_or_missing_credential_closes_with_4001(gw: GatewayProcess, token: str | None) -> None:
    if token == "@WRONG_SECRET@":
        good = gw.token("dev", "agent")
        token = good[: good.rindex("_") + 1] + "x" * 32
    conn = Conn(await open_ws(gw, token))
    await conn.send(hello_frame(new_agent()))
    assert await conn.until_closed() == CloseCode.UNAUTHORIZED
    assert [e["code"] for e in conn.errors] == [ErrorCode.UNAUTHORIZED]
    await assert_serving(gw)


async def test_credential_for_another_environment_closes_with_4003(gw: GatewayProcess) -> None:
    conn = Conn(await open_ws(gw, gw.token("dev", "agent")))
    await conn.send(hello_frame(new_agent(), env="prod"))
    assert await conn.until_closed() == CloseCode.FORBIDDEN
    assert [e["code"] for e in conn.errors] == [ErrorCode.FORBIDDEN]
    await assert_serving(gw)


@pytest.mark.parametrize("role", ["viewer", "operator"])
async def test_people_credentials_may_not_send_events(gw: GatewayProcess, role: str) -> None:
    conn = Conn(await open_ws(gw, gw.token("dev", role)))
    await conn.send(hello_frame(new_agent()))
    assert await conn.until_closed() == CloseCode.FORBIDDEN
    assert [e["code"] for e in conn.errors] == [ErrorCode.FORBIDDEN]


async def test_agent_id_of_another_environment_closes_with_4003(gw: GatewayProcess) -> None:
    agent = new_agent()
    await (await agent_conn(gw, agent, env="dev")).close()  # now registered in dev
    conn = Conn(await open_ws(gw, gw.token("prod", "agent")))
    await conn.send(hello_frame(agent, env="prod"))
    assert await conn.until_closed() == CloseCode.FORBIDDEN
    assert [e["code"] for e in conn.errors] == [ErrorCode.FORBIDDEN]


@pytest.mark.parametrize(
    ("first", "code"),
    [
        (frame(log(1)), ErrorCode.UNEXPECTED_MESSAGE),
        ("{not json", ErrorCode.INVALID_JSON),
        (hello_frame("eu-west-1/a-0417"), ErrorCode.INVALID_FRAME),
        (json.dumps({"type": "hello", "env": "dev"}), ErrorCode.INVALID_FRAME),
        (b"\xff\xfe", ErrorCode.INVALID_UTF8),
    ],
    ids=["events", "not-json", "bad-agent-id", "no-agent", "bad-utf8"],
)
async def test_first_frame_must_be_a_valid_hello(gw: GatewayProcess, first: str | bytes, code: str) -> None:
    conn = Conn(await open_ws(gw, gw.token("dev", "agent")))
    await conn.send(first)
    assert await conn.until_closed() == CloseCode.PROTOCOL_ERROR
    assert [e["code"] for e in conn.errors] == [code]
    await assert_serving(gw)


# --- rate limit ------------------------------------------------------------------------------------


async def test_flood_is_slowed_down_not_dropped_and_others_are_unaffected(limited: GatewayProcess) -> None:
    flooder, neighbour = new_agent("flood"), new_agent("calm")
    flood = await agent_conn(limited, flooder)
    calm = await agent_conn(limited, neighbour)
    per_frame, frames = 40, 10  # 400 events at 200/s with a burst of 100: ~1.5 s of backpressure
    total = per_frame * frames
    for i in range(frames):
        await flood.send(frame(*(heartbeat(s) for s in range(i * per_frame + 1, (i + 1) * per_frame + 1))))

    async def calm_agent() -> list[dict[str, Any]]:
        errors: list[dict[str, Any]] = []
        for i in range(4):
            await calm.send(frame(*(log(s) for s in range(i * 20 + 1, i * 20 + 21))))
            errors += await calm.until_ack(i * 20 + 20)
        return errors

    calm_errors, flood_errors = await asyncio.gather(calm_agent(), flood.until_ack(total, within=30))
    assert calm_errors == []
    limited_errors = [e for e in flood_errors if e["code"] == ErrorCode.RATE_LIMITED]
    assert limited_errors, "a flood is told to slow down"
    assert flood_errors == limited_errors
    assert all(e["retry_after_ms"] > 0 for e in limited_errors)
    await flood.close()
    await calm.close()
    assert await stored_seqs(limited, flooder) == list(range(1, total + 1))
    assert await stored_seqs(limited, neighbour) == list(range(1, 81))


async def test_frame_beyond_the_allowed_delay_closes_with_4008(limited: GatewayProcess) -> None:
    agent = new_agent("greedy")
    conn = await agent_conn(limited, agent)
    await conn.send(frame(*(heartbeat(s) for s in range(1, 51))))
    await conn.until_ack(50)
    # More than burst + rate * max delay in one frame: cannot be absorbed by slowing down.
    too_many = int(BURST + RATE * MAX_DELAY) * 2
    await conn.send(frame(*(heartbeat(s) for s in range(51, 51 + too_many))))
    assert await conn.until_closed() == CloseCode.RATE_LIMITED
    error = conn.errors[-1]
    assert_error(error, ErrorCode.RATE_LIMITED, None)
    # Nothing acked is lost; the refused frame was not stored, so the client resends it.
    assert await stored_seqs(limited, agent) == list(range(1, 51))
    conn = await agent_conn(limited, agent)
    assert conn.welcome is not None and conn.welcome["ack"] == 50
    await conn.close()
    await assert_serving(limited)


# --- one connection per agent --------------------------------------------------------------------


async def test_second_connection_of_the_same_agent_replaces_the_first(gw: GatewayProcess) -> None:
    agent = new_agent()
    first = await agent_conn(gw, agent)
    await first.send(frame(log(1), log(2), log(3)))
    await first.until_ack(3)
    second = await agent_conn(gw, agent)
    assert second.welcome is not None and second.welcome["ack"] == 3
    assert await first.until_closed() == CloseCode.REPLACED
    await second.send(frame(log(3), log(4)))
    assert await second.until_ack(4) == []
    records = {a["agent"]: a for a in await asyncio.to_thread(gw.agents)}
    assert records[agent]["connected"] is True
    await second.close()
    assert await stored_seqs(gw, agent) == [1, 2, 3, 4]


# --- NDJSON POST /v1/events ------------------------------------------------------------------------


def post(gw: GatewayProcess, body: bytes, token: str | None, **params: Any) -> httpx.Response:
    headers = {"Content-Type": "application/x-ndjson"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.post(f"{gw.http_url}/v1/events", content=body, params=params, headers=headers, timeout=WAIT)


def ndjson(*lines: Any) -> bytes:
    encoded = (line if isinstance(line, bytes) else json.dumps(line).encode() for line in lines)
    return b"\n".join(encoded) + b"\n"


def test_ndjson_post_stores_good_lines_and_reports_bad_ones(gw: GatewayProcess) -> None:
    agent = new_agent("post")
    token = gw.token("dev", "agent")
    body = ndjson(
        log(1),                                                    # line 1
        b"{not json",                                              # line 2
        {"kind": "telepathy", "seq": 3, "ts": TS, "session": "s1"},  # line 3
        b"",                                                       # line 4: blank lines are skipped
        {**log(4), "stream": "stdin"},                             # line 5
        log(5),                                                    # line 6
        b'{"kind":"log","line":"caf\xe9"}',                        # line 7
        b'{"kind":"log","seq":6,"x":' + b"[" * 50_000 + b"]" * 50_000 + b"}",  # line 8
        heartbeat(7),                                              # line 9
    )
    response = post(gw, body, token, agent=agent)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["accepted"] == 3
    assert result["duplicates"] == 0
    assert result["acks"] == {agent: 7}
    assert [(e["code"], e["line"], e["seq"]) for e in result["errors"]] == [
        (ErrorCode.INVALID_JSON, 2, None),
        (ErrorCode.UNKNOWN_KIND, 3, 3),
        (ErrorCode.INVALID_EVENT, 5, 4),
        (ErrorCode.INVALID_UTF8, 7, None),
        (ErrorCode.INVALID_JSON, 8, None),
    ]
    assert [e["seq"] for e in gw.events(agent)] == [1, 5, 7]

    # A retry of the same post (and more) stores only what is new.
    response = post(gw, ndjson(log(1), log(5), heartbeat(7), log(8)), token, agent=agent)
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 1
    assert response.json()["duplicates"] == 3
    assert response.json()["acks"] == {agent: 8}
    assert [e["seq"] for e in gw.events(agent)] == [1, 5, 7, 8]

    # The same seq twice in one post is a duplicate too (the first line wins), not an error;
    # lines need not be in seq order.
    response = post(gw, ndjson(log(10), log(9, line="first"), log(9, line="second")), token, agent=agent)
    assert response.status_code == 200, response.text
    assert response.json()["errors"] == []
    assert (response.json()["accepted"], response.json()["duplicates"]) == (2, 1)
    events = gw.events(agent)
    assert [e["seq"] for e in events] == [1, 5, 7, 8, 9, 10]
    assert events[4]["line"] == "first"


def test_ndjson_post_agent_from_the_event_and_env_from_the_credential(gw: GatewayProcess) -> None:
    agent = new_agent("post")
    response = post(gw, ndjson(log(1, agent=agent), log(2, agent=agent)), gw.token("*", "admin"), env="dev")
    assert response.status_code == 200, response.text
    assert response.json()["acks"] == {agent: 2}
    records = {a["agent"]: a for a in gw.agents()}
    assert records[agent]["env"] == "dev"
    # Without any agent the line is refused, with its line number.
    response = post(gw, ndjson(log(3)), gw.token("dev", "agent"))
    assert response.status_code == 200
    assert [(e["code"], e["line"]) for e in response.json()["errors"]] == [(ErrorCode.INVALID_EVENT, 1)]


def test_ndjson_post_refusals(gw: GatewayProcess) -> None:
    agent = new_agent("post")
    body = ndjson(log(1))
    assert post(gw, body, None, agent=agent).status_code == 401
    assert post(gw, body, "ct_nope", agent=agent).status_code == 401
    response = post(gw, body, gw.token("dev", "viewer"), agent=agent)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == ErrorCode.FORBIDDEN
    assert post(gw, body, gw.token("dev", "agent"), agent=agent, env="prod").status_code == 403
    too_many = ndjson(*(heartbeat(s) for s in range(1, 10_002)))
    response = post(gw, too_many, gw.token("dev", "agent"), agent=agent)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == ErrorCode.TOO_MANY_EVENTS
    # Nothing was stored, not even the agent.
    assert gw.get(f"/api/v1/agents/{agent}/events").status_code == 404


def test_ndjson_post_over_the_size_limit(limited: GatewayProcess) -> None:
    body = ndjson(log(1, line="x" * SMALL_FRAME))
    response = post(limited, body, limited.token("dev", "agent"), agent="big")
    assert response.status_code == 413
    assert response.json()["error"]["code"] == ErrorCode.FRAME_TOO_LARGE
