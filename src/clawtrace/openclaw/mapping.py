"""OpenClaw transcript records -> ClawTrace protocol events.

* assistant message: one ``thought`` per non-empty ``thinking`` block, one
  ``llm_call`` (``provider/model``; tokens and cost from ``usage``), one ``log``
  (stdout) per non-empty ``text`` block, one ``tool_call`` per ``toolCall``
  block, and a ``log`` (stderr) when the model call failed or was aborted;
* ``toolResult`` message: ``tool_result`` (``ok`` = not ``isError``);
* ``compaction`` / ``reset``: ``lifecycle`` ``compacted`` / ``reset`` (events
  only; not process states);
* the session header, user messages, model and thinking-level changes, custom
  and label entries, assistant messages OpenClaw wrote itself (delivery
  mirrors): nothing (counted as not mapped).

**Sequence numbers** are a pure function of the record, so that importing the
same transcript twice yields the same ``(agent, seq)`` pairs, which the gateway
drops as duplicates (docs/protocol.md section 8)::

    seq = (ms - ms_2025) * 10_000 + ((position % 10) * 10 + crc32(session) % 10) * 100 + index

``ms`` is the record's timestamp (epoch milliseconds), ``ms_2025`` that of
2025-01-01T00:00:00Z, ``position`` the record's place in its session's storage
(SQLite ``seq`` / JSONL line), ``index`` the event's place among the record's
events (at most 100). Every seq stays below 2**53, exact in JavaScript.
Sequence numbers therefore follow time across all the sessions of an agent;
records of the same millisecond are ordered by their position in their session.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeGuard

import msgspec

from clawtrace.openclaw.transcripts import RawRecord
from clawtrace.protocol.messages import Event, Lifecycle, LlmCall, Log, Thought, ToolCall, ToolResult

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Sequence numbers stay below 2**53, the largest integer a JSON number keeps exactly in
# JavaScript (the console's live tail and other JS clients compare and page by seq): time
# counts in ms from 2025-01-01 (before any OpenClaw transcript), 10,000 seqs per ms. That lasts
# until 2053.
SEQ_EPOCH_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z
SEQ_PER_MS = 10_000
EVENTS_PER_RECORD = 100
MAX_SEQ = 2**53 - 1
MAX_MS = SEQ_EPOCH_MS + MAX_SEQ // SEQ_PER_MS - 1

MAX_ID = 200  # call_id, tool, session: 1-200 characters (protocol)
DEFAULT_MAX_OUTPUT = 8_000


@dataclass(frozen=True, slots=True)
class Limits:
    """Caps that keep every event far below the gateway's frame limit."""

    text: int = 32_000  # thought / log text, characters
    output: int = DEFAULT_MAX_OUTPUT  # tool_result output
    error: int = 4_000  # tool_result error
    arg: int = 8_000  # each string inside tool_call args
    args: int = 64_000  # all of tool_call args, encoded


@dataclass(slots=True)
class Mapped:
    """What one record became: its events, a label for counting, and why nothing came of it."""

    events: list[Event]
    what: str
    # A problem: the record could not be mapped (counted as skipped, with this reason).
    skipped: str | None = None
    # Known and fine, but nothing in ClawTrace corresponds (counted as not mapped).
    ignored: bool = False
    # Events beyond EVENTS_PER_RECORD, dropped.
    overflow: int = 0
    ms: int = 0


def session_digit(session: str) -> int:
    return zlib.crc32(session.encode("utf-8", "surrogatepass")) % 10


def record_seq(ms: int, position: int, session: str) -> int:
    """The seq of a record's first event (its others follow: + 1, + 2, ...)."""
    slot = (position % 10) * 10 + session_digit(session)
    return (ms - SEQ_EPOCH_MS) * SEQ_PER_MS + slot * EVENTS_PER_RECORD


