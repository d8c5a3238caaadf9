"""Running the gateway under uvicorn."""

from __future__ import annotations

import uvicorn

from clawtrace.gateway.app import create_app
from clawtrace.gateway.settings import GatewaySettings


def uvicorn_config(settings: GatewaySettings) -> uvicorn.Config:
    return uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        ws="websockets-sansio",
        ws_max_size=settings.max_frame_bytes,
        # Agents send their own heartbeats; protocol pings only detect dead peers.
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        log_level=settings.log_level,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
    )


def serve(settings: GatewaySettings) -> None:
    uvicorn.Server(uvicorn_config(settings)).run()
