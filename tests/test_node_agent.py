"""The node agent (`clawtrace run`) as real processes against a real gateway.

Unit-level parts (spool, supervisor) run real SQLite files and real child
processes in-process; the rest starts `clawtrace run` as a subprocess and
checks what the gateway stored through its REST API.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil
import pytest

from clawtrace.node.spool import Spool, SpoolError
from clawtrace.node.supervisor import (
    Backoff,
    LifecycleChange,
    LineSplitter,
    RestartPolicy,
    SpawnError,
    Supervisor,
)
from clawtrace.protocol.codec import decode_event
from clawtrace.protocol.messages import Event, Heartbeat, Thought
from gateway_process import GatewayProcess
from node_process import AGENTS, PY, NodeAgentProcess
from waiting import wait_for

T = TypeVar("T")


async def until(check: Callable[[], bool], seconds: float = 20, interval: float = 0.02) -> None:
    """Async twin of ``wait_for`` for the in-process supervisor tests."""
    for _ in range(int(seconds / interval)):
        if check():
            return
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {seconds:g} s")


# --- spool ---------------------------------------------------------------------


def _thought(text: str) -> Thought:
    return Thought(seq=1, ts=datetime.now(UTC), session="s-1", text=text)


def test_spool_assigns_seq_and_keeps_it_across_reopen_after_acks(tmp_path: Path) -> None:
    with Spool(tmp_path, "a-1") as spool:
        stored = spool.append([_thought("one"), _thought("two"), _thought("three")])
        assert [e.seq for e in stored] == [1, 2, 3]
        assert [seq for seq, _ in spool.pending(0, 10)] == [1, 2, 3]
        assert [seq for seq, _ in spool.pending(1, 1)] == [2]
        raw = spool.pending(2, 10)[0][1]
        event = decode_event(raw)
        assert isinstance(event, Thought) and event.text == "three" and event.seq == 3
        spool.acked(3)
        assert spool.count() == 0
    # Every row was acked and deleted: the seq must still continue.
    with Spool(tmp_path, "a-1") as spool:
        assert spool.last_seq == 3
        assert [e.seq for e in spool.append([_thought("four")])] == [4]


def test_spool_refuses_a_second_user_and_another_agents_spool(tmp_path: Path) -> None:
    with Spool(tmp_path, "a-1"), pytest.raises(SpoolError, match="in use by another node agent"):
        Spool(tmp_path, "a-1")
    with pytest.raises(SpoolError, match="belongs to agent 'a-1'"):
        Spool(tmp_path, "a-2")


def test_spool_follows_the_gateway_when_the_spool_was_lost(tmp_path: Path) -> None:
    # A fresh spool (deleted directory, container without a volume) must not
    # reuse seqs the gateway already stored: they would be dropped as duplicates.
    with Spool(tmp_path, "a-1") as spool:
        spool.append([_thought("new 1"), _thought("new 2")])
        spool.acked(500)  # what a welcome from a gateway that knows seq 500 does
        pending = spool.pending(500, 10)
        assert [seq for seq, _ in pending] == [501, 502]
        assert [decode_event(raw).seq for _, raw in pending] == [501, 502]
        assert spool.append([_thought("new 3")])[0].seq == 503


SPOOL_WRITER = """
import sys
from datetime import UTC, datetime
from clawtrace.node.spool import Spool
from clawtrace.protocol.messages import Thought
spool = Spool(sys.argv[1], "a-1")
while True:
    stored = spool.append([Thought(seq=1, ts=datetime.now(UTC), session="s", text="t") for _ in range(5)])
    print(stored[-1].seq, flush=True)
    if stored[-1].seq % 50 == 0:
        spool.acked(stored[-1].seq - 20)
