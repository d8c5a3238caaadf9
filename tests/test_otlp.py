"""OTLP/HTTP receiver: the real OpenTelemetry SDK and OTLP/HTTP exporter against a real gateway."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricExportResult
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Tracer, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode
from websockets.sync.client import connect

from clawtrace.gateway.settings import load_settings
from clawtrace.otlp.decode import Encoding, PayloadError, decompress, status_body
from clawtrace.otlp.genai import message_texts
from clawtrace.otlp.resource import origin_of, sanitize_agent_id
from gateway_process import GatewayProcess
from gateway_thread import GatewayThread, MovableClock

WAIT = 15.0
PROTOBUF = "application/x-protobuf"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    process = GatewayProcess(tmp_path_factory.mktemp("gw-otlp"))
    process.start()
    try:
        yield process
    finally:
        log = process.log()
        process.stop()
        assert "Traceback" not in log, log[-5000:]


def tracer_for(**resource: Any) -> tuple[Tracer, InMemorySpanExporter]:
    """A tracer of the real SDK whose finished spans are kept for an explicit export."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create(resource))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return provider.get_tracer("clawtrace-tests"), memory


def export_spans(
    gw: GatewayProcess,
    spans: Sequence[ReadableSpan],
    token: str | None,
    compression: Compression | None = None,
) -> SpanExportResult:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    exporter = OTLPSpanExporter(
        endpoint=f"{gw.http_url}/v1/traces", headers=headers, compression=compression, timeout=WAIT
    )
    try:
        return exporter.export(spans)
    finally:
        exporter.shutdown()


def post(
    gw: GatewayProcess,
    path: str,
    body: bytes,
    token: str | None,
    content_type: str = PROTOBUF,
    **headers: str,
) -> httpx.Response:
    sent = {"Content-Type": content_type, **headers}
    if token:
        sent["Authorization"] = f"Bearer {token}"
    return httpx.post(f"{gw.http_url}{path}", content=body, headers=sent, timeout=WAIT)


def status_of(response: httpx.Response) -> tuple[str, str]:
    """(ErrorInfo reason, message) of a protobuf google.rpc.Status body."""
    assert response.headers["content-type"] == PROTOBUF, response.headers
    status = status_pb2.Status.FromString(response.content)
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.domain == "clawtrace"
    return info.reason, status.message


def kinds(events: list[dict[str, Any]]) -> list[str]:
    return [event["kind"] if event["kind"] != "lifecycle" else event["state"] for event in events]


# --- GenAI spans ----------------------------------------------------------------------------------


def test_genai_agent_chat_and_tool_spans_become_events(gw: GatewayProcess) -> None:
    tracer, memory = tracer_for(
        **{
            "service.name": "research-bot",
            "service.instance.id": "otel.agent/1",
            "deployment.environment.name": "dev",
            "cloud.region": "eu-west-1",
        }
    )
    output = [
        {
            "role": "assistant",
            "parts": [
                {"type": "reasoning", "content": "The disk may be full"},
                {"type": "text", "content": "I will check the disk usage."},
                {"type": "tool_call", "id": "call-1", "name": "shell", "arguments": {"command": "du -sh"}},
            ],
            "finish_reason": "tool_call",
        }
    ]
    agent_attrs = {
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.agent.name": "researcher",
        "gen_ai.conversation.id": "conv-42",
    }
    with tracer.start_as_current_span("invoke_agent researcher", attributes=agent_attrs):
        chat = {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "gpt-4.1",
            "gen_ai.response.model": "gpt-4.1-2025-04-14",
            "gen_ai.usage.input_tokens": 1200,
            "gen_ai.usage.output_tokens": 80,
            "gen_ai.usage.cache_read.input_tokens": 1000,
            "gen_ai.output.messages": json.dumps(output),
        }
        with tracer.start_as_current_span("chat gpt-4.1", attributes=chat):
            time.sleep(0.03)
        tool = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": "shell",
            "gen_ai.tool.call.id": "call-1",
            "gen_ai.tool.call.arguments": json.dumps({"command": "du -sh /data"}),
            "gen_ai.tool.call.result": "12G\t/data",
        }
        with tracer.start_as_current_span("execute_tool shell", attributes=tool):
            time.sleep(0.02)
        with tracer.start_as_current_span("GET /health"):  # not GenAI: accepted, no event
            pass
    assert export_spans(gw, memory.get_finished_spans(), gw.token("dev", "agent")) is SpanExportResult.SUCCESS

    agent = "otel-agent-1"  # service.instance.id, sanitized
    events = gw.events(agent)
    assert kinds(events) == [
        "run_started",
        "llm_call",
        "thought",
        "thought",
        "tool_call",
        "tool_result",
        "run_completed",
    ]
    assert [e["seq"] for e in events] == list(range(1, 8))
    # The conversation named on the agent span is the session of its whole trace.
    assert {e["session"] for e in events} == {"conv-42"}
    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)
    started, llm, reasoning, answer, call, result, completed = events
    assert started["reason"] == completed["reason"] == "researcher"
    assert llm["model"] == "gpt-4.1-2025-04-14"
    assert (llm["input_tokens"], llm["output_tokens"], llm["cached_input_tokens"]) == (1200, 80, 1000)
    assert llm["duration_ms"] >= 30 and "cost_usd" not in llm
    assert (reasoning["text"], answer["text"]) == ("The disk may be full", "I will check the disk usage.")
    assert call["tool"] == "shell" and call["call_id"] == "call-1"
    assert call["args"] == {"command": "du -sh /data"}
    assert result["call_id"] == "call-1" and result["ok"] is True and "error" not in result
    assert result["output"] == "12G\t/data" and result["duration_ms"] >= 20
    record = gw.get(f"/api/v1/agents/{agent}").json()
    assert (record["env"], record["region"]) == ("dev", "eu-west-1")
    assert record["labels"]["service.name"] == "research-bot"


