"""The user-facing commands, run as real processes against a real gateway."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from clawtrace.protocol import Hello, LlmCall, Log, Thought, ToolCall, ToolResult
from clawtrace.protocol.client import MemoryOutbox, UplinkClient
from gateway_process import GatewayProcess, free_port


def clawtrace(*args: str, timeout: float = 60, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clawtrace", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,  # type: ignore[call-overload]
    )


async def send_session(gateway: GatewayProcess, agent: str, session: str, first_seq: int = 1) -> int:
    """Stream one scripted reasoning session; return the last seq."""
    outbox = MemoryOutbox()
    client = UplinkClient(
        gateway.ws_url, Hello(agent=agent, env="dev", region="eu-west-1"), outbox, token=gateway.token()
    )
    runner = asyncio.create_task(client.run())
    start = datetime(2026, 11, 25, 3, 2, 0, tzinfo=UTC)
    steps = [
        Thought(
            text="the disk is full; I should clean the build directory", seq=0, ts=start, session=session
        ),
        LlmCall(
            model="gpt-4.1",
            input_tokens=1200,
            output_tokens=80,
            duration_ms=1500,
            cost_usd=0.003,
            seq=0,
            ts=start + timedelta(seconds=1.5),
            session=session,
        ),
        ToolCall(
            call_id="c1",
            tool="exec",
            args={"command": "rm -rf ./build"},
            seq=0,
            ts=start + timedelta(seconds=2),
            session=session,
        ),
        ToolResult(
            call_id="c1", ok=True, duration_ms=250, seq=0, ts=start + timedelta(seconds=2.25), session=session
        ),
        Log(
            stream="stderr",
            line="warning: cache cold",
            seq=0,
            ts=start + timedelta(seconds=3),
            session=session,
        ),
    ]
    for offset, event in enumerate(steps):
        event.seq = first_seq + offset
        outbox.append(event)
    client.notify()
    last = first_seq + len(steps) - 1
    await client.wait_acked(last, 20)
    await client.close()
    runner.cancel()
    return last


def test_token_create_list_revoke(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    created = clawtrace(
        "token", "create", "--data-dir", data, "--env", "dev", "--role", "viewer", "--name", "ops"
    )
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip().splitlines()[-1]
    assert token.startswith("ct_")
    listed = clawtrace("token", "list", "--data-dir", data)
    token_id = token.split("_")[1]
    assert token_id in listed.stdout and "viewer" in listed.stdout and "active" in listed.stdout
    assert token not in listed.stdout, "secrets are never listed"
    # The store keeps only a hash of the secret.
    assert token.split("_", 2)[2].encode() not in (tmp_path / "data" / "clawtrace.db").read_bytes()
    revoked = clawtrace("token", "revoke", "--data-dir", data, token_id)
    assert revoked.returncode == 0
    assert "revoked" in clawtrace("token", "list", "--data-dir", data).stdout
    again = clawtrace("token", "revoke", "--data-dir", data, token_id)
    assert again.returncode == 1 and "no active credential" in again.stderr
    bad_role = clawtrace("token", "create", "--data-dir", data, "--env", "dev", "--role", "root")
    assert bad_role.returncode == 2 and "root" in bad_role.stderr


def test_revoked_and_expired_credentials_are_refused(gateway: GatewayProcess, tmp_path: Path) -> None:
    created = clawtrace(
        "token",
        "create",
        "--data-dir",
        str(gateway.data_dir),
        "--env",
        "*",
        "--role",
        "viewer",
        "--expires-in",
        "1s",
    )
    token = created.stdout.strip().splitlines()[-1]
    time.sleep(1.2)
    response = gateway.get("/api/v1/agents", token=token)
    assert response.status_code == 401 and "expired" in response.json()["error"]["message"]
    viewer = gateway.token("*", "viewer")
    assert gateway.get("/api/v1/agents", token=viewer).status_code == 200
    token_id = viewer.split("_")[1]
    assert clawtrace("token", "revoke", "--data-dir", str(gateway.data_dir), token_id).returncode == 0
    deadline = time.monotonic() + 10
    while gateway.get("/api/v1/agents", token=viewer).status_code == 200:
        assert time.monotonic() < deadline, "revocation did not take effect"
        time.sleep(0.2)
    assert gateway.get("/api/v1/agents", token=viewer).status_code == 401


async def test_tail_prints_recent_events(gateway: GatewayProcess) -> None:
    await send_session(gateway, "a-1", "s-1")
    env = {
        **os.environ,
        "CLAWTRACE_GATEWAY": gateway.http_url,
        "CLAWTRACE_TOKEN": gateway.token("dev", "viewer"),
    }
    result = await asyncio.to_thread(clawtrace, "tail", "a-1", "-n", "3", env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3
    assert "exec" in lines[0] and "rm -rf ./build" in lines[0]
    assert "ok" in lines[1]
    assert "stderr" in lines[2] and "warning: cache cold" in lines[2]
    only = await asyncio.to_thread(clawtrace, "tail", "a-1", "--kind", "thought", env=env)
    assert only.stdout.count("\n") == 1 and "disk is full" in only.stdout
    missing = await asyncio.to_thread(clawtrace, "tail", "nobody", env=env)
    assert missing.returncode == 1 and "no agent 'nobody'" in missing.stderr


async def test_tail_follow_shows_events_as_they_arrive(gateway: GatewayProcess) -> None:
    await send_session(gateway, "a-2", "s-1")
    env = {
        **os.environ,
        "CLAWTRACE_GATEWAY": gateway.http_url,
        "CLAWTRACE_TOKEN": gateway.token("dev", "viewer"),
    }
    proc = await asyncio.to_thread(
        subprocess.Popen,
        [sys.executable, "-m", "clawtrace", "tail", "a-2", "-f", "-n", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        first = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 20)
        assert "warning: cache cold" in first
        await asyncio.sleep(1.0)  # let the live subscription settle; the history came after it
        await send_session(gateway, "a-2", "s-2", first_seq=6)
        seen = []
        for _ in range(5):
            seen.append(await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 20))
        assert "disk is full" in seen[0] and "warning: cache cold" in seen[4]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(10)


async def test_replay_steps_through_a_session_with_timings(gateway: GatewayProcess) -> None:
    await send_session(gateway, "a-3", "run-1")
    await send_session(gateway, "a-3", "run-2", first_seq=6)
    env = {
        **os.environ,
        "CLAWTRACE_GATEWAY": gateway.http_url,
        "CLAWTRACE_TOKEN": gateway.token("dev", "viewer"),
    }
    listed = await asyncio.to_thread(clawtrace, "replay", "a-3", "--list", env=env)
    assert "run-1" in listed.stdout and "run-2" in listed.stdout
    result = await asyncio.to_thread(clawtrace, "replay", "a-3", "--session", "run-1", env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("[1/5]") and "thought" in lines[0]
    assert "+    1.500s" in lines[1] and "llm_call" in lines[1] and "gpt-4.1" in lines[1]
    assert "(Δ   0.250s)" in lines[3] and "tool_result" in lines[3]
    assert lines[-1] == "5 steps over 3.000s"
    latest = await asyncio.to_thread(clawtrace, "replay", "a-3", env=env)
    assert "latest session of a-3: run-2" in latest.stdout
    stepped = await asyncio.to_thread(
        clawtrace, "replay", "a-3", "--session", "run-1", "--step", env=env, input="\n\nb\nq\n"
    )
    assert stepped.stdout.count("[2/5]") == 2, "b goes back one step"
    unknown = await asyncio.to_thread(clawtrace, "replay", "a-3", "--session", "nope", env=env)
    assert unknown.returncode == 1 and "no session 'nope'" in unknown.stderr


def test_up_refuses_a_busy_port_and_bad_config(tmp_path: Path) -> None:
    port = free_port()
    gateway = GatewayProcess(tmp_path / "g", port=port)
    gateway.start()
    try:
        second = clawtrace("up", "--data-dir", str(tmp_path / "other"), "--port", str(port))
        assert second.returncode == 1 and "already in use" in second.stderr
    finally:
        gateway.stop()
    config = tmp_path / "bad.toml"
    config.write_text("[gateway]\nport = 'eighty'\n")
    bad = clawtrace("up", "--config", str(config))
    assert bad.returncode == 1 and "port" in bad.stderr
    config.write_text("[gateway]\nno_such_setting = 1\n")
    unknown = clawtrace("up", "--config", str(config))
    assert unknown.returncode == 1 and "no_such_setting" in unknown.stderr


def test_up_tells_how_to_get_a_credential_on_first_start(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "clawtrace", "up", "--data-dir", str(tmp_path / "d"), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        banner = [proc.stdout.readline() for _ in range(7)]
        text = "".join(banner)
        assert f"http://127.0.0.1:{port}" in text
        assert "clawtrace token create" in text and "--role admin" in text
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0


@pytest.mark.slow
def test_demo_runs_a_fleet_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "clawtrace",
            "demo",
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path / "demo"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        banner = "".join(proc.stdout.readline() for _ in range(3))
        assert f"console:  http://127.0.0.1:{port}/login?token=ct_" in banner
        viewer = banner.split("viewer credential: ")[1].split()[0]
        headers = {"Authorization": f"Bearer {viewer}"}
        deadline = time.monotonic() + 30
        agents: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            try:
                agents = httpx.get(f"http://127.0.0.1:{port}/api/v1/agents", headers=headers).json()["agents"]
            except httpx.HTTPError:
                agents = []
            if len(agents) == 50 and all(a["connected"] and int(a["last_seq"]) > 0 for a in agents):  # type: ignore[call-overload]
                break
            time.sleep(0.5)
        assert len(agents) == 50
        assert {a["region"] for a in agents} == {"us-east-1", "eu-west-1", "ap-south-1"}
        # The fleet follows the demo release of its role in dev.
        progress: dict[str, object] = {}
        while time.monotonic() < deadline + 30 and progress.get("running") != 50:
            role = httpx.get(f"http://127.0.0.1:{port}/api/v1/envs/dev/roles/researcher", headers=headers)
            progress = role.json().get("progress") or {}
            time.sleep(0.5)
        expected = {"running": 50, "total": 50, "text": "50 of 50 connected agents run researcher@demo-1"}
        assert progress == expected
        console = httpx.get(f"http://127.0.0.1:{port}/login", params={"token": viewer}, follow_redirects=True)
        assert console.status_code == 200 and "50 agents" in console.text
    finally:
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, rest
    assert "acknowledged" in rest