"""


def test_spool_survives_kill_9(tmp_path: Path) -> None:
    proc = subprocess.Popen([PY, "-c", SPOOL_WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    last_reported = 0
    for line in proc.stdout:
        last_reported = int(line)
        if last_reported >= 2000:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with Spool(tmp_path, "a-1") as spool:
        # Everything reported as written was committed before the report.
        assert spool.last_seq >= last_reported
        seqs = [seq for seq, _ in spool.pending(0, 1_000_000)]
        assert seqs == list(range(seqs[0], spool.last_seq + 1))
        for _, raw in spool.pending(0, 1_000_000):
            decode_event(raw)
        last = spool.last_seq
        assert spool.append([_thought("after")])[0].seq == last + 1


# --- supervisor ------------------------------------------------------------------


def test_line_splitter_truncates_long_lines_and_keeps_the_rest() -> None:
    splitter = LineSplitter(max_bytes=10)
    assert splitter.feed(b"short\nabcdefghij") == [b"short"]
    assert splitter.feed(b"KLMNOP\r\nnext") == [b"abcdefghij ...[6 bytes truncated]"]
    assert splitter.feed(b"") == []
    assert splitter.flush() == [b"next"]
    assert splitter.flush() == []


class Recorder:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []
        self.changes: list[tuple[float, LifecycleChange]] = []

    def on_lines(self, stream: str, lines: list[str]) -> None:
        self.lines.extend((stream, line) for line in lines)

    def on_lifecycle(self, change: LifecycleChange) -> None:
        self.changes.append((time.monotonic(), change))

    def states(self) -> list[str]:
        return [c.state for _, c in self.changes]


def _supervisor(rec: Recorder, argv: list[str], **kwargs: Any) -> Supervisor:
    return Supervisor(argv, on_lines=rec.on_lines, on_lifecycle=rec.on_lifecycle, **kwargs)


async def test_supervisor_captures_lines_in_order_and_returns_exit_code() -> None:
    rec = Recorder()
    code = (
        "import sys\n"
        "for i in range(300): print(f'line {i}')\n"
        "print('x' * 70000)\n"
        "print('bad', file=sys.stderr)\n"
        "sys.exit(5)"
    )
    sup = _supervisor(rec, [PY, "-c", code], policy=RestartPolicy.NEVER)
    assert await asyncio.wait_for(sup.run(), 20) == 5
    stdout = [line for stream, line in rec.lines if stream == "stdout"]
    assert stdout[:300] == [f"line {i}" for i in range(300)]
    assert stdout[300].startswith("x" * 1000) and stdout[300].endswith("[4464 bytes truncated]")
    assert [line for stream, line in rec.lines if stream == "stderr"] == ["bad"]
    assert rec.states() == ["started", "exited", "stopped"]
    assert rec.changes[1][1].exit_code == 5


async def test_supervisor_restarts_with_doubling_capped_backoff(tmp_path: Path) -> None:
    rec = Recorder()
    starts = tmp_path / "starts"
    sup = _supervisor(
        rec,
        [PY, str(AGENTS / "crasher.py"), str(starts), "3"],
        backoff=Backoff(initial=0.2, maximum=0.8, healthy_reset=60),
    )
    task = asyncio.create_task(sup.run())
    await until(lambda: rec.states().count("exited") >= 5)
    sup.shutdown(signal.SIGTERM)
    await asyncio.wait_for(task, 10)
    times = [float(t) for t in starts.read_text().split()]
    assert len(times) >= 5
    gaps = [b - a for a, b in itertools.pairwise(times)][:4]
    for gap, expected in zip(gaps, [0.2, 0.4, 0.8, 0.8], strict=True):
        assert expected <= gap < expected + 0.6, gaps
    reasons = [c.reason or "" for _, c in rec.changes if c.state == "restarting"]
    assert "restarting in 0.2 s" in reasons[0] and "restarting in 0.4 s" in reasons[1]
    assert all(c.exit_code == 3 for _, c in rec.changes if c.state == "exited")


async def test_supervisor_resets_backoff_after_a_healthy_run(tmp_path: Path) -> None:
    rec = Recorder()
    code = "import sys, time; time.sleep(0.4); sys.exit(1)"
    sup = _supervisor(rec, [PY, "-c", code], backoff=Backoff(initial=0.1, maximum=10, healthy_reset=0.3))
    task = asyncio.create_task(sup.run())
    await until(lambda: sup.starts >= 4)
    sup.shutdown()
    await asyncio.wait_for(task, 10)
    reasons = [c.reason or "" for _, c in rec.changes if c.state == "restarting"]
    assert len(reasons) >= 3
    assert all("restarting in 0.1 s" in r for r in reasons), reasons


async def test_supervisor_policies_always_and_on_failure() -> None:
    rec = Recorder()
    sup = _supervisor(rec, [PY, "-c", "pass"], policy=RestartPolicy.ALWAYS, backoff=Backoff(initial=0.05))
    task = asyncio.create_task(sup.run())
    await until(lambda: sup.starts >= 3)
    sup.shutdown()
    await asyncio.wait_for(task, 10)
    assert sup.starts >= 3
    rec = Recorder()
    sup = _supervisor(rec, [PY, "-c", "pass"], policy=RestartPolicy.ON_FAILURE, backoff=Backoff(initial=0.05))
    assert await asyncio.wait_for(sup.run(), 20) == 0
    assert sup.starts == 1 and rec.states() == ["started", "exited", "stopped"]


async def test_supervisor_stop_and_restart_requests(tmp_path: Path) -> None:
    rec = Recorder()
    pidfile = tmp_path / "pid"
    sup = _supervisor(rec, [PY, str(AGENTS / "graceful.py"), str(pidfile)], stop_timeout=5)
    task = asyncio.create_task(sup.run())

    await until(lambda: ("stdout", "ready") in rec.lines)
    first = sup.pid
    sup.restart("operator asked")
    # "ready" means its SIGTERM handler is installed; before, SIGTERM kills it.
    await until(lambda: rec.lines.count(("stdout", "ready")) == 2)
    assert sup.pid is not None and sup.pid != first
    assert rec.states() == ["started", "exited", "restarting", "started"]
    assert "operator asked" in (rec.changes[1][1].reason or "")
    assert rec.changes[1][1].exit_code == 7  # its SIGTERM handler ran
    sup.stop("maintenance")
    await until(lambda: rec.states()[-1] == "stopped")
    assert sup.pid is None and not task.done()
    sup.restart("back")
    await until(lambda: rec.lines.count(("stdout", "ready")) == 3)
    sup.shutdown(signal.SIGTERM)
    assert await asyncio.wait_for(task, 10) == 7
    assert rec.states()[-2:] == ["exited", "stopped"]


async def test_supervisor_kills_a_child_that_ignores_sigterm() -> None:
    rec = Recorder()
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(60)"
    )
    sup = _supervisor(rec, [PY, "-c", code], stop_timeout=0.5)
    task = asyncio.create_task(sup.run())
    await until(lambda: ("stdout", "ready") in rec.lines)
    sup.shutdown(signal.SIGTERM)
    assert await asyncio.wait_for(task, 10) == 128 + signal.SIGKILL


async def test_supervisor_fails_fast_when_the_command_does_not_exist() -> None:
    sup = _supervisor(Recorder(), ["/nonexistent/agent-binary"])
    with pytest.raises(SpawnError) as info:
        await sup.run()
    assert info.value.exit_status == 127


# --- the node agent process --------------------------------------------------------


@pytest.fixture
def nodes() -> Iterator[list[NodeAgentProcess]]:
    started: list[NodeAgentProcess] = []
    yield started
    for node in started:
        node.close()


def agent_cmd(script: str, *args: object) -> list[str]:
    return [PY, str(AGENTS / script), *map(str, args)]


def assert_exactly_once(events: list[dict[str, Any]]) -> None:
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(seqs) + 1)), "seqs must be 1..N, each once"


def lines(events: list[dict[str, Any]], stream: str = "stdout") -> list[str]:
    return [e["line"] for e in events if e["kind"] == "log" and e["stream"] == stream]


def lifecycle(events: list[dict[str, Any]]) -> list[str]:
    return [e["state"] for e in events if e["kind"] == "lifecycle"]


def events_so_far(gateway: GatewayProcess, agent: str, **params: Any) -> list[dict[str, Any]]:
    """For polling: the agent's events, or none while the gateway does not know it yet."""
    try:
        return gateway.events(agent, **params)
    except httpx.HTTPError:
        return []


