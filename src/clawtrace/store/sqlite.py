"""SQLite backend: the embedded default, one file, WAL mode."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event as sa_event

from clawtrace.store import schema
from clawtrace.store.base import (
    AGENT_COLUMNS,
    AgentRecord,
    EventQuery,
    Store,
    StoreError,
    WriteBatch,
    agent_record,
)
from clawtrace.store.control import CoreControlTables
from clawtrace.store.core_registry import CoreRegistryTables
from clawtrace.store.migrate import upgrade_to_head

_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    # Survives a process crash (kill -9); an OS crash can lose the last commits.
    "PRAGMA synchronous=NORMAL",
    "PRAGMA busy_timeout=10000",
    "PRAGMA foreign_keys=OFF",
)

CHECKPOINT_INTERVAL = 1.0
_INSERT_EVENTS = (
    "INSERT OR IGNORE INTO events (agent, seq, session, kind, ts, received, data)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
# The unary plus keeps SQLite from planning the events delete on the (agent, seq)
# index (every event of the environment) instead of the id range.
_IN_ENV = "+agent IN (SELECT agent FROM agents WHERE env = ?)"
_UPDATE_AGENT = """
UPDATE agents SET
  last_seq = max(last_seq, ?),
  last_event = max(coalesce(last_event, 0), ?),
  last_heartbeat = coalesce(?, last_heartbeat),
  cpu_percent = CASE WHEN ? THEN ? ELSE cpu_percent END,
  rss_bytes = CASE WHEN ? THEN ? ELSE rss_bytes END,
  lifecycle = coalesce(?, lifecycle)
WHERE agent = ?
"""
_UPSERT_SESSION = """
INSERT INTO sessions (agent, session, first_seq, last_seq, started, last_ts, events)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (agent, session) DO UPDATE SET
  first_seq = min(first_seq, excluded.first_seq),
  last_seq = max(last_seq, excluded.last_seq),
  started = min(started, excluded.started),
  last_ts = max(last_ts, excluded.last_ts),
  events = events + excluded.events
