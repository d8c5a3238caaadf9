"""Running the gateway under uvicorn."""

from __future__ import annotations

import contextlib
import gc
import signal
import threading
import time
from collections.abc import Callable, Iterator

import uvicorn

from clawtrace.gateway.app import create_app
from clawtrace.gateway.settings import GatewaySettings


def uvicorn_config(settings: GatewaySettings, clock: Callable[[], float] = time.time) -> uvicorn.Config:
    return uvicorn.Config(
        create_app(settings, clock),
        host=settings.host,
        port=settings.port,
        ws="websockets-sansio",
        ws_max_size=settings.max_frame_bytes,
        ws_per_message_deflate=settings.ws_compression,
        # Agents send their own heartbeats; protocol pings only detect dead peers.
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        log_level=settings.log_level,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
        # https/wss when both are set (checked by load_settings).
        ssl_certfile=settings.tls_cert or None,
        ssl_keyfile=settings.tls_key or None,
    )


class GatewayServer(uvicorn.Server):
    """SIGINT/SIGTERM shut down gracefully and the process then exits 0.

    uvicorn re-raises the signal after shutting down, which makes a clean
    stop look like a crash to supervisors and scripts.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class EmbeddedServer(uvicorn.Server):
    """For running inside a program that handles signals itself (the demo)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def tune_gc() -> None:
    """Fewer, later collections: the metrics state is many long-lived small
    objects, and every full pass over them stalls the event loop."""
    gc.collect()
    gc.freeze()  # what exists after start-up is never collected again
    gc.set_threshold(50_000, 20, 100)


def serve(settings: GatewaySettings) -> None:
    tune_gc()
    GatewayServer(uvicorn_config(settings)).run()