def states_end_with(gateway: GatewayProcess, *tail: str) -> Callable[[], list[dict[str, Any]] | None]:
    """For polling: the events once the agent's lifecycle states end with ``tail``."""

    def check() -> list[dict[str, Any]] | None:
        events = events_so_far(gateway, "a-1")
        return events if tuple(lifecycle(events)[-len(tail) :]) == tail else None

    return check


def _reached(gateway: GatewayProcess, agent: str, predicate: Callable[[list[dict[str, Any]]], bool]) -> bool:
    return predicate(events_so_far(gateway, agent))


def test_output_and_sdk_events_arrive_in_order(
    tmp_path: Path, gateway: GatewayProcess, nodes: list[NodeAgentProcess]
) -> None:
    node = NodeAgentProcess(tmp_path, gateway, agent_cmd("basic.py", 0))
    nodes.append(node)
    assert node.wait() == 0, node.stderr()
    events = gateway.events("a-1")
    assert_exactly_once(events)
    assert len({e["session"] for e in events}) == 1
    assert lifecycle(events) == ["started", "exited", "stopped"]
    assert events[0]["kind"] == "lifecycle" and events[0]["state"] == "started"
    exited = next(e for e in events if e.get("state") == "exited")
    assert exited["exit_code"] == 0
    out = lines(events)
    assert out[:2] == ["out 1", "tool failed as planned"]
    assert out[2].startswith("y" * 1000) and out[2].endswith("bytes truncated]")
    assert len(out[2].encode()) < 64 * 1024 + 100
    assert out[3:] == ["out 2"]
    assert lines(events, "stderr") == ["err 1"]

    sdk = [e for e in events if e["kind"] in ("thought", "tool_call", "tool_result", "llm_call")]
    assert [e["kind"] for e in sdk] == [
        "thought",
        "tool_call", "tool_result",
        "tool_call", "tool_result",
        "tool_call", "tool_result",
        "llm_call",
        "thought", "thought",
    ]  # fmt: skip
    assert sdk[0]["text"] == "thinking about step 1"
    assert sdk[1]["tool"] == "search" and sdk[1]["args"] == {"q": "cats"}
    assert sdk[2]["call_id"] == sdk[1]["call_id"] and sdk[2]["ok"] is True and sdk[2]["output"] == {"hits": 3}
    assert sdk[4]["ok"] is False and sdk[4]["error"] == "RuntimeError: exit status 1"
    assert sdk[6]["ok"] is False and sdk[6]["error"] == "HTTP 503"
    assert sdk[7]["model"] == "gpt-4o" and sdk[7]["input_tokens"] == 100 and sdk[7]["cost_usd"] == 0.0012
    assert sdk[8]["text"].endswith("chars truncated]") and len(sdk[8]["text"]) < 70_000
    assert sdk[9]["text"] == "done"
    # The node agent said why it dropped the invalid llm_call.
    assert "invalid llm_call" in node.stderr()

    agent = next(a for a in gateway.agents() if a["agent"] == "a-1")
    assert agent["env"] == "dev" and agent["region"] == "eu-west-1" and agent["labels"] == {"team": "test"}


