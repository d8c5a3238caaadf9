"""Alerts benchmark: what evaluating 20 rules over 1,000 agents costs, and how fast alerts fire.

Against the real gateway (``clawtrace up``), driven like ``bench/metrics.py``
(load generator processes running ``clawtrace.sim`` agents):

- Two fresh gateways side by side under the same load (default 20,000
  events/s from 1,000 agents), both with the metrics stage on: one with the
  alert engine off (``[gateway.alerts] enabled = false``), one with it on and
  20 rules in force (the three defaults plus ``RULES`` below, DeadNode's
  threshold lowered to 5 s so it fires within the window). Gateway CPU
  seconds per event acked; overhead = on / off - 1, averaged over ``--rounds``.
- In both fleets some agents fall into a reasoning loop (``loop`` scenario)
  and some go silent (``dead``); on the alerts side, detection latency is
  measured from the store afterwards:
  - ReasoningLoop (event-driven): the firing transition's time minus the
    gateway receive time of the tool result that made it 11 in a row;
  - DeadNode (time-driven): the heartbeat age at firing minus the threshold,
    i.e. how long after the condition became true the 1 s tick caught it.

Prints JSON and writes ``bench/results/alerts.json``. ``--quick`` takes about two minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from harness import Gateway, Load, WindowEdge, create_token, run_load
from metrics import CpuReading, cpu_rates, cpu_reading, summary_ms

HERE = Path(__file__).resolve().parent
ENV = "dev"
PREFIX = "al-"
TARGETS = {"alerts_cpu_overhead_max": 0.10, "detection_p99_ms_max": 1000}
DEAD_AFTER = 5.0

# 17 rules on top of the 3 defaults (DeadNode overridden): realistic shapes,
# over every kind of metric and scope, most of them not breached by the load.
RULES = f"""
rules:
  - name: DeadNode
    condition: heartbeat_age_s > {DEAD_AFTER:g}
    severity: critical
    actions: [notify, restart]
  - {{name: LowToolSuccess, condition: tool_success_rate < 0.2, min_samples: 20}}
  - name: LowToolSuccessEU
    condition: tool_success_rate < 0.5
    min_samples: 50
    scope: {{regions: [eu-west-1]}}
  - {{name: CostPerHourHigh, condition: cost_usd_last_hour > 100}}
  - {{name: CostRateBilling, condition: cost_usd_per_hour > 20, scope: {{labels: {{team: billing}}}}}}
  - {{name: CostRateSearch, condition: cost_usd_per_hour > 50, scope: {{labels: {{team: search}}}}}}
  - {{name: TokensPerAction, condition: tokens_per_action > 200000, min_samples: 5}}
  - {{name: SlowReasoning, condition: reasoning_latency_p95_ms > 120000, min_samples: 10}}
  - name: SlowReasoningUS
    condition: reasoning_latency_p95_ms > 60000
    for: 2m
    scope: {{regions: [us-east-1]}}
  - {{name: Stderr, condition: error_lines_per_s > 50}}
  - {{name: Chatty, condition: events_per_s > 500}}
  - {{name: Quiet, condition: events_per_s < 0.01, no_data: keep_state}}
  - {{name: CpuHot, condition: cpu_percent > 99, for: 1m}}
  - {{name: MemoryHigh, condition: rss_bytes > 8000000000}}
  - {{name: Flapping, condition: restarts_last_hour > 20}}
  - {{name: LoopWarning, condition: consecutive_failed_tool_calls > 5, severity: info}}
  - {{name: LoopCanary, condition: consecutive_failed_tool_calls > 30, scope: {{agent: "al-*"}}}}
  - {{name: HeartbeatLate, condition: heartbeat_age_s > 30, severity: warning}}
