"""Retention on PostgreSQL: whole partitions dropped, or one environment's rows deleted.

``Store.prune(env, cutoff, max_rows)`` is called once per environment per
retention pass, each with its own cutoff. A daily partition holds every
environment's events of that day, so it may be dropped only when it holds
nothing newer than *every* environment's cutoff: then all its rows have
expired wherever they came from, and a drop costs next to nothing. Until
then (an environment with a shorter retention than another, or the day the
cutoff falls in) the environment's own rows are deleted, in windows of
receive time sized to about ``max_rows`` each and found through the BRIN
index on ``received``.

The cutoffs are learnt from the calls themselves: right after a start, before
every environment has been pruned once, no partition is dropped and the pass
ends early (the next one, ``retention_interval_seconds`` later, knows them
all). Events of agents missing from the registry (in no environment) go when
their partition is dropped.

How far each environment's rows are deleted is remembered in memory: the
partitions other environments keep are not scanned again on every pass, only
once after a restart. Rows are received "now", so none arrive behind that mark.
"""

from __future__ import annotations

import math

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from clawtrace.store.partitions import DailyPartitions, Partition

# The first window of receive time deleted in one slice; it then adapts to the rows found.
FIRST_WINDOW_SECONDS = 3_600.0
MIN_WINDOW_SECONDS = 1.0
MAX_WINDOW_SECONDS = 86_400.0

_IN_ENV = "agent IN (SELECT agent FROM agents WHERE env = %s)"


class PartitionRetention:
    def __init__(self, partitions: DailyPartitions) -> None:
        self.partitions = partitions
        self._cutoffs: dict[str, float] = {}
        # env -> receive time before which its rows are known to be deleted.
        self._done: dict[str, float] = {}
        self._window: dict[str, float] = {}

    def prune(
        self, conn: psycopg.Connection[TupleRow], env: str, cutoff: float, max_rows: int
    ) -> tuple[int, bool]:
        """One slice of ``Store.prune``; ``conn`` is in autocommit mode, not in a transaction."""
        self._cutoffs[env] = cutoff
        envs = {str(row[0]) for row in conn.execute("SELECT DISTINCT env FROM agents")} | {env}
        all_known = envs <= self._cutoffs.keys()
        droppable_before = min(self._cutoffs[e] for e in envs) if all_known else -math.inf
        done = self._done.get(env, -math.inf)
        for part in self.partitions.existing(conn):
            if part.lower >= cutoff:
                break
            if part.upper <= droppable_before:
                return self.partitions.drop(conn, part), False
            end = min(part.upper, cutoff)
            if done >= end:
                continue
            if part.upper <= cutoff and not all_known:
                # Perhaps droppable once the other environments' cutoffs are known: next pass.
                return 0, True
            return self._delete_window(conn, env, part, max(part.lower, done), end, max_rows), False
        with conn.transaction():
            conn.execute(f"DELETE FROM sessions WHERE last_ts < %s AND {_IN_ENV}", (cutoff, env))
        return 0, True

    def _delete_window(
        self,
        conn: psycopg.Connection[TupleRow],
        env: str,
        part: Partition,
        start: float,
        end: float,
        max_rows: int,
    ) -> int:
        window = self._window.get(env, FIRST_WINDOW_SECONDS)
        stop = min(start + window, end)
        with conn.transaction():
            deleted = conn.execute(
                sql.SQL("DELETE FROM {} WHERE received >= %s AND received < %s AND " + _IN_ENV).format(
                    sql.Identifier(part.name)
                ),
                (start, stop, env),
            ).rowcount
        self._done[env] = stop
        # Aim the next window at max_rows: rows arrive at a fairly steady rate.
        factor = 4.0 if deleted <= 0 else max(0.25, min(4.0, max_rows / deleted))
        self._window[env] = max(MIN_WINDOW_SECONDS, min(MAX_WINDOW_SECONDS, window * factor))
        return max(deleted, 0)