def test_exit_code_propagates_and_crashes_restart_with_backoff(
    tmp_path: Path, gateway: GatewayProcess, nodes: list[NodeAgentProcess]
) -> None:
    starts = tmp_path / "starts"
    node = NodeAgentProcess(
        tmp_path,
        gateway,
        agent_cmd("crasher.py", starts, 3),
        options=["--backoff-initial", "0.2", "--backoff-max", "0.4"],
    )
    nodes.append(node)
    # Signal while it waits to restart (not while a child runs): the
    # restarting event is spooled only after the child has exited.
    wait_for(
        lambda: _reached(gateway, "a-1", lambda ev: lifecycle(ev).count("restarting") >= 4),
        20,
        "four crashes",
    )
    node.send(signal.SIGTERM)
    assert node.wait() == 3  # SIGTERM while backing off: the last child's code
    times = [float(t) for t in starts.read_text().split()]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert 0.2 <= gaps[0] < 0.8 and 0.4 <= gaps[1] < 1.0 and 0.4 <= gaps[2] < 1.0, gaps

    events = wait_for(states_end_with(gateway, "stopped"), 10, "the final lifecycle event")
    assert_exactly_once(events)
    states = lifecycle(events)
    assert states[:6] == ["started", "exited", "restarting", "started", "exited", "restarting"]
    assert len({e["session"] for e in events if e.get("state") == "started"}) == len(times)
    restarting = [e for e in events if e.get("state") == "restarting"]
    assert "restarting in 0.2 s" in restarting[0]["reason"] and restarting[0]["exit_code"] == 3

    # Policy `never`: the node agent ends with the child's own code.
    node2 = NodeAgentProcess(
        tmp_path,
        gateway,
        agent_cmd("crasher.py", tmp_path / "starts2", 42),
        agent="a-2",
        spool_dir=tmp_path / "spool2",
        options=["--restart", "never"],
        name="node2",
    )
    nodes.append(node2)
    assert node2.wait() == 42
    assert lifecycle(gateway.events("a-2")) == ["started", "exited", "stopped"]