def test_failed_tools_and_runs_take_their_error_from_the_span(gw: GatewayProcess) -> None:
    tracer, memory = tracer_for(**{"service.name": "failing-tools", "deployment.environment": "dev"})
    tool = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "http_get"}
    with tracer.start_as_current_span(
        "invoke_agent", attributes={"gen_ai.operation.name": "invoke_agent"}
    ) as run:
        with tracer.start_as_current_span("execute_tool http_get", attributes=tool) as span:
            span.set_status(Status(StatusCode.ERROR, "connection refused"))
        with pytest.raises(ValueError), tracer.start_as_current_span("execute_tool parse", attributes=tool):
            raise ValueError("bad url")
        with tracer.start_as_current_span(
            "execute_tool", attributes={**tool, "error.type": "timeout"}
        ) as span:
            span.set_status(Status(StatusCode.ERROR))
        with tracer.start_as_current_span("execute_tool", attributes=tool):
            pass
        run.set_status(Status(StatusCode.ERROR, "gave up"))
    assert export_spans(gw, memory.get_finished_spans(), gw.token("dev", "agent")) is SpanExportResult.SUCCESS

    events = gw.events("failing-tools")
    results = [e for e in events if e["kind"] == "tool_result"]
    assert [(r["ok"], r.get("error")) for r in results] == [
        (False, "connection refused"),
        (False, "ValueError: bad url"),
        (False, "timeout"),
        (True, None),
    ]
    # Each tool_call pairs with its result through the span id.
    calls = [e for e in events if e["kind"] == "tool_call"]
    assert [c["call_id"] for c in calls] == [r["call_id"] for r in results]
    assert len({c["call_id"] for c in calls}) == 4
    assert kinds(events)[-1] == "run_failed" and events[-1]["reason"] == "invoke_agent: gave up"


