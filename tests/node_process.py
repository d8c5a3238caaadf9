"""`clawtrace run` (the node agent) as a real subprocess, for tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from gateway_process import GatewayProcess

PY = sys.executable
AGENTS = Path(__file__).parent / "agents"


class NodeAgentProcess:
    """`clawtrace run` as a subprocess, its output in files."""

    def __init__(
        self,
        tmp_path: Path,
        gateway: GatewayProcess | None,
        command: list[str],
        *,
        agent: str = "a-1",
        token: str | None = None,
        spool_dir: Path | None = None,
        options: list[str] | None = None,
        name: str = "node",
        env: str = "dev",
    ) -> None:
        """``command`` empty: no command of its own (``--role`` in ``options``)."""
        self.agent = agent
        self.spool_dir = spool_dir or tmp_path / "spool"
        self.out_path = tmp_path / f"{name}.out"
        self.err_path = tmp_path / f"{name}.err"
        url = gateway.ws_url if gateway is not None else "ws://127.0.0.1:9"
        if token is None and gateway is not None:
            token = gateway.token(env, "agent")
        argv = [
            PY, "-m", "clawtrace", "run",
            "--agent", agent, "--env", env, "--region", "eu-west-1", "--label", "team=test",
            "--gateway", url, "--token", token or "",
            "--spool-dir", str(self.spool_dir),
            "--heartbeat-interval", "0.5",
            "--reconnect-max", "0.5",
            "--drain-timeout", "5",
            "--log-level", "debug",
            *(options or []),
            *(["--", *command] if command else []),
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            argv, cwd=tmp_path, stdout=self.out_path.open("wb"), stderr=self.err_path.open("wb")
        )

    def wait(self, timeout: float = 20) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"node agent still running after {timeout} s:\n{self.stderr()}") from None

    def send(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def close(self) -> None:
        """Stop it and its child, even after a failed test or a kill -9 (no strays left)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        child = self.spool_dir / "child.json"
        if child.exists():
            pid = json.loads(child.read_text())["pid"]
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
