"""OTLP/HTTP bodies: content type, gzip, protobuf or OTLP JSON in; responses and Status bodies out.

OTLP JSON is protobuf's JSON mapping with one difference that matters here:
trace and span ids are hex strings, not base64 (they are ``bytes`` fields).
``decode`` rewrites them to base64 before ``json_format`` reads the object.
"""

from __future__ import annotations

import base64
import enum
import json
import zlib
from typing import Any, Final, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message


class Encoding(enum.Enum):
    PROTOBUF = "application/x-protobuf"
    JSON = "application/json"


def encoding_of(content_type: str | None) -> Encoding | None:
    """The OTLP encoding a ``Content-Type`` names, or None for anything else."""
    if not content_type:
        return None
    media = content_type.split(";", 1)[0].strip().lower()
    for encoding in Encoding:
        if media == encoding.value:
            return encoding
    return None


class PayloadError(Exception):
    """The body cannot be used. ``status`` is the HTTP status to answer (400, 413 or 415)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def too_large(limit: int) -> PayloadError:
    return PayloadError(
        413, "frame_too_large", f"the request may be at most {limit} bytes (after gzip decompression)"
    )


def decompress(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    """The body without its ``Content-Encoding`` (identity or gzip), at most ``limit`` bytes."""
    coding = (content_encoding or "identity").strip().lower()
    if coding == "identity":
        if len(body) > limit:
            raise too_large(limit)
        return body
    if coding != "gzip":
        raise PayloadError(
            415, "unsupported_media_type", f"Content-Encoding {coding!r} is not supported: use gzip or none"
        )
    out = bytearray()
    data = body
    # A gzip stream may hold several members; decompress them in turn, never past the limit
    # (a small body must not expand into gigabytes).
    while True:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out += inflater.decompress(data, limit + 1 - len(out))
        except zlib.error as exc:
            raise PayloadError(400, "invalid_body", f"the body is not valid gzip: {exc}") from None
        if len(out) > limit or inflater.unconsumed_tail:
            raise too_large(limit)
        if not inflater.eof:
            raise PayloadError(400, "invalid_body", "the gzip body is truncated")
        data = inflater.unused_data
        if not data:
            return bytes(out)


M = TypeVar("M", bound=Message)

_ID_FIELDS: Final = frozenset({"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"})


def _hex_to_base64(value: str, field: str) -> str:
    if not value:
        return value
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise PayloadError(
            400, "invalid_body", f"{field} {value[:64]!r} is not hex (OTLP JSON ids are hex strings)"
        ) from None
    return base64.b64encode(raw).decode("ascii")


def _ids_to_base64(document: Any) -> None:
    """Rewrite every trace/span id in a decoded OTLP JSON document from hex to base64, in place."""
    # Iterative: the document's nesting is the client's choice.
    stack: list[Any] = [document]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, child in node.items():
                if key in _ID_FIELDS and isinstance(child, str):
                    node[key] = _hex_to_base64(child, key)
                elif isinstance(child, dict | list):
                    stack.append(child)
        elif isinstance(node, list):
            stack.extend(child for child in node if isinstance(child, dict | list))


def decode(payload: bytes, encoding: Encoding, message_type: type[M]) -> M:
    """The request message, or ``PayloadError`` (400) saying why it cannot be read."""
    message = message_type()
    if encoding is Encoding.PROTOBUF:
        try:
            message.ParseFromString(payload)
        except Exception as exc:  # DecodeError, and whatever else a hostile payload provokes
            raise PayloadError(
                400, "invalid_body", f"the body is not a valid protobuf message: {exc}"
            ) from None
        return message
    try:
        document = json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError:
        raise PayloadError(400, "invalid_body", "the JSON body is not valid UTF-8") from None
    except (ValueError, RecursionError) as exc:
        raise PayloadError(400, "invalid_body", f"the body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise PayloadError(400, "invalid_body", "the JSON body must be an object")
    _ids_to_base64(document)
    try:
        # The OTLP/HTTP specification: receivers ignore fields they do not know.
        json_format.ParseDict(document, message, ignore_unknown_fields=True)
    except Exception as exc:  # ParseError, RecursionError, ...: all a bad payload
        raise PayloadError(400, "invalid_body", f"the body is not a valid OTLP JSON message: {exc}") from None
    return message


def encode(message: Message, encoding: Encoding) -> bytes:
    """A response message in the request's encoding (OTLP JSON: lowerCamelCase, int64 as strings)."""
    if encoding is Encoding.PROTOBUF:
        return message.SerializeToString()
    return json_format.MessageToJson(message, indent=None).encode()


# google.rpc.Code values for the statuses the receiver answers with. The
# OTLP/HTTP specification lets clients ignore them; they help a person reading one.
GRPC_CODES: Final = {400: 3, 401: 16, 403: 7, 413: 8, 415: 3, 503: 14}
_ERROR_INFO: Final = "type.googleapis.com/google.rpc.ErrorInfo"
DOMAIN: Final = "clawtrace"


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _bytes_field(number: int, data: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def status_body(status: int, reason: str, message: str, encoding: Encoding) -> bytes:
    """A ``google.rpc.Status`` with a ``google.rpc.ErrorInfo`` detail (``reason``: the gateway's error code).

    Written by hand (three fields) rather than pulling in googleapis-common-protos.
    """
    code = GRPC_CODES.get(status, 2)  # 2: UNKNOWN
    if encoding is Encoding.JSON:
        document = {
            "code": code,
            "message": message,
            "details": [{"@type": _ERROR_INFO, "reason": reason, "domain": DOMAIN}],
        }
        return json.dumps(document).encode()
    error_info = _bytes_field(1, reason.encode()) + _bytes_field(2, DOMAIN.encode())
    detail = _bytes_field(1, _ERROR_INFO.encode()) + _bytes_field(2, error_info)
    return (
        _varint(1 << 3)
        + _varint(code)
        + _bytes_field(2, message.encode("utf-8", "replace"))
        + _bytes_field(3, detail)
    )
