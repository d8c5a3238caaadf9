"""Scale-mode ingest benchmark: gateways publishing to NATS JetStream, a worker storing into PostgreSQL.

Real processes on this machine: ``clawtrace up --bus nats://...`` gateways on
one PostgreSQL store (a throwaway database), one ``clawtrace worker``, the
machine's NATS (a stream of the run's own, deleted afterwards), and the load
generators of ``bench/harness.py`` (simulated agents, one WebSocket each,
``--batch`` events per frame), half of the agents on each gateway. Phases:

- ``max2``: 2 gateways, agents at max pace: events/s acked (JetStream has
  them) and stored (rows in PostgreSQL over the window), CPU per process;
- ``target2``: 2 gateways, ``--target-rate`` events/s in all (10,000): ack
  latency at that rate (the p99 target is 500 ms);
- ``steady2``: 2 gateways, ``--steady-rate`` events/s in all (30,000, the
  issue's target): whether everything keeps up at that rate end to end
  (acked and stored at the rate over the window, the worker's backlog gone
  within seconds after it) and the ack latency there. At max pace the
  gateways' closed loop takes all the CPU it is given, so on one 2-core
  machine ``max2``'s stored rate is the worker's share of the CPU divided by
  its cost per event, and its backlog grows;
- ``max1``: as ``max2`` with one gateway: the 1 -> 2 gateway scaling ratio.

After each phase, once the worker has caught up, every agent's events are
counted by (agent, seq) in PostgreSQL: none lost, none twice. The gateways
run with ``metrics_enabled = false`` (their live numbers mirror the fleet's
events; see docs/deployment.md): the worker computes the metrics, unless
``--worker-metrics off``. Each phase also gives each process's CPU time per
event over the window (``cpu_us_per_event``: gateways, worker, the PostgreSQL
server processes of the run's database, NATS, load generators), which depends
much less than rates on what else the machine runs. Prints JSON and writes
``bench/results/scale.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
import psutil
import psycopg

from harness import Gateway, Load, clawtrace, run_load

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from postgres import ADMIN_URL, fresh_database  # noqa: E402

NATS_URL = os.environ.get("CLAWTRACE_BENCH_NATS", "nats://127.0.0.1:4222")
TARGETS = {"stored_events_per_s_min": 30_000, "ack_p99_ms_at_target_max": 500}


def _print(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Worker:
    """``clawtrace worker`` as a subprocess, with its CPU time."""

    def __init__(self, workdir: Path, bus: str, store: str, metrics: bool) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        args = [sys.executable, "-m", "clawtrace", "worker", "--bus", bus, "--store", store]
        args += ["--data-dir", str(workdir), "--id", "bench", "--log-level", "warning"]
        if not metrics:
            args.append("--no-metrics")
        self.log = workdir / "worker.log"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)

    def cpu_seconds(self) -> float:
        times = psutil.Process(self.proc.pid).cpu_times()
        return float(times.user + times.system)

    def main_thread_cpu_seconds(self) -> float:
        """The event loop's thread alone (the rest: the store writer thread, mostly)."""
        for thread in psutil.Process(self.proc.pid).threads():
            if thread.id == self.proc.pid:
                return float(thread.user_time + thread.system_time)
        return 0.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def nats_server(url: str) -> psutil.Process | None:
    """The nats-server process listening on the bus URL's port (its CPU counts per event too)."""
    port = int(url.rsplit(":", 1)[1].split("?")[0])
    with contextlib.suppress(psutil.Error):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return psutil.Process(conn.pid)
    return None


def cpu_of(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def postgres_backends(store: str) -> list[psutil.Process]:
    """The PostgreSQL server processes serving the run's database (the worker's and gateways'
    connections; background processes shared with everything else are left out)."""
    with psycopg.connect(store, autocommit=True) as conn:
        pids = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    procs = []
    for (pid,) in pids:
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(int(pid)))
    return procs


