"""``clawtrace import openclaw``: OpenClaw transcripts into a real gateway, as real processes.

Synthetic transcripts are written the way OpenClaw 2026.9.6 writes them (record
shapes from its session manager and @openclaw/ai types; the SQLite table with
OpenClaw's own DDL, large rows zstd-compressed with their navigation metadata,
WAL mode with a live writer), in both storages: the per-agent SQLite database
and the legacy per-session JSONL files. The last tests run a real OpenClaw
(tests/openclaw.py) and import what it wrote.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from clawtrace.openclaw.mapping import record_seq
from gateway_process import GatewayProcess, free_port
from waiting import wait_for

T0 = datetime(2026, 3, 1, 10, 0, 0, tzinfo=UTC)


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def compact(value: Any) -> str:
    """JSON.stringify's output: no spaces, non-ASCII kept."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# --- records, as OpenClaw writes them -----------------------------------------------------


def thinking(text: str) -> dict[str, Any]:
    return {"type": "thinking", "thinking": text, "thinkingSignature": "reasoning_content"}


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def tool_call(call_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"type": "toolCall", "id": call_id, "name": name, "arguments": arguments}


def usage(
    input: int,
    output: int,
    cache_read: int = 0,
    cache_write: int = 0,
    cost: float = 0.0,
    billed: bool = False,
) -> dict[str, Any]:
    value: dict[str, Any] = {
        "input": input,
        "output": output,
        "cacheRead": cache_read,
        "cacheWrite": cache_write,
        "totalTokens": input + output + cache_read + cache_write,
        "cost": {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0, "total": cost},
    }
    if billed:
        value["cost"]["totalOrigin"] = "provider-billed"
    return value