def test_openclaw_spans(gw: GatewayProcess) -> None:
    """The names and attributes OpenClaw's diagnostics-otel plugin exports."""
    tracer, memory = tracer_for(**{"service.name": "openclaw-gateway", "deployment.environment.name": "dev"})
    harness = {"openclaw.harness.id": "openclaw", "openclaw.provider": "openai", "openclaw.model": "gpt-5.4"}
    with tracer.start_as_current_span("openclaw.harness.run", attributes=harness):
        call = {
            "gen_ai.system": "openai",
            "gen_ai.request.model": "gpt-5.4",
            "gen_ai.operation.name": "chat",
            "openclaw.provider": "openai",
            "openclaw.model": "gpt-5.4",
            "openclaw.api": "openai-responses",
            "openclaw.model_call.observation_unit": "request",
            "openclaw.model_call.usage.prompt_tokens": 160,
            "openclaw.model_call.usage.output_tokens": 40,
            "gen_ai.usage.input_tokens": 160,
            "gen_ai.usage.output_tokens": 40,
            "gen_ai.usage.cache_read.input_tokens": 30,
        }
        with tracer.start_as_current_span("openclaw.model.call", attributes=call):
            pass
        exec_tool = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": "exec",
            "openclaw.toolName": "exec",
            "openclaw.tool.source": "core",
            "gen_ai.tool.call.id": "tc-1",
        }
        with (
            tracer.start_as_current_span("openclaw.tool.execution", attributes=exec_tool),
            tracer.start_as_current_span("openclaw.exec", attributes={"openclaw.exec.mode": "host"}),
        ):
            pass
        blocked = {
            **exec_tool,
            "gen_ai.tool.call.id": "tc-2",
            "openclaw.outcome": "blocked",
            "openclaw.deniedReason": "sandbox",
        }
        with tracer.start_as_current_span("openclaw.tool.execution", attributes=blocked):
            pass
        # With OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental: a CLI turn named by its operation.
        turn = {
            "gen_ai.provider.name": "anthropic",
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.request.model": "claude-opus-4.6",
            "openclaw.model_call.observation_unit": "turn",
            "gen_ai.usage.input_tokens": 500,
            "gen_ai.usage.output_tokens": 50,
        }
        with tracer.start_as_current_span("invoke_agent", attributes=turn):
            pass
        # The run's token sum: already counted by the model calls.
        usage = {
            "gen_ai.operation.name": "chat",
            "openclaw.tokens.input": 660,
            "gen_ai.usage.input_tokens": 660,
            "gen_ai.usage.output_tokens": 90,
        }
        with tracer.start_as_current_span("openclaw.model.usage", attributes=usage):
            pass
        with tracer.start_as_current_span(
            "openclaw.message.processed", attributes={"openclaw.outcome": "ok"}
        ):
            pass
    assert export_spans(gw, memory.get_finished_spans(), gw.token("dev", "agent")) is SpanExportResult.SUCCESS

    events = gw.events("openclaw-gateway")
    assert kinds(events) == [
        "run_started",
        "llm_call",
        "tool_call",
        "tool_result",
        "tool_call",
        "tool_result",
        "llm_call",
        "run_completed",
    ]
    llm_calls = [e for e in events if e["kind"] == "llm_call"]
    assert [(c["model"], c["input_tokens"], c["output_tokens"]) for c in llm_calls] == [
        ("gpt-5.4", 160, 40),
        ("claude-opus-4.6", 500, 50),
    ]
    assert llm_calls[0]["cached_input_tokens"] == 30
    results = [e for e in events if e["kind"] == "tool_result"]
    assert [(r["call_id"], r["ok"], r.get("error")) for r in results] == [
        ("tc-1", True, None),
        ("tc-2", False, "blocked: sandbox"),
    ]
    assert events[0]["reason"] == "openclaw"
    # OpenClaw exports no session ids: the trace is the session.
    assert len({e["session"] for e in events}) == 1 and len(events[0]["session"]) == 32


def test_a_retried_export_is_not_stored_twice(gw: GatewayProcess) -> None:
    tracer, memory = tracer_for(**{"service.name": "retrying", "deployment.environment.name": "dev"})
    with tracer.start_as_current_span("chat", attributes={"gen_ai.operation.name": "chat"}):
        pass
    spans = memory.get_finished_spans()
    token = gw.token("dev", "agent")
    assert export_spans(gw, spans, token) is SpanExportResult.SUCCESS
    assert export_spans(gw, spans, token) is SpanExportResult.SUCCESS
    assert kinds(gw.events("retrying")) == ["llm_call"]
    with tracer.start_as_current_span("chat", attributes={"gen_ai.operation.name": "chat"}):
        pass
    memory.clear()
    with tracer.start_as_current_span("chat", attributes={"gen_ai.operation.name": "chat"}):
        pass
    assert export_spans(gw, [*spans, *memory.get_finished_spans()], token) is SpanExportResult.SUCCESS
    assert [e["seq"] for e in gw.events("retrying")] == [1, 2]


def test_gzip(gw: GatewayProcess) -> None:
    tracer, memory = tracer_for(**{"service.name": "gzipped", "deployment.environment.name": "dev"})
    with tracer.start_as_current_span("chat", attributes={"gen_ai.operation.name": "chat"}):
        pass
    result = export_spans(gw, memory.get_finished_spans(), gw.token("dev", "agent"), Compression.Gzip)
    assert result is SpanExportResult.SUCCESS
    assert kinds(gw.events("gzipped")) == ["llm_call"]
    # Several gzip members in one body are one stream.
    request = encode_spans(memory.get_finished_spans()).SerializeToString()
    half = len(request) // 2
    body = gzip.compress(request[:half]) + gzip.compress(request[half:])
    response = post(gw, "/v1/traces", body, gw.token("dev", "agent"), **{"Content-Encoding": "gzip"})
    assert response.status_code == 200, response.text
    # Not gzip at all.
    response = post(gw, "/v1/traces", b"not gzip", gw.token("dev", "agent"), **{"Content-Encoding": "gzip"})
    assert response.status_code == 400 and status_of(response)[0] == "invalid_body"


