"""The tool-hook protocol: a release's own executables, asked before and told after every tool call.

A release lists hooks in ``tool_hooks`` (files of the release). The node
agent runs each one as ``<hook> before_tool_call`` once the tool policy has
allowed a call, with the call as one JSON object on stdin::

    {"agent": "a-1", "env": "dev", "role": "researcher", "release": "<id>",
     "tool": "exec", "args": {"command": "ls"}, "call_id": "e7425e7c713c5426"}

and reads one JSON object from its stdout: ``{"decision": "allow"}`` or
``{"decision": "deny", "reason": "..."}``. Anything else is a deny: a
non-zero exit, no answer within the timeout (the hook is killed), output
that is not such an object. Hooks fail closed because they guard what the
agent may do, and a broken guard must not open the gate.

After the agent reports a tool's result, each hook runs as ``<hook>
after_tool_call`` with the same object plus ``"ok"``, ``"error"`` and
``"duration_ms"``; its output and exit status are ignored and nobody waits
for it (it is bounded by the same timeout).

Hooks run with the release directory as working directory and the agent
process's environment (the release's ``[env]`` and secrets included), plus
``CLAWTRACE_HOOK`` = the event name. A hook that is not executable (release
files never are: a release holds text, not modes) is run with the
interpreter its ``#!`` line names; one without a ``#!`` line cannot be run
and fails the deploy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shlex
import shutil
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

log = logging.getLogger("clawtrace.node.hooks")

BEFORE: Final = "before_tool_call"
AFTER: Final = "after_tool_call"
HOOK_ENV: Final = "CLAWTRACE_HOOK"
DEFAULT_TIMEOUT: Final = 5.0
# An answer is one small JSON object; more than this is not one.
MAX_ANSWER_BYTES: Final = 64 * 1024
# Kept for the reason of a failed hook (its last line says why, usually).
MAX_STDERR_BYTES: Final = 8 * 1024
READ_CHUNK: Final = 16 * 1024
# after_tool_call hooks run in the background: bounded, so an agent that
# reports results in a flood cannot fork the node into the ground.
AFTER_CONCURRENCY: Final = 4
AFTER_BACKLOG: Final = 256


class HookError(Exception):
    """A hook that cannot be run at all (missing, no interpreter): the release cannot be deployed."""


@dataclass(frozen=True, slots=True)
class ToolHook:
    """One hook of a release: its manifest path and how to start it."""

    path: str  # as written in the manifest: "hooks/check.py"
    argv: tuple[str, ...]  # what runs it, before the event name
    cwd: Path


@dataclass(frozen=True, slots=True)
class HookVerdict:
    decision: Literal["allow", "deny"]
    reason: str = ""
    # The manifest path of the hook that denied (None when all allowed).
    hook: str | None = None

    @property
    def allowed(self) -> bool:
        return self.decision == "allow"


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What one run of a hook gave: exit status (None: timed out), stdout, the end of stderr."""

    returncode: int | None
    stdout: bytes
    stderr: bytes
    overflow: bool = False


def locate(directory: Path, paths: list[str], path_env: str | None = None) -> list[ToolHook]:
    """How to run each hook of a release installed in ``directory``; HookError says which cannot run."""
    root = directory.resolve()
    hooks: list[ToolHook] = []
    problems: list[str] = []
    for rel in paths:
        full = (root / rel).resolve()
        if not full.is_relative_to(root):
            problems.append(f"tool hook {rel!r} resolves outside the release directory")
            continue
        if not full.is_file():
            problems.append(f"tool hook {rel!r} is not a file in {root}")
            continue
        if os.access(full, os.X_OK):
            hooks.append(ToolHook(path=rel, argv=(str(full),), cwd=root))
            continue
        interpreter = _shebang(full)
        if interpreter is None:
            problems.append(
                f"tool hook {rel!r} has no #! line naming its interpreter (e.g. #!/usr/bin/env python3), "
                "so the node agent cannot tell how to run it: add one and create a new release"
            )
            continue
        program = interpreter[0]
        if os.path.isabs(program):
            runnable = os.access(program, os.X_OK) and os.path.isfile(program)
        else:
            runnable = shutil.which(program, path=path_env) is not None
        if not runnable:
            problems.append(
                f"tool hook {rel!r} names interpreter {' '.join(interpreter)!r} in its #! line, "
                "which this node does not have: install it or change the #! line"
            )
            continue
        wanted = next((word for word in interpreter[1:] if not word.startswith("-")), None)
        if program.endswith("/env") and wanted is not None and shutil.which(wanted, path=path_env) is None:
            problems.append(
                f"tool hook {rel!r} runs {wanted!r} (#!{' '.join(interpreter)}), which is not on "
                "this node's PATH: install it or change the #! line"
            )
            continue
        hooks.append(ToolHook(path=rel, argv=(*interpreter, str(full)), cwd=root))
    if problems:
        raise HookError("; ".join(problems))
    return hooks