class Transcript:
    """One session: the header, then entries chained by id / parentId."""

    def __init__(self, session: str, start: datetime, cwd: str = "/home/me/work") -> None:
        self.session = session
        self.records: list[dict[str, Any]] = [
            {"type": "session", "version": 4, "id": session, "timestamp": iso(start), "cwd": cwd}
        ]
        self.parent: str | None = None

    def entry(self, kind: str, at: datetime, **fields: Any) -> dict[str, Any]:
        record = {
            "type": kind,
            **fields,
            "id": str(uuid.uuid4()),
            "parentId": self.parent,
            "timestamp": iso(at),
        }
        self.parent = record["id"]
        self.records.append(record)
        return record

    def start(self, at: datetime, provider: str = "anthropic", model: str = "claude-sonnet-4-5") -> None:
        self.entry("model_change", at, provider=provider, modelId=model)
        self.entry("thinking_level_change", at, thinkingLevel="medium")
        snapshot = {
            "timestamp": ms(at),
            "provider": provider,
            "modelApi": "anthropic-messages",
            "modelId": model,
        }
        self.entry("custom", at, customType="model-snapshot", data=snapshot)

    def user(self, at: datetime, message: str) -> dict[str, Any]:
        body = {
            "role": "user",
            "content": message,
            "timestamp": ms(at) - 5000,
            "__openclaw": {"senderIsOwner": True},
        }
        return self.entry("message", at, message=body)

    def assistant(
        self,
        at: datetime,
        started: datetime,
        content: list[dict[str, Any]],
        used: dict[str, Any],
        stop: str = "toolUse",
        provider: str = "anthropic",
        model: str = "claude-sonnet-4-5",
        **extra: Any,
    ) -> dict[str, Any]:
        body = {
            "role": "assistant",
            "content": content,
            "api": "anthropic-messages",
            "provider": provider,
            "model": model,
            "usage": used,
            "stopReason": stop,
            "timestamp": ms(started),
            "responseId": f"msg_{uuid.uuid4().hex[:12]}",
            **extra,
        }
        return self.entry("message", at, message=body)

    def tool_result(
        self,
        at: datetime,
        call_id: str,
        name: str,
        output: str,
        is_error: bool = False,
        details: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        body = {
            "role": "toolResult",
            "toolCallId": call_id,
            "toolName": name,
            "content": [text(output)],
            "details": details or {},
            "isError": is_error,
            "timestamp": ms(at) - 20,
        }
        return self.entry("message", at, message=body)


def coding_session(session: str, start: datetime, long_output: str = "") -> Transcript:
    """A short coding session: think, run a command, fail a read, answer."""
    t = Transcript(session, start)
    t.start(start + timedelta(milliseconds=20))
    t.user(start + timedelta(seconds=1), "how big is the build dir?")
    t.assistant(
        start + timedelta(seconds=3),
        start + timedelta(seconds=1, milliseconds=500),
        [thinking("I should measure it with du"), tool_call("toolu_01", "exec", {"command": "du -sh build"})],
        usage(1200, 80, cache_read=3000, cache_write=500, cost=0.0123, billed=True),
    )
    t.tool_result(
        start + timedelta(seconds=4),
        "toolu_01",
        "exec",
        long_output or "1.2G\tbuild",
        details={"status": "completed", "exitCode": 0, "durationMs": 812, "aggregated": "1.2G"},
    )
    t.assistant(
        start + timedelta(seconds=6),
        start + timedelta(seconds=4, milliseconds=100),
        [
            thinking("Check the notes too"),
            thinking("Then answer"),
            tool_call("toolu_02", "read", {"path": "/nonexistent/notes.md"}),
        ],
        usage(900, 40),
    )
    t.tool_result(
        start + timedelta(seconds=6, milliseconds=300),
        "toolu_02",
        "read",
        "File not found: /nonexistent/notes.md",
        is_error=True,
        details={"status": "error", "tool": "read", "error": "File not found"},
    )
    t.assistant(
        start + timedelta(seconds=8),
        start + timedelta(seconds=7),
        [text("The build dir is 1.2G.")],
        usage(950, 12, cost=0.002),
        stop="stop",
    )
    return t


# --- the two storages -------------------------------------------------------------------

# OpenClaw 2026.9.6's own DDL (openclaw-agent-board-schema): octet_length(x), SQLite >= 3.43,
# written as length(CAST(x AS BLOB)) for older SQLite libraries.
TRANSCRIPT_DDL = """
CREATE TABLE IF NOT EXISTS transcript_events (
  session_id TEXT NOT NULL,
  seq INTEGER NOT NULL,
  event_json TEXT,
  created_at INTEGER NOT NULL,
  event_zstd BLOB,
  event_utf8_bytes INTEGER CHECK (event_utf8_bytes IS NULL OR event_utf8_bytes >= 0),
  navigation_json TEXT,
  PRIMARY KEY (session_id, seq),
  FOREIGN KEY (session_id) REFERENCES "session_windows"(session_id) ON DELETE CASCADE,
  CHECK (
    (event_json IS NOT NULL AND event_zstd IS NULL)
    OR (
      event_json IS NULL AND event_zstd IS NOT NULL
      AND event_utf8_bytes IS NOT NULL
      AND event_utf8_bytes BETWEEN 1 AND 4194304
      AND length(event_zstd) BETWEEN 1 AND 4194304
      AND navigation_json IS NOT NULL
    )
  ),
  CHECK (
    navigation_json IS NULL OR CASE WHEN json_valid(navigation_json) THEN coalesce(
      length(CAST(navigation_json AS BLOB)) <= 16384
      AND json_type(navigation_json, '$.version') = 'integer'
      AND json_extract(navigation_json, '$.version') = 1
      AND json_type(navigation_json, '$.report') = 'object'
      AND json_extract(navigation_json, '$.report.kind') IN ('canonical', 'leaf', 'link', 'ignored')
      AND json_type(navigation_json, '$.navigation') = 'object'
      AND json_type(navigation_json, '$.reset') = 'object'
      AND json_type(navigation_json, '$.model') = 'object'
      AND json_type(navigation_json, '$.modelBytes') = 'integer'
      AND json_extract(navigation_json, '$.modelBytes') BETWEEN 0 AND 4194304
      AND json_type(navigation_json, '$.modelWithoutCheckpointBytes') = 'integer'
      AND json_extract(navigation_json, '$.modelWithoutCheckpointBytes') BETWEEN 0 AND 4194304
      AND json_type(navigation_json, '$.withoutCustomDataBytes') = 'integer'
      AND json_extract(navigation_json, '$.withoutCustomDataBytes') BETWEEN 0 AND 4194304,
      0) ELSE 0 END
  )
) STRICT;
CREATE TABLE IF NOT EXISTS schema_meta (
  meta_key TEXT NOT NULL PRIMARY KEY,
  role TEXT NOT NULL,
  schema_version INTEGER NOT NULL,
  agent_id TEXT,
  app_version TEXT,
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS transcript_rewrite_watermarks (
  session_id TEXT NOT NULL PRIMARY KEY,
  generation TEXT NOT NULL,
  updated_at INTEGER NOT NULL,
  FOREIGN KEY (session_id) REFERENCES "session_windows"(session_id) ON DELETE CASCADE
) STRICT;
"""


def zstd_compress(data: bytes) -> bytes:
    """A zstd frame with its content size and checksum, as Node's zlib.zstdCompressSync writes it."""
    lib = ctypes.CDLL(ctypes.util.find_library("zstd") or "libzstd.so.1")
    lib.ZSTD_compressBound.restype = ctypes.c_size_t
    lib.ZSTD_compressBound.argtypes = [ctypes.c_size_t]
    lib.ZSTD_compress.restype = ctypes.c_size_t
    lib.ZSTD_compress.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
    ]
    out = ctypes.create_string_buffer(lib.ZSTD_compressBound(len(data)))
    n = lib.ZSTD_compress(out, len(out), data, len(data), 1)
    return out.raw[:n]