"""


class SQLiteStore(CoreRegistryTables, CoreControlTables, Store):
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.engine = sa.create_engine(self.url)
        sa_event.listen(self.engine, "connect", self._on_connect)
        # The hot path keeps one dedicated DB-API connection: batches through
        # executemany are several times faster than through Core.
        self._write_lock = threading.Lock()
        self._writer: sqlite3.Connection | None = None
        self._checkpointer: threading.Thread | None = None
        self._readers = threading.local()
        self._reader_connections: list[sqlite3.Connection] = []
        self._closing = threading.Event()
        self._prune_from: dict[str, tuple[int, int]] = {}

    @staticmethod
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        for pragma in _PRAGMAS:
            cursor.execute(pragma)
        cursor.close()

    def _write_connection(self) -> sqlite3.Connection:
        if self._writer is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            for pragma in _PRAGMAS:
                conn.execute(pragma)
            # Checkpoints run on their own thread (see _checkpoint_loop) so a
            # commit never waits for the WAL to be copied into the database.
            conn.execute("PRAGMA wal_autocheckpoint=0")
            conn.execute("PRAGMA cache_size=-65536")
            self._writer = conn
            self._checkpointer = threading.Thread(
                target=self._checkpoint_loop, name="clawtrace-checkpoint", daemon=True
            )
            self._checkpointer.start()
        return self._writer

    def _checkpoint_loop(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=10000")
        try:
            while not self._closing.wait(CHECKPOINT_INTERVAL):
                try:
                    # PASSIVE never blocks the writer; it copies what it can.
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error:
                    continue
        finally:
            conn.close()

    def migrate(self) -> None:
        try:
            with self.engine.begin() as connection:
                upgrade_to_head(connection)
        except sa.exc.OperationalError as exc:
            raise StoreError(f"cannot open the SQLite store at {self.path}: {exc.orig}") from exc

    def close(self) -> None:
        self._closing.set()
        if self._checkpointer is not None:
            self._checkpointer.join(5)
        for reader in self._reader_connections:
            reader.close()
        with self._write_lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        self.engine.dispose()

    # --- ingest ---------------------------------------------------------
    def write(self, batch: WriteBatch) -> None:
        agent_rows = []
        for agent, p in batch.agents.items():
            has_hb = p.last_heartbeat is not None
            agent_rows.append(
                (
                    p.last_seq,
                    p.last_event,
                    p.last_heartbeat,
                    has_hb,
                    p.cpu_percent,
                    has_hb,
                    p.rss_bytes,
                    p.lifecycle,
                    agent,
                )
            )
        session_rows = [
            (agent, session, s.first_seq, s.last_seq, s.started, s.last_ts, s.events)
            for (agent, session), s in batch.sessions.items()
        ]
        with self._transaction() as conn:
            conn.executemany(_INSERT_EVENTS, batch.rows)
            conn.executemany(_UPDATE_AGENT, agent_rows)
            conn.executemany(_UPSERT_SESSION, session_rows)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One transaction on the write connection, rolled back on any error."""
        with self._write_lock:
            conn = self._write_connection()
            conn.execute("BEGIN")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    # --- reads ----------------------------------------------------------
    def get_agent(self, agent: str) -> AgentRecord | None:
        found = self._select_agents(" WHERE agent = ?", [agent])
        return found[0] if found else None

    def list_agents(self, envs: Sequence[str] | None = None) -> list[AgentRecord]:
        if envs is None:
            return self._select_agents(" ORDER BY agent", [])
        envs = list(envs)
        if not envs:
            return []
        return self._select_agents(f" WHERE env IN ({', '.join('?' * len(envs))}) ORDER BY agent", envs)

    def _select_agents(self, where: str, params: list[str]) -> list[AgentRecord]:
        sql = f"SELECT {AGENT_COLUMNS} FROM agents{where}"
        return [agent_record(row) for row in self._reader().execute(sql, params)]

    def query_events(self, query: EventQuery) -> list[tuple[int, bytes]]:
        e = schema.events
        after_seq = query.after_seq
        stmt = sa.select(e.c.seq, e.c.data).where(e.c.agent == query.agent)
        if query.session is not None:
            s = schema.sessions
            with self.engine.connect() as c:
                bounds = c.execute(
                    sa.select(s.c.first_seq, s.c.last_seq).where(
                        s.c.agent == query.agent, s.c.session == query.session
                    )
                ).first()
            if bounds is None:
                return []
            # Sessions are contiguous seq ranges, so the (agent, seq) index serves them.
            after_seq = max(after_seq, bounds.first_seq - 1)
            stmt = stmt.where(e.c.seq <= bounds.last_seq, e.c.session == query.session)
        stmt = stmt.where(e.c.seq > after_seq)
        if query.kinds:
            stmt = stmt.where(e.c.kind.in_(list(query.kinds)))
        if query.since is not None:
            stmt = stmt.where(e.c.ts >= query.since)
        if query.until is not None:
            stmt = stmt.where(e.c.ts < query.until)
        stmt = stmt.order_by(e.c.seq).limit(query.limit)
        with self.engine.connect() as c:
            return [(int(row.seq), bytes(row.data)) for row in c.execute(stmt)]

    def count_events(self) -> int:
        with self.engine.connect() as c:
            return int(c.execute(sa.select(sa.func.count()).select_from(schema.events)).scalar_one())

    # --- retention ------------------------------------------------------
    def prune(self, env: str, received_before: float, max_rows: int) -> tuple[int, bool]:
        with self._write_lock:
            conn = self._write_connection()
            cursor = self._prune_from.get(env)
            if cursor is None:
                start = int(conn.execute("SELECT coalesce(min(id), 0) FROM events").fetchone()[0])
                cutoff_id = self._first_id_received_after(conn, start, received_before)
            else:
                start, cutoff_id = cursor
            end = min(start + max_rows, cutoff_id)
            deleted = conn.execute(
                f"DELETE FROM events WHERE id >= ? AND id < ? AND {_IN_ENV}",
                (start, end, env),
            ).rowcount
            finished = end >= cutoff_id
            if finished:
                conn.execute(
                    f"DELETE FROM sessions WHERE last_ts < ? AND {_IN_ENV}",
                    (received_before, env),
                )
                self._prune_from.pop(env, None)
            else:
                self._prune_from[env] = (end, cutoff_id)
            return deleted, finished

    @staticmethod
    def _first_id_received_after(conn: sqlite3.Connection, start: int, cutoff: float) -> int:
        """Binary search over ids: ``received`` grows with insertion order."""
        hi_row = conn.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()
        lo, hi = start, int(hi_row[0]) + 1
        while lo < hi:
            mid = (lo + hi) // 2
            row = conn.execute(
                "SELECT id, received FROM events WHERE id >= ? ORDER BY id LIMIT 1", (mid,)
            ).fetchone()
            if row is None or row[1] >= cutoff:
                hi = mid
            else:
                lo = int(row[0]) + 1
        return lo

    # --- metric rollups --------------------------------------------------
    def write_rollups(self, rows: Sequence[tuple[str, int, bytes]]) -> None:
        with self._transaction() as conn:
            conn.executemany("INSERT INTO rollups (scope, minute, data) VALUES (?, ?, ?)", rows)

    def query_rollups(self, scope: str, first_minute: int, last_minute: int) -> list[tuple[int, bytes]]:
        # Charts read thousands of rows: plain DB-API on a per-thread connection
        # is about twice as fast as Core here.
        rows = self._reader().execute(
            "SELECT minute, data FROM rollups"
            " WHERE scope = ? AND minute >= ? AND minute <= ? ORDER BY minute",
            (scope, first_minute, last_minute),
        )
        return [(int(minute), bytes(data)) for minute, data in rows]

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._readers, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, check_same_thread=False)
            for pragma in _PRAGMAS:
                conn.execute(pragma)
            self._readers.conn = conn
            self._reader_connections.append(conn)
        return conn

    def prune_rollups(self, before_minute: int) -> int:
        with self._write_lock:
            conn = self._write_connection()
            return conn.execute("DELETE FROM rollups WHERE minute < ?", (before_minute,)).rowcount
