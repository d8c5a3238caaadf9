"""Orchestration of an OpenClaw import: read, map, order, send, follow.

Events go to the gateway's NDJSON endpoint (``POST /v1/events``, docs/protocol.md
section 13) rather than over the agent WebSocket: one post may carry any agent
(an import holds many), the answer says per post how many events were stored
and how many were duplicates (which is how a re-run and a late record are
told apart), it never marks an imported agent "connected" nor replaces a live
connection of the same agent id (close 4009), and a failed post is simply
posted again.

Per ClawTrace agent, events are sorted by seq across all its sessions before
sending: the gateway drops any seq at or below the highest it stored for the
agent and never fills gaps (section 8).
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec

from clawtrace.openclaw.mapping import EVENTS_PER_RECORD, Limits, Mapper, from_ms, seq_time
from clawtrace.openclaw.transcripts import (
    JsonlSource,
    Location,
    RawRecord,
    Source,
    SqliteSource,
    TranscriptError,
    describe_path,
    discover,
    open_source,
)
from clawtrace.protocol.codec import encode
from clawtrace.protocol.messages import Lifecycle

AGENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_:@-]*$")
DEFAULT_TEMPLATE = "openclaw-{id}"
STOPPED_REASON = (
    "imported from OpenClaw transcripts (clawtrace import openclaw): ClawTrace does not watch this "
    "agent's process, so it sends no heartbeats"
)


class ImportFailed(Exception):
    """Stops the import with a message for the user (bad path, gateway down, refused credential)."""


def sanitize(openclaw_id: str) -> str:
    """An OpenClaw agent id as a piece of a ClawTrace agent id (letters, digits, ``_ : @ -``)."""
    return re.sub(r"[^A-Za-z0-9_:@-]", "-", openclaw_id) or "unknown"


def agent_name(template: str, openclaw_id: str | None, path: Path) -> str:
    """The ClawTrace agent id for an OpenClaw agent: ``template`` with ``{id}`` replaced."""
    if "{id}" in template:
        if openclaw_id is None:
            raise ImportFailed(
                f"cannot tell which OpenClaw agent {describe_path(path)} belongs to (it is not under "
                "agents/<id>/); name the ClawTrace agent with --agent NAME"
            )
        name = template.replace("{id}", sanitize(openclaw_id))
    else:
        name = template
    if not AGENT_ID.match(name) or len(name) > 128:
        raise ImportFailed(
            f"--agent: {name!r} is not a ClawTrace agent id (1-128 letters, digits, '_', ':', '@', '-', "
            "starting with a letter or digit)"
        )
    return name


# --- what happened ------------------------------------------------------------------------


@dataclass
class AgentTally:
    agent: str
    openclaw_agent: str | None
    sources: list[str] = field(default_factory=list)
    sessions: set[str] = field(default_factory=set)
    records: int = 0
    events: Counter[str] = field(default_factory=Counter)
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    # Events the gateway could not take because it already had later ones for the agent.
    late: int = 0
    # Two records that came out with the same seq: the second one's event was dropped.
    collisions: int = 0
    # Found missing when checked against the gateway's sessions (None: not checked).
    missing: int | None = None
    last_seq: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "agent": self.agent,
            "openclaw_agent": self.openclaw_agent,
            "sources": self.sources,
            "sessions": len(self.sessions),
            "records": self.records,
            "events": dict(sorted(self.events.items())),
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "late": self.late,
            "collisions": self.collisions,
            "missing": self.missing,
            "last_seq": self.last_seq,
        }


@dataclass
class Report:
    dry_run: bool = False
    agents: dict[str, AgentTally] = field(default_factory=dict)
    not_mapped: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    cold_sessions: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def total(self, name: str) -> int:
        return sum(int(getattr(tally, name)) for tally in self.agents.values())

    @property
    def events(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for tally in self.agents.values():
            out.update(tally.events)
        return out

    @property
    def ok(self) -> bool:
        """Everything read was stored (now or before): nothing rejected, lost or unreadable."""
        return not (
            self.errors
            or self.total("rejected")
            or self.total("late")
            or any(t.missing for t in self.agents.values())
        )

    def add_error(self, message: str) -> None:
        if len(self.errors) < 50:
            self.errors.append(message)

    def add_warning(self, message: str) -> None:
        if len(self.warnings) < 200:
            self.warnings.append(message)

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "agents": [tally.to_json() for tally in self.agents.values()],
            "sessions": sum(len(t.sessions) for t in self.agents.values()),
            "records": self.total("records"),
            "events": dict(sorted(self.events.items())),
            "accepted": self.total("accepted"),
            "duplicates": self.total("duplicates"),
            "rejected": self.total("rejected"),
            "late": self.total("late"),
            "collisions": self.total("collisions"),
            "missing": sum(t.missing or 0 for t in self.agents.values()),
            "not_mapped": dict(self.not_mapped.most_common()),
            "skipped": dict(self.skipped.most_common()),
            "cold_sessions": self.cold_sessions,
            "errors": self.errors,
            "warnings": self.warnings,
            "ok": self.ok,
        }


# --- sending ------------------------------------------------------------------------------


@dataclass(slots=True)
class Pending:
    """One encoded event waiting to be sent."""

    seq: int
    ms: int
    line: bytes
    kind: str
    session: str
    reread: bool = False
    # When it was read (time.monotonic()), for --follow's settling.
    read_at: float = 0.0


@dataclass(slots=True)
class PostResult:
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    ack: int | None = None
    # Events the gateway dropped as at or below what it had stored.
    dropped: list[Pending] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


_RETRY_STATUS = frozenset({429, 502, 503, 504})
_HINTS = {
    401: "check --token / CLAWTRACE_TOKEN",
    403: "use an agent (or admin) credential for the environment (--env, --token)",
}


def _error_message(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        return f"{response.status_code}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return f"{response.status_code}: {response.text.strip()[:300] or response.reason_phrase}"


class TooLarge(Exception):
    """413: the gateway wants smaller posts."""


class NdjsonSender:
    """Posts events to ``POST /v1/events``, retrying with backoff while the gateway is away.

    A gateway that was never reached in this run gets ``first_contact`` seconds (a
    wrong URL should fail fast); after that, a post is retried for ``retry_for``
    seconds (a restart), forever with ``retry_for=inf`` (``--follow``).
    """

    def __init__(
        self,
        http: httpx.Client,
        *,
        env: str | None = None,
        batch_events: int = 1000,
        batch_bytes: int = 512 * 1024,
        retry_for: float = 60.0,
        first_contact: float = 3.0,
        on_wait: Callable[[str, float], None] | None = None,
        sleep: Callable[[float], Any] = time.sleep,
    ) -> None:
        self.http = http
        self.env = env
        self.batch_events = batch_events
        self.batch_bytes = batch_bytes
        self.retry_for = retry_for
        self.first_contact = first_contact
        self.on_wait = on_wait
        self.sleep = sleep
        self.reached = False

    @property
    def base(self) -> str:
        return str(self.http.base_url).rstrip("/")

    def _params(self) -> dict[str, str]:
        return {"env": self.env} if self.env else {}

    def _request(self, body: bytes) -> dict[str, Any]:
        delay = 0.25
        deadline: float | None = None
        while True:
            try:
                response = self.http.post(
                    "/v1/events",
                    params=self._params(),
                    content=body,
                    headers={"Content-Type": "application/x-ndjson"},
                )
            except httpx.TransportError as exc:
                if type(exc).__name__ == "CertificateRefused":
                    raise ImportFailed(str(exc)) from None
                problem = f"cannot reach the gateway at {self.base} ({exc or type(exc).__name__})"
            else:
                if response.status_code == 200:
                    self.reached = True
                    try:
                        answer: dict[str, Any] = response.json()
                    except ValueError:
                        raise ImportFailed(
                            f"{self.base} answered {response.text[:200]!r}: "
                            "is it a ClawTrace gateway? (--gateway)"
                        ) from None
                    return answer
                if response.status_code == 413:
                    raise TooLarge(_error_message(response))
                message = _error_message(response)
                if response.status_code not in _RETRY_STATUS:
                    hint = _HINTS.get(response.status_code)
                    if response.status_code == 404:
                        hint = "is --gateway the ClawTrace gateway's URL?"
                    raise ImportFailed(
                        f"the gateway refused the events: {message}" + (f" ({hint})" if hint else "")
                    )
                self.reached = True
                problem = f"the gateway is unavailable ({message})"
            budget = self.retry_for if self.reached else self.first_contact
            now = time.monotonic()
            if deadline is None:
                deadline = now + budget
            if now + delay > deadline:
                hint = "" if self.reached else "; is `clawtrace up` running? (--gateway)"
                raise ImportFailed(f"{problem}{hint}")
            if self.on_wait is not None:
                self.on_wait(problem, delay)
            self.sleep(delay)
            delay = min(delay * 2, 10.0)

    def check(self) -> None:
        """An empty post: checks the gateway, the credential and the environment before reading anything."""
        self._request(b"")

    def batches(self, items: list[Pending]) -> Iterable[list[Pending]]:
        batch: list[Pending] = []
        size = 0
        for item in items:
            if batch and (len(batch) >= self.batch_events or size + len(item.line) + 1 > self.batch_bytes):
                yield batch
                batch, size = [], 0
            batch.append(item)
            size += len(item.line) + 1
        if batch:
            yield batch

    def post(self, agent: str, batch: list[Pending]) -> PostResult:
        """Post one batch of one agent's events (in seq order); splits it on 413."""
        try:
            answer = self._request(b"\n".join(item.line for item in batch))
        except TooLarge as exc:
            if len(batch) == 1:
                return PostResult(
                    rejected=1, errors=[f"event seq {batch[0].seq} too large for the gateway: {exc}"]
                )
            half = len(batch) // 2
            self.batch_events = max(1, min(self.batch_events, half))
            first, second = self.post(agent, batch[:half]), self.post(agent, batch[half:])
            first.accepted += second.accepted
            first.duplicates += second.duplicates
            first.rejected += second.rejected
            first.ack = second.ack if second.ack is not None else first.ack
            first.dropped += second.dropped
            first.errors += second.errors
            return first
        errors = answer.get("errors") or []
        rejected_seqs = {e.get("seq") for e in errors if isinstance(e, dict)}
        result = PostResult(
            accepted=int(answer.get("accepted") or 0),
            duplicates=int(answer.get("duplicates") or 0),
            rejected=len(errors),
            ack=(answer.get("acks") or {}).get(agent),
        )
        for error in errors[:20]:
            if isinstance(error, dict):
                result.errors.append(f"seq {error.get('seq')}: {error.get('code')}: {error.get('message')}")
        # In seq order, the gateway drops exactly the lowest ones: those at or below what it had.
        valid = [item for item in batch if item.seq not in rejected_seqs]
        result.dropped = valid[: result.duplicates]
        return result

    def sessions(self, agent: str) -> dict[str, int] | None:
        """Stored events per session of ``agent``, or None when this credential cannot read."""
        try:
            response = self.http.get(f"/api/v1/agents/{agent}/sessions")
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        try:
            return {str(s["session"]): int(s["events"]) for s in response.json()["sessions"]}
        except (ValueError, KeyError, TypeError):
            return None


