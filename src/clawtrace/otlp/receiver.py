"""OTLP/HTTP receiver: ``POST /v1/traces``, ``/v1/logs``, ``/v1/metrics`` on the gateway.

request -> credential (401) -> may it send events at all (403) -> content type (415)
        -> size and gzip (413) -> decode (400) -> map to events per agent (mapping.py)
        -> every environment covered (403) -> agents registered (403 for an id of another
        environment) -> per agent, under its lock: drop recently stored spans, number the
        rest after the agent's last seq in time order, ingest, wait until stored (503)
        -> 200 with the Export*ServiceResponse (partial_success for rejected items).

Errors answer in the request's encoding: a ``google.rpc.Status`` (protobuf or JSON) for
OTLP requests, the gateway's usual ``{"error": {...}}`` for any other content type.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import Response
from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from starlette.concurrency import run_in_threadpool

from clawtrace.access import Authenticator, AuthError, Credential, PermissionDenied
from clawtrace.gateway.agent_socket import bearer_token
from clawtrace.gateway.api import json_response
from clawtrace.gateway.pipeline import AgentState, Pipeline
from clawtrace.gateway.settings import GatewaySettings
from clawtrace.otlp.decode import Encoding, PayloadError, decode, decompress, encode, encoding_of, status_body
from clawtrace.otlp.decode import too_large as too_large_error
from clawtrace.otlp.mapping import Batch, Defaults, Mapped, map_logs, map_metrics, map_traces
from clawtrace.otlp.resource import ENV_PATTERN, Origin, sanitize_agent_id
from clawtrace.protocol import ErrorCode, utc_now
from clawtrace.store import AgentEnvMismatch, AgentInfo, AgentRecord

log = logging.getLogger("clawtrace.otlp")

# Seconds an exporter is asked to wait after a 503 (store unavailable) before retrying.
RETRY_AFTER_SECONDS: Final = 5
# Spans and log records stored recently, per agent, to drop an exporter's retry of a
# request that was stored but whose answer was lost. Bounded: older entries are forgotten.
RECENT_KEYS: Final = 262_144
INGEST_ROLES: Final = frozenset({"agent", "admin"})

Req = TypeVar("Req", bound=Message)


class Refusal(Exception):
    """Answer with this status, error code and message (a Status body for OTLP requests)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _traces_response(mapped: Mapped) -> ExportTraceServiceResponse:
    response = ExportTraceServiceResponse()
    if mapped.rejected:
        response.partial_success.rejected_spans = mapped.rejected
        response.partial_success.error_message = mapped.error_message
    return response


def _logs_response(mapped: Mapped) -> ExportLogsServiceResponse:
    response = ExportLogsServiceResponse()
    if mapped.rejected:
        response.partial_success.rejected_log_records = mapped.rejected
        response.partial_success.error_message = mapped.error_message
    return response


def _metrics_response(mapped: Mapped) -> ExportMetricsServiceResponse:
    response = ExportMetricsServiceResponse()
    if mapped.rejected:
        response.partial_success.rejected_data_points = mapped.rejected
        response.partial_success.error_message = mapped.error_message
    return response


@dataclass(frozen=True)
class Signal(Generic[Req]):
    name: str
    request_type: type[Req]
    to_events: Callable[[Req, Defaults], Mapped]
    # The Export*ServiceResponse, with partial_success when something was rejected.
    response: Callable[[Mapped], Message]


TRACES: Final = Signal("traces", ExportTraceServiceRequest, map_traces, _traces_response)
LOGS: Final = Signal("logs", ExportLogsServiceRequest, map_logs, _logs_response)
METRICS: Final = Signal("metrics", ExportMetricsServiceRequest, map_metrics, _metrics_response)


class RecentKeys:
    """The keys of the last ``capacity`` stored spans / log records, per agent (FIFO)."""

    def __init__(self, capacity: int = RECENT_KEYS) -> None:
        self.capacity = capacity
        self._keys: collections.OrderedDict[tuple[str, bytes], None] = collections.OrderedDict()

    def __contains__(self, key: tuple[str, bytes]) -> bool:
        return key in self._keys

    def add(self, key: tuple[str, bytes]) -> None:
        self._keys[key] = None
        self._keys.move_to_end(key)
        while len(self._keys) > self.capacity:
            self._keys.popitem(last=False)


