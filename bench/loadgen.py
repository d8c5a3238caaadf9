"""Load generator process for the benchmarks: a simulated fleet on a timetable.

Run by ``bench/ingest.py`` (one or more copies) with a JSON config as its
only argument. It starts its fleet at ``start_at`` (wall clock, shared by
all copies), measures between ``window_start`` and ``window_end``, then stops
producing, waits for outstanding acks and prints one JSON object per line:

- ``{"type": "window_start", ...}`` and ``{"type": "window_end", ...}``: counters
  at the edges of the measurement window and the ack latency histogram of
  the window alone;
- ``{"type": "final", ...}``: the fleet's final stats, per agent included,
  which the harness compares with what the store holds.
"""

from __future__ import annotations

import asyncio
import json
import math
import resource
import sys
import time
from typing import Any

import msgspec

from clawtrace.sim import Fleet, FleetConfig, Scenario


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _emit(kind: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"type": kind, "wall": time.time(), **fields}) + "\n")
    sys.stdout.flush()


def _counters(fleet: Fleet) -> dict[str, Any]:
    stats = fleet.snapshot()
    return {
        "generated": stats.events_generated,
        "acked": stats.events_acked,
        "pending": stats.pending,
        "connected": stats.connected,
        "cpu_s": _cpu_seconds(),
        "gateway_errors": stats.gateway_errors,
    }


async def _sleep_until(wall: float) -> None:
    delay = wall - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


async def main(spec: dict[str, Any]) -> None:
    rate = spec["rate"]
    config = FleetConfig(
        gateway=spec["gateway"],
        token=spec["token"],
        agents=spec["agents"],
        first_index=spec["first_index"],
        id_prefix=spec["id_prefix"],
        rate=math.inf if rate == "max" else float(rate),
        batch=spec["batch"],
        seed=spec.get("seed", 0),
        max_in_flight=spec["max_in_flight"],
        drain_timeout=spec["drain_timeout"],
        ramp=spec["ramp"],
        scenarios={Scenario(kind): n for kind, n in spec.get("scenarios", {}).items()},
        scenario_after=spec.get("scenario_after", 30.0),
        heartbeat_interval=spec.get("heartbeat_interval", 10.0),
    )
    fleet = Fleet(config)
    stop = asyncio.Event()
    await _sleep_until(spec["start_at"])
    runner = asyncio.create_task(fleet.run(stop))
    await _sleep_until(spec["window_start"])
    fleet.latency.reset()
    _emit("window_start", **_counters(fleet))
    await _sleep_until(spec["window_end"])
    window_latency = fleet.latency.counts[:], fleet.latency.max_ms
    _emit(
        "window_end", **_counters(fleet), latency_counts=window_latency[0], latency_max_ms=window_latency[1]
    )
    stop.set()
    stats = await runner
    _emit("final", stats=msgspec.to_builtins(stats))


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
