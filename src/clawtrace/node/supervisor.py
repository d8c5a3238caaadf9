"""Runs the agent's process: start, capture output, restart with backoff, stop.

The child gets its own session and process group, so a Ctrl-C in the
terminal reaches it once (forwarded by us) rather than twice, and stopping
or restarting it also ends whatever it spawned (shell tools, browsers).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

log = logging.getLogger("clawtrace.node.supervisor")

MAX_LINE_BYTES: Final = 64 * 1024
READ_CHUNK: Final = 64 * 1024
# Output of a dead child's leftover descendants must not hold up the
# exit/restart decision: read what is buffered, then move on.
READER_DRAIN_TIMEOUT: Final = 1.0

Stream = Literal["stdout", "stderr"]


class RestartPolicy(enum.StrEnum):
    ON_FAILURE = "on-failure"
    ALWAYS = "always"
    NEVER = "never"


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before restarting a crashed child: ``initial`` doubling up to ``maximum``.

    A child that ran for ``healthy_reset`` seconds or more before crashing
    is restarted after ``initial`` again.
    """

    initial: float = 10.0
    maximum: float = 300.0
    healthy_reset: float = 600.0


@dataclass(frozen=True, slots=True)
class LifecycleChange:
    state: Literal["started", "exited", "restarting", "stopped"]
    exit_code: int | None = None
    reason: str | None = None
    pid: int | None = None


class SpawnError(Exception):
    """The command could not be started at all (not found, not executable)."""

    def __init__(self, message: str, exit_status: int) -> None:
        super().__init__(message)
        self.exit_status = exit_status


def exit_status(returncode: int) -> int:
    """A process's return code as a shell reports it (128 + signal number)."""
    return returncode if returncode >= 0 else 128 - returncode


def describe_exit(returncode: int) -> str:
    if returncode >= 0:
        return f"exited with code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    return f"killed by {name}"


