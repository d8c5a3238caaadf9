"""Encoding and decoding of protocol frames.

Decoding is per event where it must be: one malformed event in a frame gets
its own structured error and never costs the valid events beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from clawtrace.protocol.messages import (
    EVENT_TYPES,
    ClientMessage,
    Error,
    Event,
    Events,
    Hello,
    ServerMessage,
)


class ErrorCode:
    """Values of ``Error.code``; stable, documented in docs/protocol.md."""

    INVALID_JSON: Final = "invalid_json"
    INVALID_UTF8: Final = "invalid_utf8"
    INVALID_FRAME: Final = "invalid_frame"
    UNKNOWN_KIND: Final = "unknown_kind"
    INVALID_EVENT: Final = "invalid_event"
    SEQ_NOT_INCREASING: Final = "seq_not_increasing"
    TOO_MANY_EVENTS: Final = "too_many_events"
    FRAME_TOO_LARGE: Final = "frame_too_large"
    RATE_LIMITED: Final = "rate_limited"
    UNAUTHORIZED: Final = "unauthorized"
    FORBIDDEN: Final = "forbidden"
    UNEXPECTED_MESSAGE: Final = "unexpected_message"
    STORE_UNAVAILABLE: Final = "store_unavailable"


class CloseCode:
    """WebSocket close codes the gateway uses besides the RFC 6455 ones."""

    PROTOCOL_ERROR: Final = 4000
    UNAUTHORIZED: Final = 4001
    FORBIDDEN: Final = 4003
    RATE_LIMITED: Final = 4008
    REPLACED: Final = 4009
    SHUTTING_DOWN: Final = 1001
    # RFC 6455 "try again later": the gateway cannot take events right now (its store is down).
    TRY_AGAIN_LATER: Final = 1013
    TOO_BIG: Final = 1009


class _RawEvents(msgspec.Struct):
    type: str
    events: list[msgspec.Raw]


class _RawEventHead(msgspec.Struct):
    seq: Any = None
    kind: Any = None


_client_decoder: Final = msgspec.json.Decoder(ClientMessage)
_events_decoder: Final = msgspec.json.Decoder(Events)
_raw_events_decoder: Final = msgspec.json.Decoder(_RawEvents)
_event_decoder: Final = msgspec.json.Decoder(Event)
_head_decoder: Final = msgspec.json.Decoder(_RawEventHead)
_encoder: Final = msgspec.json.Encoder()


class FrameError(Exception):
    """The whole frame is unusable (not JSON, not a known message type)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def to_message(self) -> Error:
        return Error(code=self.code, message=self.message)


@dataclass(slots=True)
class DecodedEvents:
    events: list[Event]
    errors: list[Error] = field(default_factory=list)


def _check_utf8(data: bytes | str) -> bytes | str:
    if isinstance(data, bytes):
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FrameError(ErrorCode.INVALID_UTF8, f"frame is not valid UTF-8 (byte {exc.start})") from None
    return data


_TOO_DEEP: Final = "JSON nested too deeply"


def decode_event(raw: bytes | str) -> Event:
    """Decode one event, raising ``msgspec.ValidationError``/``DecodeError``."""
    try:
        event: Event = _event_decoder.decode(raw)
    except RecursionError:
        # msgspec gives up on deep nesting with RecursionError; callers expect msgspec errors.
        raise msgspec.DecodeError(_TOO_DEEP) from None
    return event


def describe_event_error(raw: bytes | str, exc: Exception) -> Error:
    """Turn a failed event decode into a structured error naming the event."""
    seq: int | None = None
    kind: object = None
    try:
        head = _head_decoder.decode(raw)
        seq = head.seq if isinstance(head.seq, int) and not isinstance(head.seq, bool) else None
        kind = head.kind
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        pass
    if isinstance(kind, str) and kind not in EVENT_TYPES:
        return Error(
            code=ErrorCode.UNKNOWN_KIND,
            message=f"unknown event kind {kind!r}; expected one of {', '.join(EVENT_TYPES)}",
            seq=seq,
        )
    if isinstance(exc, msgspec.ValidationError):
        return Error(code=ErrorCode.INVALID_EVENT, message=f"invalid event: {exc}", seq=seq)
    return Error(code=ErrorCode.INVALID_JSON, message=f"event is not valid JSON: {exc}", seq=seq)


def decode_events_lenient(raw_events: list[msgspec.Raw]) -> DecodedEvents:
    result = DecodedEvents(events=[])
    for raw in raw_events:
        try:
            result.events.append(decode_event(raw))
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            result.errors.append(describe_event_error(raw, exc))
    return result


def decode_client_message(data: bytes | str) -> Hello | DecodedEvents:
    """Decode a frame from an agent connection.

    Returns the ``Hello`` or the events that are valid plus one error per
    invalid event. Raises ``FrameError`` when nothing in the frame is usable.
    """
    try:
        return _decode_client_message(data)
    except RecursionError:
        raise FrameError(ErrorCode.INVALID_JSON, f"frame is not usable: {_TOO_DEEP}") from None
    except UnicodeEncodeError as exc:
        # A str holding lone surrogates (a WebSocket text frame never does: it is valid UTF-8).
        message = f"frame is not valid UTF-8 (character {exc.start})"
        raise FrameError(ErrorCode.INVALID_UTF8, message) from None


def _decode_client_message(data: bytes | str) -> Hello | DecodedEvents:
    data = _check_utf8(data)
    try:
        message = _client_decoder.decode(data)
    except msgspec.ValidationError as exc:
        invalid = exc
    except msgspec.DecodeError as exc:
        raise FrameError(ErrorCode.INVALID_JSON, f"frame is not valid JSON: {exc}") from None
    else:
        if isinstance(message, Hello):
            return message
        return DecodedEvents(events=message.events)
    # Slow path: an events frame keeps every valid event; anything else is refused whole.
    try:
        raw: _RawEvents | None = _raw_events_decoder.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError):
        raw = None
    if raw is None or raw.type != "events":
        raise FrameError(ErrorCode.INVALID_FRAME, f"invalid frame: {invalid}") from None
    return decode_events_lenient(raw.events)


def encode(message: ServerMessage | Hello | Events | Event) -> bytes:
    return _encoder.encode(message)


def encode_text(message: ServerMessage | Hello | Events | Event) -> str:
    return _encoder.encode(message).decode()


_server_decoder: Final = msgspec.json.Decoder(ServerMessage)


def decode_server_message(data: bytes | str) -> ServerMessage:
    """Decode a frame sent by the gateway (used by node agents and clients)."""
    message: ServerMessage = _server_decoder.decode(data)
    return message
