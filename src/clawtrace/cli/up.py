"""``clawtrace up``: run the gateway."""

from __future__ import annotations

import errno
import logging
import socket
from pathlib import Path

import click

from clawtrace.bus import BusError, check_bus
from clawtrace.cli.options import data_dir_option
from clawtrace.gateway import SettingsError, load_settings, serve
from clawtrace.store import POSTGRES_SCHEMES, StoreError, open_store


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise click.ClickException(
                    f"{host}:{port} is already in use (another gateway?); pick another with --port"
                ) from None
            raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror}") from None


@click.command()
@click.option("--host", default=None, help="Interface to bind  [default: 127.0.0.1]")
@click.option("--port", type=int, default=None, help="Port  [default: 7420]")
@data_dir_option
@click.option(
    "--store",
    default=None,
    help="Store URL: sqlite:///PATH (default: DATA_DIR/clawtrace.db) or postgresql://USER@HOST:PORT/DATABASE",
)
@click.option(
    "--bus",
    default=None,
    help="Bus URL: memory:// (default, one process) or nats://HOST:PORT (scale mode: events go to"
    " JetStream; run `clawtrace worker` too; see docs/deployment.md)",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="TOML settings file (see docs/config.md); flags override it.",
)
@click.option("--retention-days", type=float, default=None, help="Keep events this long  [default: 30]")
@click.option("--max-frame-bytes", type=int, default=None, help="Largest accepted frame  [default: 1 MiB]")
@click.option("--log-level", default=None, type=click.Choice(["debug", "info", "warning", "error"]))
@click.option(
    "--tls-cert",
    default=None,
    metavar="PEM",
    help="Serve https/wss with this certificate (then its intermediates); needs --tls-key. "
    "See docs/deployment.md, TLS.",
)
@click.option("--tls-key", default=None, metavar="PEM", help="The private key of --tls-cert (unencrypted).")
def up(
    host: str | None,
    port: int | None,
    data_dir: str,
    store: str | None,
    bus: str | None,
    config_path: Path | None,
    retention_days: float | None,
    max_frame_bytes: int | None,
    log_level: str | None,
    tls_cert: str | None,
    tls_key: str | None,
) -> None:
    """Run the gateway: agent ingest, REST API, live tail and console.

    Embedded mode by default: one process, a SQLite file under DATA_DIR.
    Binds 127.0.0.1 unless told otherwise.
    """
    try:
        settings = load_settings(
            config_path,
            host=host,
            port=port,
            data_dir=data_dir,
            store=store,
            bus=bus,
            retention_days=retention_days,
            max_frame_bytes=max_frame_bytes,
            log_level=log_level,
            tls_cert=tls_cert,
            tls_key=tls_key,
        )
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    check_port_free(settings.host, settings.port)
    try:
        check_bus(settings.bus)
    except BusError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        opened = open_store(settings.store, settings.data_path)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    people = [t for t in opened.list_tokens() if t.role != "agent" and t.revoked is None]
    # A file path, or the URL without its password.
    location = getattr(opened, "path", None) or opened.url
    opened.close()
    # Credentials live in the store: with another store than the data dir's file, say which.
    store_flag = " --store STORE_URL" if settings.store.partition("://")[0] in POSTGRES_SCHEMES else ""
    tls = bool(settings.tls_cert)
    base = f"{'https' if tls else 'http'}://{settings.host}:{settings.port}"
    click.echo(f"ClawTrace gateway on {base}  (store: {location})")
    click.echo(f"  agents connect to {'wss' if tls else 'ws'}://{settings.host}:{settings.port}/v1/agent")
    click.echo(f"  console: {base}/   API docs: {base}/api/docs")
    if not people:
        click.echo(
            "  No credentials yet. Create one for yourself and one for your node agents:\n"
            f"    clawtrace token create --data-dir {settings.data_dir}{store_flag} --env '*' --role admin\n"
            f"    clawtrace token create --data-dir {settings.data_dir}{store_flag} --env dev --role agent"
        )
    serve(settings)
