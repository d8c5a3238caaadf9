"""The gateway application: receivers, pipeline, store writer, read API."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

from fastapi import FastAPI, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from clawtrace import __version__
from clawtrace.access import Authenticator, RefusalAudit
from clawtrace.bus import MemoryBus, is_nats_url, open_bus
from clawtrace.console import STATIC_DIR as CONSOLE_STATIC
from clawtrace.console import router as console_router
from clawtrace.envs.rollout import FiringAlert
from clawtrace.gateway.agent_socket import AgentConnection
from clawtrace.gateway.alerting import build_alert_engine
from clawtrace.gateway.alerts_api import router as alerts_router
from clawtrace.gateway.api import json_response, router
from clawtrace.gateway.cluster import Cluster, Solo
from clawtrace.gateway.commands import CommandService
from clawtrace.gateway.deployments import DeploymentService
from clawtrace.gateway.envs_api import router as envs_router
from clawtrace.gateway.live import LiveHub
from clawtrace.gateway.metrics_api import router as metrics_router
from clawtrace.gateway.pipeline import Pipeline
from clawtrace.gateway.policies import PolicyService
from clawtrace.gateway.policy_api import router as policy_router
from clawtrace.gateway.redaction import DEFAULT_PATTERNS, Redactor
from clawtrace.gateway.releases_api import router as releases_router
from clawtrace.gateway.retention import retention_loop
from clawtrace.gateway.settings import GatewaySettings
from clawtrace.gateway.sinks import EventSink
from clawtrace.gateway.writer import StoreWriter
from clawtrace.metrics import DEFAULT_PRICES_FILE, MetricsSettings, MetricsStage, PriceTable, RollupRow
from clawtrace.metrics.prometheus import FleetCollector, IngestCounters, registry_for
from clawtrace.otlp.receiver import router as otlp_router
from clawtrace.store import AgentInfo, open_store

log = logging.getLogger("clawtrace.gateway")


def build_metrics(settings: GatewaySettings, pipeline: Pipeline) -> MetricsStage:
    prices_file = Path(settings.prices_file) if settings.prices_file else DEFAULT_PRICES_FILE
    prices = PriceTable.load(prices_file, settings.prices)

    def directory(agent: str) -> AgentInfo | None:
        state = pipeline.agents.get(agent)
        return None if state is None else state.info

    return MetricsStage(
        prices,
        directory,
        MetricsSettings(
            window_seconds=settings.metrics_window_seconds, tool_timeout_seconds=settings.tool_timeout_seconds
        ),
    )


def create_app(settings: GatewaySettings, clock: Callable[[], float] = time.time) -> FastAPI:
    """The gateway; ``clock`` is what promotion gates and rollouts take as now (tests move it)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scale = None
        if is_nats_url(settings.bus):
            # Imported here: nats-py is only needed (and only installed) for scale mode.
            from clawtrace.gateway.scale import ScaleMode

            scale = ScaleMode(settings)
        store = open_store(settings.store, settings.data_path)
        if scale is None:
            # Only in embedded mode is this the only gateway: in scale mode the others hold connections.
            store.mark_all_disconnected(time.time())
        writer = StoreWriter(store, settings.writer_max_batch_rows)
        writer.start()
        sink: EventSink | None = None
        if scale is not None:
            sink = await scale.start()
        # In scale mode the bus between in-process stages stays in memory; NATS feeds it.
        bus = MemoryBus() if scale is not None else open_bus(settings.bus)
        await bus.start()
        # Scale mode without a metrics stage: no need for every event here, viewers get theirs from NATS.
        remote_feed = scale if scale is not None and not settings.metrics_enabled else None
        live = LiveHub(bus, remote_feed)
        await live.start()
        patterns = [*(DEFAULT_PATTERNS if settings.redact_defaults else ()), *settings.redact]
        pipeline = Pipeline(store, writer, bus, Redactor(patterns), sink)
        metrics = build_metrics(settings, pipeline)
        pipeline.attach_listeners.append(lambda info: metrics.refresh_agent(info.agent))

        def persist_rollups(rows: list[RollupRow]) -> asyncio.Future[None]:
            if scale is not None:
                # Workers persist rollups (each for its shards); a gateway's numbers are for reading.
                done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                done.set_result(None)
                return done
            return writer.call(lambda store: store.write_rollups(rows))

        if settings.metrics_enabled:
            await metrics.start(bus, persist_rollups)
        if scale is not None and settings.metrics_enabled:
            # The gateway's live numbers (fleet, top, /metrics) cover the whole fleet: every event comes here.
            await scale.mirror_into(bus)
        commands = CommandService(pipeline, writer)
        commands.load()
        if scale is not None:
            await scale.route_commands(pipeline, commands)
        cluster: Cluster = Solo()
        sweep = None
        if scale is not None:
            from clawtrace.gateway.cluster_nats import NatsCluster
            from clawtrace.gateway.registry_sweep import RegistrySweep

            assert scale.link is not None  # started above
            nats_cluster = NatsCluster(scale.link, f"{socket.gethostname()}-{os.getpid()}")
            await nats_cluster.start()
            pipeline.gateway_id = nats_cluster.gateway_id
            sweep = RegistrySweep(nats_cluster, writer)
            await sweep.start()
            cluster = nats_cluster
        policies = PolicyService(pipeline, writer, commands, cluster=cluster)
        policies.load()
        await policies.start()
        pipeline.policy_sink = policies.record_decisions
        pipeline.welcome_commands.append(lambda info: policies.command_for(info.env))
        alerts = None
        # In scale mode workers evaluate alerts, each for its shards: a gateway's would fire them twice.
        if settings.alerts.enabled and settings.metrics_enabled and scale is None:
            alerts = build_alert_engine(settings, pipeline, writer, metrics, commands)
            await alerts.start()
        # Scale mode: the alerts API reads the workers' alerts from the store, tells them of acks, silences.
        shared_alerts = scale.shared_alerts(settings, store, writer) if scale is not None else None
        app.state.shared_alerts = shared_alerts if settings.alerts.enabled else None

        def firing(env: str) -> Iterator[FiringAlert]:
            if alerts is None:
                return
            for alert in list(alerts.alerts.values()):
                if alert.state == "firing" and alert.env == env and alert.agent:
                    yield FiringAlert(alert.rule, alert.agent)

        deployments = DeploymentService(
            settings.promotion, pipeline, writer, commands, metrics, firing, clock=clock, cluster=cluster
        )
        deployments.load()
        await deployments.start()
        collector = FleetCollector(
            metrics,
            lambda: IngestCounters(
                accepted=pipeline.stats.accepted,
                duplicates=pipeline.stats.duplicates,
                rejected=pipeline.stats.rejected,
                rows_written=writer.rows_written,
                connected_agents=sum(1 for state in pipeline.agents.values() if state.link is not None),
            ),
            per_agent=settings.metrics_per_agent,
        )
        app.state.metrics = metrics
        app.state.commands = commands
        app.state.policies = policies
        app.state.alerts = alerts
        app.state.deployments = deployments
        app.state.prometheus_collector = collector
        app.state.prometheus_registry = registry_for(collector)
        app.state.settings = settings
        app.state.store = store
        app.state.writer = writer
        app.state.bus = bus
        app.state.live = live
        app.state.pipeline = pipeline
        app.state.scale = scale
        app.state.auth = Authenticator(store, on_refusal=RefusalAudit(writer))
        retention = asyncio.create_task(retention_loop(settings, writer))
        try:
            yield
        finally:
            await deployments.close()
            await policies.close()
            if sweep is not None:
                await sweep.close()
            await cluster.close()
            retention.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await retention
            if alerts is not None:
                await alerts.close()
            await metrics.close()
            await policies.drain()
            # Minutes still open are persisted as they stand (a restart must not lose them).
            rows = metrics.flush_all()
            if rows:
                await persist_rollups(rows)
            if scale is not None:
                # Acks of frames still in flight go out if JetStream answers in time.
                await scale.close()
            await live.close()
            await bus.close()
            await asyncio.to_thread(writer.stop)
            if scale is None:
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
    app.include_router(metrics_router)
    app.include_router(alerts_router)
    app.include_router(policy_router)
    app.include_router(releases_router)
    app.include_router(envs_router)
    app.include_router(otlp_router)
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
