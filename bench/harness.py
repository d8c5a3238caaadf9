"""Shared by the benchmarks: the real gateway as a subprocess, and load driven at it.

- ``Gateway``: ``clawtrace up`` on a free port with its own data directory
  (and optionally a ``--config`` TOML file), its CPU time and RSS via psutil;
- ``create_token``: a credential through ``clawtrace token create``;
- ``run_load``: simulated agents in load generator processes
  (``bench/loadgen.py``) on a shared timetable, measured over one window;
  ``on_window`` is called at the window's two edges so a caller can take
  its own readings at the same instants.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import httpx
import msgspec
import psutil
import websockets

from clawtrace.sim import FleetConfig, LatencyHistogram, agent_ids

HERE = Path(__file__).resolve().parent
LOADGEN = HERE / "loadgen.py"

WindowEdge = Literal["start", "end"]


# --- the gateway under test ---------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clawtrace(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "clawtrace", *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"clawtrace {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def create_token(data_dir: Path, role: str, env: str = "dev") -> str:
    # The CLI prints the credential alone on its last line.
    out = clawtrace("token", "create", "--data-dir", str(data_dir), "--env", env, "--role", role)
    return out.strip().splitlines()[-1].strip()


@dataclass
class Gateway:
    data_dir: Path
    store: str | None = None
    # A TOML settings file passed as ``clawtrace up --config``.
    config: Path | None = None
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = ["up", "--host", "127.0.0.1", "--port", str(self.port), "--data-dir", str(self.data_dir)]
        args += ["--log-level", "warning"]
        if self.store:
            args += ["--store", self.store]
        if self.config:
            args += ["--config", str(self.config)]
        log = (self.data_dir / "gateway.log").open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "clawtrace", *args], stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"gateway exited with {self.proc.returncode}; see {self.data_dir}/gateway.log"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.http_url}/readyz", timeout=1.0).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"gateway not ready after {timeout:.0f} s; see {self.data_dir}/gateway.log")

    def stop(self, timeout: float = 60.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def process(self) -> psutil.Process:
        assert self.proc is not None
        return psutil.Process(self.proc.pid)

    def rss_bytes(self) -> int:
        proc = self.process()
        return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])

    def cpu_seconds(self) -> float:
        proc = self.process()
        total = 0.0
        for p in [proc, *proc.children(recursive=True)]:
            times = p.cpu_times()
            total += times.user + times.system
        return total


# --- load and measurement -----------------------------------------------------


@dataclass
class Load:
    agents: int
    rate: str  # "max" or events/s per agent
    batch: int
    procs: int
    id_prefix: str
    warmup: float
    duration: float
    max_in_flight: int
    drain_timeout: float = 120.0
    viewers: int = 0
    # Simulator fault scenarios ({"loop": 20, "dead": 20}), starting this long after each agent.
    scenarios: dict[str, int] = field(default_factory=dict)
    scenario_after: float = 30.0
    heartbeat_interval: float = 10.0


class _LiveEvent(msgspec.Struct):
    ts: datetime
    received: datetime | None = None


class _LiveFrame(msgspec.Struct):
    type: str
    events: list[_LiveEvent] = []


@dataclass
class LiveStats:
    from_ts: LatencyHistogram = field(default_factory=LatencyHistogram)
    from_received: LatencyHistogram = field(default_factory=LatencyHistogram)
    frames: int = 0
    errors: list[str] = field(default_factory=list)


async def _viewer(url: str, token: str, window: tuple[float, float], live: LiveStats) -> None:
    decoder = msgspec.json.Decoder(_LiveFrame)
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with websockets.connect(url, additional_headers=headers, compression=None, max_size=None) as ws:
            async for frame in ws:
                now = time.time()
                message = decoder.decode(frame)
                if message.type != "events":
                    live.errors.append(str(frame)[:200])
                    continue
                if not window[0] <= now <= window[1]:
                    continue
                live.frames += 1
                for event in message.events:
                    live.from_ts.record((now - event.ts.timestamp()) * 1000)
                    if event.received is not None:
                        live.from_received.record((now - event.received.timestamp()) * 1000)
    except (OSError, websockets.exceptions.WebSocketException) as exc:
        live.errors.append(f"{type(exc).__name__}: {exc}")


async def _sample_rss(gateway: Gateway, peak: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(psutil.Error):
            peak[0] = max(peak[0], gateway.rss_bytes())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


def _max_row_id(db: Path) -> int:
    conn = sqlite3.connect(db, timeout=30)
    try:
        return int(conn.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0])
    finally:
        conn.close()


async def _at(wall: float) -> None:
    delay = wall - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


async def run_load(
    gateway: Gateway,
    token: str,
    load: Load,
    viewer_token: str | None,
    on_window: Callable[[WindowEdge], None] | None = None,
) -> dict[str, Any]:
    """Drive ``gateway`` with ``load`` from worker processes; measure the window.

    ``on_window("start")`` and ``on_window("end")`` run at the window's edges,
    just before the gateway's own readings.
    """
    ramp = min(5.0, load.agents / 500)
    start_at = time.time() + 3.0  # workers need a moment to import and set up
    window_start = start_at + ramp + load.warmup
    window_end = window_start + load.duration
    db = gateway.data_dir / "clawtrace.db"
    stored = gateway.store is None
    per_proc = [load.agents // load.procs + (i < load.agents % load.procs) for i in range(load.procs)]
    workers = []
    first = 1
    for count in per_proc:
        spec = {
            "gateway": gateway.ws_url,
            "token": token,
            "agents": count,
            "first_index": first,
            "id_prefix": load.id_prefix,
            "rate": load.rate,
            "batch": load.batch,
            "max_in_flight": load.max_in_flight,
            "drain_timeout": load.drain_timeout,
            "ramp": ramp,
            "start_at": start_at,
            "window_start": window_start,
            "window_end": window_end,
            # Faults are spread over the workers in proportion to their agents.
            "scenarios": {k: round(v * count / load.agents) for k, v in load.scenarios.items()},
            "scenario_after": load.scenario_after,
            "heartbeat_interval": load.heartbeat_interval,
        }
        first += count
        workers.append(
            await asyncio.create_subprocess_exec(
                sys.executable, str(LOADGEN), json.dumps(spec), stdout=asyncio.subprocess.PIPE, limit=1 << 26
            )
        )

    try:
        stop_sampling = asyncio.Event()
        peak = [0]
        sampler = asyncio.create_task(_sample_rss(gateway, peak, stop_sampling))
        live = LiveStats()
        viewers: list[asyncio.Task[None]] = []
        if load.viewers and viewer_token:
            ids = [agent for agent, _ in agent_ids(FleetConfig(agents=load.agents, id_prefix=load.id_prefix))]
            followed = ids[:: max(1, len(ids) // load.viewers)][: load.viewers]
            await _at(start_at + ramp)
            for agent in followed:
                url = f"{gateway.ws_url}/api/v1/live?agent={agent}"
                viewers.append(
                    asyncio.create_task(_viewer(url, viewer_token, (window_start, window_end), live))
                )

        await _at(window_start)
        if on_window is not None:
            on_window("start")
        edges: dict[str, Any] = {"cpu0": gateway.cpu_seconds(), "rows0": _max_row_id(db) if stored else None}
        await _at(window_end)
        if on_window is not None:
            on_window("end")
        edges.update(
            cpu1=gateway.cpu_seconds(), rows1=_max_row_id(db) if stored else None, rss_end=gateway.rss_bytes()
        )

        reports: list[dict[str, dict[str, Any]]] = []
        for worker in workers:
            lines: dict[str, dict[str, Any]] = {}
            assert worker.stdout is not None
            async for raw in worker.stdout:
                message = json.loads(raw)
                lines[message["type"]] = message
            await worker.wait()
            if "final" not in lines:
                raise RuntimeError(f"load generator exited with {worker.returncode} before reporting")
            reports.append(lines)
        stop_sampling.set()
        await sampler
        for task in viewers:
            task.cancel()
        await asyncio.gather(*viewers, return_exceptions=True)

        latency = LatencyHistogram()
        acked = generated = 0
        loadgen_cpu = 0.0
        errors: dict[str, int] = {}
        for lines in reports:
            start, end = lines["window_start"], lines["window_end"]
            latency.merge(LatencyHistogram(end["latency_counts"], end["latency_max_ms"]))
            acked += end["acked"] - start["acked"]
            generated += end["generated"] - start["generated"]
            loadgen_cpu += end["cpu_s"] - start["cpu_s"]
            for code, n in lines["final"]["stats"]["gateway_errors"].items():
                errors[code] = errors.get(code, 0) + n
        seconds = load.duration
        result: dict[str, Any] = {
            "agents": load.agents,
            "rate_per_agent": load.rate,
            "batch": load.batch,
            "load_processes": load.procs,
            "window_s": seconds,
            "events_per_s_generated": round(generated / seconds),
            "events_per_s_acked": round(acked / seconds),
            "ack_latency_ms": latency.summary(),
            "gateway_cpu_percent": round(100 * (edges["cpu1"] - edges["cpu0"]) / seconds),
            "loadgen_cpu_percent": round(100 * loadgen_cpu / seconds),
            "gateway_rss_mb_peak": round(peak[0] / 2**20, 1),
            "gateway_rss_mb_end_of_window": round(edges["rss_end"] / 2**20, 1),
            "gateway_errors": errors,
            "not_acked_at_end": sum(r["final"]["stats"]["pending"] for r in reports),
        }
        if stored:
            result["events_per_s_stored_db"] = round((edges["rows1"] - edges["rows0"]) / seconds)
        if viewers:
            result["live_tail"] = {
                "viewers": len(viewers),
                "frames": live.frames,
                "event_ts_to_viewer_ms": live.from_ts.summary(),
                "gateway_received_to_viewer_ms": live.from_received.summary(),
                "errors": live.errors[:5],
            }
        result["_per_agent"] = [a for r in reports for a in r["final"]["stats"]["per_agent"]]
        return result
    finally:
        for worker in workers:
            if worker.returncode is None:
                worker.kill()
