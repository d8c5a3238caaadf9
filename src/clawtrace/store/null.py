"""A store that discards events: the ceiling in ingest benchmarks.

Credentials and the agents registry still live in SQLite so the gateway
behaves exactly as usual up to the point of writing events.
"""

from __future__ import annotations

from collections.abc import Sequence

from clawtrace.store.base import EventQuery, WriteBatch
from clawtrace.store.sqlite import SQLiteStore


class NullEventStore(SQLiteStore):
    def write(self, batch: WriteBatch) -> None:
        return None

    def write_rollups(self, rows: Sequence[tuple[str, int, bytes]]) -> None:
        return None

    def query_events(self, query: EventQuery) -> list[tuple[int, bytes]]:
        return []
