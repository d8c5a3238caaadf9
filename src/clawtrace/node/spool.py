"""The node agent's durable outbox: every event is on disk before it is sent.

One SQLite file per agent (WAL, ``synchronous=NORMAL``): a commit survives
the node agent being killed with ``kill -9`` (the WAL lives in the OS page
cache); only a power cut can lose the last few commits. Rows are deleted once
the gateway acknowledges them, so the last assigned sequence number is kept
in a ``meta`` table: the per-agent ``seq`` keeps growing across restarts even
when the spool is empty.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final

import msgspec

from clawtrace.protocol.codec import decode_event, encode
from clawtrace.protocol.messages import Event

log = logging.getLogger("clawtrace.node.spool")

SPOOL_FILE: Final = "spool.db"
LOCK_FILE: Final = "spool.lock"

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class SpoolError(Exception):
    """The spool cannot be used (locked by another process, other agent's spool)."""


class Spool:
    """Durable, ordered outbox of one agent; implements the client's ``Outbox``.

    Not thread-safe: the node agent uses it from its event loop only.
    """

    def __init__(self, directory: str | os.PathLike[str], agent: str) -> None:
        self.directory = Path(directory)
        self.agent = agent
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = self._lock()
        try:
            self._db = sqlite3.connect(
                self.directory / SPOOL_FILE, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._last_seq = self._load_meta()
        except BaseException:
            self._release_lock()
            raise
        self._closed = False

    # --- setup -------------------------------------------------------------

    def _lock(self) -> int:
        # Two node agents on one spool would hand out the same seq twice and
        # the gateway would drop one of them as a duplicate: refuse instead.
        path = self.directory / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise SpoolError(
                f"spool directory {self.directory} is in use by another node agent (pid {holder}); "
                "give each agent its own --spool-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def _release_lock(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)

    def _load_meta(self) -> int:
        rows = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        owner = rows.get("agent")
        if owner is None:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('agent', ?)", (self.agent,))
        elif owner != self.agent:
            raise SpoolError(
                f"spool directory {self.directory} belongs to agent {owner!r}, not {self.agent!r}; "
                "use a separate --spool-dir per agent"
            )
        last = int(rows.get("last_seq", 0))
        # Belt and braces: never hand out a seq that is still in the table.
        (max_row,) = self._db.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
        return max(last, int(max_row))

    # --- writing -----------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise

    @property
    def last_seq(self) -> int:
        """The highest seq ever assigned by this spool (0 if none)."""
        return self._last_seq

    def append(self, events: Sequence[Event]) -> list[Event]:
        """Store events durably, assigning each the next seq, in one transaction.

        The ``seq`` the given events carry is ignored (use any placeholder);
        the stored events, with their real seq, are returned in order.
        """
        if not events:
            return []
        seq = self._last_seq
        stored: list[Event] = []
        rows: list[tuple[int, bytes]] = []
        for event in events:
            seq += 1
            event = msgspec.structs.replace(event, seq=seq)
            stored.append(event)
            rows.append((seq, encode(event)))
        with self._transaction() as db:
            db.executemany("INSERT INTO events (seq, data) VALUES (?, ?)", rows)
            db.execute("INSERT OR REPLACE INTO meta VALUES ('last_seq', ?)", (str(seq),))
        self._last_seq = seq
        return stored

    # --- Outbox ------------------------------------------------------------

    def pending(self, after_seq: int, limit: int) -> list[tuple[int, bytes]]:
        rows = self._db.execute(
            "SELECT seq, data FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)
        ).fetchall()
        return [(int(seq), bytes(data)) for seq, data in rows]

    def acked(self, seq: int) -> None:
        if seq > self._last_seq:
            self._adopt_gateway_seq(seq)
            return
        self._db.execute("DELETE FROM events WHERE seq <= ?", (seq,))

    def _adopt_gateway_seq(self, gateway_seq: int) -> None:
        # The gateway already holds events up to a seq this spool never
        # assigned: the spool was lost (deleted, or a container without a
        # volume). Its events would all be dropped as duplicates, so renumber
        # what is still pending to follow the gateway's seq instead.
        rows = self._db.execute("SELECT seq, data FROM events ORDER BY seq").fetchall()
        log.warning(
            "the gateway already has events up to seq %d for agent %r but this spool only reached %d "
            "(was the spool directory deleted?); continuing from seq %d",
            gateway_seq,
            self.agent,
            self._last_seq,
            gateway_seq + 1,
        )
        seq = gateway_seq
        renumbered: list[tuple[int, bytes]] = []
        for _, data in rows:
            try:
                event = decode_event(bytes(data))
            except (msgspec.DecodeError, msgspec.ValidationError):
                log.error("dropping an unreadable spooled event while renumbering")
                continue
            seq += 1
            renumbered.append((seq, encode(msgspec.structs.replace(event, seq=seq))))
        with self._transaction() as db:
            db.execute("DELETE FROM events")
            db.executemany("INSERT INTO events (seq, data) VALUES (?, ?)", renumbered)
            db.execute("INSERT OR REPLACE INTO meta VALUES ('last_seq', ?)", (str(seq),))
        self._last_seq = seq

    # --- inspection --------------------------------------------------------

    def count(self) -> int:
        """How many events wait for the gateway's ack."""
        (n,) = self._db.execute("SELECT count(*) FROM events").fetchone()
        return int(n)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
        self._release_lock()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
