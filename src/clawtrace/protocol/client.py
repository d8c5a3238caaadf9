"""The reference protocol v1 client: one agent's connection to a gateway.

Used by the node agent (with its disk spool as the outbox) and by the
simulator (with an in-memory outbox). It owns the delivery rules: send what
is after the last ack, resend after reconnect from the gateway's ``welcome``,
reconnect with capped, jittered backoff, never give up while running. Given
several gateway URLs (gateways of one scale-mode deployment), each reconnect
goes to the next one in turn, so a gateway that died costs one failed attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import msgspec
import websockets
from websockets.asyncio.client import ClientConnection, connect

from clawtrace.protocol.codec import ErrorCode, decode_server_message, encode
from clawtrace.protocol.messages import Ack, Command, Error, Event, Hello, Welcome
from clawtrace.protocol.tls import default_client_context, explain_cert_error, is_tls_url, log_once

log = logging.getLogger("clawtrace.client")

AGENT_PATH = "/v1/agent"


class Outbox(Protocol):
    """Events waiting for the gateway's ack, oldest first, already encoded."""

    def pending(self, after_seq: int, limit: int) -> list[tuple[int, bytes]]: ...

    def acked(self, seq: int) -> None: ...

    @property
    def last_seq(self) -> int:
        """The highest seq ever put in the outbox (0 if none)."""
        ...


class MemoryOutbox:
    """An outbox that lives as long as the process (simulator, tests)."""

    def __init__(self) -> None:
        self._items: deque[tuple[int, bytes]] = deque()
        self._last_seq = 0

    @property
    def last_seq(self) -> int:
        return self._last_seq

    def append(self, event: Event) -> None:
        self._items.append((event.seq, encode(event)))
        self._last_seq = max(self._last_seq, event.seq)

    def pending(self, after_seq: int, limit: int) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        for seq, raw in self._items:
            if seq <= after_seq:
                continue
            out.append((seq, raw))
            if len(out) >= limit:
                break
        return out

    def acked(self, seq: int) -> None:
        items = self._items
        while items and items[0][0] <= seq:
            items.popleft()

    def __len__(self) -> int:
        return len(self._items)


class RefusedError(Exception):
    """The gateway refused the connection for a reason retrying will not fix."""


CommandHandler = Callable[[Command], Awaitable[None]]
ErrorHandler = Callable[[Error], None]
WelcomeHandler = Callable[[Welcome], None]


def agent_url(gateway: str) -> str:
    """Accept ``ws://host:port``, ``http://host:port`` or a full ``.../v1/agent`` URL."""
    base = http_base(gateway)
    scheme, _, rest = base.partition("://")
    return ("wss" if scheme == "https" else "ws") + "://" + rest + AGENT_PATH


def http_base(gateway: str) -> str:
    """The gateway's HTTP base URL, from any of the forms ``agent_url`` accepts."""
    base = gateway.rstrip("/")
    if base.endswith(AGENT_PATH):
        base = base[: -len(AGENT_PATH)]
    scheme, sep, rest = base.partition("://")
    if not sep:
        return "http://" + base
    return {"ws": "http", "wss": "https"}.get(scheme, scheme) + "://" + rest


