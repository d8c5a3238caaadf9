"""The gateway application: receivers, pipeline, store writer, read API."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from clawtrace import __version__
from clawtrace.access import Authenticator
from clawtrace.bus import open_bus
from clawtrace.console import STATIC_DIR as CONSOLE_STATIC
from clawtrace.console import router as console_router
from clawtrace.gateway.agent_socket import AgentConnection
from clawtrace.gateway.api import json_response, router
from clawtrace.gateway.live import LiveHub
from clawtrace.gateway.pipeline import Pipeline
from clawtrace.gateway.redaction import DEFAULT_PATTERNS, Redactor
from clawtrace.gateway.retention import retention_loop
from clawtrace.gateway.settings import GatewaySettings
from clawtrace.gateway.writer import StoreWriter
from clawtrace.store import open_store

log = logging.getLogger("clawtrace.gateway")


def create_app(settings: GatewaySettings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = open_store(settings.store, settings.data_path)
        store.mark_all_disconnected(time.time())
        writer = StoreWriter(store, settings.writer_max_batch_rows)
        writer.start()
        bus = open_bus(settings.bus)
        await bus.start()
        live = LiveHub(bus)
        await live.start()
        patterns = [*(DEFAULT_PATTERNS if settings.redact_defaults else ()), *settings.redact]
        pipeline = Pipeline(store, writer, bus, Redactor(patterns))
        app.state.settings = settings
        app.state.store = store
        app.state.writer = writer
        app.state.bus = bus
        app.state.live = live
        app.state.pipeline = pipeline
        app.state.auth = Authenticator(store)
        retention = asyncio.create_task(retention_loop(settings, writer))
        try:
            yield
        finally:
            retention.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await retention
            await live.close()
            await bus.close()
            await asyncio.to_thread(writer.stop)
            store.mark_all_disconnected(time.time())
            store.close()

    app = FastAPI(
        title="ClawTrace gateway",
        version=__version__,
        lifespan=lifespan,
        docs_url="/api/docs",
        openapi_url="/api/openapi.json",
        redoc_url=None,
    )
    app.include_router(router)
    app.include_router(console_router)
    app.mount("/static", StaticFiles(directory=str(CONSOLE_STATIC)), name="static")

    @app.websocket("/v1/agent")
    async def agent_socket(ws: WebSocket) -> None:
        connection = AgentConnection(ws, app.state.pipeline, app.state.auth, app.state.settings)
        await connection.serve()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> Response:
        detail = exc.detail
        error = detail if isinstance(detail, dict) else {"code": "http_error", "message": str(detail)}
        return json_response({"error": error}, exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg')}" for err in exc.errors()
        )
        return json_response({"error": {"code": "invalid_parameter", "message": problems}}, 400)

    return app