def _recent(request: Request) -> RecentKeys:
    recent: RecentKeys | None = getattr(request.app.state, "otlp_recent", None)
    if recent is None:
        recent = request.app.state.otlp_recent = RecentKeys()
    return recent


def _error(refusal: Refusal | PayloadError, encoding: Encoding | None) -> Response:
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if refusal.status == 503 else None
    if encoding is None:
        response = json_response(
            {"error": {"code": refusal.code, "message": refusal.message}}, refusal.status
        )
        if headers:
            response.headers.update(headers)
        return response
    body = status_body(refusal.status, refusal.code, refusal.message, encoding)
    return Response(body, status_code=refusal.status, media_type=encoding.value, headers=headers)


async def _credential(request: Request) -> Credential:
    auth: Authenticator = request.app.state.auth
    try:
        return await run_in_threadpool(auth.authenticate, bearer_token(request.headers))
    except AuthError as exc:
        raise Refusal(401, ErrorCode.UNAUTHORIZED, str(exc)) from None
    except Exception as exc:  # the store behind the credentials: an exporter should retry later
        log.warning("OTLP: checking a credential failed: %s", exc)
        raise Refusal(503, ErrorCode.STORE_UNAVAILABLE, f"credentials cannot be checked: {exc}") from None


def _require_ingest(credential: Credential, env: str) -> None:
    try:
        credential.require_ingest(env)
    except PermissionDenied as exc:
        raise Refusal(403, ErrorCode.FORBIDDEN, str(exc)) from None


async def _body(request: Request, limit: int) -> bytes:
    """The raw body, refusing (413) as soon as it is longer than ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large_error(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large_error(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _decode_and_map(signal: Signal[Req], payload: bytes, encoding: Encoding, defaults: Defaults) -> Mapped:
    return signal.to_events(decode(payload, encoding, signal.request_type), defaults)


def _registration(origin: Origin, record: AgentRecord | None) -> AgentInfo | None:
    """What to register for an agent this gateway does not hold yet: a new one, or one whose
    region or labels (from its resource) changed while no node agent is connected for it."""
    assert origin.agent is not None
    if record is None:
        return AgentInfo(origin.agent, origin.env, origin.region, origin.labels, None)
    if record.env != origin.env or record.connected:
        return None  # agent_for_post refuses the first; a node agent owns the second's registry row
    labels = {**record.labels, **origin.labels}
    region = origin.region or record.region
    if (region, labels) == (record.region, record.labels):
        return None
    return AgentInfo(origin.agent, record.env, region, labels, record.release, record.role)


async def _agent_state(pipeline: Pipeline, origin: Origin) -> AgentState:
    """The agent's pipeline state, registering it first (with region and labels) if need be."""
    agent = origin.agent
    assert agent is not None
    if agent not in pipeline.agents and (origin.region or origin.labels):
        record = await pipeline.writer.call(lambda store: store.get_agent(agent))
        info = _registration(origin, record)
        if info is not None:
            registered = info
            await pipeline.writer.call(
                lambda store: store.register_agent(registered, time.time(), connected=False)
            )
    return await pipeline.agent_for_post(agent, origin.env)


async def _store(request: Request, mapped: Mapped) -> None:
    pipeline: Pipeline = request.app.state.pipeline
    recent = _recent(request)
    states: dict[tuple[str, str], AgentState] = {}
    # Every agent first: a refusal (403) must come before anything of the request is stored.
    for key, batch in mapped.batches.items():
        try:
            states[key] = await _agent_state(pipeline, batch.origin)
        except AgentEnvMismatch as exc:
            raise Refusal(403, ErrorCode.FORBIDDEN, str(exc)) from None
        except Exception as exc:
            log.warning("OTLP: registering agent %s failed: %s", batch.agent, exc)
            raise Refusal(503, ErrorCode.STORE_UNAVAILABLE, f"the store is unavailable: {exc}") from None
    for key, batch in mapped.batches.items():
        await _ingest(pipeline, states[key], batch, recent, mapped)


