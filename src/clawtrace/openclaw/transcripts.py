"""Finding and reading OpenClaw transcripts, incrementally.

OpenClaw keeps one transcript per session: a header record (``type:
"session"``) and then entries that form a tree (``id``, ``parentId``).

* Since 2026.7.2 they live in each agent's SQLite database,
  ``<state>/agents/<id>/agent/openclaw-agent.sqlite``, table
  ``transcript_events (session_id, seq, event_json, created_at, event_zstd,
  event_utf8_bytes, ...)``: one row per record, ``seq`` from 0 (the header)
  per session. Rows of 1 KiB and more are usually stored zstd-compressed in
  ``event_zstd`` (``event_json`` NULL, ``event_utf8_bytes`` the decoded size).
  The database runs in WAL mode with a live writer: it is opened read-only
  (``mode=ro``; never ``immutable=1``), read in short statements, and never
  locked for long.
* Before, one JSONL file per session: ``<state>/agents/<id>/sessions/<session id>.jsonl``
  (and ``<state>/sessions/`` for the single-agent layout), the header on the first line.

Every reader keeps a cursor so that ``read_new()`` returns only records
appended since the last call (``--follow``).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import zstandard

SQLITE_NAME = "openclaw-agent.sqlite"
TABLE = "transcript_events"
PAGE_ROWS = 2000


class TranscriptError(Exception):
    """The path is not an OpenClaw transcript (or state/agent dir), or cannot be read."""


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One transcript record as stored: ``data`` is the decoded JSON object, or None
    with ``problem`` saying why it could not be read."""

    session: str
    # Where the record sits in its session's storage: the SQLite ``seq``, or the
    # index among the non-blank lines of the JSONL file (the header is 0).
    position: int
    data: dict[str, Any] | None
    problem: str | None = None
    # SQLite ``created_at`` (epoch ms), a fallback for a record without a timestamp.
    stored_ms: int | None = None
    # Read again after OpenClaw rewrote or truncated the transcript: sent before, most likely.
    reread: bool = False


@dataclass(frozen=True, slots=True)
class Location:
    """Where one OpenClaw agent keeps (part of) its transcripts."""

    openclaw_agent: str | None
    kind: str  # "sqlite" | "jsonl"
    path: Path


# --- zstd ---------------------------------------------------------------------------------

_zstd = zstandard.ZstdDecompressor()


def zstd_decompress(data: bytes, size: int) -> bytes:
    """Decode one zstd frame of ``size`` decoded bytes; ValueError when it is not one."""
    try:
        return _zstd.decompress(data, max_output_size=size)
    except zstandard.ZstdError as exc:
        raise ValueError(f"not a zstd frame of {size} bytes: {exc}") from None


def _decode_object(text: str | bytes) -> tuple[dict[str, Any] | None, str | None]:
    try:
        value = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        return None, "invalid JSON"
    if not isinstance(value, dict):
        return None, "not a JSON object"
    return value, None


# --- SQLite (OpenClaw >= 2026.7.2) --------------------------------------------------------


def _connect_ro(path: Path) -> sqlite3.Connection:
    # mode=ro: never writes, never takes a write lock; the WAL and its index are
    # shared with the live writer. immutable=1 would ignore the WAL: stale or torn reads.
    uri = f"file:{quote(str(path.resolve()))}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=10.0, check_same_thread=False)
    conn.execute("PRAGMA query_only = 1")
    return conn


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def check_sqlite(path: Path) -> str | None:
    """The OpenClaw agent id the database records (``schema_meta.agent_id``), or None;
    TranscriptError if it is no OpenClaw agent database."""
    try:
        with contextlib.closing(_connect_ro(path)) as conn:
            tables = _tables(conn)
            if TABLE not in tables:
                raise TranscriptError(
                    f"{path}: a SQLite database without OpenClaw transcripts (no {TABLE} table); "
                    f"expected an agent's agent/{SQLITE_NAME}"
                )
            if "schema_meta" in tables:
                with contextlib.suppress(sqlite3.Error):
                    row = conn.execute(
                        "SELECT agent_id FROM schema_meta"
                        " WHERE agent_id IS NOT NULL AND agent_id != '' LIMIT 1"
                    ).fetchone()
                    if row is not None:
                        return str(row[0])
            return None
    except sqlite3.DatabaseError as exc:
        raise TranscriptError(f"{path}: cannot read it as an OpenClaw SQLite database ({exc})") from None


