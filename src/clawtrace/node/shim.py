"""The shell shim: ``sh``/``bash`` in front of the real shells, asking the node agent first.

``clawtrace run --shell-policy`` writes small ``sh`` and ``bash`` scripts into
a directory it puts first on the child's ``PATH`` (and ``SHELL`` points at the
``bash`` one). Each runs this file with the real shell's path::

    python -I -S .../clawtrace/node/shim.py --socket SOCK --shell /usr/bin/bash -- "$0" "$@"

It asks the node agent (tool ``exec``, args ``{"command": ...}``) about the
command of ``-c CMD``, or about the command line itself for a script file
(``sh build.sh``) or a shell reading stdin; on allow it replaces itself with
the real shell and the same arguments, on deny it prints why and exits 126.
No answer from the node agent is a deny (fail closed).

Known limits: a program that runs ``/bin/sh`` by absolute path (Python's
``subprocess(..., shell=True)``, ``system(3)``) does not pass through the
shim; nor do the commands a script file runs, or those a shell reads on stdin.
The SDK's ``tool_call`` and the HTTP authorize endpoint cover those agents.

This file runs as a script (``python -I -S``), not as ``-m clawtrace.node.shim``:
it starts with every shell command, so it imports only the few standard
modules it needs to ask (``install`` imports the rest when the node agent calls it).
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys
from typing import TYPE_CHECKING, Any, Final, NoReturn

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

SHELLS: Final = ("sh", "bash")
DENIED_STATUS: Final = 126
DECIDE_TIMEOUT: Final = 10.0
APPROVAL_GRACE: Final = 30.0
MAX_ANSWER_BYTES: Final = 1024 * 1024
# Options of sh/bash that take the next argument as their value.
_OPTIONS_WITH_VALUE: Final = frozenset("oO")
_LONG_OPTIONS_WITH_VALUE: Final = frozenset({"--rcfile", "--init-file"})


class ShellShims:
    __slots__ = ("directory", "shells")

    def __init__(self, directory: Path, shells: dict[str, str]) -> None:
        self.directory = directory
        # Shim name -> the real shell it runs.
        self.shells = shells

    def child_env(self, env: Mapping[str, str]) -> dict[str, str]:
        """The changes to make to the child's environment: PATH first, SHELL."""
        path = env.get("PATH", os.defpath)
        changes = {"PATH": f"{self.directory}{os.pathsep}{path}" if path else str(self.directory)}
        shell = "bash" if "bash" in self.shells else "sh"
        if shell in self.shells:
            changes["SHELL"] = str(self.directory / shell)
        return changes


def install(
    directory: Path, socket_path: str, *, path: str | None = None, python: str | None = None
) -> ShellShims:
    """Write the shims for the shells found on ``path`` (default: $PATH) into ``directory``."""
    from pathlib import Path

    search = path if path is not None else os.environ.get("PATH", os.defpath)
    directory.mkdir(parents=True, exist_ok=True)
    directory = directory.resolve()
    interpreter = python or sys.executable
    script = str(Path(__file__).resolve())
    shells: dict[str, str] = {}
    for name in SHELLS:
        real = _which(name, search, directory)
        target = directory / name
        if real is None:
            # A stale shim from an earlier run must not point at a shell that is gone.
            target.unlink(missing_ok=True)
            continue
        shells[name] = real
        # /bin/sh by absolute path: the shim must not go through PATH (itself).
        text = (
            "#!/bin/sh\n"
            "# Written by `clawtrace run --shell-policy`: asks the node agent before this shell runs.\n"
            f"exec {shlex.quote(interpreter)} -I -S {shlex.quote(script)} "
            f'--socket {shlex.quote(socket_path)} --shell {shlex.quote(real)} -- "$0" "$@"\n'
        )
        tmp = target.with_name(f".{name}.tmp")
        tmp.write_text(text)
        tmp.chmod(0o755)
        os.replace(tmp, target)
    return ShellShims(directory, shells)


def _which(name: str, search: str, exclude: Path) -> str | None:
    import shutil

    parts = [p for p in search.split(os.pathsep) if p and os.path.realpath(p) != str(exclude)]
    found = shutil.which(name, path=os.pathsep.join(parts))
    return os.path.abspath(found) if found else None