def test_heartbeats_carry_cpu_and_rss_of_the_process_tree(
    tmp_path: Path, gateway: GatewayProcess, nodes: list[NodeAgentProcess]
) -> None:
    node = NodeAgentProcess(tmp_path, gateway, agent_cmd("busy.py"))
    nodes.append(node)

    def busy_heartbeat() -> dict[str, Any] | None:
        for event in events_so_far(gateway, "a-1", kind="heartbeat"):
            # 96 MB live in the grandchild: only counted if descendants are.
            if event.get("rss_bytes", 0) > 96 * 1024 * 1024 and event.get("cpu_percent", 0) > 20:
                return event
        return None

    wait_for(busy_heartbeat, 20, "a heartbeat with the busy tree's CPU and RSS", interval=0.2)
    node.send(signal.SIGTERM)
    assert node.wait() == 128 + signal.SIGTERM  # busy.py dies of the forwarded SIGTERM
    events = gateway.events("a-1")
    assert lifecycle(events)[-2:] == ["exited", "stopped"]
    assert "held" in lines(events)


def test_sigterm_is_forwarded_and_the_childs_exit_code_returned(
    tmp_path: Path, gateway: GatewayProcess, nodes: list[NodeAgentProcess]
) -> None:
    pidfile = tmp_path / "pid"
    node = NodeAgentProcess(tmp_path, gateway, agent_cmd("graceful.py", pidfile))
    nodes.append(node)
    wait_for(lambda: _reached(gateway, "a-1", lambda ev: "ready" in lines(ev)), 20, "the child to be ready")
    node.send(signal.SIGTERM)
    assert node.wait() == 7
    events = gateway.events("a-1")
    assert lines(events)[-1] == "got SIGTERM, cleaning up"
    exited = next(e for e in events if e.get("state") == "exited")
    assert exited["exit_code"] == 7 and "SIGTERM" in exited["reason"]
    assert not psutil.pid_exists(int(pidfile.read_text()))


