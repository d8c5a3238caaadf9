"""A real gateway in a subprocess, for tests and benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from clawtrace.access import create_token
from clawtrace.store import open_store


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class GatewayProcess:
    def __init__(self, data_dir: Path, port: int | None = None, extra_args: list[str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / "gateway.log"
        self._tokens: dict[tuple[str, str], str] = {}
        data_dir.mkdir(parents=True, exist_ok=True)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, "gateway already running"
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "clawtrace",
                "up",
                "--data-dir",
                str(self.data_dir),
                "--port",
                str(self.port),
                "--log-level",
                "warning",
                *self.extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        proc = self.proc

        def check_alive() -> None:
            if proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {proc.returncode}:\n{self.log()}")

        self.wait_ready(timeout, check_alive)

    def wait_ready(self, timeout: float, check_alive: Callable[[], None] = lambda: None) -> None:
        """Until /readyz answers 200; ``check_alive`` raises if the gateway is gone."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            check_alive()
            try:
                if httpx.get(f"{self.http_url}/readyz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"gateway did not become ready in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def token(self, env: str = "dev", role: str = "agent", name: str = "") -> str:
        key = (env, role)
        if key not in self._tokens or name:
            store = open_store("sqlite://", self.data_dir)
            try:
                plain, _ = create_token(store, env=env, role=role, name=name)
            finally:
                store.close()
            if name:
                return plain
            self._tokens[key] = plain
        return self._tokens[key]

    def get(self, path: str, token: str | None = None, **params: Any) -> httpx.Response:
        token = token or self.token("*", "admin")
        return httpx.get(
            f"{self.http_url}{path}", params=params, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )

    def events(self, agent: str, **params: Any) -> list[dict[str, Any]]:
        """Every stored event of ``agent``, paging through the API."""
        out: list[dict[str, Any]] = []
        after = 0
        while True:
            response = self.get(f"/api/v1/agents/{agent}/events", after_seq=after, limit=5000, **params)
            response.raise_for_status()
            body = response.json()
            out.extend(body["events"])
            if body["next_after_seq"] is None:
                return out
            after = body["next_after_seq"]

    def agents(self) -> list[dict[str, Any]]:
        response = self.get("/api/v1/agents")
        response.raise_for_status()
        return list(response.json()["agents"])
