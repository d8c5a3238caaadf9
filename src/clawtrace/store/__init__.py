"""Durable storage behind one interface: SQLite (embedded) today, PostgreSQL next."""

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


def open_store(url: str, data_dir: Path) -> Store:
    """Open (and migrate) the store named by ``url``.

    ``sqlite:///path`` or ``sqlite://`` (the default file in ``data_dir``);
    ``null://`` discards events (benchmark ceiling).
    """
    store: Store
    if url in ("", "sqlite://", "sqlite:///"):
        from clawtrace.store.sqlite import SQLiteStore

        store = SQLiteStore(data_dir / "clawtrace.db")
    elif url.startswith("sqlite:///"):
        from clawtrace.store.sqlite import SQLiteStore

        store = SQLiteStore(url[len("sqlite:///") :])
    elif url == "null://":
        from clawtrace.store.null import NullEventStore

        store = NullEventStore(data_dir / "clawtrace.db")
    else:
        raise StoreError(
            f"unsupported store URL {url!r}: use sqlite:///PATH (default: a file in the data dir) or null://"
        )
    store.migrate()
    return store


__all__ = [
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