# --- the import ---------------------------------------------------------------------------


@dataclass
class _Agent:
    name: str
    tally: AgentTally
    mapper: Mapper
    sources: dict[Path, Source] = field(default_factory=dict)
    pending: list[Pending] = field(default_factory=list)
    # The highest seq the gateway has stored for the agent, once a post told us.
    ack: int | None = None
    stopped_sent: bool = False
    # Duplicates in the answer to this run's first post of the agent (None: not posted yet).
    first_duplicates: int | None = None
    session_events: Counter[str] = field(default_factory=Counter)


ProgressFn = Callable[[str, int, int | None], None]


class Importer:
    """Reads the transcripts under ``path`` and sends their events with ``sender``
    (None: a dry run, nothing is sent)."""

    def __init__(
        self,
        path: Path,
        sender: NdjsonSender | None,
        *,
        template: str = DEFAULT_TEMPLATE,
        follow: bool = False,
        settle: float = 2.0,
        limits: Limits | None = None,
        on_progress: ProgressFn | None = None,
        on_sent: Callable[[str, int, int], None] | None = None,
        on_warning: Callable[[str], None] | None = None,
    ) -> None:
        self.path = path
        self.sender = sender
        self.template = template
        self.follow = follow
        self.settle = settle
        self.limits = limits or Limits()
        self.on_progress = on_progress
        self.on_sent = on_sent
        self.on_warning = on_warning
        self.report = Report(dry_run=sender is None)
        self.agents: dict[str, _Agent] = {}
        self._read = 0
        self._warned: set[str] = set()
        self._located = False

    # --- discovery ---
    def locate(self) -> None:
        """Find the transcripts (again: new agents and sessions appear while following)."""
        try:
            found = discover(self.path)
        except TranscriptError as exc:
            if self._located:
                self._warn(str(exc))
                return
            raise ImportFailed(str(exc)) from None
        if not self._located:
            openclaw_ids = sorted({loc.openclaw_agent or "?" for loc in found.locations})
            if "{id}" not in self.template and len(openclaw_ids) > 1:
                raise ImportFailed(
                    f"{describe_path(self.path)} holds {len(openclaw_ids)} OpenClaw agents "
                    f"({', '.join(openclaw_ids[:10])}); --agent {self.template} would merge them into one "
                    "ClawTrace agent: give a template with {id}, e.g. --agent 'prod-{id}'"
                )
            if not found.locations and not (self.follow and found.is_state_dir):
                raise ImportFailed(
                    f"{describe_path(self.path)}: an OpenClaw state dir without transcripts yet "
                    "(no agents/<id>/agent/openclaw-agent.sqlite, no sessions/*.jsonl); "
                    "use --follow to wait for them"
                )
        self._located = True
        for location in found.locations:
            self._add(location)

    def _add(self, location: Location) -> None:
        name = agent_name(self.template, location.openclaw_agent, location.path)
        agent = self.agents.get(name)
        if agent is not None and agent.tally.openclaw_agent != location.openclaw_agent:
            # --agent without {id}, and a second OpenClaw agent appeared while following.
            self._warn(
                f"{describe_path(location.path)}: OpenClaw agent {location.openclaw_agent!r} is not "
                f"imported: --agent {self.template} already names agent {agent.tally.openclaw_agent!r}"
            )
            return
        if agent is None:
            tally = self.report.agents.setdefault(name, AgentTally(name, location.openclaw_agent))
            agent = self.agents[name] = _Agent(name, tally, Mapper(name, self.limits))
        if location.path in agent.sources:
            return
        agent.sources[location.path] = open_source(location, final=not self.follow)
        agent.tally.sources.append(str(location.path))

    def _warn(self, message: str) -> None:
        if message in self._warned:
            return
        self._warned.add(message)
        self.report.add_warning(message)
        if self.on_warning is not None:
            self.on_warning(message)

    # --- reading ---
    def _read_agent(self, agent: _Agent) -> int:
        """Map what is new in the agent's sources into ``agent.pending``; returns records read."""
        records = 0
        sqlite_sessions: set[str] = set()
        ordered = sorted(agent.sources.values(), key=lambda s: (s.kind != "sqlite", str(s.path)))
        for source in ordered:
            try:
                for record in source.read_new():
                    if isinstance(source, JsonlSource) and record.session in sqlite_sessions:
                        # A legacy file kept after OpenClaw imported it into SQLite.
                        self.report.not_mapped["legacy JSONL record also in SQLite"] += 1
                        continue
                    records += 1
                    self._map(agent, record)
            except TranscriptError as exc:
                if not self.follow:
                    self.report.add_error(str(exc))
                self._warn(f"cannot read {exc}")
                continue
            if isinstance(source, SqliteSource):
                sqlite_sessions |= source.sessions
            elif source.not_transcript:
                self._warn(f"{describe_path(source.path)}: no session header on its first line; not imported")
        cold = sum(s.cold_sessions for s in agent.sources.values())
        if cold:
            self._warn(
                f"{agent.name}: {cold} session(s) are in OpenClaw's cold storage (compressed archives) and "
                "were not imported; opening them in OpenClaw restores them, then import again"
            )
        return records

    def _map(self, agent: _Agent, record: RawRecord) -> None:
        tally = agent.tally
        tally.records += 1
        tally.sessions.add(record.session)
        mapped = agent.mapper.map(record)
        if mapped.skipped is not None:
            self.report.skipped[mapped.skipped] += 1
        elif mapped.ignored:
            self.report.not_mapped[mapped.what] += 1
        if mapped.overflow:
            self.report.skipped[f"more than {EVENTS_PER_RECORD} events in one record (the rest dropped)"] += (
                mapped.overflow
            )
        now = time.monotonic()
        for event in mapped.events:
            kind = type(event).__struct_config__.tag
            assert isinstance(kind, str)
            agent.pending.append(
                Pending(event.seq, mapped.ms, encode(event), kind, event.session, record.reread, now)
            )
        self._read += 1
        if self.on_progress is not None and self._read % 500 == 0:
            self.on_progress("read", self._read, None)

    # --- one pass ---
    def poll(self) -> int:
        """Read what is new everywhere and send what is ready; returns events stored."""
        stored = 0
        if self.follow or not self._located:
            self.locate()
        for agent in list(self.agents.values()):
            self._read_agent(agent)
            stored += self._flush(agent)
        self.report.cold_sessions = sum(
            s.cold_sessions for a in self.agents.values() for s in a.sources.values()
        )
        return stored

    def _ready(self, agent: _Agent) -> list[Pending]:
        if not self.follow:
            ready, agent.pending = agent.pending, []
        else:
            # Hold what was read in the last `settle` seconds: a record of another session written
            # at the same moment may not be readable yet, and once later seqs are stored it could
            # not be. What goes: everything up to the highest seq read `settle` seconds ago
            # (records read since but dated before it included). Needs no clock agreement with
            # OpenClaw's timestamps.
            settled = time.monotonic() - self.settle
            old = [p.seq for p in agent.pending if p.read_at <= settled]
            if not old:
                return []
            cutoff = max(old)
            ready = [p for p in agent.pending if p.seq <= cutoff]
            agent.pending = [p for p in agent.pending if p.seq > cutoff]
        ready.sort(key=lambda p: p.seq)
        out: list[Pending] = []
        for item in ready:
            if out and out[-1].seq == item.seq:
                if out[-1].line != item.line:
                    agent.tally.collisions += 1
                    self.report.skipped["seq collision with another record of the same millisecond"] += 1
                continue
            out.append(item)
        return out

    def _flush(self, agent: _Agent) -> int:
        items = self._ready(agent)
        if agent.ack is not None:
            late = [p for p in items if p.seq <= agent.ack]
            items = [p for p in items if p.seq > agent.ack]
            self._late(agent, late)
        if not items:
            return 0
        stopped = None if agent.stopped_sent else self._stopped(agent, items[-1])
        agent.stopped_sent = True
        if self.sender is None:
            self._count(agent, items if stopped is None else [*items, stopped])
            return 0
        stored = self._send(agent, items)
        # `stopped` only for an agent this import created: one the gateway already had events
        # of (a re-run) keeps the lifecycle it has, and a re-run stores nothing at all.
        if stopped is not None and agent.first_duplicates == 0:
            stored += self._send(agent, [stopped])
        if self.on_sent is not None and stored:
            self.on_sent(agent.name, stored, len({i.session for i in items}))
        return stored

    def _stopped(self, agent: _Agent, last: Pending) -> Pending | None:
        """A ``lifecycle stopped`` right after the agent's last event (same record, next index).

        The gateway's DeadNode rule takes an agent without heartbeats for dead 45 s after its
        last event, unless its last process state is ``stopped`` (alerts/sample.py); an
        imported agent has no process ClawTrace watches."""
        if last.seq % EVENTS_PER_RECORD >= EVENTS_PER_RECORD - 1:
            return None
        event = Lifecycle(
            state="stopped",
            reason=STOPPED_REASON,
            seq=last.seq + 1,
            ts=from_ms(last.ms),
            session=last.session,
            agent=agent.name,
        )
        return Pending(event.seq, last.ms, encode(event), "lifecycle", last.session)

    def _count(self, agent: _Agent, items: list[Pending]) -> None:
        for item in items:
            agent.tally.events[item.kind] += 1
            agent.session_events[item.session] += 1

    def _send(self, agent: _Agent, items: list[Pending]) -> int:
        assert self.sender is not None
        tally = agent.tally
        self._count(agent, items)
        stored = done = 0
        for batch in self.sender.batches(items):
            result = self.sender.post(agent.name, batch)
            if agent.first_duplicates is None:
                agent.first_duplicates = result.duplicates
            tally.accepted += result.accepted
            tally.rejected += result.rejected
            for error in result.errors:
                self.report.add_error(f"{agent.name}: {error}")
            if result.ack is not None:
                agent.ack = tally.last_seq = max(agent.ack or 0, result.ack)
            stored += result.accepted
            if result.dropped:
                self._dropped(agent, result.dropped)
            done += len(batch)
            if self.on_progress is not None:
                self.on_progress(f"send {agent.name}", done, len(items))
        return stored

    def _dropped(self, agent: _Agent, dropped: list[Pending]) -> None:
        # Before the first answer nothing tells a re-run from a late record: counted as
        # duplicates, and verify() checks them against the gateway at the end.
        agent.tally.duplicates += len(dropped)

    def _late(self, agent: _Agent, late: list[Pending]) -> None:
        reread = [p for p in late if p.reread]
        agent.tally.duplicates += len(reread)
        lost = [p for p in late if not p.reread]
        if not lost:
            return
        agent.tally.late += len(lost)
        sessions = sorted({p.session for p in lost})
        assert agent.ack is not None
        self._warn(
            f"{agent.name}: {len(lost)} new event(s) of session(s) {', '.join(sessions[:5])} are dated "
            f"{_when(from_ms(min(p.ms for p in lost)))}, before what the gateway already has for the agent "
            f"(up to {_when(seq_time(agent.ack))}); it keeps one ordered stream per agent and never fills "
            "gaps (docs/protocol.md section 8), so they were not stored. Import them into another agent "
            "id (--agent) to keep them"
        )

    # --- runs ---
    def run(self) -> Report:
        """One import of everything there is now."""
        if self.sender is not None:
            self.sender.check()
        self.poll()
        self.verify()
        return self.report

    def verify(self) -> None:
        """For agents where the gateway dropped events: compare stored counts per session, when
        the credential may read, and report sessions with fewer events than were sent."""
        if self.sender is None:
            return
        for agent in self.agents.values():
            if not agent.tally.duplicates:
                continue
            stored = self.sender.sessions(agent.name)
            if stored is None:
                continue
            missing = 0
            for session, count in agent.session_events.items():
                lacking = count - stored.get(session, 0)
                if lacking > 0:
                    missing += lacking
                    self._warn(
                        f"{agent.name}: session {session} has {stored.get(session, 0)} events on the "
                        f"gateway, {count} in the transcript: {lacking} were dated before what the agent "
                        "already had and were not stored (the gateway never fills gaps, docs/protocol.md "
                        "section 8); import them into another agent id (--agent) to keep them"
                    )
            agent.tally.missing = missing

    def run_follow(self, stop: threading.Event, interval: float = 1.0) -> Report:
        """Import, then poll every ``interval`` s for new records until ``stop`` is set."""
        if self.sender is not None:
            self.sender.check()
        while not stop.is_set():
            try:
                self.poll()
            except TranscriptError as exc:
                self._warn(str(exc))
            if stop.wait(interval):
                break
        # On the way out, what was held back for settling goes too.
        self.settle = 0.0
        for agent in self.agents.values():
            self._flush(agent)
        return self.report


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def summary_rows(report: Report) -> list[tuple[str, ...]]:
    """One row per agent for the summary table."""
    rows: list[tuple[str, ...]] = []
    for tally in report.agents.values():
        rows.append(
            (
                tally.agent,
                tally.openclaw_agent or "-",
                str(len(tally.sessions)),
                str(tally.records),
                str(sum(tally.events.values())),
                str(tally.accepted),
                str(tally.duplicates),
                str(tally.rejected + tally.late + (tally.missing or 0)),
            )
        )
    return rows


def kinds_line(events: Counter[str]) -> str:
    order = ("thought", "llm_call", "tool_call", "tool_result", "log", "lifecycle")
    parts = [f"{events[k]} {k}" for k in order if events.get(k)]
    parts += [f"{n} {k}" for k, n in sorted(events.items()) if k not in order]
    return ", ".join(parts) or "none"


def to_json_bytes(report: Report) -> bytes:
    return msgspec.json.format(msgspec.json.encode(report.to_json()), indent=2)
