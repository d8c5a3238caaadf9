"""A real gateway inside the test process, on a real socket, with a clock the test can move.

For what a subprocess cannot offer: promotion gates and rollouts judge time
by the gateway's clock, and a test must not wait an hour of soak time.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import msgspec

from clawtrace.gateway.server import EmbeddedServer, uvicorn_config
from clawtrace.gateway.settings import GatewaySettings
from gateway_process import GatewayProcess


class MovableClock:
    """Wall-clock time plus an offset the test advances."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


class GatewayThread(GatewayProcess):
    def __init__(self, data_dir: Path, settings: GatewaySettings, clock: MovableClock) -> None:
        super().__init__(data_dir)
        self.settings = msgspec.structs.replace(settings, port=self.port, data_dir=str(data_dir))
        self.clock = clock
        self.server: EmbeddedServer | None = None
        self.thread: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> None:
        self.server = EmbeddedServer(uvicorn_config(self.settings, self.clock))
        self.thread = threading.Thread(target=self.server.run, name="gateway", daemon=True)
        self.thread.start()
        self.wait_ready(timeout)

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.server is not None and self.thread is not None:
            self.server.should_exit = True
            self.thread.join(timeout)
        return 0
