"""`clawtrace top` and `clawtrace stats`, run as real processes against a real gateway
fed with known events; assertions are on what a user sees."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from clawtrace.protocol import Event, Heartbeat, Hello, LlmCall, Log, Thought, ToolCall, ToolResult
from clawtrace.protocol.client import MemoryOutbox, UplinkClient
from gateway_process import GatewayProcess, free_port

BAR_CHARS = "▁▂▃▄▅▆▇█"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\x1b[=>]|\r")


def clawtrace(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clawtrace", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def cli_env(gateway: GatewayProcess, columns: int | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env.update(CLAWTRACE_GATEWAY=gateway.http_url, CLAWTRACE_TOKEN=gateway.token("*", "viewer"))
    if columns:
        env["COLUMNS"] = str(columns)
    return env


def steps(
    n: int,
    *,
    ok: bool,
    cost: float,
    input_tokens: int,
    output_tokens: int,
    durations_ms: list[float],
    stderr_lines: int = 0,
) -> list[Event]:
    """``n`` thought -> llm_call -> tool_call -> tool_result rounds a few seconds ago,
    then stderr lines and a heartbeat."""
    start = datetime.now(UTC) - timedelta(seconds=10)
    events: list[Event] = []
    for i in range(n):
        at = start + timedelta(seconds=i * 0.5)
        events += [
            Thought(text=f"step {i}", seq=0, ts=at, session="s-1"),
            LlmCall(
                model="gpt-4.1",
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                duration_ms=durations_ms[i],
                cost_usd=cost,
                seq=0,
                ts=at + timedelta(milliseconds=100),
                session="s-1",
            ),
            ToolCall(call_id=f"c{i}", tool="exec", seq=0, ts=at + timedelta(milliseconds=200), session="s-1"),
            ToolResult(
                call_id=f"c{i}",
                ok=ok,
                duration_ms=50,
                error=None if ok else "exit status 1",
                seq=0,
                ts=at + timedelta(milliseconds=300),
                session="s-1",
            ),
        ]
    events += [
        Log(stream="stderr", line=f"warning {i}", seq=0, ts=start + timedelta(seconds=5), session="s-1")
        for i in range(stderr_lines)
    ]
    events.append(
        Heartbeat(cpu_percent=12.5, rss_bytes=256 << 20, seq=0, ts=datetime.now(UTC), session="s-1")
    )
    return events


async def feed(gateway: GatewayProcess, agent: str, env: str, region: str, events: list[Event]) -> None:
    outbox = MemoryOutbox()
    client = UplinkClient(
        gateway.ws_url, Hello(agent=agent, env=env, region=region), outbox, token=gateway.token(env)
    )
    runner = asyncio.create_task(client.run())
    for seq, event in enumerate(events, 1):
        event.seq = seq
        outbox.append(event)
    client.notify()
    await client.wait_acked(len(events), 20)
    await client.close()
    runner.cancel()


async def feed_fleet(gateway: GatewayProcess) -> None:
    """Three agents with known numbers:

    agent    env   region     cost 1h  tool ok  fails  tokens/action  p95     status
    a-spend  dev   eu-west-1  $4.00    100%     0      600            3.00s   healthy
    a-loop   dev   us-east-1  $0.30    0%       6      1,600          1.50s   degraded (6 >= 5 failures)
    a-cheap  prod  eu-west-1  $0.01    100%     0      200            500ms   healthy, 3 stderr lines
    """
    await feed(
        gateway,
        "a-spend",
        "dev",
        "eu-west-1",
        steps(2, ok=True, cost=2.0, input_tokens=500, output_tokens=100, durations_ms=[2000, 3000]),
    )
    await feed(
        gateway,
        "a-loop",
        "dev",
        "us-east-1",
        steps(
            6,
            ok=False,
            cost=0.05,
            input_tokens=1500,
            output_tokens=100,
            durations_ms=[1000, 1100, 1200, 1300, 1400, 1500],
        ),
    )
    await feed(
        gateway,
        "a-cheap",
        "prod",
        "eu-west-1",
        steps(1, ok=True, cost=0.01, input_tokens=150, output_tokens=50, durations_ms=[500], stderr_lines=3),
    )
    # The metrics stage consumes accepted events from the bus: wait until it has them all.
    deadline = time.monotonic() + 10
    while True:
        rows = gateway.get("/api/v1/fleet").json()["agents"]
        if sorted(r["tool_calls"] for r in rows) == [1, 2, 6]:
            return
        assert time.monotonic() < deadline, rows
        await asyncio.sleep(0.1)


def table_rows(output: str) -> dict[str, list[str]]:
    """The table's rows by agent (the cells split on runs of spaces)."""
    rows = {}
    for line in output.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells and re.fullmatch(r"a-\w+", cells[0]):
            rows[cells[0]] = cells
    return rows


