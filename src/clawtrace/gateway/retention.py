"""Retention: old events are deleted in small slices on the writer thread.

Each slice is its own short transaction queued behind ingest batches, so a
large backlog of expired events never stalls ingest.
"""

from __future__ import annotations

import asyncio
import logging
import time

from clawtrace.gateway.settings import GatewaySettings
from clawtrace.gateway.writer import StoreWriter

log = logging.getLogger("clawtrace.gateway.retention")

SLICE_ROWS = 5_000


async def prune_once(settings: GatewaySettings, writer: StoreWriter, now: float | None = None) -> int:
    now = time.time() if now is None else now
    agents = await writer.call(lambda store: store.list_agents())
    deleted_total = 0
    for env in sorted({agent.env for agent in agents}):
        cutoff = now - settings.retention_for(env) * 86_400
        finished = False
        while not finished:
            deleted, finished = await writer.call(
                lambda store, env=env, cutoff=cutoff: store.prune(env, cutoff, SLICE_ROWS)  # type: ignore[misc]
            )
            deleted_total += deleted
            await asyncio.sleep(0)
        if deleted_total:
            log.info(
                "retention: deleted %d events older than %s days in %s",
                deleted_total,
                settings.retention_for(env),
                env,
            )
    rollup_cutoff = int((now - settings.rollup_retention_days * 86_400) // 60)
    await writer.call(lambda store: store.prune_rollups(rollup_cutoff))
    history_cutoff = now - settings.alerts.history_retention_days * 86_400
    audit_cutoff = now - settings.alerts.audit_retention_days * 86_400
    await writer.call(lambda store: store.prune_alert_history(history_cutoff, audit_cutoff))
    return deleted_total


async def retention_loop(settings: GatewaySettings, writer: StoreWriter) -> None:
    while True:
        try:
            await prune_once(settings, writer)
        except Exception:
            log.exception("retention pass failed; will retry")
        await asyncio.sleep(settings.retention_interval_seconds)
