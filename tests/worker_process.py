"""``clawtrace worker`` as a real process, so that a test can kill it (SIGKILL) or stop it (SIGTERM)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


class WorkerProcess:
    def __init__(
        self,
        worker_id: str,
        bus: str,
        store_url: str,
        data_dir: Path,
        *extra: str,
        lease_ttl: float = 3.0,
    ) -> None:
        """Short leases and ack waits (``lease_ttl``) so that a killed worker's shards move quickly;
        ``extra``: more ``clawtrace worker`` options (``--config FILE``)."""
        self.worker_id = worker_id
        self.log_path = data_dir / f"{worker_id}.log"
        args = [sys.executable, "-m", "clawtrace", "worker", "--bus", bus, "--store", store_url]
        args += ["--data-dir", str(data_dir), "--id", worker_id]
        args += ["--lease-ttl", f"{lease_ttl:g}", "--ack-wait", f"{lease_ttl:g}", *extra]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