# --- OTLP JSON ------------------------------------------------------------------------------------


def kv(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"key": key, "value": {"boolValue": value}}
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}
    return {"key": key, "value": {"stringValue": value}}


def json_spans(service: str, spans: list[dict[str, Any]]) -> dict[str, Any]:
    resource = {"attributes": [kv("service.name", service), kv("deployment.environment.name", "dev")]}
    return {"resource": resource, "scopeSpans": [{"scope": {"name": "hand-built"}, "spans": spans}]}


TRACE_ID = "5b8efff798038103d269b633813fc60c"


def chat_span(span_id: str, model: str) -> dict[str, Any]:
    return {
        "traceId": TRACE_ID,
        "spanId": span_id,
        "name": f"chat {model}",
        "kind": 3,
        "startTimeUnixNano": "1772334120000000000",
        "endTimeUnixNano": "1772334121500000000",
        "attributes": [
            kv("gen_ai.operation.name", "chat"),
            kv("gen_ai.request.model", model),
            kv("gen_ai.usage.input_tokens", 300),
            {"key": "gen_ai.usage.output_tokens", "value": {"intValue": 42}},  # a number is fine too
        ],
        "status": {},
        "someFutureField": {"ignored": True},
    }


def test_otlp_json(gw: GatewayProcess) -> None:
    body = {
        "resourceSpans": [
            json_spans("json-agent", [chat_span("eee19b7ec3c1b174", "claude-sonnet-4")]),
            json_spans("%%%", [chat_span("eee19b7ec3c1b175", "x"), chat_span("eee19b7ec3c1b176", "y")]),
        ]
    }
    token = gw.token("dev", "agent")
    response = post(gw, "/v1/traces", json.dumps(body).encode(), token, "application/json")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    partial = response.json()["partialSuccess"]
    assert partial["rejectedSpans"] == "2"  # OTLP JSON: int64 as a string
    assert "'%%%'" in partial["errorMessage"]
    (llm,) = gw.events("json-agent")
    assert llm["model"] == "claude-sonnet-4" and (llm["input_tokens"], llm["output_tokens"]) == (300, 42)
    assert llm["duration_ms"] == 1500.0 and llm["ts"] == "2026-03-01T03:02:01.500000Z"
    # The hex trace id came through as the bytes it spells.
    assert llm["session"] == TRACE_ID

    body = {
        "resourceSpans": [
            json_spans("json-agent", [{**chat_span("eee19b7ec3c1b177", "z"), "traceId": "xyz"}])
        ]
    }
    response = post(gw, "/v1/traces", json.dumps(body).encode(), token, "application/json; charset=utf-8")
    assert response.status_code == 400
    status = json_format.Parse(response.text, status_pb2.Status())
    assert "traceId 'xyz' is not hex" in status.message and status.code == 3
    for bad in (b"{", b"[]", b'{"resourceSpans": 5}', b"\xff\xfe"):
        response = post(gw, "/v1/traces", bad, token, "application/json")
        assert response.status_code == 400, (bad, response.text)
        assert response.json()["details"][0]["reason"] == "invalid_body"
    assert len(gw.events("json-agent")) == 1


# --- logs and metrics -----------------------------------------------------------------------------