def test_restart_and_stop_commands_from_the_api(
    tmp_path: Path, gateway: GatewayProcess, nodes: list[NodeAgentProcess]
) -> None:
    node = NodeAgentProcess(tmp_path, gateway, agent_cmd("ticker.py", 0.05))
    nodes.append(node)
    operator = gateway.token("dev", "operator")

    def command(action: str) -> None:
        response = httpx.post(
            f"{gateway.http_url}/api/v1/agents/a-1/commands",
            json={"action": action, "reason": f"test {action}"},
            headers={"Authorization": f"Bearer {operator}"},
            timeout=10,
        )
        assert response.status_code == 202, response.text

    wait_for(lambda: any(a["connected"] for a in gateway.agents()), 20, "the node agent to connect")
    wait_for(lambda: _reached(gateway, "a-1", lambda ev: "tick 3" in lines(ev)), 20, "ticks")
    command("restart")
    events = wait_for(states_end_with(gateway, "started", "exited", "restarting", "started"), 20, "a restart")
    started = [e for e in events if e.get("state") == "started"]
    assert started[0]["session"] != started[1]["session"]
    assert "test restart" in next(e for e in events if e.get("state") == "exited")["reason"]
    # The new run prints from tick 1 again, in its own session.
    wait_for(
        lambda: _reached(
            gateway,
            "a-1",
            lambda ev: "tick 2" in lines([e for e in ev if e["session"] == started[1]["session"]]),
        ),
        20,
        "ticks of the second run",
    )

    command("stop")
    events = wait_for(states_end_with(gateway, "exited", "stopped"), 20, "a stop")
    stopped_at = events[-1]["seq"]
    assert node.proc.poll() is None, "the node agent must stay up while stopped"
    # Still connected, still beating, but no child output.
    later = wait_for(
        lambda: [e for e in events_so_far(gateway, "a-1", kind="heartbeat") if e["seq"] > stopped_at][:2],
        10,
        "heartbeats while stopped",
    )
    assert all("rss_bytes" not in e for e in later)
    assert not [e for e in gateway.events("a-1", kind="log") if e["seq"] > stopped_at]

    command("restart")
    wait_for(states_end_with(gateway, "stopped", "restarting", "started"), 20, "a start after the stop")
    node.send(signal.SIGINT)
    assert node.wait() == 128 + signal.SIGINT
    assert_exactly_once(gateway.events("a-1"))


def test_refused_credential_stops_the_child_and_exits_2(
    tmp_path: Path, gateway: GatewayProcess, nodes: list[NodeAgentProcess]
) -> None:
    pidfile = tmp_path / "pid"
    node = NodeAgentProcess(tmp_path, gateway, agent_cmd("graceful.py", pidfile), token="ct_wrong_credential")
    nodes.append(node)
    assert node.wait() == 2
    assert "refused" in node.stderr() and "clawtrace token create --env dev --role agent" in node.stderr()
    if pidfile.exists():
        assert not psutil.pid_exists(int(pidfile.read_text()))
    # A credential for another environment is refused the same way.
    node2 = NodeAgentProcess(
        tmp_path,
        gateway,
        agent_cmd("graceful.py", tmp_path / "pid2"),
        agent="a-2",
        token=gateway.token("prod", "agent"),
        spool_dir=tmp_path / "spool2",
        name="node2",
    )
    nodes.append(node2)
    assert node2.wait() == 2
    assert "refused" in node2.stderr()


def test_a_command_that_cannot_start_exits_127(tmp_path: Path, nodes: list[NodeAgentProcess]) -> None:
    node = NodeAgentProcess(tmp_path, None, ["/nonexistent/agent-binary"], token="t")
    nodes.append(node)
    assert node.wait() == 127
    assert "cannot run '/nonexistent/agent-binary'" in node.stderr()


