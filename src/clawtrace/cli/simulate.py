"""``clawtrace simulate``: a fleet of simulated agents against a gateway."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import sys
from pathlib import Path
from typing import Any

import click
import msgspec
from rich.console import Console

from clawtrace.cli.options import ca_file_option
from clawtrace.envs.release import ROLE_NAME
from clawtrace.sim import Fleet, FleetConfig, FleetStats, Scenario
from clawtrace.sim.report import RateMeter, progress_line, summary_table


class _RateType(click.ParamType[float]):
    name = "EVENTS/S|max"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        text = str(value).strip().lower()
        if text in ("max", "inf"):
            return math.inf
        try:
            rate = float(text)
        except ValueError:
            self.fail(f"{value!r} is not a number or 'max'", param, ctx)
        if not rate > 0:
            self.fail("must be positive", param, ctx)
        return rate


def _role(value: str | None) -> str | None:
    if value is not None and not ROLE_NAME.match(value):
        raise click.BadParameter(
            f"{value!r} is not a role name: lower-case letters, digits, '-' and '_', starting with a letter",
            param_hint="--role",
        )
    return value


def _labels(values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--label")
        out[key] = value
    return out


@click.command()
@click.option("--agents", "-n", type=click.IntRange(min=1), default=50, show_default=True, help="Fleet size.")
@click.option(
    "--regions",
    default="us-east-1,eu-west-1,ap-south-1",
    show_default=True,
    help="Comma-separated regions, assigned round robin.",
)
@click.option("--env", default="dev", show_default=True, help="Environment the agents belong to.")
@click.option(
    "--gateway",
    envvar="CLAWTRACE_GATEWAY",
    default="ws://127.0.0.1:7420",
    show_default=True,
    help="Gateway URL [env CLAWTRACE_GATEWAY]. Several gateways of one deployment (scale mode): their "
    "URLs separated by commas; agents are spread over them round robin, and each reconnects to the next "
    "when its gateway goes away.",
)
@click.option("--token", envvar="CLAWTRACE_TOKEN", help="Agent credential for --env [env CLAWTRACE_TOKEN].")
@ca_file_option
@click.option(
    "--rate",
    type=_RateType(),
    default=None,
    help="Events per second per agent, heartbeats aside, or 'max' (as fast as acks allow). "
    "Default: realistic pace, timed by the simulated LLM and tool durations (about 0.5-1/s).",
)
@click.option(
    "--batch",
    type=click.IntRange(min=1, max=10_000),
    default=1,
    show_default=True,
    help="Events an agent produces at once (and so sends in one frame) with --rate.",
)
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), help="Stop after S seconds.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed: same seed, same events.")
@click.option("--dead", type=click.IntRange(min=0), default=0, help="Agents that go silent (dead node).")
@click.option("--loop", type=click.IntRange(min=0), default=0, help="Agents stuck in a failing-tool loop.")
@click.option("--cost-spike", type=click.IntRange(min=0), default=0, help="Agents that burn > $5/h.")
@click.option("--rm-rf", type=click.IntRange(min=0), default=0, help="Agents that try `rm -rf /`.")
@click.option(
    "--scenario-after",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds of healthy running before scenarios start.",
)
@click.option(
    "--dead-mode",
    type=click.Choice(["silent", "drop"]),
    default="silent",
    show_default=True,
    help="Dead nodes keep the connection open but send nothing, or disconnect.",
)
@click.option(
    "--loop-length",
    type=click.IntRange(min=1),
    help="Failing tool calls per loop; default: until the agent is restarted.",
)
@click.option(
    "--heartbeat-interval",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds between an agent's heartbeats.",
)
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="Extra label on every agent.")
@click.option(
    "--role",
    default=None,
    callback=lambda ctx, param, value: _role(value),
    help="The agents follow their environment's desired release of this role, as `clawtrace run --role` "
    "does (clawtrace deploy / promote).",
)
@click.option("--id-prefix", default="", help="Prefix for agent ids (to run several fleets side by side).")
@click.option(
    "--drain-timeout",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="At the end, seconds to wait for outstanding acks.",
)
@click.option(
    "--stats-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the final stats as JSON, per agent included: the seqs each agent generated "
    "(first_seq..last_seq) and its last ack (acked_seq).",
)
@click.option(
    "--stats-every",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Also rewrite --stats-file every SECONDS while running (atomically), to follow a run from outside.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the final stats as JSON instead of a table.")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
def simulate(
    agents: int,
    regions: str,
    env: str,
    gateway: str,
    token: str | None,
    ca_file: str | None,
    rate: float | None,
    batch: int,
    duration: float | None,
    seed: int,
    dead: int,
    loop: int,
    cost_spike: int,
    rm_rf: int,
    scenario_after: float,
    dead_mode: str,
    loop_length: int | None,
    heartbeat_interval: float,
    labels: tuple[str, ...],
    role: str | None,
    id_prefix: str,
    drain_timeout: float,
    stats_file: Path | None,
    stats_every: float | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Run a fleet of simulated agents against a gateway.

    Each agent holds its own WebSocket connection and streams a realistic
    mix of thoughts, LLM calls, tool calls and results, log lines and
    heartbeats, with regions and labels. Scenario flags turn some agents into
    the faults alerts are meant to catch. Ctrl-C stops; the simulator then
    waits (up to --drain-timeout) for the gateway to ack what it sent.

    \b
    Examples:
      clawtrace simulate --agents 1000 --token $T
      clawtrace simulate -n 50 --dead 2 --loop 1 --cost-spike 1 --rm-rf 1 --scenario-after 20
      clawtrace simulate -n 1000 --rate 50 --batch 10 --duration 60 --json
      clawtrace simulate -n 200 --gateway ws://gw-1:7420,ws://gw-2:7420 --rate 2 \
          --stats-file run.json --stats-every 1
    """
    region_list = tuple(r.strip() for r in regions.split(",") if r.strip())
    config = FleetConfig(
        gateway=gateway,
        token=token,
        agents=agents,
        regions=region_list,
        env=env,
        rate=rate,
        batch=batch,
        duration=duration,
        seed=seed,
        heartbeat_interval=heartbeat_interval,
        scenarios={
            Scenario.DEAD: dead,
            Scenario.LOOP: loop,
            Scenario.COST_SPIKE: cost_spike,
            Scenario.RM_RF: rm_rf,
        },
        scenario_after=scenario_after,
        dead_mode="drop" if dead_mode == "drop" else "silent",
        loop_length=loop_length,
        id_prefix=id_prefix,
        labels=_labels(labels),
        role=role,
        drain_timeout=drain_timeout,
        ca_file=ca_file,
    )
    try:
        config.validate()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if stats_every is not None and stats_file is None:
        raise click.UsageError("--stats-every needs --stats-file")
    # Progress goes to stderr so --json output stays machine-readable.
    console = Console(stderr=True)
    if not token:
        console.print("[yellow]no --token given; the gateway will likely refuse the agents[/]")
    try:
        stats = asyncio.run(
            _run(config, console, quiet=quiet, stats_file=stats_file, stats_every=stats_every)
        )
    except (asyncio.CancelledError, KeyboardInterrupt):
        console.print("interrupted before the drain finished")
        sys.exit(130)
    if stats_file is not None:
        _write_stats(stats_file, stats)
    if as_json:
        summary = msgspec.structs.replace(stats, per_agent=None)
        click.echo(msgspec.json.format(msgspec.json.encode(summary)).decode())
    else:
        Console().print(summary_table(stats))
    if stats.ever_connected == 0:
        sys.exit(1)


