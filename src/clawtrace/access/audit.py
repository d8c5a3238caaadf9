"""Refused requests in the audit log: ``Authenticator(store, on_refusal=RefusalAudit(writer))``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Final, Protocol

from clawtrace.access.tokens import Credential
from clawtrace.alerts.model import AuditEntry
from clawtrace.store import Store

log = logging.getLogger("clawtrace.access")

REFUSED: Final = "refused"
_MAX_TRACKED: Final = 10_000


class AuditWriter(Protocol):
    """The gateway's StoreWriter: runs ``fn(store)`` on its thread."""

    def call(self, fn: Callable[[Store], Any]) -> asyncio.Future[Any]: ...


class RefusalAudit:
    """Writes an audit entry (action "refused") for each refusal.

    The same refusal (credential, role, environment) repeated within
    ``window_seconds`` is counted instead of written again: a client retrying
    in a loop would otherwise fill the audit log. The count goes in the next
    entry's ``detail["repeats"]``.
    """

    def __init__(
        self, writer: AuditWriter, window_seconds: float = 10.0, clock: Callable[[], float] = time.time
    ) -> None:
        self.writer = writer
        self.window_seconds = window_seconds
        self.clock = clock
        self._recent: dict[tuple[str, str, str | None], tuple[float, int]] = {}

    def __call__(self, credential: Credential, needed: str, env: str | None, message: str) -> None:
        now = self.clock()
        key = (credential.id, needed, env)
        last = self._recent.get(key)
        if last is not None and now - last[0] < self.window_seconds:
            self._recent[key] = (last[0], last[1] + 1)
            return
        if len(self._recent) >= _MAX_TRACKED:
            self._recent.clear()
        self._recent[key] = (now, 0)
        where = env or credential.env
        entry = AuditEntry(
            ts=now,
            env=where,
            actor=credential.actor,
            action=REFUSED,
            target=where,
            reason=message,
            result=REFUSED,
            detail={"needed": needed, "env": env, "repeats": 0 if last is None else last[1]},
        )
        try:
            future = self.writer.call(lambda store: store.add_audit([entry]))
        except RuntimeError:  # no event loop in this thread: the writer cannot answer us
            log.warning("refusal not audited (called outside the event loop): %s", message)
            return
        future.add_done_callback(_log_failure)


def _log_failure(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("a refusal could not be written to the audit log: %s", future.exception())