def _spool_rows(spool_dir: Path) -> list[int]:
    db = sqlite3.connect(f"file:{spool_dir / 'spool.db'}?mode=ro", uri=True)
    try:
        return [int(seq) for (seq,) in db.execute("SELECT seq FROM events ORDER BY seq")]
    finally:
        db.close()


def _tick_numbers(events: list[dict[str, Any]], session: str) -> list[int]:
    return [int(e["line"].split()[1]) for e in events if e["session"] == session and e["kind"] == "log"]


def test_kill_9_node_agent_resumes_from_its_spool(
    tmp_path: Path, gateway: GatewayProcess, nodes: list[NodeAgentProcess]
) -> None:
    marker = tmp_path / "marker"
    node = NodeAgentProcess(tmp_path, gateway, agent_cmd("ticker.py", 0.01, 0, marker))
    nodes.append(node)
    wait_for(lambda: _reached(gateway, "a-1", lambda ev: len(ev) >= 50), 20, "streaming to start")
    # Take the gateway away so events pile up unacknowledged in the spool,
    # then kill the node agent without any chance to clean up.
    gateway.kill()
    wait_for(lambda: len(_spool_rows(node.spool_dir)) >= 100, 20, "a backlog in the spool")
    node.proc.kill()
    node.proc.wait()
    backlog = _spool_rows(node.spool_dir)
    assert backlog == list(range(backlog[0], backlog[-1] + 1))

    gateway.start()
    node2 = NodeAgentProcess(tmp_path, gateway, agent_cmd("ticker.py", 0.01, 30), name="node2")
    nodes.append(node2)
    assert node2.wait(30) == 0, node2.stderr()
    assert _spool_rows(node.spool_dir) == []
    events = gateway.events("a-1")
    assert_exactly_once(events)
    stored = {e["seq"] for e in events}
    assert set(backlog) <= stored
    sessions = list(dict.fromkeys(e["session"] for e in events))
    assert len(sessions) == 2
    first = _tick_numbers(events, sessions[0])
    assert first == list(range(1, len(first) + 1)), "the first run's output is gapless up to the kill"
    assert _tick_numbers(events, sessions[1]) == list(range(1, 31))
    # The second run continues the seq right after the killed one's last.
    second_start = next(e for e in events if e["session"] == sessions[1])
    assert second_start["seq"] == backlog[-1] + 1
    assert second_start["kind"] == "lifecycle" and second_start["state"] == "started"


def test_a_child_orphaned_by_kill_9_is_stopped_by_the_next_node_agent(
    tmp_path: Path, nodes: list[NodeAgentProcess]
) -> None:
    pidfile = tmp_path / "pid"
    node = NodeAgentProcess(tmp_path, None, agent_cmd("graceful.py", pidfile), token="t")
    nodes.append(node)
    wait_for(pidfile.exists, 20, "the child to start")
    orphan = int(pidfile.read_text())
    node.proc.kill()
    node.proc.wait()
    time.sleep(0.2)
    # It has its own session and writes nothing: nothing tells it its supervisor died.
    assert psutil.pid_exists(orphan)
    node2 = NodeAgentProcess(
        tmp_path,
        None,
        agent_cmd("ticker.py", 0.01, 5),
        token="t",
        options=["--drain-timeout", "0"],
        name="node2",
    )
    nodes.append(node2)
    assert node2.wait() == 0
    wait_for(
        lambda: not psutil.pid_exists(orphan) or psutil.Process(orphan).status() == "zombie",
        5,
        "the orphan to go",
    )
    assert "left running by a previous node agent" in node2.stderr()


