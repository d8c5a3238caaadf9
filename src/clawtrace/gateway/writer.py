"""The batched store writer: one thread, many submissions per transaction.

Connections submit their frames as ``WriteBatch``es and get a future that
resolves once the batch is committed; the gateway acks only then.
Submissions that queue up while a transaction runs are merged into the
next one, so the commit rate stays low while the row rate is high.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from clawtrace.store import Store, WriteBatch

log = logging.getLogger("clawtrace.gateway.writer")

T = TypeVar("T")
_STOP = object()


class _Job:
    __slots__ = ("batch", "call", "future", "loop")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[Any],
        batch: WriteBatch | None = None,
        call: Callable[[Store], Any] | None = None,
    ) -> None:
        self.loop = loop
        self.future = future
        self.batch = batch
        self.call = call


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _resolve_all(futures: list[asyncio.Future[Any]], error: BaseException | None) -> None:
    for future in futures:
        _resolve(future, None, error)


class StoreWriter:
    def __init__(self, store: Store, max_batch_rows: int = 10_000) -> None:
        self.store = store
        self.max_batch_rows = max_batch_rows
        self._queue: queue.SimpleQueue[_Job | object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="clawtrace-writer", daemon=True)
        self.rows_written = 0
        self.transactions = 0
        self.failures = 0
        self.last_error: str | None = None
        self.queued_rows = 0

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, batch: WriteBatch) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self.queued_rows += len(batch.rows)
        self._queue.put(_Job(loop, future, batch=batch))
        return future

    def call(self, fn: Callable[[Store], T]) -> asyncio.Future[T]:
        """Run ``fn(store)`` on the writer thread, ordered with event batches."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Job(loop, future, call=fn))
        return future

    def stop(self, timeout: float = 30.0) -> None:
        """Write everything already submitted, then end the thread."""
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _run(self) -> None:
        pending: _Job | object | None = None
        while True:
            job = pending if pending is not None else self._queue.get()
            pending = None
            if job is _STOP:
                return
            assert isinstance(job, _Job)
            if job.call is not None:
                self._run_call(job)
                continue
            assert job.batch is not None
            jobs = [job]
            merged = WriteBatch()
            merged.merge(job.batch)
            # Merge whatever else is already waiting, up to the row budget.
            while len(merged.rows) < self.max_batch_rows:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if not isinstance(nxt, _Job) or nxt.batch is None:
                    pending = nxt
                    break
                merged.merge(nxt.batch)
                jobs.append(nxt)
            self._write(merged, jobs)

    def _write(self, merged: WriteBatch, jobs: list[_Job]) -> None:
        error: BaseException | None = None
        started = time.perf_counter()
        try:
            self.store.write(merged)
        except Exception as exc:
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.error("store write of %d events failed: %s", len(merged.rows), self.last_error)
            error = exc
        else:
            self.rows_written += len(merged.rows)
            self.transactions += 1
            self.last_error = None
        self.queued_rows -= len(merged.rows)
        elapsed = time.perf_counter() - started
        if elapsed > 1.0:
            log.warning("slow store write: %d events in %.2fs", len(merged.rows), elapsed)
        # One wake-up of the event loop per transaction, not per submission:
        # each call_soon_threadsafe costs a GIL hand-over between the threads.
        by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[Any]]] = {}
        for job in jobs:
            by_loop.setdefault(job.loop, []).append(job.future)
        for loop, futures in by_loop.items():
            loop.call_soon_threadsafe(_resolve_all, futures, error)

    def _run_call(self, job: _Job) -> None:
        assert job.call is not None
        try:
            result = job.call(self.store)
        except Exception as exc:
            job.loop.call_soon_threadsafe(_resolve, job.future, None, exc)
        else:
            job.loop.call_soon_threadsafe(_resolve, job.future, result, None)
