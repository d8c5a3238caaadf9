"""ClawTrace SDK for agent code: report thoughts, LLM calls and tool calls.

    from clawtrace import sdk

    sdk.thought("The user wants a summary; fetch the page first.")
    with sdk.tool_call("http_get", {"url": url}) as call:
        call.output = fetch(url)
    sdk.llm_call(model="gpt-4o", input_tokens=1200, output_tokens=300, duration_ms=850.0)

Under ``clawtrace run`` the events go to the node agent over the local socket
named by ``CLAWTRACE_SOCKET``; without it every call is a cheap no-op. The
SDK never blocks the agent for long and never raises because the control
plane is down: events are queued for a background thread, and dropped (and
counted, see ``stats()``) when the queue is full or the node agent is gone.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import queue
import socket
import threading
import time
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final, Literal

import msgspec

__all__ = [
    "ToolCall",
    "enabled",
    "flush",
    "llm_call",
    "log",
    "stats",
    "thought",
    "tool_call",
]

SOCKET_ENV: Final = "CLAWTRACE_SOCKET"
QUEUE_SIZE: Final = 10_000
BATCH: Final = 256
SEND_TIMEOUT: Final = 2.0
EXIT_FLUSH_TIMEOUT: Final = 2.0
# Reconnect attempts back off to this, so a missing node agent costs a
# failed connect() every few seconds at most, never one per event.
RECONNECT_MAX: Final = 5.0


def _fallback(obj: Any) -> Any:
    # Tool args and outputs are whatever the agent had at hand; anything
    # JSON cannot express is reported by its text form instead of failing.
    try:
        return str(obj)
    except Exception:
        return f"<unprintable {type(obj).__name__}>"


_encoder: Final = msgspec.json.Encoder(enc_hook=_fallback)


class _Sender:
    """Background thread that writes queued events to the node agent's socket."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.queue: queue.Queue[dict[str, Any]] = queue.Queue(QUEUE_SIZE)
        # Written only by the sender thread / only under _count_lock, so no
        # increment is lost between agent threads and the sender.
        self.sent = 0
        self._send_dropped = 0
        self._full_dropped = 0
        self._count_lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._retry_at = 0.0
        self._retry_delay = 0.1
        self._idle = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="clawtrace-sdk", daemon=True)
        self._thread.start()

    def put(self, message: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait(message)
        except queue.Full:
            with self._count_lock:
                self._full_dropped += 1

    @property
    def dropped(self) -> int:
        return self._send_dropped + self._full_dropped

    def flush(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._idle:
            while self.queue.unfinished_tasks:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(min(left, 0.05))
        return True

    def _loop(self) -> None:
        while True:
            first = self.queue.get()
            batch = [first]
            while len(batch) < BATCH:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._send(batch)
            except Exception:
                # Never let the thread die: later events still deserve a try.
                self._send_dropped += len(batch)
            finally:
                for _ in batch:
                    self.queue.task_done()
                with self._idle:
                    self._idle.notify_all()

    def _send(self, batch: list[dict[str, Any]]) -> None:
        lines: list[bytes] = []
        for message in batch:
            try:
                lines.append(_encoder.encode(message) + b"\n")
            except Exception:
                self._send_dropped += 1
        if not lines:
            return
        data = b"".join(lines)
        for attempt in range(2):
            sock = self._connect()
            if sock is None:
                self._send_dropped += len(lines)
                return
            try:
                sock.sendall(data)
                self.sent += len(lines)
                return
            except TimeoutError:
                # The node agent is alive but not reading. Part of the batch
                # may have gone through, so resending could duplicate events:
                # drop it instead (the cut line is rejected on its side).
                self._disconnect()
                self._send_dropped += len(lines)
                return
            except OSError:
                # The node agent restarted or went away: retry once on a
                # fresh connection, then give up on this batch.
                self._disconnect()
                if attempt == 1:
                    self._send_dropped += len(lines)

    def _connect(self) -> socket.socket | None:
        if self._sock is not None:
            return self._sock
        now = time.monotonic()
        if now < self._retry_at:
            return None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(SEND_TIMEOUT)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            self._retry_at = now + self._retry_delay
            self._retry_delay = min(self._retry_delay * 2, RECONNECT_MAX)
            return None
        self._retry_delay = 0.1
        self._sock = sock
        return sock

    def _disconnect(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None


_lock = threading.Lock()
_sender: _Sender | None = None
_configured = False


def _get() -> _Sender | None:
    global _sender, _configured
    if _configured:
        return _sender
    with _lock:
        if not _configured:
            path = os.environ.get(SOCKET_ENV)
            if path:
                try:
                    _sender = _Sender(path)
                except Exception:
                    _sender = None
            _configured = True
    return _sender


def _reset_after_fork() -> None:
    # The sender thread does not survive fork(); a forked child starts its
    # own on first use.
    global _sender, _configured, _lock
    _lock = threading.Lock()
    _sender = None
    _configured = False


os.register_at_fork(after_in_child=_reset_after_fork)


@atexit.register
def _flush_at_exit() -> None:
    # Short-lived agents often emit their last thoughts right before
    # exiting; give the background thread a moment to deliver them.
    sender = _sender
    if sender is not None:
        with contextlib.suppress(Exception):
            sender.flush(EXIT_FLUSH_TIMEOUT)


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _emit(message: dict[str, Any]) -> None:
    sender = _get()
    if sender is not None:
        message["ts"] = _now()
        sender.put(message)


def enabled() -> bool:
    """True when running under ``clawtrace run`` (events are being reported)."""
    return _get() is not None


def thought(text: str) -> None:
    """Report a piece of the agent's reasoning."""
    if _get() is not None:
        _emit({"kind": "thought", "text": str(text)})


def log(line: str, stream: Literal["stdout", "stderr"] = "stdout") -> None:
    """Report a log line without printing it (printed lines are captured anyway)."""
    if _get() is not None:
        _emit({"kind": "log", "stream": stream, "line": str(line)})


def llm_call(
    *,
    model: str,
    input_tokens: int,
    output_tokens: int,
    duration_ms: float,
    cost_usd: float | None = None,
    cached_input_tokens: int = 0,
) -> None:
    """Report one call to a language model (tokens, latency, optional cost)."""
    if _get() is None:
        return
    message: dict[str, Any] = {
        "kind": "llm_call",
        "model": str(model),
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "duration_ms": duration_ms,
        "cached_input_tokens": cached_input_tokens,
    }
    if cost_usd is not None:
        message["cost_usd"] = cost_usd
    _emit(message)


class ToolCall:
    """One tool call in progress; set ``output`` (and ``fail()`` for a bad outcome).

    An exception escaping the ``with`` block marks the call failed, is
    reported as its error, and propagates unchanged. Outside ``clawtrace
    run`` the same object is returned and reports nothing.
    """

    __slots__ = ("_live", "_started", "args", "call_id", "error", "ok", "output", "tool")

    def __init__(self, tool: str, args: dict[str, Any] | None = None) -> None:
        self.tool = tool
        self._live = _get() is not None
        self.args: dict[str, Any] = args if args is not None else {}
        self.call_id = os.urandom(8).hex() if self._live else ""
        self.output: Any = None
        self.ok = True
        self.error: str | None = None
        self._started = 0.0

    def fail(self, error: str) -> None:
        """Mark the call as failed without raising (the tool returned a bad result)."""
        self.ok = False
        self.error = str(error)

    def __enter__(self) -> ToolCall:
        if self._live:
            args: Any = self.args
            if not isinstance(args, dict):
                args = {"args": args}
            _emit({"kind": "tool_call", "call_id": self.call_id, "tool": str(self.tool), "args": args})
            self._started = time.perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._live:
            return
        duration_ms = (time.perf_counter() - self._started) * 1000
        ok = self.ok
        error = self.error
        if exc is not None:
            ok = False
            error = _describe(exc)
        message: dict[str, Any] = {
            "kind": "tool_result",
            "call_id": self.call_id,
            "ok": ok,
            "duration_ms": round(duration_ms, 3),
        }
        if error is not None:
            message["error"] = error
        if self.output is not None:
            message["output"] = self.output
        _emit(message)

    async def __aenter__(self) -> ToolCall:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)


def _describe(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:
        text = ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def tool_call(tool: str, args: dict[str, Any] | None = None) -> ToolCall:
    """Context manager around one tool call: reports the call, then its result.

    with sdk.tool_call("shell", {"cmd": "ls"}) as call:
        call.output = run(...)
    """
    return ToolCall(tool, args)


def flush(timeout: float = 1.0) -> bool:
    """Wait up to ``timeout`` s for queued events to be handed to the node agent."""
    sender = _get()
    return True if sender is None else sender.flush(timeout)


def stats() -> dict[str, int]:
    """Counts since start: events ``sent`` to the node agent, ``dropped`` and ``queued``."""
    sender = _get()
    if sender is None:
        return {"sent": 0, "dropped": 0, "queued": 0}
    return {"sent": sender.sent, "dropped": sender.dropped, "queued": sender.queue.unfinished_tasks}
