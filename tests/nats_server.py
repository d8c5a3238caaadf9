"""NATS for tests: the machine's shared server, and private servers a test may stop, pause or restart.

The shared server (``CLAWTRACE_TEST_NATS``, default ``nats://127.0.0.1:4222``,
started by scripts/services.sh) is used by other tests at the same time and
must never be stopped: tests use their own stream names and subject prefixes
on it and delete their streams. Faults (NATS down, NATS hung) are made on a
``PrivateNats``: a nats-server subprocess on a free port with its own store dir.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import msgspec
import nats
import nats.js.errors

SHARED_NATS_URL = os.environ.get("CLAWTRACE_TEST_NATS", "nats://127.0.0.1:4222")
NATS_SERVER = os.environ.get("CLAWTRACE_NATS_SERVER", "/usr/sbin/nats-server")


def unique_name(prefix: str = "t") -> str:
    """A stream name / subject token no other test run uses."""
    return f"{prefix}{secrets.token_hex(5)}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nats_greets(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            return conn.recv(4) == b"INFO"
    except OSError:
        return False


def require_shared_nats() -> str:
    host, _, port = SHARED_NATS_URL.removeprefix("nats://").partition(":")
    if not nats_greets(host, int(port or 4222)):
        raise RuntimeError(
            f"NATS is not reachable at {SHARED_NATS_URL}: the scale-mode tests need it with JetStream."
            " Start it with scripts/services.sh, or point CLAWTRACE_TEST_NATS at another server."
        )
    return SHARED_NATS_URL


class PrivateNats:
    """A nats-server of the test's own (JetStream on unless ``jetstream=False``)."""

    def __init__(self, store_dir: Path, jetstream: bool = True) -> None:
        self.store_dir = store_dir
        self.jetstream = jetstream
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        store_dir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> None:
        args = [NATS_SERVER, "-a", "127.0.0.1", "-p", str(self.port)]
        if self.jetstream:
            args += ["-js", "-sd", str(self.store_dir)]
        log = (self.store_dir / "nats-server.log").open("ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.proc.returncode}; see {log.name}")
            if nats_greets("127.0.0.1", self.port, 0.2):
                return
            time.sleep(0.05)
        raise RuntimeError(f"nats-server did not accept connections in {timeout}s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.resume()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def pause(self) -> None:
        """SIGSTOP: the server holds its connections but answers nothing (a hung server)."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)


async def stream_events(url: str, stream: str) -> list[dict[str, Any]]:
    """Every event in a stream's messages (JSON arrays), in stream order, duplicates included."""
    client = await nats.connect(url)
    try:
        js = client.jetstream()
        info = await js.stream_info(stream)
        out: list[dict[str, Any]] = []
        for sequence in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(stream, sequence)
            out.extend(msgspec.json.decode(msg.data or b"[]"))
        return out
    finally:
        await client.close()


async def delete_stream(url: str, stream: str) -> None:
    """The stream and the workers' and gateways' buckets beside it."""
    client = await nats.connect(url)
    try:
        for name in (stream, f"KV_{stream}_LEASES", f"KV_{stream}_GATEWAYS"):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await client.jetstream().delete_stream(name)
    finally:
        await client.close()


def scale_bus_url(server: str, name: str, shards: int = 4, **options: Any) -> str:
    """A bus URL with a stream and subject prefix of this test's own."""
    query = {"stream": name.upper(), "prefix": f"{name}.events", "shards": shards, **options}
    return f"{server}?" + "&".join(f"{key}={value}" for key, value in query.items())