class AgentDatabase:
    """``agents/<id>/agent/openclaw-agent.sqlite``, written like OpenClaw: WAL, one row per record."""

    def __init__(self, state: Path, agent: str) -> None:
        self.path = state / "agents" / agent / "agent" / "openclaw-agent.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(self.path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.executescript(TRANSCRIPT_DDL)
        now = int(time.time() * 1000)
        self.conn.execute(
            "INSERT OR IGNORE INTO schema_meta VALUES ('primary', 'agent', 23, ?, '2026.9.6', ?, ?)",
            (agent, now, now),
        )
        self.written: dict[str, int] = {}
        self.compressed = 0

    def append(self, transcript: Transcript) -> None:
        """Write the records not written yet, in one transaction (as OpenClaw appends)."""
        start = self.written.get(transcript.session, 0)
        self.conn.execute("BEGIN IMMEDIATE")
        for position, record in enumerate(transcript.records[start:], start=start):
            event_json = compact(record)
            raw = event_json.encode()
            row: tuple[Any, ...] = (event_json, None, len(raw), None)
            # transcript-payload.ts: rows from 1 KiB without \u escapes are stored compressed.
            if len(raw) >= 1024 and "\\u" not in event_json and record["type"] != "session":
                navigation = {
                    "version": 1,
                    "report": {"kind": "canonical", "hasParentId": record.get("parentId") is not None},
                    "navigation": {
                        "type": record["type"],
                        "id": record["id"],
                        "parentId": record.get("parentId"),
                    },
                    "reset": {},
                    "model": {},
                    "modelBytes": len(raw),
                    "modelWithoutCheckpointBytes": len(raw),
                    "withoutCustomDataBytes": len(raw),
                }
                row = (None, zstd_compress(raw), len(raw), compact(navigation))
                self.compressed += 1
            self.conn.execute(
                "INSERT INTO transcript_events (session_id, seq, event_json, created_at, event_zstd,"
                " event_utf8_bytes, navigation_json) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (transcript.session, position, row[0], int(time.time() * 1000), row[1], row[2], row[3]),
            )
        self.conn.execute(
            "INSERT OR IGNORE INTO transcript_rewrite_watermarks VALUES (?, ?, ?)",
            (transcript.session, uuid.uuid4().hex, int(time.time() * 1000)),
        )
        self.conn.execute("COMMIT")
        self.written[transcript.session] = len(transcript.records)

    def close(self) -> None:
        self.conn.close()


def write_jsonl(path: Path, transcript: Transcript, extra_lines: tuple[str, ...] = ()) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        for record in transcript.records:
            handle.write(compact(record) + "\n")
        for line in extra_lines:
            handle.write(line + "\n")


# --- running the command ----------------------------------------------------------------