def test_logs(gw: GatewayProcess) -> None:
    resource = Resource.create({"service.name": "logging-agent", "deployment.environment.name": "dev"})
    provider = LoggerProvider(resource=resource)
    memory = InMemoryLogRecordExporter()
    provider.add_log_record_processor(SimpleLogRecordProcessor(memory))
    logger = provider.get_logger("clawtrace-tests")
    tracer = TracerProvider(resource=resource).get_tracer("logs")
    logger.emit(severity_number=SeverityNumber.INFO, severity_text="INFO", body="starting up")
    with tracer.start_as_current_span("work") as span:
        trace_id = format(span.get_span_context().trace_id, "032x")
        logger.emit(severity_number=SeverityNumber.WARN, severity_text="WARN", body="disk at 91%")
        logger.emit(severity_number=SeverityNumber.ERROR, body="first line\nsecond line\n")
        # A GenAI output event is the model's answer: a thought, not a log line.
        answer = [{"role": "assistant", "parts": [{"type": "text", "content": "Done."}]}]
        logger.emit(
            event_name="gen_ai.client.inference.operation.details",
            severity_number=SeverityNumber.DEBUG,
            attributes={"gen_ai.output.messages": json.dumps(answer)},
        )
        # OpenClaw withholds log bodies unless content capture is on: the attributes speak.
        logger.emit(severity_text="ERROR", attributes={"openclaw.subsystem": "gateway", "code.lineno": 12})
    records = memory.get_finished_logs()
    exporter = OTLPLogExporter(
        endpoint=f"{gw.http_url}/v1/logs", headers={"Authorization": f"Bearer {gw.token('dev', 'agent')}"}
    )
    try:
        assert exporter.export(records).name == "SUCCESS"
        assert exporter.export(records).name == "SUCCESS"  # a retry: dropped
    finally:
        exporter.shutdown()
    events = gw.events("logging-agent")
    assert [(e["kind"], e.get("stream"), e.get("line", e.get("text"))) for e in events] == [
        ("log", "stdout", "starting up"),
        ("log", "stderr", "disk at 91%"),
        ("log", "stderr", "first line"),
        ("log", "stderr", "second line"),
        ("thought", None, "Done."),
        ("log", "stderr", "ERROR openclaw.subsystem=gateway code.lineno=12"),
    ]
    assert events[0]["session"] == "otlp" and {e["session"] for e in events[1:]} == {trace_id}


def test_metrics_are_a_heartbeat(gw: GatewayProcess) -> None:
    reader = InMemoryMetricReader()
    resource = Resource.create({"service.name": "metered", "deployment.environment.name": "dev"})
    meter = MeterProvider(resource=resource, metric_readers=[reader]).get_meter("metrics")
    meter.create_up_down_counter("process.memory.usage", unit="By").add(123_456_789)
    meter.create_counter("gen_ai.client.token.usage").add(5)
    data = reader.get_metrics_data()
    assert data is not None
    exporter = OTLPMetricExporter(
        endpoint=f"{gw.http_url}/v1/metrics", headers={"Authorization": f"Bearer {gw.token('dev', 'agent')}"}
    )
    try:
        assert exporter.export(data) is MetricExportResult.SUCCESS
    finally:
        exporter.shutdown()
    (heartbeat,) = gw.events("metered")
    assert heartbeat["kind"] == "heartbeat" and heartbeat["rss_bytes"] == 123_456_789
    assert gw.get("/api/v1/agents/metered").json()["last_heartbeat"] is not None


# --- refusals -------------------------------------------------------------------------------------


def one_span_request(service: str, env: str = "dev") -> bytes:
    tracer, memory = tracer_for(**{"service.name": service, "deployment.environment.name": env})
    with tracer.start_as_current_span("chat", attributes={"gen_ai.operation.name": "chat"}):
        pass
    return encode_spans(memory.get_finished_spans()).SerializeToString()


def test_partial_success_counts_what_could_not_be_mapped(gw: GatewayProcess) -> None:
    good, good_spans = tracer_for(**{"service.name": "partly-good", "deployment.environment.name": "dev"})
    bad, bad_spans = tracer_for(**{"service.name": "!!!", "deployment.environment.name": "dev"})
    for tracer in (good, bad, bad):
        with tracer.start_as_current_span("chat", attributes={"gen_ai.operation.name": "chat"}):
            pass
    # A span whose values the protocol cannot hold is rejected; the spans beside it are not.
    with good.start_as_current_span("chat", attributes={"gen_ai.operation.name": "chat"}) as span:
        span.set_attribute("gen_ai.usage.input_tokens", 1e300)
    request = encode_spans([*good_spans.get_finished_spans(), *bad_spans.get_finished_spans()])
    assert len(request.resource_spans) == 2
    response = post(gw, "/v1/traces", request.SerializeToString(), gw.token("dev", "agent"))
    assert response.status_code == 200 and response.headers["content-type"] == PROTOBUF
    answer = ExportTraceServiceResponse.FromString(response.content)
    assert answer.partial_success.rejected_spans == 3
    message = answer.partial_success.error_message
    assert "no agent id can be made of '!!!'" in message and "1e+300 is not a token count" in message
    assert kinds(gw.events("partly-good")) == ["llm_call"]
    # Nothing to reject: no partial_success at all.
    response = post(gw, "/v1/traces", one_span_request("partly-good"), gw.token("dev", "agent"))
    assert response.status_code == 200 and response.content == b""
    assert kinds(gw.events("partly-good")) == ["llm_call", "llm_call"]