async def _ingest(
    pipeline: Pipeline, state: AgentState, batch: Batch, recent: RecentKeys, mapped: Mapped
) -> None:
    agent = batch.agent
    async with state.lock:
        if state.link is not None:
            # A node agent numbers this agent's events itself: numbers taken here would make
            # its next events look like duplicates.
            mapped.reject(
                len(batch.items),
                f"agent {agent!r} is connected through a node agent, which owns its event numbers: "
                "give the OTLP exporter another agent id (resource attribute clawtrace.agent)",
            )
            return
        seen: set[bytes] = set()
        items = []
        for item in batch.items:
            if item.key is not None:
                if item.key in seen or (agent, item.key) in recent:
                    continue  # an exporter's retry of something already stored
                seen.add(item.key)
            items.append(item)
        events = sorted((event for item in items for event in item.events), key=lambda e: e.ts)
        if not events:
            return
        for number, event in enumerate(events, start=1):
            event.seq = state.accepted_seq + number
        frame = b"\n".join(item.raw for item in items)
        result = pipeline.ingest(state, events, 0, frame)
        if result.write is not None:
            try:
                await result.write
            except Exception as exc:
                # As for NDJSON posts: the state is reloaded from the store next time.
                pipeline.agents.pop(agent, None)
                raise Refusal(
                    503, ErrorCode.STORE_UNAVAILABLE, f"events could not be stored: {exc}"
                ) from None
        if result.errors:
            # Cannot happen for events numbered here; if it does, say so rather than lose them quietly.
            mapped.reject(len(result.errors), f"agent {agent!r}: {result.errors[0].message}")
        for key in seen:
            recent.add((agent, key))


async def _export(request: Request, signal: Signal[Req]) -> Response:
    encoding = encoding_of(request.headers.get("content-type"))
    try:
        credential = await _credential(request)
        # Before the body is read: whoever may not send events gets 403, not an answer about the body.
        if not (credential.env == "*" and credential.role in INGEST_ROLES):
            _require_ingest(credential, credential.env)
        if encoding is None:
            raise Refusal(
                415,
                "unsupported_media_type",
                "OTLP/HTTP bodies are application/x-protobuf or application/json",
            )
        settings: GatewaySettings = request.app.state.settings
        limit = settings.max_frame_bytes
        body = await _body(request, limit)
        payload = decompress(body, request.headers.get("content-encoding"), limit)
        default_agent = sanitize_agent_id(credential.name) if credential.role == "agent" else ""
        defaults = Defaults(env=credential.env, agent=default_agent or None, now=utc_now())
        mapped = await run_in_threadpool(_decode_and_map, signal, payload, encoding, defaults)
        for env in sorted(mapped.envs):
            _require_ingest(credential, env)
            if not ENV_PATTERN.match(env):
                raise PayloadError(400, "invalid_body", f"{env!r} is not an environment name")
        await _store(request, mapped)
    except (Refusal, PayloadError) as refusal:
        return _error(refusal, encoding)
    return Response(encode(signal.response(mapped), encoding), media_type=encoding.value)


router = APIRouter()


@router.post("/v1/traces")
async def export_traces(request: Request) -> Response:
    """OTLP/HTTP traces: GenAI (and OpenClaw) spans become llm_call, thought, tool_call,
    tool_result and lifecycle events (docs: OpenTelemetry)."""
    return await _export(request, TRACES)


@router.post("/v1/logs")
async def export_logs(request: Request) -> Response:
    """OTLP/HTTP logs: log records become log events (stderr from WARN up)."""
    return await _export(request, LOGS)


@router.post("/v1/metrics")
async def export_metrics(request: Request) -> Response:
    """OTLP/HTTP metrics: each export is a heartbeat of the agents it names."""
    return await _export(request, METRICS)