class UplinkClient:
    """Keeps one agent connected and its outbox drained.

    ``run()`` loops until ``close()``; call ``notify()`` after appending to
    the outbox so the sender wakes up. ``gateway`` may be a sequence of
    gateways (of one scale-mode deployment): the first is tried first, and
    every reconnect goes to the next one, round robin. The outbox and the
    welcome's ack make that safe whichever gateway answers.
    """

    def __init__(
        self,
        gateway: str | Sequence[str],
        hello: Hello,
        outbox: Outbox,
        *,
        token: str | None = None,
        on_command: CommandHandler | None = None,
        on_error: ErrorHandler | None = None,
        on_welcome: WelcomeHandler | None = None,
        max_batch: int = 500,
        max_frame_bytes: int = 256 * 1024,
        window: int = 5_000,
        reconnect_min: float = 0.5,
        reconnect_max: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        open_timeout: float = 10.0,
    ) -> None:
        self.urls = [agent_url(url) for url in ([gateway] if isinstance(gateway, str) else gateway)]
        if not self.urls:
            raise ValueError("no gateway URL given")
        self._url_index = 0
        self.hello = hello
        self.outbox = outbox
        self.token = token
        self.on_command = on_command
        self.on_error = on_error
        self.on_welcome = on_welcome
        self.max_batch = max_batch
        self.max_frame_bytes = max_frame_bytes
        self.window = window
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        # wss:// always verifies the gateway's certificate (protocol/tls.py); ws:// takes no context.
        if any(is_tls_url(url) for url in self.urls):
            self.ssl_context: ssl.SSLContext | None = ssl_context or default_client_context()
        else:
            self.ssl_context = None
        self.open_timeout = open_timeout
        self.acked_seq = 0
        self.sent_seq = 0
        self.connected = asyncio.Event()
        self.last_error: str | None = None
        self.connects = 0
        self._wake = asyncio.Event()
        self._closing = False
        self._closed = asyncio.Event()
        self._ws: ClientConnection | None = None
        self._ack_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._throttle_until = 0.0

    @property
    def url(self) -> str:
        """The gateway URL this client is connected to, or tries next."""
        return self.urls[self._url_index]

    def notify(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        delay = self.reconnect_min
        while not self._closing:
            try:
                await self._session()
                delay = self.reconnect_min
            except RefusedError:
                raise
            except ssl.SSLCertVerificationError as exc:
                # Not the gateway we mean to talk to (or no CA to tell): retried, and said clearly.
                self.last_error = explain_cert_error(exc, self.url)
                log_once(self.last_error, logger=log)
            except websockets.exceptions.InvalidStatus as exc:
                # An auth proxy in front of the gateway may refuse the upgrade itself.
                self.last_error = f"gateway refused the connection: HTTP {exc.response.status_code}"
                if exc.response.status_code in (401, 403):
                    raise RefusedError(self.last_error) from None
            except (
                OSError,
                TimeoutError,
                websockets.exceptions.WebSocketException,
                msgspec.DecodeError,
            ) as exc:
                # msgspec.DecodeError covers a welcome that is not one (ValidationError subclasses it).
                self.last_error = f"{type(exc).__name__}: {exc}"
                if isinstance(exc, websockets.exceptions.InvalidMessage) and not is_tls_url(self.url):
                    self.last_error += " (if the gateway serves TLS, use a wss:// URL)"
                log.debug("connection to %s failed: %s", self.url, self.last_error)
            finally:
                self.connected.clear()
                self._ws = None
            if self._closing:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), delay * (0.5 + random.random()))
            delay = min(delay * 2, self.reconnect_max)
            # The next gateway, when there are several: one that died costs a single attempt.
            self._url_index = (self._url_index + 1) % len(self.urls)

    async def close(self, drain_timeout: float = 0.0) -> None:
        """Stop, after waiting up to ``drain_timeout`` s for everything to be acked."""
        if drain_timeout > 0 and self.outbox.last_seq > self.acked_seq:
            with contextlib.suppress(TimeoutError):
                await self.wait_acked(self.outbox.last_seq, drain_timeout)
        self._closing = True
        self._closed.set()
        self._wake.set()
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()

    async def wait_acked(self, seq: int, timeout: float) -> None:  # noqa: ASYNC109
        if self.acked_seq >= seq:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._ack_waiters.append((seq, future))
        await asyncio.wait_for(future, timeout)

    async def _session(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        async with connect(
            self.url,
            additional_headers=headers,
            max_size=None,
            open_timeout=self.open_timeout,
            ssl=self.ssl_context if is_tls_url(self.url) else None,
            ping_interval=20,
            ping_timeout=20,
            close_timeout=2,
        ) as ws:
            await ws.send(encode(self.hello).decode())
            welcome = decode_server_message(await asyncio.wait_for(ws.recv(), self.open_timeout))
            if isinstance(welcome, Error):
                self.last_error = f"{welcome.code}: {welcome.message}"
                if welcome.code in (ErrorCode.UNAUTHORIZED, ErrorCode.FORBIDDEN):
                    raise RefusedError(self.last_error)
                raise OSError(self.last_error)
            if not isinstance(welcome, Welcome):
                raise OSError(f"expected welcome, got {type(welcome).__name__}")
            self._ws = ws
            self.connects += 1
            self._on_ack(welcome.ack)
            self.sent_seq = welcome.ack
            self.max_frame_bytes = min(self.max_frame_bytes, welcome.max_frame_bytes // 2)
            self.max_batch = min(self.max_batch, welcome.max_events_per_frame)
            if self.on_welcome is not None:
                self.on_welcome(welcome)
            self.connected.set()
            sender = asyncio.create_task(self._send_loop(ws))
            try:
                await self._receive_loop(ws)
            finally:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await sender
            if not sender.cancelled() and sender.exception() is not None:
                raise sender.exception()  # type: ignore[misc]

    async def _receive_loop(self, ws: ClientConnection) -> None:
        async for frame in ws:
            try:
                message = decode_server_message(frame)
            except (msgspec.DecodeError, msgspec.ValidationError):
                log.warning("ignoring undecodable frame from gateway: %.200r", frame)
                continue
            if isinstance(message, Ack):
                self._on_ack(message.seq)
            elif isinstance(message, Command):
                if self.on_command is not None:
                    await self.on_command(message)
            elif isinstance(message, Error):
                self.last_error = f"{message.code}: {message.message}"
                if message.code == ErrorCode.RATE_LIMITED and message.retry_after_ms:
                    loop = asyncio.get_running_loop()
                    self._throttle_until = loop.time() + message.retry_after_ms / 1000
                if self.on_error is not None:
                    self.on_error(message)
                else:
                    log.warning("gateway error: %s (seq %s)", self.last_error, message.seq)

    def _on_ack(self, seq: int) -> None:
        if seq > self.acked_seq:
            self.acked_seq = seq
        self.outbox.acked(self.acked_seq)
        if self._ack_waiters:
            remaining = []
            for wanted, future in self._ack_waiters:
                if wanted <= self.acked_seq:
                    if not future.done():
                        future.set_result(None)
                else:
                    remaining.append((wanted, future))
            self._ack_waiters = remaining
        self._wake.set()

    async def _send_loop(self, ws: ClientConnection) -> None:
        loop = asyncio.get_running_loop()
        while not self._closing:
            delay = self._throttle_until - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            room = self.window - (self.sent_seq - self.acked_seq)
            batch = self.outbox.pending(self.sent_seq, min(self.max_batch, room)) if room > 0 else []
            if not batch:
                self._wake.clear()
                await self._wake.wait()
                continue
            parts: list[bytes] = []
            size = 0
            for seq, raw in batch:
                if parts and size + len(raw) > self.max_frame_bytes:
                    break
                parts.append(raw)
                size += len(raw) + 1
                self.sent_seq = seq
            await ws.send(b'{"type":"events","events":[' + b",".join(parts) + b"]}", text=True)
