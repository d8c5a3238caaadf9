"""The ``/v1/agent`` WebSocket receiver: one node agent's connection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from clawtrace.access import Authenticator, AuthError, PermissionDenied
from clawtrace.gateway.pipeline import AgentState, Pipeline
from clawtrace.gateway.settings import GatewaySettings
from clawtrace.protocol import (
    CloseCode,
    DecodedEvents,
    Error,
    ErrorCode,
    FrameError,
    Hello,
    Welcome,
    decode_client_message,
    encode,
)
from clawtrace.protocol.messages import Ack
from clawtrace.store import AgentEnvMismatch, AgentInfo, StoreError

log = logging.getLogger("clawtrace.gateway.agents")

HELLO_TIMEOUT = 10.0
MAX_SEQ = 2**63 - 1


def bearer_token(headers: Any) -> str | None:
    value = headers.get("authorization")
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


class TokenBucket:
    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.updated = time.monotonic()

    def take(self, amount: float) -> float:
        """Take ``amount``; return how many seconds the caller must wait first."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        self.tokens -= amount
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


class AgentConnection:
    def __init__(
        self,
        ws: WebSocket,
        pipeline: Pipeline,
        auth: Authenticator,
        settings: GatewaySettings,
    ) -> None:
        self.ws = ws
        self.pipeline = pipeline
        self.auth = auth
        self.settings = settings
        self._send_lock = asyncio.Lock()
        # Commands for this agent before its welcome went out wait here: nothing precedes the welcome.
        self._early_commands: list[bytes] | None = []
        self._acks: deque[tuple[asyncio.Future[None] | None, int]] = deque()
        self._ack_wake = asyncio.Event()
        self._closed = False
        self.agent = "?"

    async def send(self, data: bytes) -> None:
        async with self._send_lock:
            if self.ws.application_state == WebSocketState.CONNECTED:
                await self.ws.send_text(data.decode())

    async def send_error(self, error: Error) -> None:
        await self.send(encode(error))

    async def close(self, code: int, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            async with self._send_lock:
                await self.ws.close(code, reason[:120])

    async def refuse(self, code: str, message: str, close_code: int) -> None:
        await self.send_error(Error(code=code, message=message))
        await self.close(close_code, message)

    # AgentLink
    async def replaced(self) -> None:
        await self.close(CloseCode.REPLACED, "replaced by a newer connection of the same agent")

    async def send_command(self, data: bytes) -> None:
        if self._early_commands is not None:
            self._early_commands.append(data)
            return
        await self.send(data)

    async def _welcomed(self, info: AgentInfo) -> None:
        """After the welcome: commands that came meanwhile, then what brings the node agent up to
        date (``pipeline.welcome_commands``: its environment's policy, its role's release).

        Those go last, read now, so that an older bundle or release among the
        early commands can never be the last word.
        """
        # One hold of the send lock: a command sent meanwhile queues behind all of these.
        async with self._send_lock:
            queued, self._early_commands = self._early_commands or [], None
            for welcome_command in self.pipeline.welcome_commands:
                command = welcome_command(info)
                if command is not None:
                    queued.append(encode(command))
            for data in queued:
                if self.ws.application_state != WebSocketState.CONNECTED:
                    return
                await self.ws.send_text(data.decode())

    async def serve(self) -> None:
        header_token = bearer_token(self.ws.headers)
        await self.ws.accept()
        try:
            hello = await self._read_hello()
        except WebSocketDisconnect:
            return
        except TimeoutError:
            await self.refuse(
                ErrorCode.UNEXPECTED_MESSAGE, f"no hello within {HELLO_TIMEOUT:g} s", CloseCode.PROTOCOL_ERROR
            )
            return
        if hello is None:
            return
        self.agent = hello.agent
        try:
            credential = self.auth.authenticate(header_token or hello.token)
        except AuthError as exc:
            await self.refuse(ErrorCode.UNAUTHORIZED, str(exc), CloseCode.UNAUTHORIZED)
            return
        try:
            credential.require_ingest(hello.env)
        except PermissionDenied as exc:
            await self.refuse(ErrorCode.FORBIDDEN, str(exc), CloseCode.FORBIDDEN)
            return
        info = AgentInfo(hello.agent, hello.env, hello.region, dict(hello.labels), hello.release, hello.role)
        try:
            state = await self.pipeline.attach(info, self)
        except AgentEnvMismatch as exc:
            await self.refuse(ErrorCode.FORBIDDEN, str(exc), CloseCode.FORBIDDEN)
            return
        except StoreError as exc:
            # The node agent keeps its events and reconnects; nothing is lost.
            log.warning("agent %s: not welcomed, the store is unavailable: %s", hello.agent, exc)
            await self.refuse(
                ErrorCode.STORE_UNAVAILABLE,
                f"the gateway cannot reach its store right now ({exc}); reconnect later",
                CloseCode.TRY_AGAIN_LATER,
            )
            return
        log.info("agent %s connected (env %s, region %s)", hello.agent, hello.env, hello.region)
        acker = asyncio.create_task(self._ack_loop())
        quarantine = self.pipeline.quarantined.get(hello.agent)
        try:
            await self.send(
                encode(
                    Welcome(
                        ack=state.accepted_seq,
                        max_frame_bytes=self.settings.max_frame_bytes,
                        max_events_per_frame=self.settings.max_events_per_frame,
                        quarantine=quarantine.reason if quarantine is not None else None,
                    )
                )
            )
            await self._welcomed(info)
            await self._read_events(state)
        except WebSocketDisconnect:
            pass
        finally:
            # Acks for what was accepted still go out if the socket is open.
            self._queue_ack(None, -1)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(acker, 5.0)
            acker.cancel()
            try:
                await self.pipeline.detach(state, self)
            except StoreError as exc:
                log.warning("agent %s disconnected; recording it failed: %s", hello.agent, exc)
            else:
                log.info("agent %s disconnected", hello.agent)

    async def _receive(self) -> bytes | str | None:
        message = await self.ws.receive()
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        data: bytes | str | None = message.get("text")
        if data is None:
            data = message.get("bytes")
        return data

    async def _read_hello(self) -> Hello | None:
        data = await asyncio.wait_for(self._receive(), HELLO_TIMEOUT)
        if data is None:
            await self.refuse(ErrorCode.INVALID_FRAME, "empty frame", CloseCode.PROTOCOL_ERROR)
            return None
        try:
            message = decode_client_message(data)
        except FrameError as exc:
            await self.refuse(exc.code, f"expected a hello frame: {exc.message}", CloseCode.PROTOCOL_ERROR)
            return None
        if not isinstance(message, Hello):
            await self.refuse(
                ErrorCode.UNEXPECTED_MESSAGE, "the first frame must be a hello", CloseCode.PROTOCOL_ERROR
            )
            return None
        return message

    async def _read_events(self, state: AgentState) -> None:
        settings = self.settings
        bucket = TokenBucket(settings.rate_limit_events_per_second, settings.rate_limit_burst)
        last_seen = 0
        while not self._closed:
            data = await self._receive()
            if data is None:
                continue
            if len(data) > settings.max_frame_bytes:
                await self.refuse(
                    ErrorCode.FRAME_TOO_LARGE,
                    f"frame of {len(data)} bytes exceeds the limit of {settings.max_frame_bytes}",
                    CloseCode.TOO_BIG,
                )
                return
            try:
                message = decode_client_message(data)
            except FrameError as exc:
                await self.send_error(exc.to_message())
                continue
            if not isinstance(message, DecodedEvents):
                await self.send_error(
                    Error(code=ErrorCode.UNEXPECTED_MESSAGE, message="hello was already received")
                )
                continue
            count = len(message.events) + len(message.errors)
            if count > settings.max_events_per_frame:
                await self.send_error(
                    Error(
                        code=ErrorCode.TOO_MANY_EVENTS,
                        message=f"frame has {count} events; the limit is {settings.max_events_per_frame}: "
                        "split it, nothing in it was stored",
                    )
                )
                continue
            wait = bucket.take(count)
            if wait > settings.rate_limit_max_delay_seconds:
                await self.refuse(
                    ErrorCode.RATE_LIMITED,
                    f"sustained rate above {settings.rate_limit_events_per_second:g} events/s",
                    CloseCode.RATE_LIMITED,
                )
                return
            if wait > 0:
                # Backpressure: nothing is dropped, this connection is just read slower.
                await self.send_error(
                    Error(
                        code=ErrorCode.RATE_LIMITED,
                        message=f"above {settings.rate_limit_events_per_second:g} events/s; slowing down",
                        retry_after_ms=int(wait * 1000) + 1,
                    )
                )
                await asyncio.sleep(wait)
            for error in message.errors:
                await self.send_error(error)
            if self._closed or state.link is not self:
                return  # replaced meanwhile: the new connection owns this agent now
            result = self.pipeline.ingest(state, message.events, last_seen, data)
            for error in result.errors:
                await self.send_error(error)
            # Rejected events count as processed (so the client stops resending them), but
            # only with a seq a valid event could have had: 2**63 must not become the ack.
            processed = max(
                [result.highest_seq, *(e.seq for e in message.errors if e.seq and e.seq <= MAX_SEQ)]
            )
            if processed > last_seen:
                last_seen = processed
                self._queue_ack(result.write, processed)

    def _queue_ack(self, write: asyncio.Future[None] | None, seq: int) -> None:
        self._acks.append((write, seq))
        self._ack_wake.set()

    async def _ack_loop(self) -> None:
        """Send acks in order, each once everything up to it is durable."""
        acked = 0
        while True:
            while not self._acks:
                self._ack_wake.clear()
                await self._ack_wake.wait()
            write, seq = self._acks.popleft()
            if seq < 0:
                return
            if write is not None:
                try:
                    await write
                except Exception as exc:
                    await self.refuse(
                        ErrorCode.STORE_UNAVAILABLE,
                        f"events could not be stored ({exc}); reconnect and resend after the last ack",
                        1011,
                    )
                    return
            # Coalesce: one ack for everything that is already durable.
            while self._acks:
                next_write, next_seq = self._acks[0]
                if next_seq < 0 or (
                    next_write is not None and (not next_write.done() or next_write.exception() is not None)
                ):
                    break
                self._acks.popleft()
                seq = max(seq, next_seq)
            if seq > acked:
                acked = seq
                await self.send(encode(Ack(seq=seq)))
