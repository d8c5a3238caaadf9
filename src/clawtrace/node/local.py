"""The local Unix socket the SDK in the agent process talks to.

The node agent passes the socket's path to the child in ``CLAWTRACE_SOCKET``.
The SDK writes newline-delimited JSON objects, each an event without
``seq``, ``session`` (and usually without ``ts``): ``{"kind": "thought",
"text": "..."}``. The node agent validates them, stamps them and spools them.
Nothing is sent back on this socket yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any, Final

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

MessagesHandler = Callable[[list[dict[str, Any]]], None]

_decoder: Final = msgspec.json.Decoder(dict[str, Any])


class LocalServer:
    """Accepts SDK connections on a Unix socket and hands decoded messages on.

    ``on_messages`` gets every complete, decodable JSON object of one read,
    in order, so the caller can spool them in one transaction.
    """

    def __init__(
        self, on_messages: MessagesHandler, path: str | None = None, *, prefer_dir: str | None = None
    ) -> None:
        self.on_messages = on_messages
        self._requested_path = path
        self._prefer_dir = os.path.abspath(prefer_dir) if prefer_dir is not None else None
        self._tmpdir: str | None = None
        self.path: str | None = None
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.connections_accepted = 0
        self.messages_received = 0
        self.messages_rejected = 0

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
        self._server = await asyncio.start_unix_server(self._handle, path=path)
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
        splitter = LineSplitter(MAX_MESSAGE_BYTES)
        try:
            while True:
                chunk = await reader.read(READ_CHUNK)
                lines = splitter.feed(chunk) if chunk else splitter.flush()
                self._dispatch(lines)
                if not chunk:
                    return
        except (ConnectionError, OSError) as exc:
            log.debug("SDK connection dropped: %s", exc)
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _dispatch(self, lines: list[bytes]) -> None:
        messages: list[dict[str, Any]] = []
        for line in lines:
            if not line.strip():
                continue
            try:
                messages.append(_decoder.decode(line))
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                # Includes lines cut by the size limit: they are no longer JSON.
                self.messages_rejected += 1
                log.warning("ignoring an SDK message that is not a JSON object (%s): %.120r", exc, line)
        if messages:
            self.messages_received += len(messages)
            try:
                self.on_messages(messages)
            except Exception:
                log.exception("failed to handle %d SDK messages", len(messages))