def command_of(name: str, args: list[str]) -> str:
    """What to ask about: the ``-c`` command, else the shell's command line (script file or stdin)."""
    wants_command = False
    operands: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("--", "-"):
            operands = args[i + 1 :]
            break
        if arg.startswith("--"):
            if arg in _LONG_OPTIONS_WITH_VALUE:
                i += 1
        elif len(arg) > 1 and arg[0] in "-+":
            flags = arg[1:]
            if "c" in flags and arg[0] == "-":
                wants_command = True
            i += sum(1 for flag in flags if flag in _OPTIONS_WITH_VALUE)
        else:
            operands = args[i:]
            break
        i += 1
    if wants_command and operands:
        return operands[0]
    return shlex.join([name, *args])


class Unreachable(Exception):
    pass


def ask(socket_path: str, request: dict[str, Any]) -> dict[str, Any]:
    """The node agent's final answer to one authorize request; prints a note while approval is pending."""
    request = {"type": "authorize", "id": f"shim-{os.getpid()}", **request}
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(DECIDE_TIMEOUT)
            sock.connect(socket_path)
            sock.sendall(json.dumps(request).encode() + b"\n")
            with sock.makefile("rb") as stream:
                while True:
                    line = stream.readline(MAX_ANSWER_BYTES)
                    if not line.endswith(b"\n"):
                        raise Unreachable("it closed the connection without answering")
                    answer = json.loads(line)
                    if not isinstance(answer, dict) or answer.get("id") != request["id"]:
                        continue
                    if answer.get("type") == "error":
                        return {
                            "decision": "deny",
                            "rule": "bad-request",
                            "reason": str(answer.get("message")),
                        }
                    if answer.get("final", True):
                        return answer
                    _say(
                        f"waiting for approval {answer.get('approval_id')} ({answer.get('rule')}): "
                        f"{answer.get('reason')}"
                    )
                    timeout = answer.get("timeout_seconds")
                    wait = float(timeout) if isinstance(timeout, int | float) else 600.0
                    sock.settimeout(wait + APPROVAL_GRACE)
    except (OSError, ValueError) as exc:
        raise Unreachable(f"{type(exc).__name__}: {exc}") from None


def _say(text: str) -> None:
    try:
        sys.stderr.write(f"clawtrace: {text}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _refuse(text: str) -> NoReturn:
    _say(text)
    sys.exit(DENIED_STATUS)


def main(argv: list[str] | None = None) -> NoReturn:
    args = list(sys.argv[1:] if argv is None else argv)
    socket_path = os.environ.get("CLAWTRACE_SOCKET", "")
    real = ""
    while args and args[0] != "--":
        option = args.pop(0)
        if option in ("--socket", "--shell") and args:
            value = args.pop(0)
            if option == "--socket":
                socket_path = value
            else:
                real = value
        else:
            _refuse(
                f"shell shim: unknown option {option!r} "
                "(usage: shim.py --socket PATH --shell REAL_SHELL -- ARGV0 [ARGS...])"
            )
    if not args or not real:
        _refuse("shell shim: usage: shim.py --socket PATH --shell REAL_SHELL -- ARGV0 [ARGS...]")
    argv0, *shell_args = args[1:] or [real]
    name = os.path.basename(argv0) or os.path.basename(real)
    command = command_of(name, shell_args)
    if not socket_path:
        _refuse(f"the node agent is not reachable (no socket given); refusing to run: {command}")
    try:
        cwd: str | None = os.getcwd()
    except OSError:
        cwd = None
    request: dict[str, Any] = {"tool": "exec", "args": {"command": command}, "shell": True}
    if cwd is not None:
        request["cwd"] = cwd
    try:
        answer = ask(socket_path, request)
    except Unreachable as exc:
        _refuse(
            f"the node agent is not reachable at {socket_path} ({exc}); refusing to run: {command}. "
            "Is `clawtrace run` still running?"
        )
    if answer.get("decision") != "allow":
        rule = answer.get("rule") or "(no rule permits it)"
        _refuse(f"denied by policy {rule}: {answer.get('reason')}")
    try:
        os.execv(real, [argv0, *shell_args])
    except OSError as exc:
        _refuse(f"cannot run {real}: {exc}")


if __name__ == "__main__":
    # Run as a file, sys.path[0] is this package directory: nothing here may shadow a stdlib import.
    sys.path.pop(0)
    main()
