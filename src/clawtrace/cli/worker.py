"""``clawtrace worker``: scale mode's consumer of the event stream (docs/deployment.md)."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import click

from clawtrace.bus import BusError, is_nats_url
from clawtrace.cli.options import data_dir_option
from clawtrace.gateway import SettingsError, load_settings
from clawtrace.metrics import MetricsSettings
from clawtrace.store import StoreError


@click.command()
@click.option(
    "--bus",
    required=True,
    help="The gateways' bus URL, nats://HOST:PORT[?stream=...&shards=...] (the same string as theirs)",
)
@click.option(
    "--store",
    default="sqlite://",
    show_default=True,
    help="Store URL: postgresql://USER@HOST:PORT/DATABASE (the gateways' store) or sqlite:///PATH",
)
@data_dir_option
@click.option("--id", "worker_id", default=None, help="This worker's name in leases  [default: HOST-PID]")
@click.option(
    "--lease-ttl",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds after which a dead worker's shards are taken over (fixed when the lease bucket is created)",
)
@click.option(
    "--ack-wait",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds JetStream waits for a worker's ack before redelivering"
    " (fixed when the shard's consumer is created)",
)
@click.option(
    "--fetch-batch", type=int, default=256, show_default=True, help="Messages fetched at once per shard"
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The gateways' TOML settings file: prices, the metrics window and [gateway.alerts] come from it.",
)
@click.option(
    "--no-metrics", is_flag=True, help="Only store events (no metrics stage, no rollups, no alerts)."
)
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
def worker(
    bus: str,
    store: str,
    data_dir: str,
    worker_id: str | None,
    lease_ttl: float,
    ack_wait: float,
    fetch_batch: int,
    config_path: Path | None,
    no_metrics: bool,
    log_level: str,
) -> None:
    """Store the gateways' events from NATS JetStream, compute their metrics, evaluate alerts (scale mode).

    Workers share the event stream's shards among themselves: each shard
    (a slice of the agents) is worked on by exactly one worker at a time,
    and a dead worker's shards are taken over after --lease-ttl seconds.
    Run one or more next to `clawtrace up --bus nats://...`.
    """
    # Imported here: nats-py is only needed (and only installed) for scale mode.
    from clawtrace.gateway.server import tune_gc
    from clawtrace.worker.service import Worker, WorkerSettings, default_worker_id
    from clawtrace.worker.shard import ConsumerSettings

    if not is_nats_url(bus):
        raise click.ClickException(f"--bus {bus!r}: a worker consumes NATS JetStream; use nats://HOST:PORT")
    try:
        shared = load_settings(config_path)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    settings = WorkerSettings(
        bus=bus,
        store=store,
        data_dir=data_dir,
        worker_id=worker_id or default_worker_id(),
        lease_ttl_seconds=lease_ttl,
        consumer=ConsumerSettings(fetch_batch=fetch_batch, ack_wait_seconds=ack_wait),
        metrics_enabled=shared.metrics_enabled and not no_metrics,
        metrics=MetricsSettings(
            window_seconds=shared.metrics_window_seconds, tool_timeout_seconds=shared.tool_timeout_seconds
        ),
        prices_file=shared.prices_file,
        alerts=shared.alerts,
        external_url=shared.external_url if shared.public_url else "",
    )
    service = Worker(settings)
    # As in the gateway: the metrics and alert state are many long-lived objects (about 20 % of
    # a worker's CPU per event went to collecting them).
    tune_gc()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, service.stop)
        await service.run()

    try:
        asyncio.run(main())
    except (BusError, StoreError) as exc:
        raise click.ClickException(str(exc)) from None