class SqliteSource:
    """The transcripts in one agent database; a cursor per session."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.kind = "sqlite"
        self._conn: sqlite3.Connection | None = None
        self._columns: set[str] = set()
        self._has_watermarks = False
        self._has_cold = False
        self._cursor: dict[str, int] = {}  # session -> last seq read
        self._generation: dict[str, str] = {}
        self.sessions: set[str] = set()
        # Sessions whose transcript OpenClaw moved to cold storage (compressed archives).
        self.cold_sessions = 0

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            try:
                conn = _connect_ro(self.path)
                tables = _tables(conn)
            except sqlite3.DatabaseError as exc:
                raise TranscriptError(f"{self.path}: cannot open the database read-only ({exc})") from None
            if TABLE not in tables:
                conn.close()
                raise TranscriptError(f"{self.path}: no {TABLE} table; not an OpenClaw agent database")
            self._columns = {row[1] for row in conn.execute(f"PRAGMA table_info({TABLE})")}
            self._has_watermarks = "transcript_rewrite_watermarks" in tables
            self._has_cold = "session_transcript_cold_archives" in tables
            self._conn = conn
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def read_new(self) -> Iterator[RawRecord]:
        try:
            yield from self._read_new()
        except sqlite3.OperationalError as exc:
            # Locked past the timeout, or the file went away: try again at the next poll.
            self.close()
            raise TranscriptError(f"{self.path}: {exc}") from None

    def _read_new(self) -> Iterator[RawRecord]:
        conn = self._db()
        heads = conn.execute(f"SELECT session_id, MAX(seq) FROM {TABLE} GROUP BY session_id").fetchall()
        generations: dict[str, str] = {}
        if self._has_watermarks:
            with contextlib.suppress(sqlite3.Error):
                generations = {
                    str(s): str(g)
                    for s, g in conn.execute(
                        "SELECT session_id, generation FROM transcript_rewrite_watermarks"
                    )
                }
        if self._has_cold:
            with contextlib.suppress(sqlite3.Error):
                row = conn.execute("SELECT COUNT(*) FROM session_transcript_cold_archives").fetchone()
                self.cold_sessions = int(row[0]) if row else 0
        payload = ["event_json"]
        compressed = "event_zstd" in self._columns and "event_utf8_bytes" in self._columns
        if compressed:
            payload += ["event_zstd", "event_utf8_bytes"]
        created = "created_at" if "created_at" in self._columns else "NULL"
        query = (
            f"SELECT seq, {', '.join(payload)}, {created} FROM {TABLE} "
            "WHERE session_id = ? AND seq > ? ORDER BY seq LIMIT ?"
        )
        for session_id, max_seq in sorted(heads, key=lambda row: str(row[0])):
            session = str(session_id)
            self.sessions.add(session)
            last = self._cursor.get(session, -1)
            read_before = last
            generation = generations.get(session)
            if session in self._generation and generation != self._generation[session]:
                # OpenClaw rewrote this transcript: read it again (what was sent is dropped as duplicates).
                last = -1
            elif max_seq is not None and int(max_seq) < last:
                last = -1
            if generation is not None:
                self._generation[session] = generation
            if max_seq is None or int(max_seq) <= last:
                continue
            while True:
                rows = conn.execute(query, (session, last, PAGE_ROWS)).fetchall()
                if not rows:
                    break
                for row in rows:
                    seq = int(row[0])
                    last = seq
                    self._cursor[session] = seq
                    stored_ms = row[-1] if isinstance(row[-1], int) else None
                    data, problem = self._payload(row)
                    yield RawRecord(session, seq, data, problem, stored_ms, reread=seq <= read_before)
                if len(rows) < PAGE_ROWS:
                    break

    def _payload(self, row: tuple[Any, ...]) -> tuple[dict[str, Any] | None, str | None]:
        text = row[1]
        if isinstance(text, str):
            return _decode_object(text)
        if len(row) > 3 and isinstance(row[2], bytes) and isinstance(row[3], int):
            try:
                raw = zstd_decompress(row[2], row[3])
            except ValueError as exc:
                return None, f"compressed row not decoded ({exc})"
            return _decode_object(raw)
        return None, "empty row"


# --- JSONL (OpenClaw < 2026.7.2) ----------------------------------------------------------


def check_jsonl(path: Path) -> str:
    """The session id in the file's header; TranscriptError if it has none."""
    try:
        with path.open("rb") as handle:
            for raw in handle:
                if not raw.strip():
                    continue
                data, problem = _decode_object(raw)
                if data is None or data.get("type") != "session" or not isinstance(data.get("id"), str):
                    raise TranscriptError(
                        f"{path}: not an OpenClaw session transcript (its first record is "
                        f'{problem or "not a session header"}; expected {{"type": "session", "id": ...}})'
                    )
                return str(data["id"])
    except OSError as exc:
        raise TranscriptError(f"{path}: {exc.strerror or exc}") from None
    raise TranscriptError(f"{path}: empty file, not an OpenClaw session transcript")


