"""Ingest benchmark: the real gateway, driven by simulated agents in other processes.

Phases (each against a freshly started ``clawtrace up``):

1. ``sink``: the gateway with ``--store null://`` (decodes, acks, discards),
   agents sending as fast as acks allow: the ceiling.
2. ``stored_max``: the same load into SQLite: events/s stored, ack latency,
   gateway RSS, then loss and duplicates counted by (agent, seq) in the file.
3. ``stored_target``: a fixed total rate (default 20,000 events/s): ack
   latency at that rate, and live-tail latency seen by viewers on
   ``/api/v1/live``.
4. ``replay``: the store is grown to ``--replay-events`` rows (bulk insert
   with sqlite3 while the gateway is down), the gateway restarted, and the
   first page of 500 events of one agent timed through the REST API.

Prints the results as JSON and writes them to ``bench/results/ingest.json``.
``--quick`` finishes in under two minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import psutil
import websockets

from clawtrace.protocol import decode_event, encode
from clawtrace.sim import FleetConfig, LatencyHistogram, agent_ids

HERE = Path(__file__).resolve().parent
LOADGEN = HERE / "loadgen.py"

TARGETS = {
    "stored_events_per_s_min": 50_000,
    "ack_p99_ms_at_target_max": 250,
    "gateway_rss_mb_max": 400,
    "stored_vs_ceiling_min": 0.5,
    "replay_first_page_ms_max": 20,
    "live_p99_ms_max": 100,
}


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


async def run_load(gateway: Gateway, token: str, load: Load, viewer_token: str | None) -> dict[str, Any]:
    """Drive ``gateway`` with ``load`` from worker processes; measure the window."""
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
        edges: dict[str, Any] = {"cpu0": gateway.cpu_seconds(), "rows0": _max_row_id(db) if stored else None}
        await _at(window_end)
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


def check_store(db: Path, per_agent: list[dict[str, Any]]) -> dict[str, int]:
    """Count lost and duplicated events by (agent, seq) against what was generated."""
    conn = sqlite3.connect(db, timeout=30)
    lost = duplicates = checked = 0
    try:
        for agent in per_agent:
            first, last = agent["first_seq"], agent["last_seq"]
            if first is None or last is None:
                continue
            rows, distinct = conn.execute(
                "SELECT count(*), count(DISTINCT seq) FROM events WHERE agent = ? AND seq BETWEEN ? AND ?",
                (agent["agent"], first, last),
            ).fetchone()
            expected = last - first + 1
            checked += expected
            lost += expected - distinct
            duplicates += rows - distinct
    finally:
        conn.close()
    return {"events_checked": checked, "lost": lost, "duplicates": duplicates}


# --- replay -------------------------------------------------------------------


def grow_store(db: Path, total: int, batch_rows: int = 50_000) -> dict[str, Any]:
    """Bulk-insert realistic rows (cloned from stored ones) until ``total``.

    The schema comes from the gateway's own migrations; only the columns
    that make a row unique (agent, seq) and the event body change. Rows are
    spread round robin over the stored agents, as live ingest would.
    """
    conn = sqlite3.connect(db, timeout=60)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    columns = [row[1] for row in conn.execute("PRAGMA table_info(events)")]
    missing = {"agent", "seq", "data"} - set(columns)
    if missing:
        raise RuntimeError(f"events table lacks {missing}; columns: {columns}")
    existing = int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    to_add = total - existing
    started = time.perf_counter()
    if to_add <= 0:
        conn.close()
        return {"rows": existing, "inserted": 0, "insert_s": 0.0}
    copied = [c for c in columns if c != "id"]
    templates = conn.execute(f"SELECT {', '.join(copied)} FROM events ORDER BY id DESC LIMIT 2000").fetchall()
    decoded = [decode_event(row[copied.index("data")]) for row in templates]
    agents = conn.execute("SELECT agent, max(seq) FROM events GROUP BY agent").fetchall()
    next_seq = {agent: int(seq) for agent, seq in agents}
    names = [agent for agent, _ in agents]
    i_agent, i_seq, i_data = copied.index("agent"), copied.index("seq"), copied.index("data")
    sql = f"INSERT INTO events ({', '.join(copied)}) VALUES ({', '.join('?' * len(copied))})"

    def rows(start: int, count: int) -> list[tuple[Any, ...]]:
        out = []
        for n in range(start, start + count):
            agent = names[n % len(names)]
            seq = next_seq[agent] = next_seq[agent] + 1
            k = n % len(templates)
            row = list(templates[k])
            row[i_agent], row[i_seq] = agent, seq
            row[i_data] = encode(msgspec.structs.replace(decoded[k], seq=seq, agent=agent))
            out.append(tuple(row))
        return out

    done = 0
    while done < to_add:
        count = min(batch_rows, to_add - done)
        with conn:
            conn.executemany(sql, rows(done, count))
        done += count
    with conn:
        # Keep the registry in step, as the gateway's own writes would.
        conn.executemany(
            "UPDATE agents SET last_seq = ? WHERE agent = ?", [(s, a) for a, s in next_seq.items()]
        )
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return {"rows": total, "inserted": to_add, "insert_s": round(time.perf_counter() - started, 1)}


def time_replay(gateway: Gateway, token: str, agents: list[str], repeats: int = 50) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=gateway.http_url, headers=headers, timeout=30) as client:
        client.get("/healthz")  # open the connection outside the timings

        def first_page(agent: str) -> float:
            started = time.perf_counter()
            response = client.get(f"/api/v1/agents/{agent}/events", params={"limit": 500})
            elapsed = (time.perf_counter() - started) * 1000
            response.raise_for_status()
            events = response.json()["events"]
            seqs = [e["seq"] for e in events]
            if len(events) != 500 or seqs != sorted(seqs) or any(e["agent"] != agent for e in events):
                raise RuntimeError(f"first page of {agent} is wrong: {len(events)} events")
            return elapsed

        cold_first = first_page(agents[0])
        per_agent = [first_page(agent) for agent in agents[1:]]
        warm = [first_page(agents[0]) for _ in range(repeats)]

    def pct(values: list[float], p: float) -> float:
        ordered = sorted(values)
        return round(ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))], 2)

    return {
        "first_request_after_restart_ms": round(cold_first, 2),
        "distinct_agents": len(per_agent),
        "distinct_agents_p50_ms": pct(per_agent, 50),
        "distinct_agents_max_ms": round(max(per_agent), 2),
        "repeated_p50_ms": pct(warm, 50),
        "repeated_p99_ms": pct(warm, 99),
        "repeated_mean_ms": round(statistics.fmean(warm), 2),
    }


# --- the run ------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small and short: under 2 minutes")
    p.add_argument("--agents", type=int, help="simulated agents, one connection each [1000; quick 300]")
    p.add_argument("--procs", type=int, default=1, help="load generator processes [1]")
    p.add_argument("--batch", type=int, default=10, help="events per frame an agent sends at once [10]")
    p.add_argument("--warmup", type=float, help="seconds before measuring [5; quick 2]")
    p.add_argument("--duration", type=float, help="seconds measured per phase [20; quick 8]")
    p.add_argument("--target-rate", type=int, default=20_000, help="events/s of the fixed-rate phase [20000]")
    p.add_argument("--in-flight", type=int, help="max unacked events per agent at max pace [20000/agents]")
    p.add_argument("--viewers", type=int, default=5, help="live-tail viewers, one agent each [5]")
    p.add_argument("--replay-events", type=int, help="rows in the store for the replay timing [5M; quick 1M]")
    p.add_argument(
        "--phases",
        default="sink,stored_max,stored_target,replay",
        help="comma-separated subset of sink,stored_max,stored_target,replay",
    )
    p.add_argument("--workdir", type=Path, help="where gateway data dirs go [a temporary directory]")
    p.add_argument("--keep", action="store_true", help="keep the gateway data dirs")
    p.add_argument("--out", type=Path, default=HERE / "results" / "ingest.json")
    args = p.parse_args(argv)
    args.agents = args.agents or (300 if args.quick else 1000)
    args.warmup = args.warmup if args.warmup is not None else (2.0 if args.quick else 5.0)
    args.duration = args.duration or (8.0 if args.quick else 20.0)
    args.replay_events = args.replay_events or (1_000_000 if args.quick else 5_000_000)
    args.in_flight = args.in_flight or max(2 * args.batch, 20_000 // args.agents)
    return args


def _print(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def bench(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    phases = {p.strip() for p in args.phases.split(",") if p.strip()}
    results: dict[str, Any] = {
        "command": " ".join(["python", "bench/ingest.py", *sys.argv[1:]]),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }

    def load(prefix: str, rate: str, viewers: int = 0) -> Load:
        return Load(
            agents=args.agents,
            rate=rate,
            batch=args.batch,
            procs=args.procs,
            id_prefix=prefix,
            warmup=args.warmup,
            duration=args.duration,
            max_in_flight=args.in_flight,
            viewers=viewers,
        )

    if "sink" in phases:
        _print(f"sink: {args.agents} agents at max pace into --store null:// ...")
        gateway = Gateway(workdir / "sink", store="null://")
        gateway.start()
        try:
            result = await run_load(gateway, create_token(gateway.data_dir, "agent"), load("k-", "max"), None)
        finally:
            gateway.stop()
        result.pop("_per_agent")
        results["sink"] = result
        _print(f"  ceiling {result['events_per_s_acked']:,} events/s")

    stored_dir = workdir / "stored"
    if "stored_max" in phases or "stored_target" in phases:
        gateway = Gateway(stored_dir)
        gateway.start()
        agent_token = create_token(stored_dir, "agent")
        viewer_token = create_token(stored_dir, "viewer")
        try:
            if "stored_max" in phases:
                _print(f"stored_max: {args.agents} agents at max pace into SQLite ...")
                result = await run_load(gateway, agent_token, load("m-", "max"), None)
                result["integrity"] = check_store(stored_dir / "clawtrace.db", result.pop("_per_agent"))
                results["stored_max"] = result
                _print(f"  stored {result['events_per_s_acked']:,} events/s; {result['integrity']}")
            if "stored_target" in phases:
                per_agent = args.target_rate / args.agents
                _print(f"stored_target: {args.target_rate:,} events/s ({per_agent:g}/s per agent) ...")
                result = await run_load(
                    gateway, agent_token, load("t-", str(per_agent), args.viewers), viewer_token
                )
                result["target_events_per_s"] = args.target_rate
                result["integrity"] = check_store(stored_dir / "clawtrace.db", result.pop("_per_agent"))
                results["stored_target"] = result
                _print(f"  ack {result['ack_latency_ms']}; live {result.get('live_tail')}")
        finally:
            gateway.stop()

    if "replay" in phases:
        db = stored_dir / "clawtrace.db"
        if not db.exists():
            # No ingest phase ran: make the schema and a little real data first.
            gateway = Gateway(stored_dir)
            gateway.start()
            try:
                small = load("m-", "max")
                small.duration, small.warmup = 3.0, 1.0
                await run_load(gateway, create_token(stored_dir, "agent"), small, None)
            finally:
                gateway.stop()
        _print(f"replay: growing the store to {args.replay_events:,} events ...")
        grown = grow_store(db, args.replay_events)
        conn = sqlite3.connect(db)
        busiest = [
            a
            for (a,) in conn.execute("SELECT agent FROM agents WHERE last_seq >= 500 ORDER BY agent LIMIT 21")
        ]
        conn.close()
        gateway = Gateway(stored_dir)
        gateway.start()
        try:
            timing = time_replay(gateway, create_token(stored_dir, "viewer"), busiest)
        finally:
            gateway.stop()
        results["replay"] = {**grown, "page": 500, **timing}
        _print(f"  {results['replay']}")

    results["targets"] = evaluate(results)
    return results


def evaluate(results: dict[str, Any]) -> dict[str, Any]:
    """Each target of issue 2 with the figure measured and whether it is met."""
    checks: dict[str, Any] = {}

    def check(name: str, value: float | None, limit: float, at_least: bool) -> None:
        if value is None:
            return
        ok = value >= limit if at_least else value <= limit
        checks[name] = {"value": value, "target": (">= " if at_least else "<= ") + str(limit), "met": ok}

    stored = results.get("stored_max")
    sink = results.get("sink")
    target = results.get("stored_target")
    if stored:
        check("stored_events_per_s", stored["events_per_s_acked"], TARGETS["stored_events_per_s_min"], True)
        check("gateway_rss_mb", stored["gateway_rss_mb_peak"], TARGETS["gateway_rss_mb_max"], False)
        check("lost_or_duplicated", stored["integrity"]["lost"] + stored["integrity"]["duplicates"], 0, False)
        if sink and sink["events_per_s_acked"]:
            ratio = round(stored["events_per_s_acked"] / sink["events_per_s_acked"], 3)
            check("stored_vs_ceiling", ratio, TARGETS["stored_vs_ceiling_min"], True)
    if target:
        check(
            "ack_p99_ms_at_target",
            target["ack_latency_ms"]["p99"],
            TARGETS["ack_p99_ms_at_target_max"],
            False,
        )
        live = target.get("live_tail", {}).get("event_ts_to_viewer_ms", {})
        check("live_tail_p99_ms", live.get("p99"), TARGETS["live_p99_ms_max"], False)
        check(
            "lost_or_duplicated_at_target",
            target["integrity"]["lost"] + target["integrity"]["duplicates"],
            0,
            False,
        )
    replay = results.get("replay")
    if replay:
        check("replay_first_page_ms", replay["repeated_p99_ms"], TARGETS["replay_first_page_ms_max"], False)
    return checks


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.monotonic()
    temporary = args.workdir is None
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="clawtrace-bench-"))
    try:
        results = asyncio.run(bench(args, workdir))
    finally:
        if temporary and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    results["wall_s"] = round(time.monotonic() - started, 1)
    text = json.dumps(results, indent=2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
