"""``clawtrace token``: create, list and revoke API credentials."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import click

from clawtrace.access import ROLES, create_token
from clawtrace.cli.options import data_dir_option
from clawtrace.store import Store, StoreError, open_store


def _open(data_dir: str, store_url: str | None) -> Store:
    try:
        return open_store(store_url or "sqlite://", Path(data_dir))
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None


def _when(value: float | None) -> str:
    if value is None:
        return "-"
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M")


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``90s``, ``30m``, ``12h``, ``30d``."""
    unit = text[-1:]
    try:
        if unit in _DURATION_UNITS:
            return float(text[:-1]) * _DURATION_UNITS[unit]
        return float(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a duration like 90s, 30m, 12h or 30d") from None


@click.group()
def token() -> None:
    """Manage API credentials (stored hashed in the gateway's store)."""


@token.command("create")
@data_dir_option
@click.option("--store", "store_url", default=None, help="Store URL if not the data dir's SQLite file.")
@click.option("--env", required=True, help="Environment the credential is for, or '*' for all.")
@click.option(
    "--role", type=click.Choice(ROLES), required=True, help="agent (node agents) or a person's role."
)
@click.option("--name", default="", help="A note, e.g. who or what uses it; for agent posts, the agent id.")
@click.option("--expires-in", default=None, help="Lifetime, e.g. 12h or 30d  [default: never]")
def create(
    data_dir: str, store_url: str | None, env: str, role: str, name: str, expires_in: str | None
) -> None:
    """Create a credential and print it (shown once, only its hash is kept)."""
    store = _open(data_dir, store_url)
    try:
        plain, record = create_token(
            store,
            env=env,
            role=role,
            name=name,
            ttl_seconds=parse_duration(expires_in) if expires_in else None,
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        store.close()
    click.echo(f"# {record.role} credential {record.id} for env {record.env!r}; keep it secret", err=True)
    click.echo(plain)


@token.command("list")
@data_dir_option
@click.option("--store", "store_url", default=None, help="Store URL if not the data dir's SQLite file.")
def list_tokens(data_dir: str, store_url: str | None) -> None:
    """List credentials (ids, roles, environments; never secrets)."""
    store = _open(data_dir, store_url)
    try:
        records = store.list_tokens()
    finally:
        store.close()
    now = time.time()
    click.echo(f"{'ID':<14}{'ROLE':<10}{'ENV':<12}{'CREATED':<18}{'EXPIRES':<18}{'STATE':<9}NAME")
    for r in records:
        state = "revoked" if r.revoked else ("expired" if r.expires and r.expires <= now else "active")
        click.echo(
            f"{r.id:<14}{r.role:<10}{r.env:<12}{_when(r.created):<18}{_when(r.expires):<18}{state:<9}{r.name}"
        )


@token.command("revoke")
@data_dir_option
@click.option("--store", "store_url", default=None, help="Store URL if not the data dir's SQLite file.")
@click.argument("token_id")
def revoke(data_dir: str, store_url: str | None, token_id: str) -> None:
    """Revoke a credential by id (takes effect within seconds)."""
    store = _open(data_dir, store_url)
    try:
        if not store.revoke_token(token_id, time.time()):
            raise click.ClickException(
                f"no active credential with id {token_id!r} (see `clawtrace token list`)"
            )
    finally:
        store.close()
    click.echo(f"revoked {token_id}")
