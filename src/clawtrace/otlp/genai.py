"""GenAI semantic conventions (and OpenClaw's spans): what a span becomes in protocol v1.

* ``gen_ai.operation.name`` = ``chat`` / ``text_completion`` / ``generate_content``, and
  ``openclaw.model.call``: ``llm_call`` at the span's end, then one ``thought`` per text or
  reasoning part of its output messages.
* ``execute_tool``, ``openclaw.tool.execution``: ``tool_call`` at the start, ``tool_result``
  at the end.
* ``invoke_agent``, ``openclaw.harness.run``: ``lifecycle`` ``run_started`` at the start,
  ``run_completed`` or ``run_failed`` at the end.
* anything else: nothing (accepted).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from clawtrace.otlp import openclaw
from clawtrace.otlp.values import Attributes, count, identifier, number, structured, text
from clawtrace.protocol import Event, Lifecycle, LlmCall, Thought, ToolCall, ToolResult

OPERATION: Final = "gen_ai.operation.name"
LLM_OPERATIONS: Final = frozenset({"chat", "text_completion", "generate_content"})
OUTPUT_MESSAGES: Final = "gen_ai.output.messages"
# Not a semantic convention (there is none for cost): the first of these a span carries.
COST_ATTRIBUTES: Final = ("gen_ai.usage.cost", "gen_ai.usage.cost_usd", "openclaw.cost.usd")
# Span events that carry a model's answer in older GenAI conventions (<= 1.36).
LEGACY_CHOICE_EVENTS: Final = frozenset({"gen_ai.choice", "gen_ai.content.completion"})
# Lifecycle states of an agent run: events only, they do not change the process state
# the gateway keeps (PROCESS_STATES), so a run ending is not an agent exiting.
RUN_STARTED: Final = "run_started"
RUN_COMPLETED: Final = "run_completed"
RUN_FAILED: Final = "run_failed"


class Role(enum.Enum):
    LLM_CALL = "llm_call"
    TOOL = "tool"
    AGENT_RUN = "agent_run"
    IGNORED = "ignored"


def role_of(name: str, attrs: Attributes) -> Role:
    if openclaw.is_model_call(name, attrs):
        return Role.LLM_CALL
    if name == openclaw.TOOL_EXECUTION:
        return Role.TOOL
    if name == openclaw.HARNESS_RUN:
        return Role.AGENT_RUN
    if openclaw.is_openclaw(name):
        # openclaw.model.usage (the sum of the model calls), openclaw.run, openclaw.exec, ...
        return Role.IGNORED
    operation = attrs.get(OPERATION)
    if operation in LLM_OPERATIONS:
        return Role.LLM_CALL
    if operation == "execute_tool":
        return Role.TOOL
    if operation == "invoke_agent":
        return Role.AGENT_RUN
    return Role.IGNORED


@dataclass(frozen=True, slots=True)
class SpanView:
    """What the mapping needs of one span."""

    name: str
    attrs: Attributes
    start: datetime
    end: datetime
    span_id: str
    session: str
    failed: bool
    status_message: str
    # (name, attributes) of the span's events.
    events: tuple[tuple[str, Attributes], ...] = ()

    @property
    def duration_ms(self) -> float:
        return max(0.0, (self.end - self.start).total_seconds() * 1000)


def span_events(role: Role, span: SpanView) -> list[Event]:
    if role is Role.LLM_CALL:
        return llm_call(span)
    if role is Role.TOOL:
        return tool_call(span)
    if role is Role.AGENT_RUN:
        return agent_run(span)
    return []


def llm_call(span: SpanView) -> list[Event]:
    attrs = span.attrs
    cost = number(attrs, *COST_ATTRIBUTES)
    events: list[Event] = [
        LlmCall(
            seq=1,
            ts=span.end,
            session=span.session,
            model=text(attrs, "gen_ai.response.model", "gen_ai.request.model", openclaw.MODEL) or "unknown",
            # gen_ai.usage.input_tokens includes cached input (as ClawTrace's input_tokens does).
            input_tokens=count(
                attrs, "gen_ai.usage.input_tokens", openclaw.PROMPT_TOKENS, "gen_ai.usage.prompt_tokens"
            ),
            output_tokens=count(
                attrs, "gen_ai.usage.output_tokens", openclaw.OUTPUT_TOKENS, "gen_ai.usage.completion_tokens"
            ),
            cached_input_tokens=count(
                attrs, "gen_ai.usage.cache_read.input_tokens", openclaw.CACHE_READ_TOKENS
            ),
            duration_ms=span.duration_ms,
            cost_usd=None if cost is None or cost < 0 else cost,
        )
    ]
    events.extend(Thought(seq=1, ts=span.end, session=span.session, text=t) for t in output_texts(span))
    return events


def output_texts(span: SpanView) -> list[str]:
    """The model's answer and reasoning: text and reasoning parts of its output messages.

    The first source that has any: the span's ``gen_ai.output.messages``, a span event's
    ``gen_ai.output.messages`` (``gen_ai.client.inference.operation.details``), older
    ``gen_ai.choice`` events, then OpenClaw's ``openclaw.content.output_messages``.
    """
    candidates: list[Any] = [span.attrs.get(OUTPUT_MESSAGES)]
    candidates.extend(attrs.get(OUTPUT_MESSAGES) for _, attrs in span.events)
    for name, attrs in span.events:
        if name in LEGACY_CHOICE_EVENTS:
            candidates.extend(
                attrs.get(key) for key in ("message", "gen_ai.event.content", "gen_ai.completion")
            )
    candidates.append(span.attrs.get(openclaw.OUTPUT_MESSAGES))
    for candidate in candidates:
        texts = message_texts(candidate)
        if texts:
            return texts
    return []


def _part_text(part: Any) -> str | None:
    if isinstance(part, str):
        return part
    if isinstance(part, dict) and part.get("type") in ("text", "reasoning", "thinking"):
        content = part.get("content", part.get("text"))
        if isinstance(content, str):
            return content
    return None


def _parts_texts(parts: Iterable[Any]) -> list[str]:
    return [t for t in (_part_text(part) for part in parts) if t and t.strip()]


def message_texts(value: Any) -> list[str]:
    """Texts of output messages: the semantic conventions' ``[{"role", "parts": [{"type": "text",
    "content"}, {"type": "reasoning", "content"}, ...]}]``, an older ``{"message": {"content"}}``
    or ``{"content"}``, or plain text. Tool-call parts are left out (execute_tool spans report those)."""
    document = structured(value)
    if document is None:
        return []
    if isinstance(document, str):
        return [document] if document.strip() else []
    messages = document if isinstance(document, list) else [document]
    texts: list[str] = []
    for message in messages:
        if isinstance(message, str):
            texts.extend(_parts_texts([message]))
            continue
        if not isinstance(message, dict):
            continue
        inner = message.get("message")
        if isinstance(inner, dict):
            message = inner
        parts = message.get("parts")
        content = message.get("content")
        if isinstance(parts, list):
            texts.extend(_parts_texts(parts))
        elif isinstance(content, list):
            texts.extend(_parts_texts(content))
        elif isinstance(content, str) and content.strip():
            texts.append(content)
    return texts


def _error_of(span: SpanView) -> str:
    if span.status_message:
        return span.status_message
    for name, attrs in span.events:
        if name == "exception":
            message = text(attrs, "exception.message")
            kind = text(attrs, "exception.type")
            if message or kind:
                return f"{kind}: {message}" if kind and message else message or kind or ""
    return text(span.attrs, "error.type", openclaw.ERROR, openclaw.ERROR_CATEGORY) or "error"


def _arguments(value: Any) -> dict[str, Any]:
    document = structured(value)
    if document is None:
        return {}
    if isinstance(document, dict):
        return document
    return {"arguments": document}


def tool_call(span: SpanView) -> list[Event]:
    attrs = span.attrs
    prefix = "execute_tool "
    tool = (
        text(attrs, "gen_ai.tool.name", openclaw.TOOL_NAME)
        or (span.name[len(prefix) :] if span.name.startswith(prefix) else None)
        or span.name
        or "unknown"
    )
    call_id = identifier(text(attrs, "gen_ai.tool.call.id") or span.span_id or f"{span.session}:{span.start}")
    arguments = attrs.get("gen_ai.tool.call.arguments", attrs.get(openclaw.TOOL_INPUT))
    blocked = attrs.get(openclaw.OUTCOME) == "blocked"
    ok = not span.failed and not blocked
    error: str | None = None
    if blocked:
        reason = text(attrs, openclaw.DENIED_REASON)
        error = f"blocked: {reason}" if reason else "blocked"
    elif not ok:
        error = _error_of(span)
    output = attrs.get("gen_ai.tool.call.result", attrs.get(openclaw.TOOL_OUTPUT))
    return [
        ToolCall(
            seq=1,
            ts=span.start,
            session=span.session,
            call_id=call_id,
            tool=identifier(tool),
            args=_arguments(arguments),
        ),
        ToolResult(
            seq=1,
            ts=span.end,
            session=span.session,
            call_id=call_id,
            ok=ok,
            duration_ms=span.duration_ms,
            error=error,
            output=None if output is None else structured(output),
        ),
    ]


def agent_run(span: SpanView) -> list[Event]:
    who = text(span.attrs, "gen_ai.agent.name", "gen_ai.agent.id", openclaw.HARNESS_ID) or span.name
    if span.failed:
        end = Lifecycle(
            seq=1, ts=span.end, session=span.session, state=RUN_FAILED, reason=f"{who}: {_error_of(span)}"
        )
    else:
        end = Lifecycle(seq=1, ts=span.end, session=span.session, state=RUN_COMPLETED, reason=who)
    return [Lifecycle(seq=1, ts=span.start, session=span.session, state=RUN_STARTED, reason=who), end]