class JsonlSource:
    """One session's JSONL file; the cursor is a byte offset (re-read from 0 if the file shrank)."""

    def __init__(self, path: Path, final: bool = True) -> None:
        self.path = path
        self.kind = "jsonl"
        self.session: str | None = None
        self.sessions: set[str] = set()
        self.cold_sessions = 0
        # With final=False (--follow) an unterminated last line that does not parse is
        # a record being written: left for the next read.
        self.final = final
        self._offset = 0
        self._position = 0
        self._inode: int | None = None
        self._read_before = 0
        self.not_transcript = False

    def close(self) -> None:
        pass

    def read_new(self) -> Iterator[RawRecord]:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise TranscriptError(f"{self.path}: {exc.strerror or exc}") from None
        if stat.st_size < self._offset or (self._inode is not None and stat.st_ino != self._inode):
            # Truncated or replaced: read it again (what was sent is dropped as duplicates).
            self._read_before = self._position
            self._offset = self._position = 0
        self._inode = stat.st_ino
        if stat.st_size == self._offset or self.not_transcript:
            return
        try:
            handle = self.path.open("rb")
        except OSError as exc:
            raise TranscriptError(f"{self.path}: {exc.strerror or exc}") from None
        with handle:
            handle.seek(self._offset)
            for raw in handle:
                if not raw.endswith(b"\n") and not self.final and _decode_object(raw)[0] is None:
                    break  # an unterminated last line that does not parse: still being written
                if not raw.strip():
                    self._offset += len(raw)
                    continue
                data, problem = _decode_object(raw)
                if self._position == 0:
                    if data is None or data.get("type") != "session" or not isinstance(data.get("id"), str):
                        self.not_transcript = True
                        return
                    self.session = str(data["id"])
                    self.sessions.add(self.session)
                assert self.session is not None
                position = self._position
                self._position += 1
                self._offset += len(raw)
                yield RawRecord(self.session, position, data, problem, reread=position < self._read_before)


Source = SqliteSource | JsonlSource


def open_source(location: Location, final: bool = True) -> Source:
    if location.kind == "sqlite":
        return SqliteSource(location.path)
    return JsonlSource(location.path, final=final)


# --- discovery ----------------------------------------------------------------------------


@dataclass
class Found:
    """What a PATH holds: transcript locations, grouped by OpenClaw agent id (None: unknown)."""

    locations: list[Location] = field(default_factory=list)
    # True for a state dir (or an agents/ dir): new agents may appear under it later.
    is_state_dir: bool = False


def _jsonl_files(directory: Path) -> list[Path]:
    # Only live transcripts: archives are *.jsonl.deleted.<ts>, *.jsonl.reset.<ts>, *.zst.
    try:
        return sorted(p for p in directory.iterdir() if p.name.endswith(".jsonl") and p.is_file())
    except OSError:
        return []


