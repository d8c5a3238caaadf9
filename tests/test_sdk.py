"""The SDK in a real agent process, talking to a real Unix socket.

The socket is the node agent's own ``LocalServer``, run in the test process,
so what arrives here is what the node agent would spool.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from clawtrace.node.local import SOCKET_ENV, LocalServer

PY = sys.executable
AGENT = str(Path(__file__).parent / "agents" / "sdk_agent.py")


class Collector:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    def __call__(self, messages: list[dict[str, Any]]) -> None:
        self.messages.extend(messages)


@pytest.fixture
async def server() -> AsyncIterator[tuple[LocalServer, Collector]]:
    collector = Collector()
    local = LocalServer(collector)
    await local.start()
    try:
        yield local, collector
    finally:
        await local.close()


async def run_agent(mode: str, socket_path: str | None) -> tuple[int, dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if k != SOCKET_ENV}
    if socket_path is not None:
        env[SOCKET_ENV] = socket_path
    proc = await asyncio.create_subprocess_exec(
        PY, AGENT, mode, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert not err, err.decode()  # the SDK must never print tracebacks into the agent
    return proc.returncode, json.loads(out.decode().splitlines()[-1])


async def test_events_reach_the_node_agent_in_order(server: tuple[LocalServer, Collector]) -> None:
    local, collected = server
    _, result = await run_agent("all", local.path)
    assert result["reraised"] is True and result["flushed"] is True
    messages = collected.messages
    assert [m["kind"] for m in messages] == [
        "thought",
        "tool_call", "tool_result",
        "tool_call", "tool_result",
        "llm_call",
        "log",
        "tool_call", "tool_result",
        "thought",
    ]  # fmt: skip
    assert result["stats"] == {"sent": 10, "dropped": 0, "queued": 0}
    first, call, ok, bad_call, bad, llm, log, acall, aresult, last = messages
    assert first["text"] == "first" and last["text"] == "last"
    assert call["tool"] == "search" and call["args"]["q"] == "cats"
    assert "module 'time'" in call["args"]["when"]  # not JSON: sent as its text, not an error
    assert ok == {**ok, "call_id": call["call_id"], "ok": True, "output": ["a", "b"]}
    assert ok["duration_ms"] >= 0 and "error" not in ok
    assert bad_call["args"] == {"command": "rm -rf /tmp/x"}
    assert bad["call_id"] == bad_call["call_id"] and bad["ok"] is False
    assert bad["error"] == "ToolBroke: disk on fire"
    assert llm == {
        **llm,
        "model": "claude",
        "input_tokens": 10,
        "output_tokens": 5,
        "duration_ms": 12.5,
        "cached_input_tokens": 4,
    }
    assert "cost_usd" not in llm
    assert log["line"] == "a quiet line" and log["stream"] == "stderr"
    assert aresult["call_id"] == acall["call_id"] and aresult["output"] == 200
    assert aresult["duration_ms"] >= 10
    # The SDK stamps the time of the call; the node agent assigns the rest.
    assert all("ts" in m and "seq" not in m and "session" not in m for m in messages)
    assert local.messages_rejected == 0


async def test_without_a_node_agent_the_sdk_is_a_cheap_noop() -> None:
    _, result = await run_agent("noop", None)
    assert result["enabled"] is False
    assert result["threads"] == 1, "no background thread without a node agent"
    assert result["new_fds"] == 0, "no socket without a node agent"
    assert result["reraised"] is True
    assert result["stats"] == {"sent": 0, "dropped": 0, "queued": 0}
    # 30,000 calls: a sanity bound (a connect attempt or a thread per call
    # would blow it by far), not a benchmark.
    assert result["seconds"] < 2.0


async def test_a_missing_socket_never_raises_or_hangs(tmp_path: Path) -> None:
    started = time.monotonic()
    _, result = await run_agent("loop", str(tmp_path / "no-such.sock"))
    assert result["errors"] == 0
    assert result["stats"]["sent"] == 0
    assert result["stats"]["dropped"] == 3 * result["iterations"]
    assert time.monotonic() - started < 10


async def test_the_node_agent_vanishing_mid_run_is_survived(server: tuple[LocalServer, Collector]) -> None:
    local, collected = server
    assert local.path is not None
    task = asyncio.create_task(run_agent("loop", local.path))
    deadline = time.monotonic() + 10
    while len(collected.messages) < 30:
        assert time.monotonic() < deadline, "no SDK events arrived"
        await asyncio.sleep(0.02)
    await local.close()  # the node agent is gone: socket closed and removed
    _, result = await task
    assert result["errors"] == 0
    assert result["stats"]["dropped"] > 0
    assert result["stats"]["sent"] + result["stats"]["dropped"] == 3 * result["iterations"]


async def test_a_stuck_node_agent_makes_the_sdk_drop_not_block(tmp_path: Path) -> None:
    # Accepts connections (kernel backlog) but never reads: sends stall once
    # the socket buffer is full, and the queue fills up behind them.
    path = str(tmp_path / "stuck.sock")
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stuck.bind(path)
    stuck.listen(8)
    try:
        started = time.monotonic()
        _, result = await run_agent("flood", path)
        elapsed = time.monotonic() - started
    finally:
        stuck.close()
    stats = result["stats"]
    assert stats["dropped"] > 0
    assert stats["sent"] + stats["dropped"] + stats["queued"] == 50_000
    # 50,000 calls never waited on the socket; exit waits at most ~2 s for the queue.
    assert result["seconds"] < 5
    assert elapsed < 15


async def test_a_forked_child_reports_through_its_own_sender(server: tuple[LocalServer, Collector]) -> None:
    local, collected = server
    _, result = await run_agent("fork", local.path)
    assert result["child_status"] == 0 and result["flushed"] is True
    texts = [m["text"] for m in collected.messages]
    # The child's own connection and the parent's are read independently: between
    # them there is no order, within each there is.
    assert sorted(texts) == ["from the forked child", "parent after fork", "parent before fork"]
    assert texts.index("parent before fork") < texts.index("parent after fork")
