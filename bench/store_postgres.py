"""PostgreSQL store benchmark: how fast ``PostgresStore.write`` stores events, by batch size.

In-process, one writer thread (what a gateway's StoreWriter does), against the
machine's PostgreSQL in a throwaway database (created, then dropped):

1. ``copy_ceiling``: plain psycopg binary COPY of the same rows into an
   unpartitioned table with the (agent, seq) index, one transaction per
   batch: what the driver and server do without any of the store's work.
   ../shared/MEASUREMENTS.md has 111k rows/s for psycopg 3 COPY (72k with
   executemany) on a machine of this kind.
2. ``store_write``: ``PostgresStore.write(WriteBatch)`` with --agents
   registered agents sending in turn (events of ~160 bytes of JSON): the
   per-agent seq locks, COPY into the day's partition, the agents and
   sessions bookkeeping, one transaction per batch. The bookkeeping is per
   agent in a batch, so the fewer rows each agent has in a batch, the more
   it weighs: 1,000 agents with batches of 500 is the worst case (three
   row updates per event), 100 agents with batches of 5,000 a good one.
3. ``store_resend``: the same batches written again: every row is a
   duplicate, which takes the slow path (each (agent, seq) looked up before
   insert); what a burst of resends after a gateway restart costs.

Each runs at --batches (default 500, 5,000 and 10,000 rows, the gateway
writer's largest merged batch) over --events rows, --rounds times; the
median round is reported, with per-batch latency (p50/p99: a gateway acks a
batch only once it is written). Prints JSON and writes
``bench/results/store_postgres.json``. The machine's load is recorded too:
on a shared 2-vCPU machine it moves every figure by tens of percent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psycopg

from clawtrace.store import AgentInfo, Store, WriteBatch, open_store
from clawtrace.store.base import EventRow

T = TypeVar("T")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from postgres import ADMIN_URL, admin_connection, fresh_database, fresh_schema  # noqa: E402

# ../shared/MEASUREMENTS.md, "Storage": PostgreSQL 15, default config, psycopg 3.
REFERENCE = {"psycopg_copy_rows_per_s": 111_000, "psycopg_executemany_rows_per_s": 72_000}
# Issue 8: >= 30,000 events/s into PostgreSQL end to end; the store's writer must leave room for that.
TARGET_EVENTS_PER_S = 30_000
# ~160 bytes, like a log event as the gateway stores it.
PAYLOAD = (
    b'{"kind":"log","seq":%d,"ts":"2026-03-01T12:00:00.000000Z","session":"s-1","agent":"%s",'
    b'"received":"2026-03-01T12:00:00.010000Z","stream":"stdout","line":"step %d of the plan ok"}'
)


def event_rows(count: int, agents: list[str], start_seq: int, received: float) -> list[EventRow]:
    """``count`` events, the agents taking turns, each agent's seqs following on from ``start_seq``."""
    rows: list[EventRow] = []
    for i in range(count):
        agent = agents[i % len(agents)]
        seq = start_seq + i // len(agents)
        rows.append(
            (agent, seq, "s-1", "log", received, received + i * 1e-6, PAYLOAD % (seq, agent.encode(), seq))
        )
    return rows