def stored_rows(store: str) -> int:
    with psycopg.connect(store, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM events").fetchone()
    return int(row[0]) if row else 0


def check_store(store: str, per_agent: list[dict[str, Any]]) -> dict[str, int]:
    """By (agent, seq) in PostgreSQL: acked events missing (lost), events stored twice (duplicates),
    and events generated but never acked (the agents still hold them: not a loss)."""
    lost = duplicates = checked = never_acked = 0
    with psycopg.connect(store, autocommit=True) as conn:
        for agent in per_agent:
            first, last = agent["first_seq"], agent["last_seq"]
            if first is None or last is None:
                continue
            acked = min(last, agent["acked_seq"])
            never_acked += last - max(acked, first - 1)
            row = conn.execute(
                "SELECT count(*), count(DISTINCT seq), count(DISTINCT seq) FILTER (WHERE seq <= %s)"
                " FROM events WHERE agent = %s AND seq BETWEEN %s AND %s",
                (acked, agent["agent"], first, last),
            ).fetchone()
            assert row is not None
            rows, distinct, distinct_acked = int(row[0]), int(row[1]), int(row[2])
            expected = max(0, acked - first + 1)
            checked += expected
            lost += expected - distinct_acked
            duplicates += rows - distinct
    return {"events_checked": checked, "lost": lost, "duplicates": duplicates, "never_acked": never_acked}


async def until_caught_up(stream: str, shards: int, limit_s: float = 300.0) -> float:
    """Wait until the shards' consumers have nothing left to deliver or to get acked (the worker
    acks only what it stored); returns how long that took."""
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        backlog = await consumer_backlog(stream, shards)
        if backlog["pending"] == 0 and backlog["ack_pending"] == 0:
            break
        await asyncio.sleep(0.5)
    return round(time.monotonic() - started, 1)


async def consumer_backlog(stream: str, shards: int) -> dict[str, int]:
    """What the shards' durable consumers still have to deliver or to get acked."""
    client = await nats.connect(NATS_URL)
    out = {"pending": 0, "ack_pending": 0, "redelivered": 0, "stream_messages": 0}
    try:
        js = client.jetstream()
        out["stream_messages"] = (await js.stream_info(stream)).state.messages
        for shard in range(shards):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                info = await js.consumer_info(stream, f"shard-{shard}")
                out["pending"] += info.num_pending or 0
                out["ack_pending"] += info.num_ack_pending or 0
                out["redelivered"] += info.num_redelivered or 0
    finally:
        await client.close()
    return out


async def delete_stream(stream: str) -> None:
    client = await nats.connect(NATS_URL)
    try:
        js = client.jetstream()
        for name in (stream, f"KV_{stream}_LEASES"):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_stream(name)
    finally:
        await client.close()


async def phase(
    name: str,
    args: argparse.Namespace,
    workdir: Path,
    gateways: int,
    rate: str,
) -> dict[str, Any]:
    """Fresh database, stream, gateways and worker; one measured window; then integrity."""
    stream = f"BENCH_{secrets.token_hex(4).upper()}"
    bus = f"{NATS_URL}?stream={stream}&prefix={stream.lower()}.events&shards={args.shards}"
    with fresh_database(args.postgres) as store:
        config = workdir / f"{name}.toml"
        config.write_text(f'[gateway]\nbus = "{bus}"\nstore = "{store}"\nmetrics_enabled = false\n')
        # The schema first (one process), then the rest side by side.
        token = (
            clawtrace(
                "token",
                "create",
                "--data-dir",
                str(workdir),
                "--store",
                store,
                "--env",
                "dev",
                "--role",
                "agent",
            )
            .strip()
            .splitlines()[-1]
            .strip()
        )
        procs = [Gateway(workdir / f"{name}-gw{i}", store=store, config=config) for i in range(gateways)]
        worker = Worker(workdir / f"{name}-worker", bus, store, args.worker_metrics == "on")
        try:
            await asyncio.gather(*(asyncio.to_thread(g.start) for g in procs))
            per_gateway = args.agents // gateways
            loads = [
                Load(
                    agents=per_gateway,
                    rate=rate,
                    batch=args.batch,
                    procs=1,
                    id_prefix=f"{name}{i}-",
                    warmup=args.warmup,
                    duration=args.duration,
                    max_in_flight=args.in_flight,
                )
                for i in range(gateways)
            ]
            edges: dict[str, float] = {}
            nats_proc = nats_server(NATS_URL)
            backends: list[psutil.Process] = []

            def on_window(edge: str) -> None:
                # Each gateway's run_load calls this at the same two instants; the first call counts.
                if f"rows_{edge}" not in edges:
                    if edge == "start":
                        backends[:] = postgres_backends(store)
                    edges[f"rows_{edge}"] = stored_rows(store)
                    edges[f"worker_cpu_{edge}"] = worker.cpu_seconds()
                    edges[f"worker_main_cpu_{edge}"] = worker.main_thread_cpu_seconds()
                    edges[f"gateways_cpu_{edge}"] = sum(g.cpu_seconds() for g in procs)
                    edges[f"nats_cpu_{edge}"] = cpu_of([nats_proc]) if nats_proc is not None else 0.0
                    edges[f"postgres_cpu_{edge}"] = cpu_of(backends)

            results = await asyncio.gather(
                *(run_load(g, token, load, None, on_window) for g, load in zip(procs, loads, strict=True))
            )
            caught_up_s = await until_caught_up(stream, args.shards)
            # Events per JetStream message (one per frame the gateways accepted, unless split).
            stream_messages = (await consumer_backlog(stream, args.shards))["stream_messages"]
            events_per_message = round(stored_rows(store) / stream_messages, 1) if stream_messages else None
            per_agent = [a for r in results for a in r.pop("_per_agent")]
            integrity = check_store(store, per_agent)
            if integrity["lost"]:
                _print(f"  LOST {integrity}; consumers: {await consumer_backlog(stream, args.shards)}")
                await asyncio.sleep(15)
                later = check_store(store, per_agent)
                _print(f"  15 s later: {later}; {await consumer_backlog(stream, args.shards)}")
        finally:
            worker.stop()
            for gateway in procs:
                gateway.stop()
            await delete_stream(stream)
    seconds = args.duration
    latencies = [r["ack_latency_ms"] for r in results]
    stored = edges["rows_end"] - edges["rows_start"]
    acked = sum(r["events_per_s_acked"] for r in results) * seconds
    loadgen_cpu = sum(r["loadgen_cpu_percent"] for r in results) * seconds / 100

    def per_event(cpu_seconds: float, events: float) -> float | None:
        return round(1e6 * cpu_seconds / events, 1) if events else None

    def delta(key: str) -> float:
        return edges[f"{key}_end"] - edges[f"{key}_start"]

    # CPU time per event in each process over the window: unlike rates, these hardly depend on
    # what else the machine runs. The gateways' and load generators' per event acked, the
    # worker's and its PostgreSQL backends' per event stored, NATS's per event acked.
    cpu_us_per_event = {
        "gateways": per_event(delta("gateways_cpu"), acked),
        "worker": per_event(delta("worker_cpu"), stored),
        "worker_event_loop_thread": per_event(delta("worker_main_cpu"), stored),
        "postgres_backends": per_event(delta("postgres_cpu"), stored),
        "nats_server": per_event(delta("nats_cpu"), acked),
        "loadgen": per_event(loadgen_cpu, acked),
    }
    return {
        "gateways": gateways,
        "agents": per_gateway * gateways,
        "batch": args.batch,
        "rate_per_agent": rate,
        "window_s": seconds,
        "events_per_s_acked": sum(r["events_per_s_acked"] for r in results),
        "events_per_s_stored": round((edges["rows_end"] - edges["rows_start"]) / seconds),
        # Per gateway (run_load measures each); the worst of them.
        "ack_latency_ms": {
            key: max((lat[key] for lat in latencies if lat.get(key) is not None), default=None)
            for key in ("p50", "p90", "p99", "max")
        },
        "cpu_us_per_event": cpu_us_per_event,
        "gateway_cpu_percent": [r["gateway_cpu_percent"] for r in results],
        "worker_cpu_percent": round(100 * delta("worker_cpu") / seconds),
        "postgres_cpu_percent": round(100 * delta("postgres_cpu") / seconds),
        "nats_cpu_percent": round(100 * delta("nats_cpu") / seconds),
        "loadgen_cpu_percent": sum(r["loadgen_cpu_percent"] for r in results),
        "gateway_rss_mb_peak": [r["gateway_rss_mb_peak"] for r in results],
        "gateway_errors": [r["gateway_errors"] for r in results],
        "not_acked_at_end": sum(r["not_acked_at_end"] for r in results),
        "worker_caught_up_after_s": caught_up_s,
        "events_per_message": events_per_message,
        "integrity": integrity,
    }


def evaluate(results: dict[str, Any]) -> dict[str, Any]:
    checks: dict[str, Any] = {}

    def check(name: str, value: float, limit: float, at_least: bool) -> None:
        met = value >= limit if at_least else value <= limit
        checks[name] = {"value": value, "target": (">= " if at_least else "<= ") + str(limit), "met": met}

    if "max2" in results:
        check(
            "stored_events_per_s",
            results["max2"]["events_per_s_stored"],
            TARGETS["stored_events_per_s_min"],
            True,
        )
    if "target2" in results:
        p99 = results["target2"]["ack_latency_ms"]["p99"]
        check("ack_p99_ms_at_10000_per_s", p99, TARGETS["ack_p99_ms_at_target_max"], False)
    if "steady2" in results:
        steady = results["steady2"]
        # Kept up: at least 97 % of the offered rate acked and stored over the window.
        offered = round(steady["agents"] * float(steady["rate_per_agent"]))
        check("steady2_events_per_s_stored", steady["events_per_s_stored"], round(0.97 * offered), True)
        check("steady2_events_per_s_acked", steady["events_per_s_acked"], round(0.97 * offered), True)
    for name in ("max2", "target2", "steady2", "max1"):
        if name in results:
            integrity = results[name]["integrity"]
            check(f"{name}_lost_or_duplicated", integrity["lost"] + integrity["duplicates"], 0, False)
    if "max1" in results and "max2" in results and results["max1"]["events_per_s_acked"]:
        ratio = round(results["max2"]["events_per_s_acked"] / results["max1"]["events_per_s_acked"], 2)
        checks["scaling_1_to_2_gateways_acked"] = {"value": ratio}
    return checks


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short windows: about 2-3 minutes in all")
    p.add_argument("--agents", type=int, default=400, help="simulated agents in all [400]")
    p.add_argument("--batch", type=int, default=50, help="events per frame [50]")
    p.add_argument("--warmup", type=float, help="seconds before measuring [5; quick 3]")
    p.add_argument("--duration", type=float, help="seconds measured per phase [20; quick 8]")
    p.add_argument("--target-rate", type=int, default=10_000, help="events/s of target2, in all [10000]")
    p.add_argument(
        "--in-flight", type=int, default=500, help="max unacked events per agent at max pace [500]"
    )
    p.add_argument("--shards", type=int, default=16, help="shards of the stream [16]")
    p.add_argument("--worker-metrics", choices=("on", "off"), default="on")
    p.add_argument("--steady-rate", type=int, default=30_000, help="events/s of steady2, in all [30000]")
    p.add_argument(
        "--phases", default="max2,target2,steady2,max1", help="subset of max2,target2,steady2,max1"
    )
    p.add_argument("--postgres", default=ADMIN_URL, help="PostgreSQL to create the throwaway database in")
    p.add_argument("--workdir", type=Path, help="keep the data dirs and logs here [a temporary directory]")
    p.add_argument("--out", type=Path, default=HERE / "results" / "scale.json")
    args = p.parse_args(argv)
    args.warmup = args.warmup if args.warmup is not None else (3.0 if args.quick else 5.0)
    args.duration = args.duration or (8.0 if args.quick else 20.0)
    return args


async def bench(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    results: dict[str, Any] = {
        "command": " ".join(["python", "bench/scale.py", *sys.argv[1:]]),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    for name in phases:
        gateways = 1 if name == "max1" else 2
        rates = {"target2": args.target_rate / args.agents, "steady2": args.steady_rate / args.agents}
        rate = str(rates[name]) if name in rates else "max"
        _print(f"{name}: {gateways} gateway(s) + 1 worker, {args.agents} agents, rate {rate} ...")
        results[name] = await phase(name, args, workdir, gateways, rate)
        summary = {
            k: results[name][k]
            for k in ("events_per_s_acked", "events_per_s_stored", "ack_latency_ms", "cpu_us_per_event")
        }
        _print(f"  {summary}; {results[name]['integrity']}")
    results["targets"] = evaluate(results)
    return results


def main() -> None:
    args = parse_args()
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        results = asyncio.run(bench(args, args.workdir))
    else:
        with tempfile.TemporaryDirectory(prefix="clawtrace-bench-scale-") as tmp:
            results = asyncio.run(bench(args, Path(tmp)))
    text = json.dumps(results, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