def agent_order(output: str) -> list[str]:
    return list(table_rows(output))


async def test_top_once_shows_the_fleet_sorted_and_filtered(gateway: GatewayProcess) -> None:
    await feed_fleet(gateway)
    env = cli_env(gateway)

    result = await asyncio.to_thread(clawtrace, "top", "--once", "--sort", "cost", env=env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Traceback" not in out + result.stderr
    assert agent_order(out) == ["a-spend", "a-loop", "a-cheap"]
    header = out.splitlines()[:3]
    assert "ClawTrace fleet" in header[0] and re.search(r"\d\d:\d\d:\d\d", header[0])
    assert "3 agents: 2 healthy · 1 degraded · 0 dead · 0 quarantined" in header[1]
    assert "cost $4.31 last hour" in header[2]
    assert "tool success 33.3%" in header[2]  # 3 ok of 9 results
    columns = re.split(r"\s{2,}", out.splitlines()[3].strip())
    assert columns == [
        "agent",
        "env",
        "region",
        "status",
        "heartbeat",
        "cpu",
        "rss",
        "events/s",
        "tool ok",
        "fails",
        "p95 think",
        "tok/action",
        "cost 1h ▼",
        "cost/h",
    ]
    rows = table_rows(out)
    spend, loop, cheap = rows["a-spend"], rows["a-loop"], rows["a-cheap"]
    assert spend[:4] == ["a-spend", "dev", "eu-west-1", "healthy"]
    assert spend[5:7] == ["12.5%", "256.0 MiB"]
    assert spend[8:13] == ["100.0%", "0", "3.00s", "600", "$4.00"]
    assert loop[:4] == ["a-loop", "dev", "us-east-1", "degraded"]
    assert loop[8:13] == ["0.0%", "6", "1.50s", "1,600", "$0.3000"]
    assert cheap[:4] == ["a-cheap", "prod", "eu-west-1", "healthy"]
    assert cheap[8:13] == ["100.0%", "0", "500ms", "200", "$0.0100"]
    assert re.fullmatch(r"\d+(\.\d)?s", spend[4]), spend[4]  # heartbeat age: seconds ago
    assert all(cells[13].endswith("/h") for cells in rows.values())
    assert "3 of 3 agents · sorted by cost desc" in out

    # Other keys sort worst first unless told otherwise; filters are server-side.
    failures = await asyncio.to_thread(clawtrace, "top", "--once", "--sort", "failures", env=env)
    assert agent_order(failures.stdout)[0] == "a-loop"
    by_name = await asyncio.to_thread(clawtrace, "top", "--once", "--sort", "agent", env=env)
    assert agent_order(by_name.stdout) == ["a-cheap", "a-loop", "a-spend"]
    cheap_first = await asyncio.to_thread(clawtrace, "top", "--once", "--sort", "cost", "--asc", env=env)
    assert agent_order(cheap_first.stdout) == ["a-cheap", "a-loop", "a-spend"]
    dev = await asyncio.to_thread(clawtrace, "top", "--once", "--env", "dev", env=env)
    assert agent_order(dev.stdout) == ["a-spend", "a-loop"]
    assert "2 agents: 1 healthy · 1 degraded" in dev.stdout and "env=dev" in dev.stdout
    region = await asyncio.to_thread(clawtrace, "top", "--once", "--region", "eu-west-1", env=env)
    assert agent_order(region.stdout) == ["a-spend", "a-cheap"]
    degraded = await asyncio.to_thread(clawtrace, "top", "--once", "--status", "degraded", env=env)
    assert agent_order(degraded.stdout) == ["a-loop"]
    limited = await asyncio.to_thread(clawtrace, "top", "--once", "--limit", "1", env=env)
    assert agent_order(limited.stdout) == ["a-spend"] and "1 of 3 agents" in limited.stdout
    nobody = await asyncio.to_thread(clawtrace, "top", "--once", "--env", "staging", env=env)
    assert nobody.returncode == 0 and "no agents match these filters" in nobody.stdout


async def test_top_bad_input_and_unreachable_gateway(gateway: GatewayProcess) -> None:
    env = cli_env(gateway)
    bad_sort = await asyncio.to_thread(clawtrace, "top", "--once", "--sort", "price", env=env)
    assert bad_sort.returncode == 2
    assert "'price' is not one of" in bad_sort.stderr
    assert (
        "'cost'" in bad_sort.stderr and "'failures'" in bad_sort.stderr and "'heartbeat'" in bad_sort.stderr
    )
    bad_label = await asyncio.to_thread(clawtrace, "top", "--once", "--label", "team", env=env)
    assert bad_label.returncode == 2 and "KEY=VALUE" in bad_label.stderr
    bad_token = await asyncio.to_thread(clawtrace, "top", "--once", env={**env, "CLAWTRACE_TOKEN": "nope"})
    assert bad_token.returncode == 1 and "401" in bad_token.stderr and "--token" in bad_token.stderr
    down = {**env, "CLAWTRACE_GATEWAY": f"http://127.0.0.1:{free_port()}"}
    unreachable = await asyncio.to_thread(clawtrace, "top", "--once", env=down)
    assert unreachable.returncode == 1
    assert "cannot reach the gateway" in unreachable.stderr and "clawtrace up" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr


async def test_stats_for_an_agent(gateway: GatewayProcess) -> None:
    await feed_fleet(gateway)
    env = cli_env(gateway, columns=150)
    result = await asyncio.to_thread(clawtrace, "stats", "a-loop", "--step", "1m", env=env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    lines = [line.rstrip() for line in out.splitlines()]
    assert lines[0] == "a-loop  dev/us-east-1"
    numbers = {line.split("  ", 1)[0]: line.split("  ", 1)[1].strip() for line in lines[2:11]}
    assert numbers["status"].startswith("degraded  heartbeat ")
    assert numbers["tool calls"] == "6 calls, 0.0% succeeded, 6 consecutive failures"
    assert numbers["tokens/action"] == "1,600  (above the 1,000 warning line)"
    assert numbers["reasoning"] == "p50 1.20s  p95 1.50s  max 1.50s"
    assert numbers["cost"].startswith("$0.3000 in the last hour, rate $")
    assert numbers["cpu / rss"] == "12.5% / 256.0 MiB"
    assert "last 1h, 1 min per column" in out

    charts = {line[:14].strip(): line for line in lines if "▕" in line and not line.startswith("last ")}
    assert set(charts) == {
        "events/s",
        "tool success",
        "tokens/action",
        "p95 think",
        "cost/h",
        "error lines/s",
    }
    for name, row in charts.items():
        bars = row[row.index("▕") + 1 : row.index("▏")]
        assert 55 <= len(bars) <= 61, (name, bars)
        # The data is from the last minute or two: the hour before it is empty, not zero.
        assert bars[:50] == " " * 50, (name, row)
        assert any(ch in BAR_CHARS for ch in bars[-4:]), (name, row)
    assert re.search(r"tokens/action\s+1,600 ▕ +[▁-█]+ *▏ 1,600$", charts["tokens/action"])
    assert re.search(r"tool success\s+0\.0% ▕", charts["tool success"])
    assert re.search(r"p95 think\s+1\.\d\ds ▕.*▏ 1\.\d\ds$", charts["p95 think"])
    axis = lines[lines.index(charts["error lines/s"]) + 1]
    assert re.fullmatch(r" +\d\d:\d\d +\d\d:\d\d", axis)

    as_json = await asyncio.to_thread(clawtrace, "stats", "a-loop", "--json", env=env)
    body = json.loads(as_json.stdout)
    assert body["current"]["agent"] == "a-loop" and body["current"]["consecutive_failures"] == 6
    assert body["current"]["tokens_per_action"] == 1600
    series = {item["metric"]: item for item in body["series"]}
    assert set(series) == {
        "events_per_s",
        "tool_success_rate",
        "tokens_per_action",
        "reasoning_latency_p95_ms",
        "cost_usd_per_hour",
        "error_lines_per_s",
    }
    values = [v for _, v in series["tokens_per_action"]["points"] if v is not None]
    assert values and all(v == 1600 for v in values)
    assert series["tool_success_rate"]["points"][0][1] is None  # no data an hour ago: null, not 0


async def test_stats_for_an_environment_and_bad_input(gateway: GatewayProcess) -> None:
    await feed_fleet(gateway)
    env = cli_env(gateway, columns=150)
    result = await asyncio.to_thread(clawtrace, "stats", "--env", "dev", env=env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.splitlines()[0] == "env dev"
    assert "agents         2: 1 healthy · 1 degraded · 0 dead · 0 quarantined" in out
    assert "8 calls, 25.0% succeeded" in out  # 2 ok of 8
    assert "$4.30 in the last hour" in out
    assert "1 min per column" in out  # the default step fits 1 h into 150 columns
    error_row = next(line for line in out.splitlines() if line.startswith("error lines/s"))
    assert "0/s ▕" in error_row  # dev has no stderr: a zero line, which is data

    prod = await asyncio.to_thread(clawtrace, "stats", "--env", "prod", "--region", "eu-west-1", env=env)
    assert prod.returncode == 0, prod.stderr
    assert prod.stdout.startswith("env prod, region eu-west-1")
    error_row = next(line for line in prod.stdout.splitlines() if line.startswith("error lines/s"))
    # 3 lines in the minute in progress: a rate over the seconds it has covered so far.
    peak = re.search(r"▏ ([0-9.]+)/s$", error_row.rstrip())
    assert peak is not None and 3 / 60 <= float(peak.group(1)) <= 3.0, error_row

    unknown = await asyncio.to_thread(clawtrace, "stats", "nobody", env=env)
    assert unknown.returncode == 1
    assert "no agent 'nobody'" in unknown.stderr and "clawtrace top" in unknown.stderr
    empty_env = await asyncio.to_thread(clawtrace, "stats", "--env", "staging", env=env)
    assert empty_env.returncode == 1 and "no agents match env staging" in empty_env.stderr
    both = await asyncio.to_thread(clawtrace, "stats", "a-loop", "--env", "dev", env=env)
    assert both.returncode == 2 and "not both" in both.stderr
    label_and_env = await asyncio.to_thread(
        clawtrace, "stats", "--label", "team=search", "--env", "dev", env=env
    )
    assert label_and_env.returncode == 2 and "use --label alone" in label_and_env.stderr
    bad_step = await asyncio.to_thread(clawtrace, "stats", "a-loop", "--step", "90s", env=env)
    assert bad_step.returncode == 2 and "whole minutes" in bad_step.stderr
    bad_since = await asyncio.to_thread(clawtrace, "stats", "a-loop", "--since", "yesterday", env=env)
    assert bad_since.returncode == 2 and "30m, 1h" in bad_since.stderr
    for failed in (unknown, empty_env, both, label_and_env, bad_step, bad_since):
        assert "Traceback" not in failed.stderr


# --- the live mode, in a pseudo-terminal ----------------------------------------------


class Terminal:
    """A command on a pseudo-terminal of a given size; its output with escapes removed."""

    def __init__(self, args: list[str], env: dict[str, str], columns: int = 160, rows: int = 20) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        self.master = master
        self.proc = subprocess.Popen(
            args, stdin=slave, stdout=slave, stderr=slave, env={**env, "TERM": "xterm-256color"}
        )
        os.close(slave)
        self.raw = b""

    @property
    def text(self) -> str:
        return ANSI.sub("", self.raw.decode(errors="replace"))

    def read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return True
        try:
            chunk = os.read(self.master, 65536)
        except OSError:  # EIO: the other side is closed
            return False
        self.raw += chunk
        return bool(chunk)

    def wait_for(self, check: Callable[[str], bool], timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while not check(self.text):
            assert time.monotonic() < deadline, f"not seen in time; screen so far:\n{self.text[-3000:]}"
            if not self.read(0.1) and self.proc.poll() is not None:
                raise AssertionError(f"exited with {self.proc.returncode}:\n{self.text[-3000:]}")
        return self.text

    def interrupt(self, timeout: float = 10) -> int:
        self.proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.read(0.1)
        while self.read(0.05):  # the rest of the output
            pass
        return self.proc.wait(1)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


def frames(text: str) -> list[str]:
    """The screens drawn so far (each starts with the title line)."""
    return ["ClawTrace fleet" + part for part in text.split("ClawTrace fleet")[1:]]


def last_full_frame(text: str) -> str:
    done = [frame for frame in frames(text) if "Ctrl-C quits" in frame or "retrying every" in frame]
    return done[-1] if done else ""


async def test_top_live_refreshes_in_place_and_exits_cleanly_on_ctrl_c(gateway: GatewayProcess) -> None:
    await feed_fleet(gateway)
    args = [sys.executable, "-m", "clawtrace", "top", "--interval", "0.3"]
    terminal = await asyncio.to_thread(Terminal, args, cli_env(gateway), 160, 7)
    try:
        # 7 lines: header (3), table head (2), footer (1): one row fits, the most expensive.
        await asyncio.to_thread(terminal.wait_for, lambda text: len(frames(text)) >= 3)
        frame = last_full_frame(terminal.text)
        assert "3 agents: 2 healthy · 1 degraded" in frame
        assert "a-spend" in frame and "a-loop" not in frame
        assert "1 of 3 agents · sorted by cost desc" in frame and "every 0.3s · Ctrl-C quits" in frame
        # In place: the cursor goes back up over the previous frame instead of scrolling.
        assert b"\x1b[1A" in terminal.raw or b"\x1b[A" in terminal.raw
        code = await asyncio.to_thread(terminal.interrupt)
    finally:
        terminal.close()
    assert code == 0
    assert "Traceback" not in terminal.text and "KeyboardInterrupt" not in terminal.text


async def test_top_live_survives_the_gateway_going_away_and_coming_back(tmp_path: Path) -> None:
    gateway = GatewayProcess(tmp_path / "gateway")
    env = cli_env(gateway)  # the credential exists before the gateway runs
    args = [sys.executable, "-m", "clawtrace", "top", "--interval", "0.3"]
    terminal = await asyncio.to_thread(Terminal, args, env, 200, 20)
    try:
        # No gateway yet: the header says so, and keeps retrying.
        text = await asyncio.to_thread(terminal.wait_for, lambda text: "cannot reach the gateway" in text)
        assert f"cannot reach the gateway at {gateway.http_url}" in text
        await asyncio.to_thread(terminal.wait_for, lambda text: "clawtrace up` running there?" in text)
        await asyncio.to_thread(gateway.start)
        await feed_fleet(gateway)
        await asyncio.to_thread(
            terminal.wait_for, lambda text: "3 agents: 2 healthy" in last_full_frame(text)
        )
        assert "cannot reach" not in last_full_frame(terminal.text)
        # Gone again: the last numbers stay on screen, marked as stale.
        await asyncio.to_thread(gateway.stop)
        stale = await asyncio.to_thread(
            terminal.wait_for, lambda text: "numbers below are from" in last_full_frame(text)
        )
        frame = last_full_frame(stale)
        assert "cannot reach the gateway" in frame and "a-spend" in frame
        await asyncio.to_thread(gateway.start)
        await asyncio.to_thread(
            terminal.wait_for,
            lambda text: "a-spend" in last_full_frame(text) and "cannot reach" not in last_full_frame(text),
        )
        code = await asyncio.to_thread(terminal.interrupt)
    finally:
        terminal.close()
        gateway.stop()
    assert code == 0
    assert "Traceback" not in terminal.text


async def test_top_piped_prints_one_table_per_refresh_until_stopped(gateway: GatewayProcess) -> None:
    await feed_fleet(gateway)
    proc = await asyncio.to_thread(
        subprocess.Popen,
        [sys.executable, "-m", "clawtrace", "top", "--interval", "0.3", "--sort", "failures"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(gateway),
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        seen: list[str] = []
        while sum("ClawTrace fleet" in line for line in seen) < 3:
            seen.append(await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 20))
        # SIGTERM (a service manager, `timeout`) stops it as cleanly as Ctrl-C.
        proc.send_signal(signal.SIGTERM)
        _, errors = await asyncio.to_thread(proc.communicate, timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, errors
    assert "Traceback" not in errors
    first = "".join(seen).split("ClawTrace fleet")[1]
    assert agent_order(first) == ["a-loop", "a-spend", "a-cheap"]
    assert "3 of 3 agents · sorted by failures desc" in first


@pytest.mark.parametrize("command", [["top"], ["stats", "--env", "dev"]])
def test_help_has_examples(command: list[str]) -> None:
    result = clawtrace(*command, "--help", env=dict(os.environ))
    assert result.returncode == 0
    assert f"clawtrace {command[0]} " in result.stdout and "--gateway" in result.stdout