class LineSplitter:
    """Turns chunks of bytes into lines, truncating any longer than ``max_bytes``.

    A truncated line keeps its first ``max_bytes`` bytes and says how much
    was cut; the rest of it is discarded as it arrives, so memory stays
    bounded whatever the child writes.
    """

    def __init__(self, max_bytes: int = MAX_LINE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._buf = bytearray()
        self._dropped = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        lines: list[bytes] = []
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                self._keep(chunk[start:])
                return lines
            # CRLF: the CR is not content (nor "truncated" bytes); one split
            # across chunks is still removed by _take().
            self._keep(chunk[start : end - 1] if end > start and chunk[end - 1] == 13 else chunk[start:end])
            lines.append(self._take())
            start = end + 1

    def flush(self) -> list[bytes]:
        """The last line if the stream ended without a newline."""
        if self._buf or self._dropped:
            return [self._take()]
        return []

    def _keep(self, part: bytes) -> None:
        room = self.max_bytes - len(self._buf)
        if len(part) <= room:
            self._buf += part
        else:
            self._buf += part[: max(room, 0)]
            self._dropped += len(part) - max(room, 0)

    def _take(self) -> bytes:
        line = bytes(self._buf)
        if line.endswith(b"\r"):
            line = line[:-1]
        if self._dropped:
            line += f" ...[{self._dropped} bytes truncated]".encode()
        self._buf.clear()
        self._dropped = 0
        return line


def decode_line(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


LinesHandler = Callable[[Stream, list[str]], None]
LifecycleHandler = Callable[[LifecycleChange], None]
EnvFactory = Callable[[], Mapping[str, str]]


class Supervisor:
    """Keeps one child process running according to a restart policy.

    ``run()`` returns the node agent's exit status once the child has ended
    for good: on its own (and the policy says not to restart it) or because
    ``shutdown()`` was called. ``restart()`` and ``stop()`` come from the
    gateway; after ``stop()`` the supervisor idles until ``restart()``.

    A node agent that follows a role's releases starts with no command
    (``argv`` empty: it idles until ``switch()``), replaces the command with
    ``switch()`` on every deploy, and keeps idling (``idle_when_done``)
    rather than returning when its child ends for good, so the next deploy
    or restart command can still start one.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        on_lines: LinesHandler,
        on_lifecycle: LifecycleHandler,
        env: EnvFactory | None = None,
        cwd: str | None = None,
        policy: RestartPolicy = RestartPolicy.ON_FAILURE,
        backoff: Backoff | None = None,
        stop_timeout: float = 10.0,
        max_line_bytes: int = MAX_LINE_BYTES,
        idle_when_done: bool = False,
    ) -> None:
        if not argv and not idle_when_done:
            raise ValueError("no command to run")
        self.argv = list(argv)
        self.idle_when_done = idle_when_done
        self.on_lines = on_lines
        self.on_lifecycle = on_lifecycle
        self.env = env
        self.cwd = cwd
        self.policy = policy
        self.backoff = backoff or Backoff()
        self.stop_timeout = stop_timeout
        self.max_line_bytes = max_line_bytes
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0
        self._next_delay = self.backoff.initial
        self._wake = asyncio.Event()
        self._restart_reason: str | None = None
        self._stop_reason: str | None = None
        self._shutdown_signal: int | None = None
        self._terminator: asyncio.Task[None] | None = None
        # Resolved with the pid once a switched-to command has started (None if
        # it was stopped before it could start), or failed with its SpawnError.
        self._switched: asyncio.Future[int | None] | None = None
        # Stopped on request (stop()): stays stopped until restart(), a new command included.
        self._held = False

    # --- requests (any time, from the event loop) -----------------------------

    @property
    def pid(self) -> int | None:
        proc = self.proc
        return proc.pid if proc is not None and proc.returncode is None else None

    def restart(self, reason: str = "restart requested") -> None:
        """Restart the child now (or start it, if it is stopped or backing off)."""
        self._restart_reason = reason
        self._stop_reason = None
        self._held = False
        self._wake.set()

    def stop(self, reason: str = "stop requested") -> None:
        """Stop the child and stay stopped until ``restart()``."""
        self._stop_reason = reason
        self._restart_reason = None
        self._held = True
        # A command switched to but not started yet stays the command: it
        # starts on the next restart(), and whoever switched need not wait.
        self._settle_switch(None)
        self._wake.set()

    def switch(self, argv: Sequence[str], cwd: str | None, reason: str) -> asyncio.Future[int | None]:
        """Run ``argv`` in ``cwd`` from now on: the child is stopped (as by restart()) and started anew.

        The future gets the new child's pid once it runs, None if the child
        is stopped on request (stop(): the new command waits for restart()),
        or the SpawnError if it cannot be started; in that case the
        supervisor is left with no command (idle) until the next switch().
        """
        if not argv:
            raise ValueError("no command to switch to")
        self._settle_switch(None)
        self.argv = list(argv)
        self.cwd = cwd
        self._switched = waiter = asyncio.get_running_loop().create_future()
        if self._held:
            self._settle_switch(None)
            return waiter
        self._restart_reason = reason
        self._stop_reason = None
        self._next_delay = self.backoff.initial
        self._wake.set()
        return waiter

    def _settle_switch(self, pid: int | None, error: SpawnError | None = None) -> None:
        waiter, self._switched = self._switched, None
        if waiter is None or waiter.done():
            return
        if error is not None:
            waiter.set_exception(error)
        else:
            waiter.set_result(pid)

    def shutdown(self, signum: int = signal.SIGTERM) -> None:
        """Forward ``signum`` to the child and end ``run()`` once it has exited.

        A second call while the child is still running kills it.
        """
        if self._shutdown_signal is not None and self.pid is not None:
            log.warning("second shutdown request: killing the child")
            self._signal_group(signal.SIGKILL)
            return
        self._shutdown_signal = signum
        if self._switched is not None:
            self._switched.cancel()
            self._switched = None
        self._wake.set()

    def forward(self, signum: int) -> None:
        """Pass a signal on to the child's process group (SIGHUP, SIGUSR1, ...)."""
        self._signal_group(signum)

    # --- main loop ----------------------------------------------------------

    async def run(self) -> int:
        status = 0
        while True:
            if self._shutdown_signal is not None:
                return status
            if not self.argv:
                if not await self._idle_until_command():
                    return status
                continue
            if self._stop_reason is not None:
                status = 0
                if not await self._idle_until_restart():
                    return status
            status, restart_now = await self._run_child()
            if self._shutdown_signal is not None:
                self._emit("stopped", reason=f"node agent received {self._signal_name()}")
                return status
            if not self.argv:
                continue  # a switched-to command could not start: wait for the next one
            if self._stop_reason is not None:
                self._emit("stopped", reason=self._stop_reason)
                continue
            if restart_now is not None:
                self._emit("restarting", reason=restart_now)
                continue
            if not self._should_restart(status):
                reason = f"{self._last_exit}; restart policy {self.policy.value}"
                self._emit("stopped", exit_code=status, reason=reason)
                if not self.idle_when_done:
                    return status
                # Stays up for the next deploy or restart command, as after stop().
                self._stop_reason = reason
                continue
            delay = self._next_delay
            self._next_delay = min(self._next_delay * 2, self.backoff.maximum)
            self._emit(
                "restarting",
                exit_code=status,
                reason=f"{self._last_exit}; restarting in {delay:g} s (policy {self.policy.value})",
            )
            log.info("child %s; restarting in %g s", self._last_exit, delay)
            await self._sleep_unless_woken(delay)
            if self._restart_reason is not None:
                self._restart_reason = None
            elif self._shutdown_signal is not None:
                self._emit(
                    "stopped", reason=f"node agent received {self._signal_name()} while waiting to restart"
                )

    def _should_restart(self, status: int) -> bool:
        if self.policy is RestartPolicy.ALWAYS:
            return True
        if self.policy is RestartPolicy.ON_FAILURE:
            return status != 0
        return False

    async def _idle_until_command(self) -> bool:
        """Wait with no command until switch() gives one; True then, False on shutdown."""
        while not self.argv:
            if self._shutdown_signal is not None:
                return False
            if self._restart_reason is not None:
                log.info("nothing to restart: no command yet (%s)", self._restart_reason)
                self._restart_reason = None
            self._wake.clear()
            await self._wake.wait()
        return self._shutdown_signal is None

    async def _idle_until_restart(self) -> bool:
        """Wait in the stopped state; True when asked to restart, False on shutdown."""
        while True:
            if self._shutdown_signal is not None:
                return False
            if self._restart_reason is not None:
                reason, self._restart_reason = self._restart_reason, None
                self._stop_reason = None
                self._next_delay = self.backoff.initial
                self._emit("restarting", reason=reason)
                return True
            self._wake.clear()
            await self._wake.wait()

    async def _sleep_unless_woken(self, delay: float) -> None:
        # Any request (restart now, stop, shutdown) cuts the backoff short;
        # run() then sees which one it was.
        self._wake.clear()
        if self._shutdown_signal is not None or self._stop_reason is not None:
            return
        if self._restart_reason is not None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), delay)

    async def _spawn(self) -> asyncio.subprocess.Process:
        env = dict(self.env()) if self.env is not None else None
        try:
            return await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                cwd=self.cwd,
                start_new_session=True,
            )
        except FileNotFoundError:
            raise SpawnError(f"cannot run {self.argv[0]!r}: no such file or command", 127) from None
        except PermissionError:
            raise SpawnError(f"cannot run {self.argv[0]!r}: permission denied", 126) from None
        except (OSError, ValueError) as exc:  # ValueError: a NUL byte in an argument or the environment
            raise SpawnError(f"cannot run {self.argv[0]!r}: {exc}", 126) from None

    async def _run_child(self) -> tuple[int, str | None]:
        """Run the child once; returns its exit status and a restart reason if one was requested."""
        self._wake.clear()
        # A restart asked for before this start is what this start does.
        self._restart_reason = None
        # A switch() while the spawn is under way is a newer command: not this one.
        switched = self._switched
        try:
            proc = await self._spawn()
        except SpawnError as exc:
            self._last_exit = str(exc)
            if self.starts == 0 and switched is None and not self.idle_when_done:
                # A typo in the command should fail fast, not crash-loop.
                raise
            log.error("%s", exc)
            ours = switched is not None and self._switched is switched
            if ours:
                # Whoever switched decides what runs instead; until then, nothing does.
                self.argv = []
            self._emit("exited", exit_code=exc.exit_status, reason=str(exc))
            if ours:
                self._settle_switch(None, exc)
            return exc.exit_status, None
        self.proc = proc
        self.starts += 1
        if switched is not None and self._switched is switched:
            self._settle_switch(proc.pid)
        started = time.monotonic()
        log.info("started %s (pid %d)", self.argv[0], proc.pid)
        self._emit("started", reason=f"pid {proc.pid}", pid=proc.pid)
        assert proc.stdout is not None and proc.stderr is not None
        readers = [
            asyncio.create_task(self._read(proc.stdout, "stdout")),
            asyncio.create_task(self._read(proc.stderr, "stderr")),
        ]
        waiter = asyncio.create_task(proc.wait())
        restart_reason: str | None = None
        forwarded = False
        try:
            while not waiter.done():
                woke = asyncio.create_task(self._wake.wait())
                await asyncio.wait({waiter, woke}, return_when=asyncio.FIRST_COMPLETED)
                woke.cancel()
                if waiter.done():
                    break
                self._wake.clear()
                if self._shutdown_signal is not None and not forwarded:
                    forwarded = True
                    self._begin_termination(self._shutdown_signal)
                elif self._stop_reason is not None or self._restart_reason is not None:
                    if self._restart_reason is not None:
                        restart_reason, self._restart_reason = self._restart_reason, None
                    self._begin_termination(signal.SIGTERM)
            returncode = await waiter
        finally:
            if not waiter.done():
                # Cancelled (the node agent is going down hard): take the child along.
                self._signal_group(signal.SIGKILL)
        if self._terminator is not None:
            self._terminator.cancel()
            self._terminator = None
        # Leftover descendants would otherwise keep running unsupervised (and
        # keep our pipes open); ask them to go, as systemd does.
        self._signal_group(signal.SIGTERM, pgid=proc.pid)
        _, pending = await asyncio.wait(readers, timeout=READER_DRAIN_TIMEOUT)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        uptime = time.monotonic() - started
        if uptime >= self.backoff.healthy_reset:
            self._next_delay = self.backoff.initial
        status = exit_status(returncode)
        self._last_exit = describe_exit(returncode)
        reason = self._last_exit
        if restart_reason is not None:
            reason += f" ({restart_reason})"
        elif self._stop_reason is not None:
            reason += f" ({self._stop_reason})"
        elif self._shutdown_signal is not None:
            reason += f" (node agent received {self._signal_name()})"
        log.info("child pid %d %s after %.1f s", proc.pid, self._last_exit, uptime)
        self._emit("exited", exit_code=status, reason=reason, pid=proc.pid)
        return status, restart_reason

    _last_exit: str = ""

    def _begin_termination(self, signum: int) -> None:
        if self._terminator is not None and not self._terminator.done():
            return
        self._terminator = asyncio.create_task(self._terminate(signum))

    async def _terminate(self, signum: int) -> None:
        proc = self.proc
        if proc is None:
            return
        self._signal_group(signum)
        # A stopped (SIGSTOP, hung in a debugger) child would only see the
        # signal once continued; as systemd does, continue it.
        if signum != signal.SIGCONT:
            self._signal_group(signal.SIGCONT)
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), self.stop_timeout)
        except TimeoutError:
            log.warning("child pid %d ignored %s for %g s; killing it", proc.pid, signum, self.stop_timeout)
            self._signal_group(signal.SIGKILL)

    def _signal_group(self, signum: int, pgid: int | None = None) -> None:
        if pgid is None:
            proc = self.proc
            if proc is None or proc.returncode is not None:
                return
            pgid = proc.pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signum)

    async def _read(self, stream: asyncio.StreamReader, name: Stream) -> None:
        splitter = LineSplitter(self.max_line_bytes)
        while True:
            chunk = await stream.read(READ_CHUNK)
            raw = splitter.feed(chunk) if chunk else splitter.flush()
            if raw:
                try:
                    self.on_lines(name, [decode_line(line) for line in raw])
                except Exception:
                    log.exception("failed to handle %s lines of the child", name)
            if not chunk:
                return

    def _emit(
        self,
        state: Literal["started", "exited", "restarting", "stopped"],
        *,
        exit_code: int | None = None,
        reason: str | None = None,
        pid: int | None = None,
    ) -> None:
        try:
            self.on_lifecycle(LifecycleChange(state=state, exit_code=exit_code, reason=reason, pid=pid))
        except Exception:
            log.exception("failed to record lifecycle change %s", state)

    def _signal_name(self) -> str:
        signum = self._shutdown_signal
        if signum is None:
            return "no signal"
        try:
            return signal.Signals(signum).name
        except ValueError:
            return f"signal {signum}"