def batches(rows: list[EventRow], size: int) -> Iterator[list[EventRow]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def write_batch(rows: list[EventRow]) -> WriteBatch:
    batch = WriteBatch()
    for row in rows:
        batch.add(row)
    return batch


def timed(write: Callable[[T], None], items: list[T], rows: int) -> dict[str, Any]:
    """Write each item (a batch) in turn: events/s over ``rows`` events, and per-batch latency."""
    latencies: list[float] = []
    started = time.perf_counter()
    for item in items:
        t = time.perf_counter()
        write(item)
        latencies.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "events_per_s": round(rows / elapsed),
        "batch_ms": {
            "p50": round(latencies[len(latencies) // 2] * 1000, 2),
            "p99": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000, 2),
        },
    }


def median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    ordered = sorted(rounds, key=lambda r: r["events_per_s"])
    best = dict(ordered[len(ordered) // 2])
    best["rounds_events_per_s"] = [r["events_per_s"] for r in rounds]
    return best


def copy_ceiling(url: str, rows: list[EventRow], size: int) -> dict[str, Any]:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE plain_events (agent text NOT NULL, seq bigint NOT NULL, session text NOT NULL,"
            " kind text NOT NULL, ts float8 NOT NULL, received float8 NOT NULL, data bytea NOT NULL)"
        )
        conn.execute("CREATE INDEX ON plain_events (agent, seq)")

        def write(chunk: list[EventRow]) -> None:
            with (
                conn.transaction(),
                conn.cursor() as cur,
                cur.copy("COPY plain_events FROM STDIN (FORMAT BINARY)") as copy,
            ):
                copy.set_types(["text", "int8", "text", "text", "float8", "float8", "bytea"])
                for row in chunk:
                    copy.write_row(row)

        try:
            return timed(write, list(batches(rows, size)), len(rows))
        finally:
            conn.execute("DROP TABLE plain_events")


def store_phases(url: str, rows: list[EventRow], agents: list[str], size: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as data_dir:
        store: Store = open_store(url, Path(data_dir))
        try:
            now = time.time()
            for agent in agents:
                store.register_agent(AgentInfo(agent, "bench", "local", {}, None), now)
            # WriteBatch is built on the gateway's event loop, not by the writer: not timed.
            prepared = [write_batch(chunk) for chunk in batches(rows, size)]
            fresh = timed(store.write, prepared, len(rows))
            resend = timed(store.write, prepared, len(rows))
            stored = store.count_events()
        finally:
            store.close()
    if stored != len(rows):
        raise RuntimeError(f"{stored} events stored, {len(rows)} written: the store lost or duplicated some")
    return {"store_write": fresh, "store_resend": resend}


def measure(database: str, args: argparse.Namespace, agent_count: int, size: int) -> dict[str, Any]:
    agents = [f"bench-{i}" for i in range(agent_count)]
    rows = event_rows(args.events, agents, 1, time.time())
    ceiling, written, resent = [], [], []
    for _ in range(args.rounds):
        with fresh_schema(database) as url:
            ceiling.append(copy_ceiling(url, rows, size))
            phases = store_phases(url, rows, agents, size)
        written.append(phases["store_write"])
        resent.append(phases["store_resend"])
    entry: dict[str, Any] = {
        "rows_per_agent_per_batch": round(size / agent_count, 1),
        "copy_ceiling": median_round(ceiling),
        "store_write": median_round(written),
        "store_resend": median_round(resent),
    }
    store_rate = entry["store_write"]["events_per_s"]
    entry["store_vs_ceiling"] = round(store_rate / entry["copy_ceiling"]["events_per_s"], 2)
    entry["store_vs_measurements_copy"] = round(store_rate / REFERENCE["psycopg_copy_rows_per_s"], 2)
    ceiling_rate = entry["copy_ceiling"]["events_per_s"]
    print(
        f"{agent_count:>5} agents, batch {size:>5}: COPY ceiling {ceiling_rate:>7,}/s,"
        f" store.write {store_rate:>7,}/s (p99 {entry['store_write']['batch_ms']['p99']} ms/batch),"
        f" resends {entry['store_resend']['events_per_s']:>7,}/s",
        file=sys.stderr,
    )
    return entry


def main(args: argparse.Namespace) -> dict[str, Any]:
    load_at_start = round(os.getloadavg()[0], 2)
    result: dict[str, Any] = {
        "bench": "store_postgres",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "events": args.events,
        "reference": REFERENCE,
        "results": {},
    }
    with admin_connection(args.postgres) as admin:
        version = admin.execute("SHOW server_version").fetchone()
        result["machine"]["postgres"] = str(version[0]) if version else "?"
    with fresh_database(args.postgres) as database:
        for agent_count in args.agents:
            for size in args.batches:
                key = f"{agent_count}_agents_batch_{size}"
                result["results"][key] = measure(database, args, agent_count, size)
    result["machine"]["load_average_1m"] = {"start": load_at_start, "end": round(os.getloadavg()[0], 2)}
    best = max(entry["store_write"]["events_per_s"] for entry in result["results"].values())
    result["target_events_per_s"] = TARGET_EVENTS_PER_S
    result["meets_target"] = best >= TARGET_EVENTS_PER_S
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=200_000, help="events written per measurement [200000]")
    p.add_argument(
        "--agents", type=int, nargs="+", default=[1_000, 100], help="agents taking turns, each run [1000 100]"
    )
    p.add_argument(
        "--batches", type=int, nargs="+", default=[500, 5_000, 10_000], help="rows per batch [500 5000 10000]"
    )
    p.add_argument("--rounds", type=int, default=3, help="rounds per measurement; the median is kept [3]")
    p.add_argument("--quick", action="store_true", help="50,000 events, one round (~30 s)")
    p.add_argument(
        "--postgres", default=ADMIN_URL, help=f"a superuser URL on the server to use [{ADMIN_URL}]"
    )
    p.add_argument("--out", type=Path, default=HERE / "results" / "store_postgres.json")
    args = p.parse_args(argv)
    if args.quick:
        args.events, args.rounds = 50_000, 1
    return args


if __name__ == "__main__":
    arguments = parse_args()
    output = main(arguments)
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(json.dumps(output, indent=2) + "\n")
    print(json.dumps(output, indent=2))
