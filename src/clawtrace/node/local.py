"""The local Unix socket the agent process talks to: events, policy questions, and HTTP.

The node agent passes the socket's path to the child in ``CLAWTRACE_SOCKET``
(and ``CLAWTRACE_POLICY=enforce`` when it answers policy questions). A
connection speaks one of two languages, told apart by its first byte:

* Newline-delimited JSON (starts with ``{``). An object with a ``kind`` is an
  event without ``seq`` or ``session`` (usually without ``ts``):
  ``{"kind": "thought", "text": "..."}``; the node agent validates, stamps and
  spools it, and answers nothing. An object with ``"type": "authorize"`` asks
  whether a tool call may run and is answered on the same connection with
  ``{"type": "decision", "id": ..., "final": true, "decision": ...}``
  (a ``require_approval`` first gets a ``"final": false`` line, then the
  final one once a person or the timeout decides).
* HTTP/1.1 (starts with a method name), for agents in other languages and
  ``curl --unix-socket``: ``POST /v1/authorize``, ``GET /v1/approvals/<id>``
  and ``GET /v1/policy``. docs/protocol.md has the shapes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any, Final, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import msgspec

from clawtrace.node.supervisor import LineSplitter

log = logging.getLogger("clawtrace.node.local")

SOCKET_ENV: Final = "CLAWTRACE_SOCKET"
# One SDK message may carry a tool's output; anything bigger than this is
# not an event the gateway would accept anyway.
MAX_MESSAGE_BYTES: Final = 1024 * 1024
READ_CHUNK: Final = 64 * 1024
# sun_path holds 108 bytes on Linux (104 on macOS), terminator included.
MAX_SOCKET_PATH: Final = 100
MAX_HTTP_HEAD: Final = 16 * 1024
# An HTTP client that opens a connection and never finishes its request
# must not hold it forever.
HTTP_READ_TIMEOUT: Final = 30.0
_HTTP_FIRST_BYTES: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")

MessagesHandler = Callable[[list[dict[str, Any]]], None]
Interim = Callable[[dict[str, Any]], None]

_decoder: Final = msgspec.json.Decoder(dict[str, Any])
_encoder: Final = msgspec.json.Encoder()


class PolicyEndpoint(Protocol):
    """What answers policy questions on the socket (``clawtrace.node.policy.NodePolicy``)."""

    async def authorize(self, body: dict[str, Any], interim: Interim | None = None) -> dict[str, Any]:
        """Raises ValueError with a message for the caller when the request is malformed."""
        ...

    async def approval_state(self, approval_id: str, wait: float) -> dict[str, Any] | None: ...

    def status(self) -> dict[str, Any]: ...


class _HttpError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


_REASONS: Final = {
    100: "Continue",
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}


class LocalServer:
    """Accepts SDK connections on a Unix socket and hands decoded messages on.

    ``on_messages`` gets every complete, decodable event object of one read,
    in order, so the caller can spool them in one transaction. ``policy``
    answers authorize requests; without it they get an error saying that
    this node agent does not enforce policy.
    """

    def __init__(
        self,
        on_messages: MessagesHandler,
        path: str | None = None,
        *,
        prefer_dir: str | None = None,
        policy: PolicyEndpoint | None = None,
    ) -> None:
        self.on_messages = on_messages
        self.policy = policy
        self._requested_path = path
        self._prefer_dir = os.path.abspath(prefer_dir) if prefer_dir is not None else None
        self._tmpdir: str | None = None
        self.path: str | None = None
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.connections_accepted = 0
        self.messages_received = 0
        self.messages_rejected = 0
        self.requests_answered = 0

    async def start(self) -> str:
        """Listen; the socket goes at ``path``, else in ``prefer_dir`` if its path fits, else in /tmp."""
        path = self._requested_path
        if path is None and self._prefer_dir is not None:
            candidate = os.path.join(self._prefer_dir, "sdk.sock")
            # Next to the spool, a node agent killed with -9 leaves nothing
            # behind in /tmp, and its successor replaces the stale socket.
            if len(os.fsencode(candidate)) <= MAX_SOCKET_PATH:
                path = candidate
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        else:
            # A private directory: the socket accepts events on the agent's
            # behalf, so other users on the host must not reach it. Its path
            # stays short because sun_path is limited to ~100 bytes.
            self._tmpdir = tempfile.mkdtemp(prefix="clawtrace-")
            os.chmod(self._tmpdir, 0o700)
            path = os.path.join(self._tmpdir, "sdk.sock")
        self._server = await asyncio.start_unix_server(self._handle, path=path, limit=MAX_HTTP_HEAD * 4)
        # Connecting needs write permission on the socket file: only this
        # user may report events on the agent's behalf.
        os.chmod(path, 0o600)
        self.path = path
        log.debug("SDK socket listening on %s", path)
        return path

    async def close(self) -> None:
        server = self._server
        self._server = None
        if server is not None:
            server.close()
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if server is not None:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        if self.path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self.connections_accepted += 1
        try:
            first = await reader.read(1)
            if first and first[0] in _HTTP_FIRST_BYTES:
                await self._serve_http(first, reader, writer)
            else:
                await self._serve_lines(first, reader, writer)
        except (ConnectionError, OSError) as exc:
            log.debug("SDK connection dropped: %s", exc)
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    # --- newline-delimited JSON -------------------------------------------------

    async def _serve_lines(
        self, first: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        splitter = LineSplitter(MAX_MESSAGE_BYTES)
        requests: set[asyncio.Task[None]] = set()
        chunk = first
        try:
            while True:
                lines = splitter.feed(chunk) if chunk else splitter.flush()
                self._dispatch(lines, writer, requests)
                if not chunk:
                    break
                chunk = await reader.read(READ_CHUNK)
            # The client may half-close after its question: it still gets the answer.
            if requests:
                await asyncio.gather(*requests, return_exceptions=True)
        finally:
            for request in requests:
                request.cancel()

    def _dispatch(
        self,
        lines: list[bytes],
        writer: asyncio.StreamWriter | None = None,
        requests: set[asyncio.Task[None]] | None = None,
    ) -> None:
        messages: list[dict[str, Any]] = []
        for line in lines:
            if not line.strip():
                continue
            try:
                message = _decoder.decode(line)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                # Includes lines cut by the size limit: they are no longer JSON.
                self.messages_rejected += 1
                log.warning("ignoring an SDK message that is not a JSON object (%s): %.120r", exc, line)
                continue
            if message.get("type") == "authorize" and writer is not None and requests is not None:
                # Events sent before the question are spooled before its decision.
                self._hand_on(messages)
                messages = []
                task = asyncio.create_task(self._answer_line(message, writer))
                requests.add(task)
                task.add_done_callback(requests.discard)
            else:
                messages.append(message)
        self._hand_on(messages)

    def _hand_on(self, messages: list[dict[str, Any]]) -> None:
        if not messages:
            return
        self.messages_received += len(messages)
        try:
            self.on_messages(messages)
        except Exception:
            log.exception("failed to handle %d SDK messages", len(messages))

    async def _answer_line(self, message: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        request_id = message.get("id")

        def send(answer: dict[str, Any], *, final: bool) -> None:
            if not writer.is_closing():
                writer.write(
                    _encoder.encode({"type": "decision", "id": request_id, "final": final, **answer}) + b"\n"
                )

        if self.policy is None:
            error = (
                "this node agent does not enforce tool policy (it sets CLAWTRACE_POLICY=enforce when it does)"
            )
            self._send_error(writer, request_id, error)
            return
        body = {k: v for k, v in message.items() if k != "type"}
        try:
            answer = await self.policy.authorize(body, lambda interim: send(interim, final=False))
        except ValueError as exc:
            self._send_error(writer, request_id, str(exc))
            return
        except Exception as exc:
            # The asker must not wait for an answer that will never come.
            log.exception("failed to answer an authorize request")
            self._send_error(
                writer, request_id, f"the node agent failed to decide: {type(exc).__name__}: {exc}"
            )
            return
        self.requests_answered += 1
        send(answer, final=True)
        with contextlib.suppress(ConnectionError, OSError):
            await writer.drain()

    @staticmethod
    def _send_error(writer: asyncio.StreamWriter, request_id: object, message: str) -> None:
        if not writer.is_closing():
            writer.write(_encoder.encode({"type": "error", "id": request_id, "message": message}) + b"\n")

    # --- HTTP/1.1 ------------------------------------------------------------------

    async def _serve_http(
        self, first: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            try:
                async with asyncio.timeout(HTTP_READ_TIMEOUT):
                    method, target, _headers, body, keep_alive = await self._read_request(
                        first, reader, writer
                    )
            except _HttpError as exc:
                await self._respond(
                    writer, exc.status, {"error": str(exc)}, keep_alive=False, headers=exc.headers
                )
                return
            except TimeoutError:
                if first:
                    await self._respond(
                        writer, 408, {"error": "the request was not sent in time"}, keep_alive=False
                    )
                return
            except (asyncio.IncompleteReadError, EOFError):
                return
            first = b""
            try:
                status, payload = await self._route(method, target, body)
                extra: dict[str, str] = {}
            except _HttpError as exc:
                status, payload, extra = exc.status, {"error": str(exc)}, exc.headers
            except Exception as exc:
                log.exception("failed to answer %s %s", method, target)
                status, payload = 500, {"error": f"the node agent failed: {type(exc).__name__}: {exc}"}
            await self._respond(writer, status, payload, keep_alive=keep_alive, headers=extra)
            if not keep_alive:
                return

    async def _read_request(
        self, first: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[str, str, dict[str, str], bytes, bool]:
        try:
            head = first + await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise _HttpError(431, f"the request head is larger than {MAX_HTTP_HEAD} bytes") from None
        except asyncio.IncompleteReadError as exc:
            if first or exc.partial:
                raise _HttpError(400, "the connection ended in the middle of the request head") from None
            raise EOFError from None
        if len(head) > MAX_HTTP_HEAD:
            raise _HttpError(431, f"the request head is larger than {MAX_HTTP_HEAD} bytes")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            raise _HttpError(400, f"not an HTTP request line: {request_line[:80]!r}")
        method, target, version = parts
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            raise _HttpError(505, f"{version} is not supported; use HTTP/1.1")
        headers: dict[str, str] = {}
        for line in header_lines:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep:
                raise _HttpError(400, f"malformed header line: {line[:80]!r}")
            headers[name.strip().lower()] = value.strip()
        connection = headers.get("connection", "").lower()
        keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
        if headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = await self._read_chunked(reader)
        else:
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError:
                raise _HttpError(400, "Content-Length is not a number") from None
            if length < 0:
                raise _HttpError(400, "Content-Length is negative")
            if length > MAX_MESSAGE_BYTES:
                raise _HttpError(413, f"the body is larger than {MAX_MESSAGE_BYTES} bytes")
            body = await reader.readexactly(length) if length else b""
        return method, target, headers, body, keep_alive

    async def _read_chunked(self, reader: asyncio.StreamReader) -> bytes:
        body = bytearray()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            try:
                size = int(size_line.split(b";")[0].strip(), 16)
            except ValueError:
                raise _HttpError(400, "malformed chunk size in a chunked body") from None
            if size == 0:
                # Trailers, if any, end with an empty line.
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                return bytes(body)
            if len(body) + size > MAX_MESSAGE_BYTES:
                raise _HttpError(413, f"the body is larger than {MAX_MESSAGE_BYTES} bytes")
            body += await reader.readexactly(size)
            await reader.readexactly(2)

    async def _route(self, method: str, target: str, body: bytes) -> tuple[int, dict[str, Any]]:
        url = urlsplit(target)
        path = url.path
        policy = self.policy
        if path == "/v1/authorize":
            if method != "POST":
                raise _HttpError(405, "use POST /v1/authorize with a JSON body", {"Allow": "POST"})
            if policy is None:
                raise _HttpError(503, "this node agent does not enforce tool policy")
            try:
                request = json.loads(body or b"null")
            except ValueError as exc:
                raise _HttpError(400, f"the body is not JSON: {exc}") from None
            if not isinstance(request, dict):
                raise _HttpError(400, 'the body must be a JSON object, e.g. {"tool": "exec", "args": {...}}')
            try:
                answer = await policy.authorize(request)
            except ValueError as exc:
                raise _HttpError(400, str(exc)) from None
            self.requests_answered += 1
            return 200, answer
        if path.startswith("/v1/approvals/"):
            if method != "GET":
                raise _HttpError(405, "use GET /v1/approvals/<id>[?wait=SECONDS]", {"Allow": "GET"})
            if policy is None:
                raise _HttpError(503, "this node agent does not enforce tool policy")
            approval_id = unquote(path.removeprefix("/v1/approvals/"))
            try:
                wait = float(parse_qs(url.query).get("wait", ["0"])[0])
            except ValueError:
                raise _HttpError(400, "wait must be a number of seconds") from None
            state = await policy.approval_state(approval_id, wait)
            if state is None:
                raise _HttpError(
                    404,
                    f"no approval {approval_id!r} here (unknown, decided long ago, or from before a restart "
                    "of the node agent)",
                )
            return 200, state
        if path == "/v1/policy":
            if method != "GET":
                raise _HttpError(405, "use GET /v1/policy", {"Allow": "GET"})
            if policy is None:
                raise _HttpError(503, "this node agent does not enforce tool policy")
            return 200, policy.status()
        raise _HttpError(
            404, f"no such endpoint {path!r}: POST /v1/authorize, GET /v1/approvals/<id>, GET /v1/policy"
        )

    async def _respond(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        payload: dict[str, Any],
        *,
        keep_alive: bool,
        headers: dict[str, str] | None = None,
    ) -> None:
        body = _encoder.encode(payload) + b"\n"
        lines = [
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
            f"Connection: {'keep-alive' if keep_alive else 'close'}",
            *(f"{name}: {value}" for name, value in (headers or {}).items()),
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        with contextlib.suppress(ConnectionError, OSError):
            await writer.drain()
