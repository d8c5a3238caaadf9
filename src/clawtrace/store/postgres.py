"""PostgreSQL backend (scale mode): psycopg 3, events in daily partitions, COPY on the hot path.

Connections, per store (per gateway or worker):

- one write connection, used by the writer thread alone (``write``,
  retention, rollups), reopened after a failure;
- one pool (SQLAlchemy's, up to ``pool_size`` connections from the URL) for
  everything else: the control tables through Core (``CoreControlTables``,
  ``CoreRegistryTables``, written once for every backend) and the hot reads
  (events, the fleet view, charts) in plain psycopg on a pooled connection.
  Each checkout pings the connection, so after an outage a read either gets
  a live connection or fails at once with a StoreError, instead of waiting
  for a pool that cannot refill.

Any failure to reach PostgreSQL surfaces as a ``StoreError`` saying so: the
batch was not stored, and the gateway does not ack it, so node agents keep
the events and resend them once PostgreSQL is back.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from operator import itemgetter
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg.rows import TupleRow
from psycopg.types.string import BytesBinaryDumper
from sqlalchemy import event as sa_event

from clawtrace.store.base import (
    AGENT_COLUMNS,
    AgentRecord,
    EventQuery,
    EventRow,
    Store,
    StoreError,
    WriteBatch,
    agent_record,
)
from clawtrace.store.control import CoreControlTables
from clawtrace.store.core_registry import CoreRegistryTables
from clawtrace.store.migrate import upgrade_to_head
from clawtrace.store.partitions import DailyPartitions, day_of
from clawtrace.store.postgres_retention import PartitionRetention
from clawtrace.store.postgres_url import parse_postgres_url

# pg_advisory_xact_lock key: two gateways starting together migrate one at a time.
MIGRATION_LOCK = 0x436C61775472_0002
# How long a read waits for a free pooled connection when all are busy.
POOL_WAIT_SECONDS = 10.0

# Array parameters go as %b (binary): psycopg's text dump of a float array costs
# ~10 us per element, binary well under 1 us, and these arrays hold one entry per
# agent or row of a batch.
_EVENT_TYPES = ("text", "int8", "text", "text", "float8", "float8", "bytea")
_COPY_EVENTS = "COPY events (agent, seq, session, kind, ts, received, data) FROM STDIN (FORMAT BINARY)"
_COPY_ROLLUPS = "COPY rollups (scope, minute, data) FROM STDIN (FORMAT BINARY)"
# Raises each agent's highest stored seq to the batch's and returns the value it
# had, in one statement that locks the rows (in agent order: two writers cannot
# deadlock) until the transaction ends. SET sees the row as it was before, also
# when a concurrent writer committed a change to it first.
_RAISE_MAX_SEQS = """
INSERT INTO events_max_seq AS m (agent, max_seq, previous_max_seq)
SELECT v.agent, v.max_seq, 0 FROM unnest(%b::text[], %b::int8[]) AS v(agent, max_seq) ORDER BY v.agent
ON CONFLICT (agent) DO UPDATE SET
  previous_max_seq = m.max_seq,
  max_seq = greatest(m.max_seq, excluded.max_seq)
RETURNING agent, previous_max_seq
"""
# Rows at or below an agent's highest stored seq: stored only if not already there.
_INSERT_IF_ABSENT = """
INSERT INTO events (agent, seq, session, kind, ts, received, data)
SELECT v.agent, v.seq, v.session, v.kind, v.ts, v.received, v.data
FROM unnest(%b::text[], %b::int8[], %b::text[], %b::text[], %b::float8[], %b::float8[], %b::bytea[])
  AS v(agent, seq, session, kind, ts, received, data)
WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.agent = v.agent AND e.seq = v.seq)
"""
_UPDATE_AGENTS = """
UPDATE agents a SET
  last_seq = greatest(a.last_seq, v.last_seq),
  last_event = greatest(coalesce(a.last_event, 0), v.last_event),
  last_heartbeat = coalesce(v.last_heartbeat, a.last_heartbeat),
  cpu_percent = CASE WHEN v.has_heartbeat THEN v.cpu_percent ELSE a.cpu_percent END,
  rss_bytes = CASE WHEN v.has_heartbeat THEN v.rss_bytes ELSE a.rss_bytes END,
  lifecycle = coalesce(v.lifecycle, a.lifecycle)
FROM unnest(%b::text[], %b::int8[], %b::float8[], %b::float8[], %b::bool[], %b::float8[], %b::int8[],
            %b::text[])
  AS v(agent, last_seq, last_event, last_heartbeat, has_heartbeat, cpu_percent, rss_bytes, lifecycle)
WHERE a.agent = v.agent
"""
_UPSERT_SESSIONS = """
INSERT INTO sessions AS s (agent, session, first_seq, last_seq, started, last_ts, events)
SELECT * FROM unnest(%b::text[], %b::text[], %b::int8[], %b::int8[], %b::float8[], %b::float8[], %b::int8[])
ON CONFLICT (agent, session) DO UPDATE SET
  first_seq = least(s.first_seq, excluded.first_seq),
  last_seq = greatest(s.last_seq, excluded.last_seq),
  started = least(s.started, excluded.started),
  last_ts = greatest(s.last_ts, excluded.last_ts),
  events = s.events + excluded.events