def clawtrace_env(gateway: GatewayProcess | None, token: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLAWTRACE_")}
    if gateway is not None:
        env["CLAWTRACE_GATEWAY"] = gateway.http_url
        env["CLAWTRACE_TOKEN"] = token or gateway.token("dev", "agent")
    return env


def run_import(
    gateway: GatewayProcess | None, *args: str, token: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clawtrace", "import", "openclaw", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clawtrace_env(gateway, token),
        stdin=subprocess.DEVNULL,
    )


def summary(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.stdout.strip(), f"no summary; exit {proc.returncode}\n{proc.stderr}"
    value: dict[str, Any] = json.loads(proc.stdout)
    return value


def stored(gateway: GatewayProcess, agent: str) -> list[dict[str, Any]]:
    """The agent's stored events; none while the gateway does not know the agent yet."""
    if gateway.get(f"/api/v1/agents/{agent}").status_code == 404:
        return []
    return gateway.events(agent)


def by_kind(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["kind"] == kind]


# --- tests ------------------------------------------------------------------------------


def test_sqlite_transcripts_become_sessions_with_costs_and_timestamps(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    state = tmp_path / "openclaw"
    long_output = "\n".join(f"{n}\tsrc/module_{n}.py" for n in range(2000))  # compressed row, clipped output
    first = coding_session("4f1c9a52-0000-4000-8000-000000000001", T0, long_output)
    second = coding_session(
        "4f1c9a52-0000-4000-8000-000000000002", T0 + timedelta(seconds=4, milliseconds=500)
    )
    second.entry(
        "compaction",
        T0 + timedelta(seconds=20),
        summary="...",
        firstKeptEntryId=second.parent,
        tokensBefore=181000,
        tokensAfter=12000,
    )
    second.entry("future_thing", T0 + timedelta(seconds=21), payload=1)
    db = AgentDatabase(state, "main")
    db.append(first)
    db.append(second)
    assert db.compressed >= 1

    proc = run_import(gateway, str(state), "--json")
    assert proc.returncode == 0, proc.stderr
    report = summary(proc)
    assert report["sessions"] == 2
    assert report["records"] == len(first.records) + len(second.records)
    # Per session: 3 thoughts, 3 llm_calls, 2 tool_calls, 2 tool_results, 1 log; one compaction; one stopped.
    assert report["events"] == {
        "lifecycle": 2,
        "llm_call": 6,
        "log": 2,
        "thought": 6,
        "tool_call": 4,
        "tool_result": 4,
    }
    assert report["accepted"] == 24 and report["duplicates"] == 0
    assert report["not_mapped"] == {
        "session header": 2,
        "model_change": 2,
        "thinking_level_change": 2,
        "custom": 2,
        "user message": 2,
    }
    assert report["skipped"] == {"unknown record type 'future_thing'": 1}

    events = gateway.events("openclaw-main")
    assert len(events) == 24
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and all(s < 2**53 for s in seqs)
    sessions = gateway.get("/api/v1/agents/openclaw-main/sessions").json()["sessions"]
    assert {s["session"]: s["events"] for s in sessions} == {first.session: 11, second.session: 13}
    # The two sessions overlap in time: one stream for the agent, ordered by time, not by session.
    times = [datetime.fromisoformat(e["ts"]) for e in events]
    assert times == sorted(times)
    order = [e["session"] for e in events]
    assert order.index(second.session) < len(order) - 1 - order[::-1].index(first.session)

    ones = [e for e in events if e["session"] == first.session]
    assert [e["kind"] for e in ones] == [
        "thought",
        "llm_call",
        "tool_call",
        "tool_result",
        "thought",
        "thought",
        "llm_call",
        "tool_call",
        "tool_result",
        "llm_call",
        "log",
    ]
    thought, llm, call, result = ones[:4]
    assistant = first.records[5]
    assert thought["text"] == "I should measure it with du"
    assert thought["ts"] == "2026-03-01T10:00:03Z" and result["ts"] == "2026-03-01T10:00:04Z"
    assert thought["seq"] == record_seq(ms(T0 + timedelta(seconds=3)), 5, first.session)
    assert assistant["message"]["role"] == "assistant"
    assert llm["model"] == "anthropic/claude-sonnet-4-5"
    assert llm["input_tokens"] == 1200 + 3000 + 500 and llm["cached_input_tokens"] == 3000
    assert llm["output_tokens"] == 80 and llm["cost_usd"] == pytest.approx(0.0123)
    assert llm["duration_ms"] == 1500
    assert call == {**call, "call_id": "toolu_01", "tool": "exec", "args": {"command": "du -sh build"}}
    assert result["ok"] is True and result["duration_ms"] == 812 and result["call_id"] == "toolu_01"
    assert result["output"].startswith("0\tsrc/module_0.py\n1\tsrc/module_1.py")
    assert len(result["output"]) < 8200 and result["output"].endswith("more characters]")
    failed = ones[8]
    assert failed["ok"] is False and failed["error"] == "File not found: /nonexistent/notes.md"
    assert "output" not in failed
    unpriced = ones[6]
    assert "cost_usd" not in unpriced  # OpenClaw's 0: no price known, the gateway's table decides
    assert ones[10] == {**ones[10], "stream": "stdout", "line": "The build dir is 1.2G."}
    assert ones[9]["cost_usd"] == pytest.approx(0.002) and ones[9]["duration_ms"] == 1000

    twos = [e for e in events if e["session"] == second.session]
    compacted = twos[-2]
    assert compacted["kind"] == "lifecycle" and compacted["state"] == "compacted"
    assert compacted["reason"] == "context compacted: 181000 tokens -> 12000"
    stopped = twos[-1]
    assert stopped["kind"] == "lifecycle" and stopped["state"] == "stopped" and stopped["seq"] == seqs[-1]
    agent = gateway.get("/api/v1/agents/openclaw-main").json()
    assert agent["lifecycle"] == "stopped" and agent["env"] == "dev"

    # Again, with no local state at all: the same (agent, seq) pairs, all dropped as duplicates.
    # (A legacy JSONL copy of a session OpenClaw migrated into SQLite is not read twice.)
    write_jsonl(state / "agents" / "main" / "sessions" / f"{first.session}.jsonl", first)
    again = run_import(gateway, str(state), "--json", "--env", "dev", token=gateway.token("*", "admin"))
    assert again.returncode == 0, again.stderr
    rerun = summary(again)
    # (The `stopped` goes only to an agent the import created: not sent again.)
    assert rerun["accepted"] == 0 and rerun["duplicates"] == 23 and rerun["missing"] == 0
    assert rerun["not_mapped"]["legacy JSONL record also in SQLite"] == len(first.records)
    assert gateway.events("openclaw-main") == events
    db.close()


def test_legacy_jsonl_transcripts_and_rerun(gateway: GatewayProcess, tmp_path: Path) -> None:
    state = tmp_path / "openclaw"
    t = coding_session("a1b2c3d4-0000-4000-8000-00000000000a", T0)
    sessions = state / "agents" / "Work.Bot" / "sessions"
    write_jsonl(
        sessions / f"{t.session}.jsonl",
        t,
        extra_lines=(
            "{not json",
            '{"type":"message","id":"m1","parentId":null,"timestamp":"2026-03-01T10:00:09.000Z"}',
        ),
    )
    # Archives and indexes next to the transcripts are not transcripts.
    (sessions / f"{t.session}.jsonl.deleted.2026-03-02T00-00-00.000Z").write_text("x\n")
    (sessions / "sessions.json").write_text("{}")

    proc = run_import(gateway, str(state), "--json")
    assert proc.returncode == 0, proc.stderr
    report = summary(proc)
    assert [a["agent"] for a in report["agents"]] == ["openclaw-Work-Bot"]
    assert report["accepted"] == 12 and report["sessions"] == 1
    assert report["skipped"] == {"invalid JSON": 1, "message record without a message": 1}
    events = gateway.events("openclaw-Work-Bot")
    assert [e["kind"] for e in events][:4] == ["thought", "llm_call", "tool_call", "tool_result"]
    assert events[0]["seq"] == record_seq(ms(T0 + timedelta(seconds=3)), 5, t.session)

    # One file, one agent dir, the sessions dir: the same records, the same seqs: nothing new.
    for path, extra in (
        (sessions / f"{t.session}.jsonl", ["--agent", "openclaw-{id}"]),
        (state / "agents" / "Work.Bot", []),
        (sessions, []),
    ):
        again = summary(run_import(gateway, str(path), "--json", *extra))
        assert again["accepted"] == 0 and again["duplicates"] == 11, path
    assert len(gateway.events("openclaw-Work-Bot")) == 12

    # A file outside any agents/<id>/ needs a name, and gets the same events under it.
    loose = tmp_path / "export" / "session.jsonl"
    write_jsonl(loose, t)
    refused = run_import(gateway, str(loose))
    assert refused.returncode != 0 and "--agent NAME" in refused.stderr
    named = summary(run_import(gateway, str(loose), "--agent", "laptop-main", "--json"))
    assert named["accepted"] == 12
    assert [e["seq"] for e in gateway.events("laptop-main")] == [e["seq"] for e in events]


def test_follow_imports_appended_records_and_reports_late_ones(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    state = tmp_path / "openclaw"
    db = AgentDatabase(state, "main")  # stays open: a live writer on the WAL
    now = datetime.now(UTC)
    live = coding_session(str(uuid.uuid4()), now - timedelta(minutes=5))
    db.append(live)
    legacy = coding_session(str(uuid.uuid4()), now - timedelta(minutes=4))
    write_jsonl(state / "agents" / "ops" / "sessions" / f"{legacy.session}.jsonl", legacy)

    follower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "clawtrace",
            "import",
            "openclaw",
            str(state),
            "--follow",
            "--interval",
            "0.2",
            "--settle",
            "0.5",
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clawtrace_env(gateway),
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: len(stored(gateway, "openclaw-main")) == 12, 30, "the first import of main")
        wait_for(lambda: len(stored(gateway, "openclaw-ops")) == 12, 30, "the first import of ops")

        # A new turn in the live session, written while the importer reads.
        at = datetime.now(UTC)
        live.user(at, "and the logs?")
        live.assistant(
            at + timedelta(milliseconds=300),
            at + timedelta(milliseconds=10),
            [thinking("du again, on logs"), tool_call("toolu_09", "exec", {"command": "du -sh logs"})],
            usage(700, 20, cost=0.001),
        )
        live.tool_result(
            at + timedelta(milliseconds=500), "toolu_09", "exec", "20M\tlogs", details={"durationMs": 90}
        )
        db.append(live)
        # A new session in the legacy agent, appended line by line.
        fresh = coding_session(str(uuid.uuid4()), datetime.now(UTC))
        path = state / "agents" / "ops" / "sessions" / f"{fresh.session}.jsonl"
        with path.open("w") as handle:
            for record in fresh.records:
                handle.write(compact(record) + "\n")
                handle.flush()
        wait_for(lambda: len(stored(gateway, "openclaw-main")) == 16, 30, "the new turn of main")
        wait_for(lambda: len(stored(gateway, "openclaw-ops")) == 23, 30, "the new session of ops")
        main = gateway.events("openclaw-main")
        assert [e["kind"] for e in main[-4:]] == ["thought", "llm_call", "tool_call", "tool_result"]
        assert main[-1]["output"] == "20M\tlogs" and main[-1]["duration_ms"] == 90

        # A record dated before what is stored cannot be stored: reported, not silently lost.
        live.tool_result(now - timedelta(minutes=10), "toolu_old", "exec", "late")
        db.append(live)
        time.sleep(1.5)
    finally:
        follower.send_signal(signal.SIGINT)
        out, err = follower.communicate(timeout=30)
        db.close()
    assert follower.returncode == 1, err  # something was not imported: the late record
    report = json.loads(out)
    main_tally = next(a for a in report["agents"] if a["agent"] == "openclaw-main")
    assert main_tally["late"] == 1 and main_tally["accepted"] == 16
    assert any("before what the gateway already has" in w for w in report["warnings"])
    assert len(gateway.events("openclaw-main")) == 16


def test_clear_errors(gateway: GatewayProcess, tmp_path: Path) -> None:
    state = tmp_path / "openclaw"
    db = AgentDatabase(state, "main")
    db.append(coding_session("s-1", T0))
    db.close()
    not_sqlite = tmp_path / "plain.sqlite"
    sqlite3.connect(not_sqlite).execute("CREATE TABLE t (x)").connection.close()
    headless = tmp_path / "headless.jsonl"
    headless.write_text('{"type": "message", "id": "x"}\n')
    text_file = tmp_path / "notes.txt"
    text_file.write_text("hello\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        ([str(tmp_path / "missing")], "no such file or directory"),
        ([str(text_file)], "neither a SQLite database nor a .jsonl transcript"),
        ([str(not_sqlite)], "without OpenClaw transcripts (no transcript_events table)"),
        ([str(headless)], "not an OpenClaw session transcript"),
        ([str(empty)], "no OpenClaw transcripts here"),
        ([str(state), "--agent", "bad/name"], "is not a ClawTrace agent id"),
    ]
    for args, message in cases:
        proc = run_import(gateway, *args)
        assert proc.returncode != 0 and message in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr

    two = tmp_path / "two"
    for agent in ("a", "b"):
        write_jsonl(two / "agents" / agent / "sessions" / "s.jsonl", coding_session(f"s-{agent}", T0))
    merged = run_import(gateway, str(two), "--agent", "one-name")
    assert merged.returncode != 0 and "would merge them" in merged.stderr

    bad_token = run_import(gateway, str(state), token="ct_000000000000_nope")
    assert bad_token.returncode != 0 and "401" in bad_token.stderr and "--token" in bad_token.stderr
    viewer = run_import(gateway, str(state), token=gateway.token("dev", "viewer"))
    assert viewer.returncode != 0 and "403" in viewer.stderr
    no_token = run_import(None, str(state))
    assert no_token.returncode != 0 and "--token" in no_token.stderr

    down = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    proc = run_import(gateway, str(state), "--gateway", down)
    assert (
        proc.returncode != 0 and "cannot reach the gateway" in proc.stderr and "clawtrace up" in proc.stderr
    )
    assert time.monotonic() - started < 20
    assert stored(gateway, "openclaw-main") == []

    dry = run_import(None, str(state), "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert summary(dry)["events"]["llm_call"] == 3 and summary(dry)["dry_run"] is True


# --- a real OpenClaw ----------------------------------------------------------------------


def test_real_openclaw_transcript_with_follow(gateway: GatewayProcess, tmp_path: Path) -> None:
    from openclaw import OpenClawHome, ScriptedModel, ToolCall, Turn, Usage

    script = [
        Turn(
            reasoning="List the numbers first",
            tool_calls=[ToolCall("exec", {"command": "seq 1 400"})],  # > 1 KiB: a compressed row
            usage=Usage(prompt_tokens=1500, completion_tokens=60, cached_tokens=1000, cost=0.0042),
        ),
        Turn(
            reasoning="Now read a file that is not there",
            tool_calls=[ToolCall("read", {"path": "/nonexistent/clawtrace.txt"})],
        ),
        Turn(text="Done: 400 numbers.", usage=Usage(prompt_tokens=800, completion_tokens=9)),
        Turn(reasoning="Second turn: count again", tool_calls=[ToolCall("exec", {"command": "echo second"})]),
        Turn(text="second done"),
    ]
    with ScriptedModel(script) as model:
        home = OpenClawHome(tmp_path / "oc", model)
        proc = home.agent("count to 400, then read the file")
        assert proc.returncode == 0, home.describe(proc)
        follower = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "clawtrace",
                "import",
                "openclaw",
                str(home.state_dir),
                "--follow",
                "--interval",
                "0.3",
                "--settle",
                "1",
                "--json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clawtrace_env(gateway),
            stdin=subprocess.DEVNULL,
        )
        try:

            def stopped() -> bool:
                return any(e["kind"] == "lifecycle" for e in stored(gateway, "openclaw-main"))

            wait_for(stopped, 60, "the first turn")
            # A second turn while the importer follows the live database.
            proc = home.agent("once more")
            assert proc.returncode == 0, home.describe(proc)
            wait_for(
                lambda: any(e.get("line") == "second done" for e in gateway.events("openclaw-main")),
                60,
                "the second turn",
            )
        finally:
            follower.send_signal(signal.SIGTERM)
            out, err = follower.communicate(timeout=30)
    assert follower.returncode == 0, err
    assert model.answered == 5

    events = gateway.events("openclaw-main")
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    thoughts = [e["text"] for e in by_kind(events, "thought")]
    assert thoughts == [
        "List the numbers first",
        "Now read a file that is not there",
        "Second turn: count again",
    ]
    calls = by_kind(events, "llm_call")
    assert len(calls) == 5 and all(c["model"] == "scripted/scripted-1" for c in calls)
    assert calls[0]["input_tokens"] == 1500 and calls[0]["cached_input_tokens"] == 1000
    assert calls[0]["output_tokens"] == 60 and calls[0]["cost_usd"] == pytest.approx(0.0042)
    assert [c["tool"] for c in by_kind(events, "tool_call")] == ["exec", "read", "exec"]
    results = by_kind(events, "tool_result")
    assert results[0]["ok"] is True and results[0]["output"].startswith("1\n2\n3\n")
    assert "400" in results[0]["output"]
    assert results[1]["ok"] is False and "nonexistent" in results[1]["error"]
    assert results[2]["output"] == "second"
    assert [e["line"] for e in by_kind(events, "log")] == ["Done: 400 numbers.", "second done"]
    assert len({e["session"] for e in events}) == 1
    report = json.loads(out)
    assert report["accepted"] == len(events) and report["skipped"] == {}

    # Once more, from scratch: nothing new.
    again = summary(run_import(gateway, str(home.state_dir), "--json"))
    assert again["accepted"] == 0 and again["duplicates"] == len(events) - 1  # all but `stopped`
    assert gateway.events("openclaw-main") == events
