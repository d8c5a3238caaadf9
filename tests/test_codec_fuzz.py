"""Property-based fuzzing of the agent-frame decoder (``decode_client_message``).

Whatever arrives on ``/v1/agent``, the decoder either returns something the
gateway can act on or raises ``FrameError``; never anything else, and a bad
event never costs the valid events beside it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clawtrace.protocol import (
    KINDS,
    DecodedEvents,
    ErrorCode,
    Event,
    Events,
    FrameError,
    Heartbeat,
    Hello,
    Lifecycle,
    LlmCall,
    Log,
    PolicyDecision,
    Thought,
    ToolCall,
    ToolResult,
    decode_client_message,
    encode,
)
from clawtrace.protocol.codec import decode_event

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FAST = settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def decode_or_frame_error(data: bytes | str) -> Hello | DecodedEvents | FrameError:
    """Decode; anything but a result or a ``FrameError`` fails the test."""
    try:
        result = decode_client_message(data)
    except FrameError as exc:
        assert exc.code in {
            ErrorCode.INVALID_JSON,
            ErrorCode.INVALID_UTF8,
            ErrorCode.INVALID_FRAME,
        }, exc.code
        assert exc.message
        return exc
    assert isinstance(result, Hello | DecodedEvents)
    return result


# --- strategies -----------------------------------------------------------------

# Keys the decoder looks at, so that fuzzed objects often get past the first checks.
INTERESTING_KEYS = [
    "type", "events", "kind", "seq", "ts", "session", "agent", "received", "stream", "line", "text",
    "model", "input_tokens", "output_tokens", "duration_ms", "cost_usd", "call_id", "tool", "args",
    "ok", "error", "output", "cpu_percent", "rss_bytes", "state", "exit_code", "reason", "decision",
    "rule", "env", "region", "labels", "release", "token", "protocol",
]
INTERESTING_STRINGS = [
    *KINDS, "events", "hello", "stdout", "stderr", "allow", "deny", "2026-03-01T12:00:00Z",
    "2026-03-01T12:00:00+02:00", "2026-03-01T12:00:00", "not-a-date", "", "a-1", "dev",
]

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(INTERESTING_STRINGS),
)
json_keys = st.one_of(st.sampled_from(INTERESTING_KEYS), st.text(max_size=8))
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(json_keys, children, max_size=6),
    ),
    max_leaves=25,
)


def event_like() -> st.SearchStrategy[dict[str, Any]]:
    """Objects that look like events: mostly the right keys, arbitrary values."""
    return st.dictionaries(json_keys, json_values, max_size=10)


# Valid values for every field of every kind.
identifiers = st.text(min_size=1, max_size=40)
agent_ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_:@-]{0,30}\Z")
non_negative_floats = st.floats(min_value=0, allow_nan=False, allow_infinity=False)
non_negative_ints = st.integers(min_value=0, max_value=2**63 - 1)
offsets = st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
timestamps = st.builds(
    lambda moment, tz: moment.replace(tzinfo=UTC).astimezone(tz),
    st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(9998, 12, 31)),
    offsets,
)
plain_json = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**64 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)
optional = st.one_of  # readability: optional(st.none(), x)


def envelope() -> dict[str, st.SearchStrategy[Any]]:
    return {
        "seq": st.integers(min_value=1, max_value=2**63 - 1),
        "ts": timestamps,
        "session": identifiers,
        "agent": optional(st.none(), agent_ids),
    }


valid_events: st.SearchStrategy[Event] = st.one_of(
    st.builds(Log, stream=st.sampled_from(["stdout", "stderr"]), line=st.text(max_size=200), **envelope()),
    st.builds(Thought, text=st.text(max_size=200), **envelope()),
    st.builds(
        LlmCall,
        model=st.text(max_size=30),
        input_tokens=non_negative_ints,
        output_tokens=non_negative_ints,
        duration_ms=non_negative_floats,
        cost_usd=optional(st.none(), non_negative_floats),
        cached_input_tokens=non_negative_ints,
        **envelope(),
    ),
    st.builds(
        ToolCall,
        call_id=identifiers,
        tool=identifiers,
        args=st.dictionaries(st.text(max_size=8), plain_json, max_size=4),
        **envelope(),
    ),
    st.builds(
        ToolResult,
        call_id=identifiers,
        ok=st.booleans(),
        duration_ms=non_negative_floats,
        error=optional(st.none(), st.text(max_size=40)),
        output=plain_json,
        **envelope(),
    ),
    st.builds(
        Heartbeat,
        cpu_percent=optional(st.none(), non_negative_floats),
        rss_bytes=optional(st.none(), non_negative_ints),
        **envelope(),
    ),
    st.builds(
        Lifecycle,
        state=identifiers,
        exit_code=optional(st.none(), st.integers(min_value=-(2**63), max_value=2**63 - 1)),
        reason=optional(st.none(), st.text(max_size=40)),
        **envelope(),
    ),
    st.builds(
        PolicyDecision,
        decision=st.sampled_from(["allow", "deny", "require_approval"]),
        tool=identifiers,
        rule=optional(st.none(), st.text(max_size=20)),
        reason=optional(st.none(), st.text(max_size=40)),
        **envelope(),
    ),
)


def to_dict(event: Event) -> dict[str, Any]:
    value = msgspec.json.decode(encode(event))
    assert isinstance(value, dict)
    return value


# An invalid event: a valid one broken in one way the schema forbids.
REQUIRED = {
    "log": ["stream", "line"],
    "thought": ["text"],
    "llm_call": ["model", "input_tokens", "output_tokens", "duration_ms"],
    "tool_call": ["call_id", "tool"],
    "tool_result": ["call_id", "ok", "duration_ms"],
    "heartbeat": [],
    "lifecycle": ["state"],
    "policy": ["decision", "tool"],
}


@st.composite
def invalid_events(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """(event dict, expected error code)."""
    event = to_dict(draw(valid_events))
    kind = event["kind"]
    breakages = ["seq_zero", "seq_negative", "seq_string", "seq_too_big", "ts_naive", "ts_garbage",
                 "session_empty", "session_number", "unknown_kind", "kind_missing", "agent_slash",
                 "not_an_object"]
    if REQUIRED[kind]:
        breakages.append("drop_required")
    breakages.append({
        "log": "stream_bad", "thought": "text_number", "llm_call": "tokens_negative",
        "tool_call": "args_list", "tool_result": "ok_string", "heartbeat": "rss_negative",
        "lifecycle": "exit_code_float", "policy": "decision_bad",
    }[kind])
    how = draw(st.sampled_from(breakages))
    code = ErrorCode.INVALID_EVENT
    match how:
        case "seq_zero":
            event["seq"] = 0
        case "seq_negative":
            event["seq"] = draw(st.integers(max_value=-1))
        case "seq_string":
            event["seq"] = str(event["seq"])
        case "seq_too_big":
            event["seq"] = 2**63 + draw(st.integers(min_value=0, max_value=2**64))
        case "ts_naive":
            event["ts"] = "2026-03-01T12:00:00"
        case "ts_garbage":
            event["ts"] = draw(st.sampled_from(["yesterday", "", 12, None]))
        case "session_empty":
            event["session"] = ""
        case "session_number":
            event["session"] = 7
        case "unknown_kind":
            event["kind"] = draw(st.text(max_size=12).filter(lambda k: k not in KINDS))
            code = ErrorCode.UNKNOWN_KIND
        case "kind_missing":
            del event["kind"]
        case "agent_slash":
            event["agent"] = "eu-west-1/a-0417"
        case "not_an_object":
            return draw(st.sampled_from([[], "log", 3, None, True])), ErrorCode.INVALID_EVENT  # type: ignore[return-value]
        case "drop_required":
            del event[draw(st.sampled_from(REQUIRED[kind]))]
        case "stream_bad":
            event["stream"] = "stdin"
        case "text_number":
            event["text"] = 42
        case "tokens_negative":
            event["input_tokens"] = -1
        case "args_list":
            event["args"] = ["rm", "-rf", "/"]
        case "ok_string":
            event["ok"] = "yes"
        case "rss_negative":
            event["rss_bytes"] = -5
        case "exit_code_float":
            event["exit_code"] = 1.5
        case "decision_bad":
            event["decision"] = "maybe"
    return event, code


def frame_bytes(events: list[Any]) -> bytes:
    return json.dumps({"type": "events", "events": events}).encode()


# --- properties ------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=512))
def test_arbitrary_bytes_never_raise_anything_but_frame_error(data: bytes) -> None:
    decode_or_frame_error(data)


@FUZZ
@given(st.binary(max_size=64))
def test_bytes_inside_an_events_frame(noise: bytes) -> None:
    decode_or_frame_error(b'{"type":"events","events":[' + noise + b"]}")
    decode_or_frame_error(b'{"type":"events","events":[{"kind":"log",' + noise + b"}]}")


@FUZZ
@given(st.text(max_size=256))
def test_arbitrary_text_never_raises_anything_but_frame_error(data: str) -> None:
    decode_or_frame_error(data)


@FAST
@given(st.text(alphabet=st.characters(codec=None, categories=["Cs", "Ll", "Nd"]), max_size=32))
def test_text_with_lone_surrogates_is_invalid_utf8(data: str) -> None:
    """A ``str`` that cannot be encoded as UTF-8 is refused as such, not with a crash."""
    event = {**VALID_LOG, "line": "@LINE@"}
    document = json.dumps({"type": "events", "events": [event]}).replace("@LINE@", data)
    result = decode_or_frame_error(document)
    if any(0xD800 <= ord(ch) <= 0xDFFF for ch in data):
        assert isinstance(result, FrameError)
        assert result.code == ErrorCode.INVALID_UTF8
    else:
        assert isinstance(result, DecodedEvents) and len(result.events) == 1


@FUZZ
@given(json_values)
def test_arbitrary_json_values(value: Any) -> None:
    decode_or_frame_error(json.dumps(value))


@FUZZ
@given(
    st.one_of(st.sampled_from(["events", "hello"]), st.text(max_size=8)),
    st.lists(st.one_of(event_like(), json_values), max_size=8),
    st.dictionaries(json_keys, json_values, max_size=4),
)
def test_fuzzed_frames_give_one_outcome_per_event(
    frame_type: str, events: list[Any], extra: dict[str, Any]
) -> None:
    document = {**extra, "type": frame_type, "events": events}
    result = decode_or_frame_error(json.dumps(document))
    if frame_type == "events":
        # An events frame whose ``events`` is a list always gets past frame checks,
        # and every element yields exactly one event or exactly one error.
        assert isinstance(result, DecodedEvents)
        assert len(result.events) + len(result.errors) == len(events)
        for error in result.errors:
            assert error.code in {ErrorCode.INVALID_EVENT, ErrorCode.UNKNOWN_KIND}
            assert error.message
            assert error.seq is None or isinstance(error.seq, int)
    elif frame_type != "hello":
        assert isinstance(result, FrameError)
        assert result.code == ErrorCode.INVALID_FRAME


@FUZZ
@given(st.lists(valid_events, min_size=1, max_size=10))
def test_valid_events_round_trip(events: list[Event]) -> None:
    encoded = encode(Events(events=events))
    result = decode_client_message(encoded)
    assert isinstance(result, DecodedEvents)
    assert result.errors == []
    assert result.events == events
    # Each one also decodes alone (the NDJSON path) and re-encodes identically.
    for event in events:
        assert decode_event(encode(event)) == event
        assert encode(decode_event(encode(event))) == encode(event)
    # Text and bytes frames decode the same.
    assert decode_client_message(encoded.decode()) == result


@FUZZ
@given(st.lists(st.one_of(valid_events.map(lambda e: (e, None)), invalid_events()), max_size=12))
def test_mixed_frame_keeps_every_valid_event_and_reports_each_invalid_one(
    items: list[tuple[Any, str | None]],
) -> None:
    wire: list[Any] = []
    expected_valid: list[Event] = []
    expected_errors: list[tuple[str, Any]] = []
    for item, code in items:
        if code is None:
            wire.append(to_dict(item))
            expected_valid.append(item)
        else:
            wire.append(item)
            seq = item.get("seq") if isinstance(item, dict) else None
            expected_seq = seq if isinstance(seq, int) and not isinstance(seq, bool) else None
            expected_errors.append((code, expected_seq))
    result = decode_client_message(frame_bytes(wire))
    assert isinstance(result, DecodedEvents)
    assert result.events == expected_valid
    assert [(e.code, e.seq) for e in result.errors] == expected_errors


@FAST
@given(st.builds(
    Hello,
    agent=agent_ids,
    env=st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_-]{0,20}\Z"),
    region=st.text(max_size=20),
    labels=st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
    release=st.one_of(st.none(), st.text(max_size=20)),
    token=st.one_of(st.none(), st.text(max_size=20)),
))
def test_hello_round_trips(hello: Hello) -> None:
    assert decode_client_message(encode(hello)) == hello


# --- specific hostile inputs -------------------------------------------------------------


VALID_LOG = {"kind": "log", "seq": 1, "ts": "2026-03-01T12:00:00Z", "session": "s", "stream": "stdout",
             "line": "ok"}


@pytest.mark.parametrize("depth", [50, 900, 1_000, 5_000, 100_000])
def test_deeply_nested_json_is_a_structured_error(depth: int) -> None:
    """Nesting beyond msgspec's recursion limit must not escape as ``RecursionError``."""
    deep = "[" * depth + "]" * depth
    valid = json.dumps(VALID_LOG)
    for document in (
        deep,
        '{"type":"events","events":[' + valid + "," + deep + "]}",
        '{"type":"events","events":[' + valid + ',{"kind":"log","seq":2,"args":' + deep + "}]}",
        '{"type":"hello","agent":"a","env":"dev","labels":' + deep + "}",
    ):
        result = decode_or_frame_error(document)
        if isinstance(result, DecodedEvents):
            # Shallow enough to be split: the valid event survives, the other is an error.
            assert len(result.events) == 1 and len(result.errors) == 1


