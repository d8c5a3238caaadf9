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

Tool policy: when the node agent enforces it (it sets ``CLAWTRACE_POLICY=enforce``),
``tool_call`` asks it before the call runs, and raises ``PolicyDenied`` (before
the ``with`` body) if the policy refuses the call, if a person rejects it or
does not approve it in time, or if the node agent cannot be reached::

    try:
        with sdk.tool_call("exec", {"command": cmd}) as call:
            call.output = run(cmd)
    except sdk.PolicyDenied as denied:
        sdk.thought(f"not allowed: {denied.reason}; trying something else")

``authorize(tool, args)`` asks without running anything. Without ``clawtrace run``
(no ``CLAWTRACE_SOCKET``) nothing is enforced: every call is allowed.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import queue
import socket
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final, Literal

import msgspec

__all__ = [
    "Authorization",
    "PolicyDenied",
    "ToolCall",
    "authorize",
    "enabled",
    "enforced",
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
POLICY_ENV: Final = "CLAWTRACE_POLICY"
ENFORCE: Final = "enforce"
# A decision takes microseconds; this only bounds a wedged node agent.
DECIDE_TIMEOUT: Final = 10.0
# On top of the approval timeout the node agent announces, which it enforces itself.
APPROVAL_GRACE: Final = 30.0
# Before a tool call is authorized, events queued earlier get this long to
# reach the node agent, so the audit trail keeps thought -> tool_call order.
ORDER_FLUSH_TIMEOUT: Final = 0.25
MAX_ANSWER_BYTES: Final = 1024 * 1024
UNREACHABLE_RULE: Final = "node-agent-unreachable"
BAD_REQUEST_RULE: Final = "bad-request"
_VERDICTS: Final = frozenset({"allow", "deny", "require_approval"})


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
        # Tool calls that went to the node agent with their authorize request.
        self.sent_direct = 0
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

    def count_sent(self, n: int) -> None:
        with self._count_lock:
            self.sent_direct += n

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
_policy_socket: str | None = None
_configured = False


def _get() -> _Sender | None:
    global _sender, _configured, _policy_socket
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
                # Only a node agent that says it enforces policy is asked: an
                # older one would never answer.
                if os.environ.get(POLICY_ENV) == ENFORCE:
                    _policy_socket = path
            _configured = True
    return _sender


def _enforcing() -> str | None:
    """The socket of the node agent that decides tool calls, or None."""
    _get()
    return _policy_socket


def _reset_after_fork() -> None:
    # The sender thread does not survive fork(); a forked child starts its
    # own on first use.
    global _sender, _configured, _lock, _policy_socket
    _lock = threading.Lock()
    _sender = None
    _policy_socket = None
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


def enforced() -> bool:
    """True when the node agent decides tool calls (``tool_call`` may raise ``PolicyDenied``)."""
    return _enforcing() is not None


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


@dataclass(frozen=True, slots=True)
class Authorization:
    """The node agent's answer to "may this tool call run?"."""

    decision: Literal["allow", "deny", "require_approval"]
    tool: str
    # The deciding policy's id (None: nothing permitted it, the default deny).
    rule: str | None = None
    # What the policy says, meant to be read by the agent's reasoning.
    reason: str = ""
    # For a shell tool: the command the decision is about.
    command: str = ""
    policy_version: str | None = None
    # Set when a person had to approve: the approval, and who decided (or "timeout").
    approval_id: str | None = None
    decided_by: str | None = None
    # False when no node agent enforces policy here (everything is allowed).
    enforced: bool = True

    @property
    def allowed(self) -> bool:
        return self.decision == "allow"


class PolicyDenied(Exception):
    """The policy refused a tool call; the call did not run.

    ``rule`` names the policy that refused it (None: nothing permitted it),
    ``reason`` says why in words an agent can act on, ``command`` is the
    shell command it was about (if any).
    """

    def __init__(self, authorization: Authorization) -> None:
        self.authorization = authorization
        self.tool = authorization.tool
        self.rule = authorization.rule
        self.reason = authorization.reason
        self.command = authorization.command
        self.approval_id = authorization.approval_id
        self.decided_by = authorization.decided_by
        super().__init__(authorization)

    def __str__(self) -> str:
        rule = f"rule {self.rule!r}" if self.rule else "no rule permits it"
        text = f"tool call {self.tool!r} denied by policy ({rule}): {self.reason}"
        return text + (f" [command: {self.command}]" if self.command else "")

    def __reduce__(self) -> tuple[type[PolicyDenied], tuple[Authorization]]:
        return type(self), (self.authorization,)


class _Refused(Exception):
    """The node agent answered with an error instead of a decision."""


def _cwd() -> str | None:
    try:
        return os.getcwd()
    except OSError:
        return None


def _ask(path: str, message: dict[str, Any]) -> dict[str, Any]:
    """Send one authorize request on its own connection and wait for the final answer.

    A connection per question keeps threads and forked children apart; a
    Unix socket connect costs a few microseconds.
    """
    data = _encoder.encode(message) + b"\n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(DECIDE_TIMEOUT)
        sock.connect(path)
        sock.sendall(data)
        with sock.makefile("rb") as stream:
            while True:
                line = stream.readline(MAX_ANSWER_BYTES)
                if not line.endswith(b"\n"):
                    raise ConnectionError("the node agent closed the connection without answering")
                answer = json.loads(line)
                if not isinstance(answer, dict) or answer.get("id") != message["id"]:
                    continue
                if answer.get("type") == "error":
                    raise _Refused(str(answer.get("message")))
                if answer.get("final", True):
                    return answer
                # require_approval: the node agent answers again once a person
                # decides, or denies after its own timeout.
                timeout = answer.get("timeout_seconds")
                wait = float(timeout) if isinstance(timeout, int | float) else 600.0
                sock.settimeout(wait + APPROVAL_GRACE)


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _decide(
    tool: str, args: Any, *, cwd: str | None, call_id: str | None = None, report: bool = False
) -> Authorization:
    path = _enforcing()
    if path is None:
        return Authorization(
            "allow", tool, reason="no node agent enforces tool policy for this process", enforced=False
        )
    message: dict[str, Any] = {
        "type": "authorize",
        "id": call_id or os.urandom(8).hex(),
        "tool": tool,
        "args": args if isinstance(args, dict) else {"args": args},
    }
    if cwd is not None:
        message["cwd"] = cwd
    if call_id:
        message["call_id"] = call_id
    if report:
        message["report"] = True
        message["ts"] = _now()
    try:
        answer = _ask(path, message)
    except _Refused as exc:
        return Authorization("deny", tool, BAD_REQUEST_RULE, f"the node agent refused the request: {exc}")
    except (OSError, ValueError) as exc:
        # No decision is a refusal: the node agent alone may say yes.
        reason = (
            f"the node agent at {path} did not answer ({_describe(exc)}), so the call is refused; "
            "tool calls are decided again once it is back"
        )
        return Authorization("deny", tool, UNREACHABLE_RULE, reason)
    decision = answer.get("decision")
    return Authorization(
        decision if decision in _VERDICTS else "deny",
        tool,
        rule=_optional_str(answer.get("rule")),
        reason=str(answer.get("reason") or ""),
        command=str(answer.get("command") or ""),
        policy_version=_optional_str(answer.get("policy_version")),
        approval_id=_optional_str(answer.get("approval_id")),
        decided_by=_optional_str(answer.get("decided_by")),
    )


def authorize(tool: str, args: dict[str, Any] | None = None, *, cwd: str | None = None) -> Authorization:
    """Ask the node agent whether a tool call would be allowed, without running or reporting one.

    Blocks while a person decides a ``require_approval``. Never raises;
    without an enforcing node agent the answer is an allow with ``enforced=False``.
    """
    return _decide(str(tool), args if args is not None else {}, cwd=cwd if cwd is not None else _cwd())


class ToolCall:
    """One tool call in progress; set ``output`` (and ``fail()`` for a bad outcome).

    An exception escaping the ``with`` block marks the call failed, is
    reported as its error, and propagates unchanged. Outside ``clawtrace
    run`` the same object is returned and reports nothing. Entering the
    block raises ``PolicyDenied`` when the node agent's policy refuses the
    call (the refusal is recorded as the call's failed result).
    """

    __slots__ = (
        "_live",
        "_reported",
        "_started",
        "args",
        "authorization",
        "call_id",
        "error",
        "ok",
        "output",
        "tool",
    )

    def __init__(self, tool: str, args: dict[str, Any] | None = None) -> None:
        self.tool = tool
        self._live = _get() is not None
        self.args: dict[str, Any] = args if args is not None else {}
        self.call_id = os.urandom(8).hex() if self._live or _enforcing() is not None else ""
        self.output: Any = None
        self.ok = True
        self.error: str | None = None
        # The node agent's decision; None when nothing enforces policy here.
        self.authorization: Authorization | None = None
        self._reported = False
        self._started = 0.0

    def fail(self, error: str) -> None:
        """Mark the call as failed without raising (the tool returned a bad result)."""
        self.ok = False
        self.error = str(error)

    def _event_args(self) -> dict[str, Any]:
        args: Any = self.args
        return args if isinstance(args, dict) else {"args": args}

    def _check(self) -> None:
        """Ask the node agent (if it enforces policy); raise PolicyDenied unless allowed."""
        if _enforcing() is None:
            return
        sender = _get()
        if sender is not None:
            sender.flush(ORDER_FLUSH_TIMEOUT)
        auth = _decide(
            str(self.tool), self._event_args(), cwd=_cwd(), call_id=self.call_id, report=self._live
        )
        self.authorization = auth
        answered = auth.rule not in (UNREACHABLE_RULE, BAD_REQUEST_RULE)
        if self._live and answered:
            # The node agent recorded the tool_call (and a refusal as its failed result).
            self._reported = True
            if sender is not None:
                sender.count_sent(1)
        if auth.allowed:
            return
        if self._live and not answered:
            self._emit_call()
            _emit(
                {
                    "kind": "tool_result",
                    "call_id": self.call_id,
                    "ok": False,
                    "duration_ms": 0.0,
                    "error": f"denied by policy: {auth.reason}",
                }
            )
        raise PolicyDenied(auth)

    def _emit_call(self) -> None:
        _emit(
            {"kind": "tool_call", "call_id": self.call_id, "tool": str(self.tool), "args": self._event_args()}
        )

    def _start(self) -> None:
        if self._live:
            if not self._reported:
                self._emit_call()
            self._started = time.perf_counter()

    def __enter__(self) -> ToolCall:
        self._check()
        self._start()
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
        if _enforcing() is not None:
            import asyncio

            # A person may take minutes to approve: the agent's loop keeps running meanwhile.
            await asyncio.to_thread(self._check)
        self._start()
        return self

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

    with sdk.tool_call("shell", {"command": "ls"}) as call:
        call.output = run(...)

    Under a node agent that enforces tool policy, entering it first asks for
    a decision (blocking while a person decides a ``require_approval``) and
    raises ``PolicyDenied`` instead of running the body when refused.
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
    return {
        "sent": sender.sent + sender.sent_direct,
        "dropped": sender.dropped,
        "queued": sender.queue.unfinished_tasks,
    }