def test_odd_values_do_not_cost_the_span(gw: GatewayProcess) -> None:
    request = ExportTraceServiceRequest.FromString(one_span_request("odd-spans"))
    spans = request.resource_spans[0].scope_spans[0].spans
    odd = spans.add()
    odd.CopyFrom(spans[0])
    odd.span_id = b"\x01" * 8
    odd.name = "execute_tool"
    odd.attributes.add(key="gen_ai.operation.name", value={"string_value": "execute_tool"})
    odd.attributes.add(key="gen_ai.tool.call.arguments", value={"string_value": "[1, 2]"})
    spans[0].attributes.add(key="gen_ai.usage.input_tokens", value={"double_value": float("nan")})
    spans[0].attributes.add(key="gen_ai.usage.cost", value={"double_value": -1.0})
    far = spans.add()
    far.CopyFrom(spans[0])
    far.span_id = b"\x02" * 8
    far.end_time_unix_nano = 2**64 - 1  # the year 2554
    response = post(gw, "/v1/traces", request.SerializeToString(), gw.token("dev", "agent"))
    assert response.status_code == 200
    assert ExportTraceServiceResponse.FromString(response.content).partial_success.rejected_spans == 0
    events = gw.events("odd-spans")
    assert kinds(events) == ["tool_call", "llm_call", "tool_result", "llm_call"]
    assert events[0]["args"] == {"arguments": [1, 2]}
    assert events[1]["input_tokens"] == 0 and "cost_usd" not in events[1]
    assert events[3]["ts"].startswith("2554-")


def test_undecodable_bodies_get_400_with_a_status(gw: GatewayProcess) -> None:
    token = gw.token("dev", "agent")
    for path in ("/v1/traces", "/v1/logs", "/v1/metrics"):
        response = post(gw, path, b"\x0a\xff\xff\xff\xff\x0f garbage", token)
        assert response.status_code == 400, response.text
        reason, message = status_of(response)
        assert reason == "invalid_body" and "not a valid protobuf message" in message
    assert post(gw, "/v1/traces", b"", token).status_code == 200  # an empty request is a valid one


def test_content_types_and_encodings(gw: GatewayProcess) -> None:
    token = gw.token("dev", "agent")
    response = post(gw, "/v1/traces", b"{}", token, "text/plain")
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"
    response = post(gw, "/v1/traces", b"", token, **{"Content-Encoding": "br"})
    assert response.status_code == 415 and status_of(response)[0] == "unsupported_media_type"


