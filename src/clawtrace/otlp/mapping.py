"""OTLP export requests -> protocol v1 events, grouped by agent.

Every span, log record or resource's data points either becomes events (an
``Item``), is accepted without an event (a span of no GenAI kind, a metric that
repeats what spans say), or is *rejected* and counted for the response's
``partial_success``. Events are checked against the protocol's own definitions
(``decode_event``) before they are handed on, with placeholder ``seq`` 1: the
receiver numbers them under the agent's lock.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal

import msgspec
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality, Metric
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from clawtrace.otlp import genai, openclaw
from clawtrace.otlp.resource import Origin, origin_of
from clawtrace.otlp.values import any_value, attributes, hex_id, identifier, text, timestamp
from clawtrace.protocol import Event, Heartbeat, Log, Thought, decode_event, encode

# The session of telemetry that belongs to no trace (logs outside a span, heartbeats).
DEFAULT_SESSION: Final = "otlp"
SESSION_ATTRIBUTES: Final = ("gen_ai.conversation.id", "session.id")
# Log records that carry a model's answer: stored as thoughts, not log lines.
GENAI_OUTPUT_EVENTS: Final = frozenset({"gen_ai.client.inference.operation.details", "gen_ai.choice"})
# SeverityNumber WARN and above go to stderr.
WARN: Final = 13
_WARN_TEXTS: Final = frozenset({"WARN", "WARNING", "ERROR", "FATAL", "CRITICAL"})
# At most this many problems are spelt out in partial_success.error_message.
MAX_PROBLEMS: Final = 5
# Metrics that give a heartbeat its resident memory: semconv's process.memory.usage
# (a gauge or sum, bytes) and OpenClaw's openclaw.memory.rss_bytes (a histogram of samples).
MEMORY_METRICS: Final = ("process.memory.usage", openclaw.RSS_BYTES_METRIC)


@dataclass(slots=True)
class Item:
    """The events of one span or log record (or a resource's metrics)."""

    key: bytes | None  # for deduplication: trace + span id, or a digest of the log record
    events: list[Event]
    raw: bytes  # the events as JSON: tells redaction which patterns can match


@dataclass(slots=True)
class Batch:
    origin: Origin
    items: list[Item] = field(default_factory=list)

    @property
    def agent(self) -> str:
        assert self.origin.agent is not None
        return self.origin.agent


@dataclass(slots=True)
class Mapped:
    batches: dict[tuple[str, str], Batch] = field(default_factory=dict)
    # The environment of every resource of the request (the credential must cover each).
    envs: set[str] = field(default_factory=set)
    rejected: int = 0
    problems: list[str] = field(default_factory=list)

    def reject(self, how_many: int, problem: str) -> None:
        if how_many <= 0:
            return
        self.rejected += how_many
        if len(self.problems) < MAX_PROBLEMS and problem not in self.problems:
            self.problems.append(problem)

    def add(self, origin: Origin, item: Item) -> None:
        assert origin.agent is not None
        key = (origin.agent, origin.env)
        batch = self.batches.get(key)
        if batch is None:
            batch = self.batches[key] = Batch(origin)
        batch.items.append(item)

    @property
    def error_message(self) -> str:
        return "; ".join(self.problems)


@dataclass(frozen=True, slots=True)
class Defaults:
    """What a resource that does not say gets: the credential's environment and agent name."""

    env: str
    agent: str | None
    now: datetime


def checked(events: list[Event]) -> tuple[list[Event], bytes]:
    """The events as the protocol accepts them (``ValueError`` naming the first that is not)."""
    out: list[Event] = []
    raws: list[bytes] = []
    for event in events:
        raw = encode(event)
        try:
            out.append(decode_event(raw))
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise ValueError(f"it makes an invalid {type(event).__name__} event: {exc}") from None
        raws.append(raw)
    return out, b"\n".join(raws)


# --- traces ---------------------------------------------------------------------------------------


def _session(attrs: dict[str, Any], trace_id: bytes, conversations: dict[bytes, str] | None = None) -> str:
    """The span's or record's conversation (its own, else one a span of its trace names in the
    same request), else its trace id."""
    named = text(attrs, *SESSION_ATTRIBUTES)
    if named is None and conversations:
        named = conversations.get(trace_id)
    return identifier(named or hex_id(trace_id) or DEFAULT_SESSION)


def span_item(span: Span, now: datetime, conversations: dict[bytes, str] | None = None) -> Item | None:
    """The span's events, or None for a span that maps to nothing."""
    attrs = attributes(span.attributes)
    role = genai.role_of(span.name, attrs)
    if role is genai.Role.IGNORED:
        return None
    start = timestamp(span.start_time_unix_nano)
    end = timestamp(span.end_time_unix_nano)
    start = start or end or now
    end = max(end or start, start)
    view = genai.SpanView(
        name=span.name,
        attrs=attrs,
        start=start,
        end=end,
        span_id=hex_id(span.span_id),
        session=_session(attrs, span.trace_id, conversations),
        failed=span.status.code == Status.STATUS_CODE_ERROR,
        status_message=span.status.message,
        events=tuple((event.name, attributes(event.attributes)) for event in span.events),
    )
    events, raw = checked(genai.span_events(role, view))
    key = bytes(span.trace_id) + bytes(span.span_id) if any(span.span_id) else None
    return Item(key, events, raw)


def map_traces(request: ExportTraceServiceRequest, defaults: Defaults) -> Mapped:
    mapped = Mapped()
    for resource_spans in request.resource_spans:
        origin = origin_of(attributes(resource_spans.resource.attributes), defaults.env, defaults.agent)
        mapped.envs.add(origin.env)
        spans = [span for scope in resource_spans.scope_spans for span in scope.spans]
        if origin.agent is None:
            mapped.reject(len(spans), origin.problem or "no agent")
            continue
        # A conversation id is often set on the agent's span only: its trace's other spans share it.
        conversations: dict[bytes, str] = {}
        for span in spans:
            for pair in span.attributes:
                if pair.key in SESSION_ATTRIBUTES and pair.value.string_value.strip():
                    conversations.setdefault(span.trace_id, pair.value.string_value)
        for span in spans:
            try:
                item = span_item(span, defaults.now, conversations)
            except Exception as exc:  # one odd span must cost only itself, never the request
                mapped.reject(1, f"span {span.name[:100]!r}: {exc}")
                continue
            if item is not None:
                mapped.add(origin, item)
    return mapped


# --- logs -----------------------------------------------------------------------------------------


def _body_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _stream(record: LogRecord) -> Literal["stdout", "stderr"]:
    if record.severity_number:
        return "stderr" if record.severity_number >= WARN else "stdout"
    return "stderr" if record.severity_text.strip().upper() in _WARN_TEXTS else "stdout"


def log_item(record: LogRecord, now: datetime) -> Item | None:
    """The record's events: ``thought``s for a GenAI output event, else one ``log`` per line of its body.
    None for a GenAI event without output; ``ValueError`` for a record with nothing to say."""
    attrs = attributes(record.attributes)
    ts = timestamp(record.time_unix_nano) or timestamp(record.observed_time_unix_nano) or now
    session = _session(attrs, record.trace_id)
    body = any_value(record.body) if record.HasField("body") else None
    event_name = record.event_name or text(attrs, "event.name") or ""
    events: list[Event]
    if event_name in GENAI_OUTPUT_EVENTS:
        texts = genai.message_texts(attrs.get(genai.OUTPUT_MESSAGES)) or genai.message_texts(body)
        if not texts:
            return None
        events = [Thought(seq=1, ts=ts, session=session, text=t) for t in texts]
    else:
        line = _body_text(body)
        if not line.strip():
            # OpenClaw withholds log bodies unless content capture is on: say what is known.
            described = [f"{key}={_body_text(value)}" for key, value in list(attrs.items())[:20]]
            line = " ".join(part for part in (record.severity_text, event_name, *described) if part)
        if not line.strip():
            raise ValueError("the log record has no body and no attributes")
        lines = [part.removesuffix("\r") for part in line.split("\n")]
        while len(lines) > 1 and not lines[-1]:
            lines.pop()
        stream = _stream(record)
        events = [Log(seq=1, ts=ts, session=session, stream=stream, line=part) for part in lines]
    checked_events, raw = checked(events)
    key = None
    if record.time_unix_nano or record.observed_time_unix_nano:
        key = b"log:" + hashlib.blake2b(record.SerializeToString(deterministic=True), digest_size=16).digest()
    return Item(key, checked_events, raw)


def map_logs(request: ExportLogsServiceRequest, defaults: Defaults) -> Mapped:
    mapped = Mapped()
    for resource_logs in request.resource_logs:
        origin = origin_of(attributes(resource_logs.resource.attributes), defaults.env, defaults.agent)
        mapped.envs.add(origin.env)
        records = [record for scope in resource_logs.scope_logs for record in scope.log_records]
        if origin.agent is None:
            mapped.reject(len(records), origin.problem or "no agent")
            continue
        for record in records:
            try:
                item = log_item(record, defaults.now)
            except Exception as exc:  # one odd record must cost only itself
                mapped.reject(1, f"log record: {exc}")
                continue
            if item is not None:
                mapped.add(origin, item)
    return mapped


# --- metrics --------------------------------------------------------------------------------------


def _points(metric: Metric) -> list[Any]:
    which = metric.WhichOneof("data")
    return [] if which is None else list(getattr(metric, which).data_points)


def _memory(metric: Metric) -> float | None:
    """Resident bytes from one memory metric's latest point, if it tells the current value."""
    which = metric.WhichOneof("data")
    if which in ("gauge", "sum"):
        points = _points(metric)
        if not points:
            return None
        point = max(points, key=lambda p: p.time_unix_nano)
        return float(point.as_int if point.WhichOneof("value") == "as_int" else point.as_double)
    if which == "histogram" and (
        metric.histogram.aggregation_temporality == AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
    ):
        # A cumulative histogram's mean is over the process's life: only deltas say "now".
        points = [p for p in metric.histogram.data_points if p.count]
        if not points:
            return None
        point = max(points, key=lambda p: p.time_unix_nano)
        return float(point.max if point.HasField("max") else point.sum / point.count)
    return None


def metrics_item(metrics: list[Metric], now: datetime) -> Item | None:
    """A resource's metrics as one ``heartbeat`` (the exporter is alive), with ``rss_bytes`` when a
    memory metric gives the current value. Every other metric repeats what spans say or has no event."""
    points = [point for metric in metrics for point in _points(metric)]
    if not points:
        return None
    latest = max((point.time_unix_nano for point in points), default=0)
    rss: float | None = None
    for name in MEMORY_METRICS:
        for metric in metrics:
            if metric.name == name and rss is None:
                rss = _memory(metric)
    heartbeat = Heartbeat(
        seq=1,
        ts=timestamp(latest) or now,
        session=DEFAULT_SESSION,
        rss_bytes=None if rss is None or rss < 0 else int(rss),
    )
    events, raw = checked([heartbeat])
    return Item(None, events, raw)


def map_metrics(request: ExportMetricsServiceRequest, defaults: Defaults) -> Mapped:
    mapped = Mapped()
    for resource_metrics in request.resource_metrics:
        origin = origin_of(attributes(resource_metrics.resource.attributes), defaults.env, defaults.agent)
        mapped.envs.add(origin.env)
        metrics = [metric for scope in resource_metrics.scope_metrics for metric in scope.metrics]
        if origin.agent is None:
            mapped.reject(sum(len(_points(metric)) for metric in metrics), origin.problem or "no agent")
            continue
        try:
            item = metrics_item(metrics, defaults.now)
        except Exception as exc:  # odd values must cost only this resource
            mapped.reject(sum(len(_points(metric)) for metric in metrics), f"metrics: {exc}")
            continue
        if item is not None:
            mapped.add(origin, item)
    return mapped
