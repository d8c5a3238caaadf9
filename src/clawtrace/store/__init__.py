"""Durable storage behind one interface: SQLite (embedded, the default) or PostgreSQL (scale mode)."""

from __future__ import annotations

from pathlib import Path

from clawtrace.store.base import (
    AgentEnvMismatch,
    AgentInfo,
    AgentRecord,
    EventQuery,
    EventRow,
    QuarantineRecord,
    SessionRecord,
    Store,
    StoreError,
    TokenRecord,
    WriteBatch,
)

# URL schemes of the PostgreSQL store (psycopg itself is imported only when one is opened).
POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")


def open_store(url: str, data_dir: Path) -> Store:
    """Open (and migrate) the store named by ``url``.

    ``sqlite:///path`` or ``sqlite://`` (the default file in ``data_dir``);
    ``postgresql://USER@HOST:PORT/DATABASE`` (store/postgres_url.py says what
    else the URL may carry); ``null://`` discards events (benchmark ceiling).
    """
    store: Store
    if url in ("", "sqlite://", "sqlite:///"):
        from clawtrace.store.sqlite import SQLiteStore

        store = SQLiteStore(data_dir / "clawtrace.db")
    elif url.startswith("sqlite:///"):
        from clawtrace.store.sqlite import SQLiteStore

        store = SQLiteStore(url[len("sqlite:///") :])
    elif url.partition("://")[0] in POSTGRES_SCHEMES and "://" in url:
        # Imported here: psycopg is only needed (and only installed) for scale mode.
        try:
            from clawtrace.store.postgres import PostgresStore
        except ImportError as exc:
            raise StoreError(
                f"the PostgreSQL store needs psycopg ({exc}): pip install 'clawtrace[postgres]'"
            ) from None
        store = PostgresStore(url)
    elif url == "null://":
        from clawtrace.store.null import NullEventStore

        store = NullEventStore(data_dir / "clawtrace.db")
    else:
        raise StoreError(
            f"unsupported store URL {url!r}: use sqlite:///PATH (default: a file in the data dir),"
            " postgresql://USER@HOST:PORT/DATABASE or null://"
        )
    try:
        store.migrate()
    except BaseException:
        store.close()
        raise
    return store


__all__ = [
    "POSTGRES_SCHEMES",
    "AgentEnvMismatch",
    "AgentInfo",
    "AgentRecord",
    "EventQuery",
    "EventRow",
    "QuarantineRecord",
    "SessionRecord",
    "Store",
    "StoreError",
    "TokenRecord",
    "WriteBatch",
    "open_store",
]