def _write_stats(path: Path, stats: FleetStats) -> None:
    """Replace ``path`` at once: a reader never sees half a file."""
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(msgspec.json.format(msgspec.json.encode(stats)) + b"\n")
    os.replace(partial, path)


async def _write_stats_every(path: Path, seconds: float, fleet: Fleet) -> None:
    while True:
        await asyncio.sleep(seconds)
        _write_stats(path, fleet.snapshot(per_agent=True))


async def _run(
    config: FleetConfig,
    console: Console,
    *,
    quiet: bool,
    stats_file: Path | None = None,
    stats_every: float | None = None,
) -> FleetStats:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    interrupts = 0

    def on_signal() -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1:
            console.print(
                f"stopping: waiting up to {config.drain_timeout:.0f} s for acks (Ctrl-C again to quit now)"
            )
            stop.set()
        elif main is not None:
            main.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    meter = RateMeter()

    def on_progress(stats: FleetStats) -> None:
        console.print(progress_line(stats, meter.update(stats)), highlight=False, soft_wrap=True)

    fleet = Fleet(config)
    pace = "realistic" if config.rate is None else "max" if math.isinf(config.rate) else f"{config.rate:g}/s"
    console.print(
        f"simulating {config.agents} agents in {', '.join(config.regions)} (env {config.env}) "
        f"against {config.gateway}; pace {pace}, batch {config.batch}",
        highlight=False,
        soft_wrap=True,
    )
    for scenario in Scenario:
        if agents := fleet.scenario_agents(scenario):
            console.print(
                f"  {scenario.value} after {config.scenario_after:g} s: {', '.join(agents)}", highlight=False
            )
    writer = None
    if stats_file is not None and stats_every is not None:
        writer = asyncio.create_task(_write_stats_every(stats_file, stats_every, fleet))
    try:
        return await fleet.run(
            stop,
            on_progress=None if quiet else on_progress,
            progress_interval=2.0 if console.is_terminal else 10.0,
        )
    finally:
        if writer is not None:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