def test_deeply_nested_event_alone_is_a_decode_error() -> None:
    """``decode_event`` (the NDJSON path) promises msgspec errors only."""
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises((msgspec.DecodeError, msgspec.ValidationError)):
        decode_event('{"kind":"log","seq":2,"x":' + deep + "}")


@pytest.mark.parametrize(
    "document",
    [
        b"",
        b" ",
        b"null",
        b"[]",
        b"{}",
        b'{"type":"events"}',
        b'{"type":"events","events":{}}',
        b'{"type":"events","events":null}',
        b'{"type":"events","events":"x"}',
        b'{"type":null,"events":[]}',
        b'{"type":"welcome","ack":0}',
        b'{"type":"hello"}',
        b'{"type":"hello","agent":"a/b","env":"dev"}',
        b'{"type":"events","events":[NaN]}',
        b'{"type":"events","events":[1e999]}',
        b'{"type":"events","events":[]}garbage',
        b'\xef\xbb\xbf{"type":"events","events":[]}',
        b'{"type":"events","events":[{"kind":"log","line":"\xc3\x28"}]}',
    ],
)
def test_hostile_frames(document: bytes) -> None:
    decode_or_frame_error(document)


def test_error_names_the_event_by_seq_and_kind() -> None:
    frame = frame_bytes([
        VALID_LOG,
        {**VALID_LOG, "seq": 2, "kind": "mystery"},
        {**VALID_LOG, "seq": 3, "stream": "stdin"},
        {**VALID_LOG, "seq": "4"},
        {**VALID_LOG, "seq": 5, "ts": "2026-03-01T12:00:00"},
        {**VALID_LOG, "seq": 6},
    ])
    result = decode_client_message(frame)
    assert isinstance(result, DecodedEvents)
    assert [e.seq for e in result.events] == [1, 6]
    assert [(e.code, e.seq) for e in result.errors] == [
        (ErrorCode.UNKNOWN_KIND, 2),
        (ErrorCode.INVALID_EVENT, 3),
        (ErrorCode.INVALID_EVENT, None),
        (ErrorCode.INVALID_EVENT, 5),
    ]
    assert "stream" in result.errors[1].message
    assert "mystery" in result.errors[0].message