def _agent_dir(directory: Path, agent: str) -> list[Location]:
    out: list[Location] = []
    database = directory / "agent" / SQLITE_NAME
    if database.is_file():
        out.append(Location(agent, "sqlite", database))
    out.extend(Location(agent, "jsonl", p) for p in _jsonl_files(directory / "sessions"))
    return out


def _agents_dir(directory: Path) -> list[Location]:
    out: list[Location] = []
    try:
        children = sorted(p for p in directory.iterdir() if p.is_dir())
    except OSError as exc:
        raise TranscriptError(f"{directory}: {exc.strerror or exc}") from None
    for child in children:
        out.extend(_agent_dir(child, child.name))
    return out


def discover(path: Path) -> Found:
    """What ``path`` holds; TranscriptError (with what was expected) if it is nothing OpenClaw.

    Accepted: a state dir (``agents/<id>/...``: every agent), an ``agents/`` dir, one
    agent's dir (``agents/<id>``), its ``agent/`` dir, its ``sessions/`` dir, one
    ``openclaw-agent.sqlite``, one session ``.jsonl``.
    """
    expected = (
        "expected an OpenClaw state dir (~/.openclaw, $OPENCLAW_STATE_DIR), one agent's dir "
        f"(agents/<id>), an agent/{SQLITE_NAME} or a session .jsonl"
    )
    if not path.exists():
        raise TranscriptError(f"{path}: no such file or directory; {expected}")
    if path.is_file():
        if path.suffix == ".jsonl":
            check_jsonl(path)
            agent = None
            if path.parent.name == "sessions":
                grand = path.parent.parent
                agent = grand.name if grand.parent.name == "agents" else "main"
            return Found([Location(agent, "jsonl", path)])
        try:
            head = path.open("rb").read(16)
        except OSError as exc:
            raise TranscriptError(f"{path}: {exc.strerror or exc}") from None
        if head.startswith(b"SQLite format 3"):
            recorded = check_sqlite(path)
            agent = recorded
            if path.parent.name == "agent" and path.parent.parent.parent.name == "agents":
                agent = path.parent.parent.name
            return Found([Location(agent, "sqlite", path)])
        raise TranscriptError(f"{path}: neither a SQLite database nor a .jsonl transcript; {expected}")
    if not path.is_dir():
        raise TranscriptError(f"{path}: not a file or directory; {expected}")
    if (path / "agents").is_dir():
        found = Found(_agents_dir(path / "agents"), is_state_dir=True)
        # The single-agent layout of early versions: <state>/sessions/*.jsonl for agent "main".
        found.locations.extend(Location("main", "jsonl", p) for p in _jsonl_files(path / "sessions"))
        return found
    if path.name == "agents":
        return Found(_agents_dir(path), is_state_dir=True)
    if (path / SQLITE_NAME).is_file():
        if path.name == "agent":  # agents/<id>/agent: the whole agent
            return Found(_agent_dir(path.parent, path.parent.name))
        return Found([Location(check_sqlite(path / SQLITE_NAME), "sqlite", path / SQLITE_NAME)])
    if (path / "agent" / SQLITE_NAME).is_file() or (path / "sessions").is_dir():
        return Found(_agent_dir(path, path.name))
    jsonl = _jsonl_files(path)
    if jsonl:
        parent = path.parent
        agent = parent.name if path.name == "sessions" and parent.parent.name == "agents" else None
        if path.name == "sessions" and agent is None and (parent / "openclaw.json").exists():
            agent = "main"
        return Found([Location(agent, "jsonl", p) for p in jsonl])
    if (path / "openclaw.json").is_file():
        # A state dir before any agent ran.
        return Found([], is_state_dir=True)
    raise TranscriptError(f"{path}: no OpenClaw transcripts here; {expected}")


def describe_path(path: Path) -> str:
    """``path`` relative to the working directory when shorter."""
    try:
        relative = os.path.relpath(path)
    except ValueError:
        return str(path)
    return relative if len(relative) < len(str(path)) else str(path)
