"""The daily partitions of PostgreSQL's ``events`` table.

``events`` is range-partitioned on ``received`` (epoch seconds, UTC) with one
partition per UTC day, named ``events_YYYYMMDD``. Partitions are created
before any row needs them (the day of every row written, and the day after,
so events received just after midnight always find theirs) and dropped whole
by retention. There is no default partition: it would make every later
``CREATE TABLE ... PARTITION OF`` scan it for rows that belong to the new day.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from clawtrace.store.base import StoreError

DAY_SECONDS = 86_400
PREFIX = "events_"
_NAME = re.compile(r"^events_(\d{8})$")
_EPOCH = dt.date(1970, 1, 1)
# pg_advisory_xact_lock key serialising partition DDL between gateways sharing
# one database (two concurrent CREATE TABLE ... PARTITION OF for the same day
# would otherwise collide in the catalog). Any fixed 64-bit number will do.
DDL_LOCK = 0x436C61775472_0001
# Dropping a partition needs a brief ACCESS EXCLUSIVE lock on ``events``; give up
# rather than queue every reader behind a long-running query.
DROP_LOCK_TIMEOUT = "10s"
# Counting the rows of a partition about to be dropped costs a scan of it: above
# this size PostgreSQL's own estimate (pg_class.reltuples) is reported instead.
EXACT_COUNT_MAX_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True, slots=True, order=True)
class Partition:
    day: int  # days since 1970-01-01 (UTC)

    @property
    def name(self) -> str:
        return partition_name(self.day)

    @property
    def lower(self) -> float:
        return float(self.day * DAY_SECONDS)

    @property
    def upper(self) -> float:
        return float((self.day + 1) * DAY_SECONDS)


def day_of(received: float) -> int:
    return int(received // DAY_SECONDS)


def partition_name(day: int) -> str:
    try:
        date = _EPOCH + dt.timedelta(days=day)
    except OverflowError:
        raise StoreError(
            f"a received time of day {day} since 1970 is outside the dates PostgreSQL partitions can name"
        ) from None
    return f"{PREFIX}{date.year:04d}{date.month:02d}{date.day:02d}"


def day_from_name(name: str) -> int | None:
    match = _NAME.match(name)
    if match is None:
        return None
    try:
        date = dt.datetime.strptime(match.group(1), "%Y%m%d").date()
    except ValueError:
        return None
    return (date - _EPOCH).days


class DailyPartitions:
    """Creates, lists and drops the partitions, remembering which exist.

    Not thread-safe: used from the store's write connection only, under its lock.
    """

    def __init__(self) -> None:
        self._known: set[int] | None = None

    def forget(self) -> None:
        """Re-read the catalog next time (another process may have dropped one)."""
        self._known = None

    def ensure(self, conn: psycopg.Connection[TupleRow], days: Iterable[int]) -> None:
        """Make sure a partition exists for each day and the day after it.

        Runs its own short transaction: ``conn`` must not be inside one.
        """
        wanted = {d for day in days for d in (day, day + 1)}
        known = self._known if self._known is not None else self._load(conn)
        missing = sorted(wanted - known)
        if not missing:
            return
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (DDL_LOCK,))
            for day in missing:
                part = Partition(day)
                conn.execute(
                    sql.SQL(
                        "CREATE TABLE IF NOT EXISTS {} PARTITION OF events FOR VALUES FROM ({}) TO ({})"
                    ).format(sql.Identifier(part.name), sql.Literal(part.lower), sql.Literal(part.upper))
                )
        known.update(missing)

    def existing(self, conn: psycopg.Connection[TupleRow]) -> list[Partition]:
        """The partitions of ``events``, oldest first (read from the catalog)."""
        return [Partition(day) for day in sorted(self._load(conn))]

    def drop(self, conn: psycopg.Connection[TupleRow], part: Partition) -> int:
        """Drop a whole partition; returns how many rows it held (estimated when large)."""
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (DDL_LOCK,))
            table = sql.Identifier(part.name)
            found = conn.execute(
                "SELECT pg_relation_size(c.oid), c.reltuples FROM pg_class c"
                " JOIN pg_inherits i ON i.inhrelid = c.oid"
                " WHERE i.inhparent = 'events'::regclass AND c.relname = %s",
                (part.name,),
            ).fetchone()
            if found is None:
                rows = 0
            else:
                size, estimate = found
                if size <= EXACT_COUNT_MAX_BYTES or estimate < 0:
                    counted = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()
                    rows = int(counted[0]) if counted else 0
                else:
                    rows = int(estimate)
                conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(DROP_LOCK_TIMEOUT)))
                conn.execute(sql.SQL("DROP TABLE {}").format(table))
        if self._known is not None:
            self._known.discard(part.day)
        return rows

    def _load(self, conn: psycopg.Connection[TupleRow]) -> set[int]:
        names = conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'events'::regclass"
        ).fetchall()
        self._known = {day for (name,) in names if (day := day_from_name(str(name))) is not None}
        return self._known