def _shebang(path: Path) -> list[str] | None:
    try:
        with path.open("rb") as f:
            first = f.readline(512)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = shlex.split(first[2:].decode("utf-8", errors="replace").strip())
    return words or None


class ToolHooks:
    """The hooks of the release that runs now, and the node agent's facts for their input."""

    def __init__(
        self,
        hooks: list[ToolHook],
        *,
        identity: Mapping[str, str],
        env: Mapping[str, str],
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.hooks = hooks
        # agent, env, role, release: the start of every hook's input.
        self.identity = dict(identity)
        self.env = {**env}
        self.timeout = timeout
        self._after: set[asyncio.Task[None]] = set()
        self._after_slots = asyncio.Semaphore(AFTER_CONCURRENCY)
        self.after_dropped = 0

    def __bool__(self) -> bool:
        return bool(self.hooks)

    @property
    def paths(self) -> list[str]:
        return [hook.path for hook in self.hooks]

    async def before(self, tool: str, args: Mapping[str, Any], call_id: str | None) -> HookVerdict:
        """Ask every hook, all at once (the caller waits for the slowest); the first denial in order wins."""
        if not self.hooks:
            return HookVerdict("allow")
        payload = self._payload(tool, args, call_id)
        outcomes = await asyncio.gather(*(self._run(hook, BEFORE, payload) for hook in self.hooks))
        for hook, outcome in zip(self.hooks, outcomes, strict=True):
            verdict = self._judge(hook, outcome)
            if not verdict.allowed:
                return verdict
        return HookVerdict("allow")

    def after(
        self,
        tool: str | None,
        args: Mapping[str, Any],
        call_id: str,
        *,
        ok: bool,
        error: str | None,
        duration_ms: float,
    ) -> None:
        """Tell every hook about a result, in the background (nothing waits, nothing is read back)."""
        if not self.hooks:
            return
        if len(self._after) >= AFTER_BACKLOG:
            self.after_dropped += 1
            if self.after_dropped == 1 or self.after_dropped % 1000 == 0:
                log.warning(
                    "after_tool_call hooks are %d runs behind; skipped %d so far",
                    len(self._after),
                    self.after_dropped,
                )
            return
        payload = {
            **self._payload(tool or "", args, call_id),
            "ok": ok,
            "error": error,
            "duration_ms": duration_ms,
        }
        for hook in self.hooks:
            task = asyncio.create_task(self._after_one(hook, payload), name=f"clawtrace-hook-{hook.path}")
            self._after.add(task)
            task.add_done_callback(self._after.discard)

    async def close(self) -> None:
        """Stop the after_tool_call runs still going (their processes are killed)."""
        for task in list(self._after):
            task.cancel()
        for task in list(self._after):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _payload(self, tool: str, args: Mapping[str, Any], call_id: str | None) -> dict[str, Any]:
        return {**self.identity, "tool": tool, "args": dict(args), "call_id": call_id}

    async def _after_one(self, hook: ToolHook, payload: dict[str, Any]) -> None:
        async with self._after_slots:
            outcome = await self._run(hook, AFTER, payload)
        if outcome.returncode != 0:
            log.warning("tool hook %s %s: %s", hook.path, AFTER, _failure(outcome, self.timeout))

    def _judge(self, hook: ToolHook, outcome: _Outcome) -> HookVerdict:
        if outcome.returncode != 0 or outcome.overflow:
            return HookVerdict(
                "deny", f"tool hook {hook.path} {_failure(outcome, self.timeout)} (fail closed)", hook.path
            )
        try:
            answer = json.loads(outcome.stdout.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            shown = outcome.stdout.decode("utf-8", errors="replace").strip()[:120]
            return HookVerdict(
                "deny",
                f"tool hook {hook.path} answered {shown!r}, not JSON like "
                '{"decision": "allow"} (fail closed)',
                hook.path,
            )
        decision = answer.get("decision") if isinstance(answer, dict) else None
        if decision == "allow":
            return HookVerdict("allow")
        if decision == "deny":
            reason = answer.get("reason")
            text = str(reason).strip() if reason is not None and str(reason).strip() else ""
            return HookVerdict("deny", text or f"denied by tool hook {hook.path}", hook.path)
        return HookVerdict(
            "deny",
            f'tool hook {hook.path} answered without "decision": "allow" or "deny" (fail closed)',
            hook.path,
        )

    async def _run(self, hook: ToolHook, event: str, payload: dict[str, Any]) -> _Outcome:
        data = json.dumps(payload, default=str).encode() + b"\n"
        try:
            proc = await asyncio.create_subprocess_exec(
                *hook.argv,
                event,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=hook.cwd,
                env={**self.env, HOOK_ENV: event},
                # Its own group: a timeout kills whatever the hook started, too.
                start_new_session=True,
            )
        except (OSError, ValueError) as exc:  # ValueError: a NUL byte in its environment
            return _Outcome(126, b"", f"cannot start it: {getattr(exc, 'strerror', None) or exc}".encode())
        try:
            async with asyncio.timeout(self.timeout):
                return await _converse(proc, data)
        except TimeoutError:
            return _Outcome(None, b"", b"")
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(Exception):
                    await proc.wait()


async def _converse(proc: asyncio.subprocess.Process, data: bytes) -> _Outcome:
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None

    async def feed(stdin: asyncio.StreamWriter) -> None:
        # A hook may exit without reading its input: that is its business.
        with contextlib.suppress(ConnectionError, OSError):
            stdin.write(data)
            await stdin.drain()
        stdin.close()

    _, (out, overflow), (err, _) = await asyncio.gather(
        feed(proc.stdin),
        _read_capped(proc.stdout, MAX_ANSWER_BYTES),
        _read_capped(proc.stderr, MAX_STDERR_BYTES, keep_end=True),
    )
    returncode = await proc.wait()
    return _Outcome(returncode, out, err, overflow)


async def _read_capped(
    stream: asyncio.StreamReader, cap: int, *, keep_end: bool = False
) -> tuple[bytes, bool]:
    """Everything up to EOF, but never more than ``cap`` bytes kept (the first ones, or the last)."""
    kept = bytearray()
    overflow = False
    while chunk := await stream.read(READ_CHUNK):
        kept += chunk
        if len(kept) > cap:
            overflow = True
            kept = kept[-cap:] if keep_end else kept[:cap]
    return bytes(kept), overflow


def _failure(outcome: _Outcome, timeout: float) -> str:
    if outcome.returncode is None:
        return f"did not answer within {timeout:g} s (--hook-timeout) and was killed"
    if outcome.overflow and outcome.returncode == 0:
        return f"wrote more than {MAX_ANSWER_BYTES // 1024} KiB on stdout, not one JSON answer"
    lines = outcome.stderr.decode("utf-8", errors="replace").strip().splitlines()
    said = f": {lines[-1][:200]}" if lines else ""
    if outcome.returncode < 0:
        try:
            name = signal.Signals(-outcome.returncode).name
        except ValueError:
            name = f"signal {-outcome.returncode}"
        return f"was killed by {name}{said}"
    return f"exited with status {outcome.returncode}{said}"


@dataclass(slots=True)
class RecentCalls:
    """The tool and args of recent calls by call_id: a tool_result names only its call."""

    limit: int = 1024
    _calls: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)

    def remember(self, call_id: str, tool: str, args: Mapping[str, Any]) -> None:
        self._calls.pop(call_id, None)
        self._calls[call_id] = (tool, dict(args))
        while len(self._calls) > self.limit:
            del self._calls[next(iter(self._calls))]

    def take(self, call_id: str) -> tuple[str | None, dict[str, Any]]:
        found = self._calls.pop(call_id, None)
        return found if found is not None else (None, {})