"""


def _print(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def config_file(workdir: Path, alerts: bool) -> Path:
    rules_dir = workdir / "rules"
    rules_dir.mkdir(parents=True, exist_ok=True)
    (rules_dir / f"{ENV}.yaml").write_text(RULES)
    path = workdir / f"alerts-{'on' if alerts else 'off'}.toml"
    path.write_text(
        f'[gateway.alerts]\nenabled = {"true" if alerts else "false"}\nrules_dir = "{rules_dir}"\n'
        # The default log receiver only: notification delivery is not what is measured.
    )
    return path


def load_for(args: argparse.Namespace) -> Load:
    return Load(
        agents=args.agents,
        rate=str(args.rate / args.agents),
        batch=args.batch,
        procs=args.procs,
        id_prefix=PREFIX,
        warmup=args.warmup,
        duration=args.duration,
        max_in_flight=max(2 * args.batch, 20_000 // args.agents),
        scenarios={"loop": args.faults, "dead": args.faults},
        # The faults start inside the measurement window.
        scenario_after=args.warmup + min(5.0, args.agents / 500) + 2.0,
        heartbeat_interval=2.0,
    )


async def measured_run(gateway: Gateway, token: str, args: argparse.Namespace, label: str) -> dict[str, Any]:
    readings: dict[WindowEdge, CpuReading] = {}

    def on_window(edge: WindowEdge) -> None:
        readings[edge] = cpu_reading(gateway)

    result = await run_load(gateway, token, load_for(args), None, on_window)
    rates = cpu_rates(readings["start"], readings["end"])
    return {
        "alerts": label,
        **rates,
        "gateway_cpu_us_per_event": round(
            rates["gateway_cpu_s_per_s"] / result["events_per_s_acked"] * 1e6, 2
        ),
        "events_per_s_acked": result["events_per_s_acked"],
        "ack_latency_ms": result["ack_latency_ms"],
        "gateway_errors": result["gateway_errors"],
        "reached_rate": result["events_per_s_acked"] >= 0.97 * args.rate,
    }


def _ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def detection(gateway: Gateway, token: str) -> dict[str, Any]:
    """Detection latencies of every DeadNode and ReasoningLoop that fired, from the store."""
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=gateway.http_url, headers=headers, timeout=60) as client:
        history = client.get("/api/v1/alerts/history", params={"limit": 5000}).json()["transitions"]
        dead_ms: list[float] = []
        loop_ms: list[float] = []
        for t in history:
            if t["to_state"] != "firing":
                continue
            if t["rule"] == "DeadNode":
                dead_ms.append((t["value"] - DEAD_AFTER) * 1000)
            elif t["rule"] == "ReasoningLoop":
                events = client.get(
                    f"/api/v1/agents/{t['agent']}/events",
                    params={"kind": "tool_result,lifecycle", "limit": 5000},
                ).json()["events"]
                run = 0
                for event in events:
                    if event["kind"] == "lifecycle":
                        run = 0 if event["state"] == "started" else run
                        continue
                    run = 0 if event.get("ok", True) else run + 1
                    if run == 11:
                        loop_ms.append((t["ts"] - _ts(event["received"])) * 1000)
                        break
    return {
        "dead_node_fired": len(dead_ms),
        "reasoning_loop_fired": len(loop_ms),
        "dead_node_ms": summary_ms(dead_ms),
        "reasoning_loop_ms": summary_ms(loop_ms),
        "all_ms": summary_ms(dead_ms + loop_ms),
    }


async def one_round(args: argparse.Namespace, workdir: Path, round_: int) -> dict[str, Any]:
    labels = ["off", "on"] if round_ % 2 else ["on", "off"]
    gateways = {
        label: Gateway(workdir / f"{label}-{round_}", config=config_file(workdir / label, label == "on"))
        for label in labels
    }
    try:
        for gateway in gateways.values():
            gateway.start()
        tokens = {label: create_token(g.data_dir, "agent", ENV) for label, g in gateways.items()}
        runs = await asyncio.gather(
            *(measured_run(gateways[label], tokens[label], args, label) for label in labels)
        )
        by_label = {run["alerts"]: run for run in runs}
        await asyncio.sleep(2)  # the last transitions reach the store on the next tick
        viewer = create_token(gateways["on"].data_dir, "viewer", ENV)
        by_label["on"]["detection"] = await asyncio.to_thread(detection, gateways["on"], viewer)
        return by_label
    finally:
        for gateway in gateways.values():
            gateway.stop()


async def main(args: argparse.Namespace) -> dict[str, Any]:
    rounds = []
    with tempfile.TemporaryDirectory(prefix="clawtrace-bench-alerts-") as tmp:
        for round_ in range(1, args.rounds + 1):
            _print(f"round {round_}: alerts off and on side by side, {args.rate:,} events/s each ...")
            pair = await one_round(args, Path(tmp), round_)
            for label in ("off", "on"):
                run = pair[label]
                _print(
                    f"  {label:>3}: {run['events_per_s_acked']:,} events/s acked, "
                    f"{run['gateway_cpu_us_per_event']} us/event, ack p99 {run['ack_latency_ms']['p99']} ms"
                )
            d = pair["on"]["detection"]
            _print(
                f"  fired: {d['reasoning_loop_fired']} ReasoningLoop, {d['dead_node_fired']} DeadNode; "
                f"detection p50/p99 {d['all_ms']['p50']}/{d['all_ms']['p99']} ms"
            )
            rounds.append(pair)
    comparable = [p for p in rounds if p["on"]["reached_rate"] and p["off"]["reached_rate"]]
    if not comparable:
        raise RuntimeError(f"no round reached {args.rate:,} events/s on both gateways")
    overheads = [
        p["on"]["gateway_cpu_us_per_event"] / p["off"]["gateway_cpu_us_per_event"] - 1 for p in comparable
    ]
    detections = [p["on"]["detection"] for p in rounds]
    p99s = [d["all_ms"]["p99"] for d in detections if d["all_ms"]["p99"] is not None]
    result = {
        "bench": "alerts",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "agents": args.agents,
        "target_events_per_s": args.rate,
        "batch": args.batch,
        "rules": 20,
        "faults_per_kind": args.faults,
        "rounds": rounds,
        "rounds_compared": len(comparable),
        "overhead": round(statistics.fmean(overheads), 4),
        "overhead_per_round": [round(o, 4) for o in overheads],
        "detection_p99_ms_worst_round": max(p99s) if p99s else None,
        "targets": TARGETS,
    }
    result["meets_targets"] = {
        "cpu": result["overhead"] <= TARGETS["alerts_cpu_overhead_max"],
        "detection": p99s != [] and max(p99s) <= TARGETS["detection_p99_ms_max"],
    }
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one short round: about two minutes")
    p.add_argument("--agents", type=int, default=1000, help="simulated agents [1000]")
    p.add_argument("--rate", type=int, default=20_000, help="total events/s [20000]")
    p.add_argument("--batch", type=int, default=50, help="events per frame [50]")
    p.add_argument("--procs", type=int, default=1, help="load generator processes per gateway [1]")
    p.add_argument("--faults", type=int, default=20, help="agents per fault kind (loop, dead) [20]")
    p.add_argument("--warmup", type=float, help="seconds before measuring [5; quick 3]")
    p.add_argument("--duration", type=float, help="seconds measured [30; quick 15]")
    p.add_argument("--rounds", type=int, help="off/on pairs [3; quick 1]")
    p.add_argument("--out", type=Path, default=HERE / "results" / "alerts.json", help="JSON result file")
    args = p.parse_args(argv)
    args.warmup = args.warmup if args.warmup is not None else (3.0 if args.quick else 5.0)
    args.duration = args.duration if args.duration is not None else (15.0 if args.quick else 30.0)
    args.rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    return args


if __name__ == "__main__":
    arguments = parse_args()
    started = time.monotonic()
    output = asyncio.run(main(arguments))
    output["wall_s"] = round(time.monotonic() - started, 1)
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(json.dumps(output, indent=2) + "\n")
    print(json.dumps({k: v for k, v in output.items() if k != "rounds"}, indent=2))