"""
_NOT_STORED = (
    " None of the batch was stored: the gateway does not acknowledge it, and node agents keep"
    " the events and send them again."
)


class PostgresStore(CoreRegistryTables, CoreControlTables, Store):
    def __init__(self, url: str) -> None:
        target = parse_postgres_url(url)
        self._conninfo = target.conninfo
        # Without the password: this is what logs and messages show.
        self.url = target.display
        self.engine = sa.create_engine(
            "postgresql+psycopg://",
            creator=self._connect_for_sqlalchemy,
            # A connection that died with the server is replaced, not handed out.
            pool_pre_ping=True,
            pool_size=target.pool_size,
            max_overflow=0,
            pool_timeout=POOL_WAIT_SECONDS,
        )
        sa_event.listen(self.engine, "handle_error", self._translate_sqlalchemy_error)
        self._write_lock = threading.Lock()
        self._writer: psycopg.Connection[TupleRow] | None = None
        self._partitions = DailyPartitions()
        self._retention = PartitionRetention(self._partitions)

    # --- connections and errors --------------------------------------------
    def _connect_for_sqlalchemy(self) -> psycopg.Connection[TupleRow]:
        return psycopg.connect(self._conninfo)

    def _write_connection(self) -> psycopg.Connection[TupleRow]:
        if self._writer is None or self._writer.closed:
            conn = psycopg.connect(self._conninfo, autocommit=True)
            # COPY looks dumpers up by column type, and for bytea finds the DB-API
            # Binary wrapper (Python code per value); the plain C dumper halves
            # the client's CPU per event row.
            conn.adapters.register_dumper(bytes, BytesBinaryDumper)
            self._writer = conn
        return self._writer

    def _reset_writer_if_broken(self) -> None:
        conn = self._writer
        if conn is not None and (conn.broken or conn.closed):
            with contextlib.suppress(psycopg.Error):
                conn.close()
            self._writer = None
            # Partitions may have come and gone while we were away.
            self._partitions.forget()

    @contextlib.contextmanager
    def _writing(self, doing: str, consequence: str = "") -> Iterator[psycopg.Connection[TupleRow]]:
        """The write connection, under the write lock, with failures as StoreError."""
        with self._write_lock:
            try:
                yield self._write_connection()
            except psycopg.Error as exc:
                self._reset_writer_if_broken()
                raise StoreError(describe_failure(self.url, doing, exc) + consequence) from exc

    @contextlib.contextmanager
    def _reading(self, doing: str) -> Iterator[psycopg.Connection[TupleRow]]:
        """A pooled connection for plain psycopg reads, with failures as StoreError."""
        with self.engine.connect() as pooled:
            conn = pooled.connection.driver_connection
            assert isinstance(conn, psycopg.Connection), "the engine's connections come from psycopg.connect"
            try:
                yield conn
            except psycopg.Error as exc:
                if conn.broken or conn.closed:
                    pooled.invalidate()
                raise StoreError(describe_failure(self.url, doing, exc)) from exc

    def _translate_sqlalchemy_error(self, context: sa.engine.ExceptionContext) -> None:
        # A pre-ping failure is how the pool notices a dead connection: let it reconnect.
        if context.is_pre_ping:
            return
        original = context.original_exception
        if isinstance(original, psycopg.Error) and (context.is_disconnect or is_unavailable(original)):
            doing = "connecting" if context.connection is None else "a query on the control tables"
            raise StoreError(describe_failure(self.url, doing, original)) from original

    # --- lifecycle ----------------------------------------------------------
    def migrate(self) -> None:
        try:
            with self.engine.begin() as connection:
                connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
                upgrade_to_head(connection)
        except sa.exc.DBAPIError as exc:
            original = exc.orig
            if isinstance(original, psycopg.errors.InsufficientPrivilege):
                raise StoreError(
                    f"PostgreSQL store {self.url}: the role may not create ClawTrace's tables"
                    f" ({first_line(original)}). Grant it CREATE on the database (or schema),"
                    " or migrate once as its owner."
                ) from exc
            if isinstance(original, psycopg.Error):
                raise StoreError(describe_failure(self.url, "migrating the schema", original)) from exc
            raise
        with self._writing("creating today's and tomorrow's event partitions") as conn:
            self._partitions.ensure(conn, [day_of(time.time())])

    def close(self) -> None:
        with self._write_lock:
            if self._writer is not None:
                with contextlib.suppress(psycopg.Error):
                    self._writer.close()
                self._writer = None
        self.engine.dispose()

    # --- ingest ---------------------------------------------------------------
    def write(self, batch: WriteBatch) -> None:
        """One transaction: events (deduplicated by agent and seq), agents, sessions.

        Duplicates: each agent's highest stored seq lives in ``events_max_seq``;
        the transaction first raises it to the batch's, which locks the agent's
        row until commit and tells the value before. A row above that value is
        new and goes in by COPY; a row at or below it (a resend, or an
        out-of-order seq) is inserted only if (agent, seq) is not stored yet,
        in any partition. The lock makes the check and the insert atomic
        against every other writer of the same agent.
        """
        if not batch.rows:
            return
        rows = first_of_each(batch.rows)
        days = days_of(rows)
        with self._writing(f"storing {len(rows)} events", _NOT_STORED) as conn:
            self._partitions.ensure(conn, days)
            try:
                self._write_transaction(conn, rows, batch)
            except psycopg.errors.CheckViolation:
                # "no partition of relation events found for row": another process dropped
                # a partition this one believed in. Look again and retry once.
                self._partitions.forget()
                self._partitions.ensure(conn, days)
                self._write_transaction(conn, rows, batch)

    def _write_transaction(
        self, conn: psycopg.Connection[TupleRow], rows: list[EventRow], batch: WriteBatch
    ) -> None:
        # The batch's bookkeeping holds each agent's highest seq (WriteBatch.add and merge keep it).
        batch_max = {agent: progress.last_seq for agent, progress in batch.agents.items()}
        if batch_max.keys() != set(map(itemgetter(0), rows)):
            batch_max = {}
            for agent, seq, *_ in rows:
                if agent not in batch_max or seq > batch_max[agent]:
                    batch_max[agent] = seq
        agents = sorted(batch_max)
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(_RAISE_MAX_SEQS, (agents, [batch_max[a] for a in agents]))
            stored_max = {str(agent): int(seq) for agent, seq in cur.fetchall()}
            new_rows: list[EventRow] = []
            maybe_stored: list[EventRow] = []
            for row in rows:
                (new_rows if row[1] > stored_max[row[0]] else maybe_stored).append(row)
            if new_rows:
                with cur.copy(_COPY_EVENTS) as copy:
                    copy.set_types(_EVENT_TYPES)
                    for row in new_rows:
                        copy.write_row(row)
            if maybe_stored:
                cur.execute(_INSERT_IF_ABSENT, list(map(list, zip(*maybe_stored, strict=True))))
            _update_agents(cur, batch)
            _upsert_sessions(cur, batch)

    # --- reads ------------------------------------------------------------------
    def get_agent(self, agent: str) -> AgentRecord | None:
        found = self._select_agents("WHERE agent = %s", (agent,))
        return found[0] if found else None

    def list_agents(self, envs: Sequence[str] | None = None) -> list[AgentRecord]:
        if envs is None:
            return self._select_agents("ORDER BY agent", ())
        if not envs:
            return []
        return self._select_agents("WHERE env = ANY(%s) ORDER BY agent", (list(envs),))

    def _select_agents(self, where: str, params: tuple[Any, ...]) -> list[AgentRecord]:
        with self._reading("listing agents") as conn:
            rows = conn.execute(f"SELECT {AGENT_COLUMNS} FROM agents {where}", params).fetchall()
        return [agent_record(row) for row in rows]

    def query_events(self, query: EventQuery) -> list[tuple[int, bytes]]:
        with self._reading(f"reading events of {query.agent}") as conn:
            after_seq = query.after_seq
            where = ["agent = %s"]
            params: list[Any] = [query.agent]
            if query.session is not None:
                bounds = conn.execute(
                    "SELECT first_seq, last_seq FROM sessions WHERE agent = %s AND session = %s",
                    (query.agent, query.session),
                ).fetchone()
                if bounds is None:
                    return []
                # Sessions are contiguous seq ranges, so the (agent, seq) index serves them.
                after_seq = max(after_seq, int(bounds[0]) - 1)
                where += ["seq <= %s", "session = %s"]
                params += [int(bounds[1]), query.session]
            where.append("seq > %s")
            params.append(after_seq)
            if query.kinds:
                where.append("kind = ANY(%s)")
                params.append(list(query.kinds))
            if query.since is not None:
                where.append("ts >= %s")
                params.append(query.since)
            if query.until is not None:
                where.append("ts < %s")
                params.append(query.until)
            params.append(query.limit)
            rows = conn.execute(
                f"SELECT seq, data FROM events WHERE {' AND '.join(where)} ORDER BY seq LIMIT %s", params
            ).fetchall()
        return [(int(seq), bytes(data)) for seq, data in rows]

    def count_events(self) -> int:
        with self._reading("counting events") as conn:
            row = conn.execute("SELECT count(*) FROM events").fetchone()
        return int(row[0]) if row else 0

    # --- retention ----------------------------------------------------------------
    def prune(self, env: str, received_before: float, max_rows: int) -> tuple[int, bool]:
        """See postgres_retention: whole partitions dropped when every environment is done with them."""
        with self._writing(f"pruning events of {env}") as conn:
            return self._retention.prune(conn, env, received_before, max_rows)

    # --- metric rollups --------------------------------------------------------------
    def write_rollups(self, rows: Sequence[tuple[str, int, bytes]]) -> None:
        if not rows:
            return
        with (
            self._writing(f"storing {len(rows)} rollups") as conn,
            conn.transaction(),
            conn.cursor() as cur,
            cur.copy(_COPY_ROLLUPS) as copy,
        ):
            copy.set_types(("text", "int8", "bytea"))
            for row in rows:
                copy.write_row(row)

    def query_rollups(self, scope: str, first_minute: int, last_minute: int) -> list[tuple[int, bytes]]:
        with self._reading("reading rollups") as conn:
            rows = conn.execute(
                "SELECT minute, data FROM rollups WHERE scope = %s AND minute >= %s AND minute <= %s"
                " ORDER BY minute",
                (scope, first_minute, last_minute),
            ).fetchall()
        return [(int(minute), bytes(data)) for minute, data in rows]

    def prune_rollups(self, before_minute: int) -> int:
        with self._writing("pruning rollups") as conn:
            return max(conn.execute("DELETE FROM rollups WHERE minute < %s", (before_minute,)).rowcount, 0)


def days_of(rows: list[EventRow]) -> set[int]:
    """The days (of ``received``) the rows fall in: every day from the first to the last, when
    they span a few (a batch is received within seconds, so mostly one day)."""
    first, last = day_of(min(map(itemgetter(5), rows))), day_of(max(map(itemgetter(5), rows)))
    if last - first <= 2:
        return set(range(first, last + 1))
    return {day_of(row[5]) for row in rows}


def first_of_each(rows: list[EventRow]) -> list[EventRow]:
    """Rows without repeats of an (agent, seq) within the batch; the first one wins, as in SQLite."""
    if len(set(map(itemgetter(0, 1), rows))) == len(rows):
        return rows
    seen: set[tuple[str, int]] = set()
    unique: list[EventRow] = []
    for row in rows:
        key = (row[0], row[1])
        if key not in seen:
            seen.add(key)
            unique.append(row)
    return unique


def describe_failure(url: str, doing: str, exc: psycopg.Error) -> str:
    """What went wrong talking to PostgreSQL, and what to do about it."""
    detail = first_line(exc)
    if is_unavailable(exc):
        return f"PostgreSQL store {url} is unavailable ({doing}): {detail}. {_connection_hint(detail)}"
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return f"PostgreSQL store {url}: {doing} was refused: {detail}. Grant the role the privilege named."
    if isinstance(exc, psycopg.errors.UndefinedTable):
        return f"PostgreSQL store {url}: {doing} failed: {detail}. Migrate the store (clawtrace up does)."
    return f"PostgreSQL store {url}: {doing} failed: {detail}"


def first_line(exc: BaseException) -> str:
    """An error's message without PostgreSQL's LINE/HINT continuation lines."""
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def _connection_hint(detail: str) -> str:
    if "database" in detail and "does not exist" in detail:
        return "Create the database first (createdb, or CREATE DATABASE as a superuser)."
    if "role" in detail and "does not exist" in detail:
        return "Create the role, or name an existing user in the store URL."
    if "password" in detail:
        return "Check the user and password in the store URL (or ~/.pgpass, PGPASSWORD)."
    if "no pg_hba.conf entry" in detail:
        return "Allow this host and user in the server's pg_hba.conf."
    return "Check that PostgreSQL is running and reachable there."


# SQLSTATEs meaning the server went away or is not taking connections (classes 08 and 57P).
_GONE_STATES = ("08", "57P01", "57P02", "57P03")


def is_unavailable(exc: psycopg.Error) -> bool:
    """A failure to reach PostgreSQL (refused, dropped, shutting down), not a bad query."""
    if not isinstance(exc, psycopg.OperationalError):
        return False
    # No SQLSTATE: libpq itself failed (connect refused, connection lost, timeout).
    return exc.sqlstate is None or exc.sqlstate.startswith(_GONE_STATES)


def _update_agents(cur: psycopg.Cursor[TupleRow], batch: WriteBatch) -> None:
    columns: list[list[Any]] = [[] for _ in range(8)]
    for agent in sorted(batch.agents):
        p = batch.agents[agent]
        has_heartbeat = p.last_heartbeat is not None
        values = (
            agent,
            p.last_seq,
            p.last_event,
            p.last_heartbeat,
            has_heartbeat,
            p.cpu_percent,
            p.rss_bytes,
            p.lifecycle,
        )
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    cur.execute(_UPDATE_AGENTS, columns)


def _upsert_sessions(cur: psycopg.Cursor[TupleRow], batch: WriteBatch) -> None:
    columns: list[list[Any]] = [[] for _ in range(7)]
    for (agent, session), s in sorted(batch.sessions.items()):
        values = (agent, session, s.first_seq, s.last_seq, s.started, s.last_ts, s.events)
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    cur.execute(_UPSERT_SESSIONS, columns)