def seq_time(seq: int) -> datetime:
    """The millisecond a seq made by ``record_seq`` stands for."""
    return EPOCH + timedelta(milliseconds=SEQ_EPOCH_MS + seq // SEQ_PER_MS)


def to_ms(value: Any) -> int | None:
    """Epoch milliseconds from an ISO 8601 string or a number of ms; None if neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        if not math.isfinite(value):
            return None
        ms = int(value)
    elif isinstance(value, str) and value:
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        ms = (moment - EPOCH) // timedelta(milliseconds=1)
    else:
        return None
    return ms if ms >= 1 else None


def from_ms(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


def clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [{len(text) - limit} more characters]"


def _clip_value(value: Any, limit: int, depth: int = 0) -> Any:
    if isinstance(value, str):
        return clip(value, limit)
    if depth > 20:
        return "…"
    if isinstance(value, dict):
        return {str(k): _clip_value(v, limit, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        items = [_clip_value(v, limit, depth + 1) for v in value[:500]]
        if len(value) > 500:
            items.append(f"… [{len(value) - 500} more items]")
        return items
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def clip_args(value: Any, limits: Limits) -> dict[str, Any]:
    args = value if isinstance(value, dict) else {"arguments": value}
    clipped: dict[str, Any] = _clip_value(args, limits.arg)
    if len(msgspec.json.encode(clipped)) > limits.args:
        clipped = _clip_value(args, 500)
        if len(msgspec.json.encode(clipped)) > limits.args:
            clipped = {"arguments": clip(msgspec.json.encode(clipped).decode(), limits.args // 2)}
    return clipped


def _ident(value: Any, fallback: str) -> str:
    text = value if isinstance(value, str) and value else fallback
    return text[:MAX_ID]


def _number(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return 0
    return max(0, int(value))


def content_text(content: Any) -> str:
    """The text of a message's content (a string, or blocks): text blocks joined, images named."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    parts: list[str] = []
    for block in content:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            parts.append(block["text"])
        elif block.get("type") == "image":
            parts.append(f"[image {block.get('mimeType') or ''}]".replace(" ]", "]"))
    return "\n".join(parts)


# Record types OpenClaw writes that have no ClawTrace counterpart.
QUIET_TYPES = frozenset(
    {
        "model_change",
        "thinking_level_change",
        "custom",
        "custom_message",
        "label",
        "session_info",
        "branch_summary",
        "leaf",
    }
)
QUIET_ROLES = frozenset({"user", "bashExecution", "custom", "branchSummary", "compactionSummary"})


@dataclass
class Mapper:
    """Maps the records of one ClawTrace agent (all its sessions, in any order)."""

    agent: str
    limits: Limits = field(default_factory=Limits)
    # (session, call id) -> ms of the assistant message that made the call, for
    # the duration of tool results that do not report one.
    _calls: dict[tuple[str, str], int] = field(default_factory=dict)

    def map(self, record: RawRecord) -> Mapped:
        data = record.data
        if data is None:
            return Mapped([], "unreadable record", skipped=record.problem or "unreadable")
        kind = data.get("type")
        if not isinstance(kind, str):
            return Mapped([], "record without type", skipped="record without a type")
        if kind == "session":
            return Mapped([], "session header", ignored=True)
        if kind in QUIET_TYPES:
            return Mapped([], kind, ignored=True)
        if kind not in ("message", "compaction", "reset"):
            return Mapped([], kind, skipped=f"unknown record type {kind[:60]!r}")
        message = data.get("message") if kind == "message" else None
        ms = to_ms(data.get("timestamp"))
        if ms is None and isinstance(message, dict):
            ms = to_ms(message.get("timestamp"))
        if ms is None and record.stored_ms is not None:
            ms = to_ms(record.stored_ms)
        if ms is None:
            return Mapped([], kind, skipped="no valid timestamp")
        if not SEQ_EPOCH_MS < ms <= MAX_MS:
            return Mapped([], kind, skipped="dated before 2025 or after 2053 (outside the seq scheme)")
        session = record.session[:MAX_ID] or "-"
        if kind == "compaction":
            before, after = data.get("tokensBefore"), data.get("tokensAfter")
            reason = "context compacted"
            if isinstance(before, int | float):
                reason += f": {_count(before)} tokens"
                if isinstance(after, int | float):
                    reason += f" -> {_count(after)}"
            events: list[Event] = [
                Lifecycle(state="compacted", reason=reason, seq=0, ts=EPOCH, session=session)
            ]
            return self._finish(events, "compaction", record, ms)
        if kind == "reset":
            why = data.get("reason")
            reason = f"history reset ({why})" if isinstance(why, str) and why else "history reset"
            events = [Lifecycle(state="reset", reason=reason, seq=0, ts=EPOCH, session=session)]
            return self._finish(events, "reset", record, ms)
        if not isinstance(message, dict):
            return Mapped([], "message", skipped="message record without a message")
        role = message.get("role")
        if role == "assistant":
            return self._assistant(message, record, session, ms)
        if role == "toolResult":
            return self._tool_result(message, record, session, ms)
        if isinstance(role, str) and role in QUIET_ROLES:
            return Mapped([], f"{role} message", ignored=True)
        return Mapped([], "message", skipped=f"unknown message role {str(role)[:60]!r}")

    def _finish(self, events: list[Event], what: str, record: RawRecord, ms: int) -> Mapped:
        overflow = max(0, len(events) - EVENTS_PER_RECORD)
        events = events[:EVENTS_PER_RECORD]
        base = record_seq(ms, record.position, record.session)
        ts = from_ms(ms)
        for index, event in enumerate(events):
            event.seq = base + index
            event.ts = ts
            event.agent = self.agent
        return Mapped(events, what, overflow=overflow, ms=ms)

    def _assistant(self, message: dict[str, Any], record: RawRecord, session: str, ms: int) -> Mapped:
        provider = message.get("provider")
        if (
            provider == "openclaw"
            or message.get("api") == "openclaw-transcript"
            or "openclawDeliveryMirror" in message
        ):
            # Written by OpenClaw itself (delivery mirrors, injected replies): no model was called.
            return Mapped([], "openclaw-authored assistant message", ignored=True)
        limits = self.limits
        content = message.get("content")
        blocks: list[Any] = content if isinstance(content, list) else [{"type": "text", "text": content}]
        thoughts: list[Event] = []
        rest: list[Event] = []
        for block in blocks:
            if not isinstance(block, dict):
                continue
            btype = block.get("type")
            if btype == "thinking":
                text = block.get("thinking")
                if isinstance(text, str) and text.strip():
                    thoughts.append(Thought(text=clip(text, limits.text), seq=0, ts=EPOCH, session=session))
                elif block.get("redacted"):
                    thoughts.append(
                        Thought(text="[thinking redacted by the provider]", seq=0, ts=EPOCH, session=session)
                    )
            elif btype == "text":
                text = block.get("text")
                if isinstance(text, str) and text.strip():
                    rest.append(
                        Log(stream="stdout", line=clip(text, limits.text), seq=0, ts=EPOCH, session=session)
                    )
            elif btype == "toolCall":
                call_id = _ident(block.get("id"), f"{session[:100]}:{record.position}:{len(rest)}")
                self._calls[(record.session, call_id)] = ms
                if len(self._calls) > 10_000:
                    del self._calls[next(iter(self._calls))]
                rest.append(
                    ToolCall(
                        call_id=call_id,
                        tool=_ident(block.get("name"), "unknown"),
                        args=clip_args(block.get("arguments", {}), limits),
                        seq=0,
                        ts=EPOCH,
                        session=session,
                    )
                )
        usage = message.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        cost_block = usage.get("cost")
        cost: float | None = None
        if isinstance(cost_block, dict):
            total = cost_block.get("total")
            # OpenClaw writes 0 when it has no price for the model: let the gateway's price table decide.
            if _number(total) and (total > 0 or cost_block.get("totalOrigin") == "provider-billed"):
                cost = max(0.0, float(total))
        cache_read = _count(usage.get("cacheRead"))
        model = message.get("model") if isinstance(message.get("model"), str) else ""
        if isinstance(provider, str) and provider and model:
            model = f"{provider}/{model}"
        started = to_ms(message.get("timestamp"))
        duration = float(ms - started) if started is not None and 0 <= ms - started <= 3_600_000 else 0.0
        llm = LlmCall(
            model=model or (provider if isinstance(provider, str) and provider else "unknown"),
            # ClawTrace counts every prompt token in input_tokens, cached ones included;
            # OpenClaw's `input` leaves out cache reads and writes.
            input_tokens=_count(usage.get("input")) + cache_read + _count(usage.get("cacheWrite")),
            output_tokens=_count(usage.get("output")),
            cached_input_tokens=cache_read,
            duration_ms=duration,
            cost_usd=cost,
            seq=0,
            ts=EPOCH,
            session=session,
        )
        stop = message.get("stopReason")
        if stop in ("error", "aborted"):
            detail = message.get("errorMessage")
            line = f"model call {'failed' if stop == 'error' else 'aborted'}"
            if isinstance(detail, str) and detail:
                line += f": {detail}"
            rest.append(Log(stream="stderr", line=clip(line, limits.text), seq=0, ts=EPOCH, session=session))
        # Thoughts before the call that produced them: ClawTrace's reasoning latency is the
        # llm_call's duration when one follows a thought (metrics/agent.py).
        return self._finish([*thoughts, llm, *rest], "assistant message", record, ms)

    def _tool_result(self, message: dict[str, Any], record: RawRecord, session: str, ms: int) -> Mapped:
        call_id = _ident(message.get("toolCallId"), f"{session[:100]}:{record.position}")
        is_error = bool(message.get("isError"))
        text = content_text(message.get("content"))
        details = message.get("details")
        duration: float | None = None
        if isinstance(details, dict):
            reported = details.get("durationMs")
            if _number(reported):
                duration = max(0.0, float(reported))
        called = self._calls.pop((record.session, call_id), None)
        if duration is None:
            done = to_ms(message.get("timestamp")) or ms
            duration = float(done - called) if called is not None and done >= called else 0.0
        result = ToolResult(
            call_id=call_id,
            ok=not is_error,
            duration_ms=duration,
            error=clip(text or "tool call failed", self.limits.error) if is_error else None,
            output=clip(text, self.limits.output) if text and not is_error else None,
            seq=0,
            ts=EPOCH,
            session=session,
        )
        return self._finish([result], "tool result", record, ms)