@pytest.mark.slow
def test_gateway_unreachable_for_30_s_nothing_lost(
    tmp_path: Path, gateway: GatewayProcess, nodes: list[NodeAgentProcess]
) -> None:
    marker = tmp_path / "marker"
    node = NodeAgentProcess(tmp_path, gateway, agent_cmd("ticker.py", 0.02, 0, marker))
    nodes.append(node)

    def tick() -> int:
        try:
            return int(marker.read_text().split()[1])
        except (OSError, IndexError, ValueError):
            return 0

    wait_for(lambda: _reached(gateway, "a-1", lambda ev: "tick 20" in lines(ev)), 20, "streaming to start")
    child_pid = int(marker.read_text().split()[0])
    gateway.kill()
    down_at, tick_at_kill = time.monotonic(), tick()
    # The child neither notices nor waits: it keeps ticking through the outage.
    time.sleep(30)
    assert tick() > tick_at_kill + 500
    assert psutil.pid_exists(child_pid) and node.proc.poll() is None
    backlog = len(_spool_rows(node.spool_dir))
    assert backlog > 500
    gateway.start()
    assert time.monotonic() - down_at >= 30

    def drained() -> bool:
        agent = next((a for a in gateway.agents() if a["agent"] == "a-1"), None)
        return bool(agent and agent["connected"]) and _spool_rows(node.spool_dir) == []

    wait_for(drained, 15, "the spool to drain")
    node.send(signal.SIGTERM)
    assert node.wait() == 128 + signal.SIGTERM
    events = gateway.events("a-1")
    assert_exactly_once(events)
    ticks = [int(line.split()[1]) for line in lines(events)]
    assert ticks == list(range(1, len(ticks) + 1)), "every tick arrived, once, in order"
    assert ticks[-1] >= tick_at_kill + 500
    thoughts = [e["text"] for e in events if e["kind"] == "thought"]
    assert thoughts == [f"thought {i}" for i in range(10, 10 * len(thoughts) + 1, 10)]


def test_sdk_messages_are_validated_by_the_node_agent(tmp_path: Path, nodes: list[NodeAgentProcess]) -> None:
    # No gateway at all: the child still runs, its events wait in the spool.
    # Raw writes stand in for a buggy or hostile agent bypassing the SDK.
    code = (
        "import os, socket\n"
        "from clawtrace import sdk\n"
        "sdk.thought('kept')\n"
        "sdk.llm_call(model='m', input_tokens='many', output_tokens=1, duration_ms=1)\n"
        "sdk.flush()\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "s.connect(os.environ['CLAWTRACE_SOCKET'])\n"
        's.sendall(b\'{"kind":"policy","decision":"allow","tool":"rm"}\\n\'\n'
        '          b\'{"kind":"heartbeat","cpu_percent":1}\\n\'\n'
        "          b'not json\\n'\n"
        '          b\'{"kind":"thought","text":"raw","seq":999,"session":"forged"}\\n\')\n'
        "s.close()\n"
    )
    node = NodeAgentProcess(tmp_path, None, [PY, "-c", code], token="t", options=["--drain-timeout", "0"])
    nodes.append(node)
    assert node.wait() == 0, node.stderr()
    with Spool(node.spool_dir, "a-1") as spool:
        events: list[Event] = [decode_event(raw) for _, raw in spool.pending(0, 1000)]
    assert not [e for e in events if isinstance(e, Heartbeat) and e.cpu_percent == 1]
    events = [e for e in events if not isinstance(e, Heartbeat)]
    assert [type(e).__name__ for e in events] == ["Lifecycle", "Thought", "Thought", "Lifecycle", "Lifecycle"]
    assert sorted(e.text for e in events if isinstance(e, Thought)) == ["kept", "raw"]
    # The node agent's envelope wins over whatever the message claimed.
    assert [e.seq for e in events] == sorted(e.seq for e in events) and max(e.seq for e in events) < 999
    assert len({e.session for e in events}) == 1
    err = node.stderr()
    assert "invalid llm_call" in err and "kind 'policy' cannot be sent" in err
    assert "kind 'heartbeat' cannot be sent" in err and "not a JSON object" in err
