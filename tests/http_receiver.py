"""A tiny HTTP/1.1 server on loopback that records POSTed JSON and answers as told."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class HttpReceiver:
    """A tiny HTTP/1.1 server that records POSTs and answers as told."""

    requests: list[Request] = field(default_factory=list)
    # Answer 500 to this many requests before succeeding.
    fail: int = 0
    status: int = 200
    hang: bool = False
    port: int = 0
    _server: asyncio.Server | None = None
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)
    _release: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.close()

    async def wait_for(self, count: int, within: float = 5.0) -> list[Request]:
        async with asyncio.timeout(within), self._arrived:
            await self._arrived.wait_for(lambda: len(self.requests) >= count)
        return self.requests

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                _method, path, _version = line.decode().split(" ", 2)
                headers: dict[str, str] = {}
                while (header := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = header.decode().partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                async with self._arrived:
                    self.requests.append(Request(path, headers, json.loads(body)))
                    self._arrived.notify_all()
                if self.hang:
                    await self._release.wait()
                    return
                status = self.status
                if self.fail > 0:
                    self.fail -= 1
                    status = 500
                reply = b"ok" if status < 300 else b"no thanks"
                writer.write(f"HTTP/1.1 {status} X\r\ncontent-length: {len(reply)}\r\n\r\n".encode() + reply)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()