def test_size_limit(gw: GatewayProcess) -> None:
    token = gw.token("dev", "agent")
    limit = 1 << 20  # the gateway's max_frame_bytes
    response = post(gw, "/v1/traces", b"\0" * (limit + 1), token)
    assert response.status_code == 413 and status_of(response)[0] == "frame_too_large"
    # Small on the wire, too large once decompressed.
    bomb = gzip.compress(b"\0" * (limit * 8))
    assert len(bomb) < limit // 100
    response = post(gw, "/v1/traces", bomb, token, **{"Content-Encoding": "gzip"})
    assert response.status_code == 413 and status_of(response)[0] == "frame_too_large"
    # A streamed body (no Content-Length) is cut off as well.
    chunks = iter([b"\0" * (limit // 2)] * 3)
    response = httpx.post(
        f"{gw.http_url}/v1/traces",
        content=chunks,
        headers={"Content-Type": PROTOBUF, "Authorization": f"Bearer {token}"},
        timeout=WAIT,
    )
    assert response.status_code == 413


def test_credentials(gw: GatewayProcess) -> None:
    body = one_span_request("credentials-agent")
    tracer, memory = tracer_for(**{"service.name": "credentials-agent", "deployment.environment.name": "dev"})
    with tracer.start_as_current_span("chat", attributes={"gen_ai.operation.name": "chat"}):
        pass
    assert export_spans(gw, memory.get_finished_spans(), None) is SpanExportResult.FAILURE
    for token in (None, "ct_000000000000_nope"):
        response = post(gw, "/v1/traces", body, token)
        assert response.status_code == 401
        assert status_of(response)[0] == "unauthorized"
    response = post(gw, "/v1/traces", body, gw.token("dev", "viewer"))
    assert response.status_code == 403 and status_of(response)[0] == "forbidden"
    # JSON requests get JSON Status bodies.
    response = post(gw, "/v1/traces", b"{}", None, "application/json")
    assert response.status_code == 401 and response.json()["details"][0]["reason"] == "unauthorized"
    assert gw.get("/api/v1/agents/credentials-agent").status_code == 404
    # An SDK left with its default service name: the agent credential's name is the agent.
    tracer, memory = tracer_for(**{"deployment.environment.name": "dev"})
    with tracer.start_as_current_span("chat", attributes={"gen_ai.operation.name": "chat"}):
        pass
    named = gw.token("dev", "agent", name="named.agent 7")
    assert export_spans(gw, memory.get_finished_spans(), named) is SpanExportResult.SUCCESS
    assert kinds(gw.events("named-agent-7")) == ["llm_call"]


def test_the_credential_must_cover_the_resource_environment(gw: GatewayProcess) -> None:
    dev_agent = gw.token("dev", "agent")
    tracer, memory = tracer_for(**{"service.name": "prod-agent", "deployment.environment.name": "prod"})
    with tracer.start_as_current_span("chat", attributes={"gen_ai.operation.name": "chat"}):
        pass
    assert export_spans(gw, memory.get_finished_spans(), dev_agent) is SpanExportResult.FAILURE
    body = encode_spans(memory.get_finished_spans()).SerializeToString()
    response = post(gw, "/v1/traces", body, dev_agent)
    assert response.status_code == 403
    reason, message = status_of(response)
    assert reason == "forbidden" and "'prod'" in message
    assert gw.get("/api/v1/agents/prod-agent").status_code == 404
    # One resource of another environment refuses the whole request: nothing is stored.
    mixed = ExportTraceServiceRequest.FromString(one_span_request("mixed-dev"))
    mixed.MergeFromString(body)
    assert post(gw, "/v1/traces", mixed.SerializeToString(), dev_agent).status_code == 403
    assert gw.get("/api/v1/agents/mixed-dev").status_code == 404
    # With a credential for prod it goes through; without a resource environment, the credential's counts.
    assert (
        export_spans(gw, memory.get_finished_spans(), gw.token("prod", "agent")) is SpanExportResult.SUCCESS
    )
    assert gw.get("/api/v1/agents/prod-agent").json()["env"] == "prod"
    tracer, memory = tracer_for(**{"service.name": "no-env-agent"})
    with tracer.start_as_current_span("chat", attributes={"gen_ai.operation.name": "chat"}):
        pass
    assert (
        export_spans(gw, memory.get_finished_spans(), gw.token("prod", "agent")) is SpanExportResult.SUCCESS
    )
    assert gw.get("/api/v1/agents/no-env-agent").json()["env"] == "prod"
    # An agent id is unique across environments.
    assert export_spans(gw, memory.get_finished_spans(), dev_agent) is SpanExportResult.FAILURE
    response = post(
        gw, "/v1/traces", encode_spans(memory.get_finished_spans()).SerializeToString(), dev_agent
    )
    assert response.status_code == 403 and "registered in environment 'prod'" in status_of(response)[1]


def test_an_agent_held_by_a_node_agent_is_not_renumbered(gw: GatewayProcess) -> None:
    token = gw.token("dev", "agent")
    headers = {"Authorization": f"Bearer {token}"}
    with connect(f"{gw.ws_url}/v1/agent", additional_headers=headers) as ws:
        ws.send(json.dumps({"type": "hello", "agent": "socket-agent", "env": "dev"}))
        assert json.loads(ws.recv(timeout=WAIT))["type"] == "welcome"
        body = one_span_request("socket-agent")
        response = post(gw, "/v1/traces", body, token)
        assert response.status_code == 200
        answer = ExportTraceServiceResponse.FromString(response.content)
        assert answer.partial_success.rejected_spans == 1
        assert "clawtrace.agent" in answer.partial_success.error_message
    assert gw.events("socket-agent") == []


class FailingSink:
    """A store that fails every write (a full disk, a lost database), for as long as it is in place."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def submit(self, info: Any, batch: Any, lines: list[bytes]) -> asyncio.Future[None]:
        failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        failed.set_exception(OSError("disk full"))
        return failed

    async def durable_seq(self, info: Any) -> int:
        seq: int = await self.real.durable_seq(info)
        return seq


def test_store_unavailable_is_503_with_retry_after(tmp_path: Path) -> None:
    gw = GatewayThread(tmp_path / "gw", load_settings(log_level="warning"), MovableClock())
    gw.start()
    try:
        assert gw.server is not None
        pipeline = gw.server.config.app.state.pipeline
        real = pipeline.sink
        body = one_span_request("unstored")
        token = gw.token("dev", "agent")
        pipeline.sink = FailingSink(real)
        response = post(gw, "/v1/traces", body, token)
        assert response.status_code == 503 and response.headers["retry-after"] == "5"
        reason, message = status_of(response)
        assert reason == "store_unavailable" and "disk full" in message
        pipeline.sink = real
        # The exporter's retry is stored: nothing of the failed attempt was taken as done.
        assert post(gw, "/v1/traces", body, token).status_code == 200
        assert [(e["kind"], e["seq"]) for e in gw.events("unstored")] == [("llm_call", 1)]
    finally:
        gw.stop()


# --- pure functions -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "agent"),
    [
        ("research-bot", "research-bot"),
        ("otel.agent/1", "otel-agent-1"),
        ("  _svc name ", "svc-name"),
        ("unknown_service:python", "unknown_service:python"),
        ("a@b:c_d-e", "a@b:c_d-e"),
        ("../..", ""),
        ("x" * 200, "x" * 128),
    ],
)
def test_sanitize_agent_id(raw: str, agent: str) -> None:
    assert sanitize_agent_id(raw) == agent


def test_origin_of_a_resource() -> None:
    uuid = "c629ca8a-aee1-4843-ae8b-e938334c51cc"
    origin = origin_of(
        {
            "service.name": "bot",
            "service.instance.id": uuid,  # generated per process by SDKs: not an identity
            "deployment.environment": "staging",
            "cloud.region": "eu-west-1",
            "clawtrace.label.team": "search",
            "host.name": "node-7",
        },
        "dev",
        None,
    )
    assert (origin.agent, origin.env, origin.region) == ("bot", "staging", "eu-west-1")
    assert origin.labels == {"service.name": "bot", "host.name": "node-7", "team": "search"}
    attrs = {"service.name": "bot", "service.instance.id": "bot-3", "deployment.environment.name": "prod"}
    assert (origin_of(attrs, "dev", None).agent, origin_of(attrs, "dev", None).env) == ("bot-3", "prod")
    assert (
        origin_of({**attrs, "clawtrace.agent": "a-0417", "clawtrace.env": "qa"}, "dev", None).agent
        == "a-0417"
    )
    assert origin_of({**attrs, "clawtrace.agent": "a-0417", "clawtrace.env": "qa"}, "dev", None).env == "qa"
    # The SDKs' default service name gives way to the agent credential's name.
    unnamed = {"service.name": "unknown_service:python"}
    assert origin_of(unnamed, "dev", "dev-1").agent == "dev-1"
    assert origin_of(unnamed, "dev", None).agent == "unknown_service:python"
    nothing = origin_of({}, "dev", None)
    assert nothing.agent is None and nothing.problem and nothing.env == "dev"


def test_message_texts_reads_the_conventions_old_and_new() -> None:
    new = [
        {
            "role": "assistant",
            "parts": [{"type": "reasoning", "content": "hm"}, {"type": "text", "content": "ok"}],
        }
    ]
    assert message_texts(json.dumps(new)) == ["hm", "ok"]
    assert message_texts({"index": 0, "message": {"content": "legacy"}}) == ["legacy"]
    assert message_texts([{"role": "assistant", "content": [{"type": "text", "text": "openai"}]}]) == [
        "openai"
    ]
    assert message_texts("plain") == ["plain"]
    assert (
        message_texts(
            [{"parts": [{"type": "tool_call", "name": "x"}, {"type": "reasoning", "redacted": True}]}]
        )
        == []
    )
    assert message_texts(None) == [] and message_texts("  ") == []


def test_status_body_is_a_google_rpc_status() -> None:
    status = status_pb2.Status.FromString(
        status_body(413, "frame_too_large", "too big: ü", Encoding.PROTOBUF)
    )
    assert (status.code, status.message) == (8, "too big: ü")
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info) and (info.reason, info.domain) == ("frame_too_large", "clawtrace")
    document = json.loads(status_body(400, "invalid_body", "no", Encoding.JSON))
    parsed = json_format.ParseDict(document, status_pb2.Status())
    assert parsed.code == 3 and parsed.details[0].Unpack(info) and info.reason == "invalid_body"


def test_decompress_limits() -> None:
    assert decompress(gzip.compress(b"a" * 100), "gzip", 100) == b"a" * 100
    with pytest.raises(PayloadError) as refused:
        decompress(gzip.compress(b"a" * 101), "GZIP", 100)
    assert refused.value.status == 413
    with pytest.raises(PayloadError) as refused:
        decompress(gzip.compress(b"a" * 100)[:-5], "gzip", 1000)
    assert refused.value.status == 400
    assert decompress(b"raw", None, 3) == b"raw" and decompress(b"raw", "identity", 3) == b"raw"
