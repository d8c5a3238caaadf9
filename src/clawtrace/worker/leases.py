"""Which worker owns which shard: leases in a JetStream key-value bucket with a TTL.

A shard is owned by the worker whose id is under ``shard.<k>``; the owner
rewrites the key (compare-and-set on its revision) every third of the TTL.
A worker that dies stops renewing, the bucket forgets its keys after the TTL,
and another worker's ``acquire`` (create-if-absent) then succeeds. Every
worker also keeps a ``worker.<id>`` key fresh, so that each can count the
live workers and take no more than its share of the shards.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from dataclasses import dataclass, field

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from clawtrace.bus.layout import StreamLayout

log = logging.getLogger("clawtrace.worker.leases")

_UNSAFE_KEY = re.compile(r"[^-_=a-zA-Z0-9]")


def bucket_name(layout: StreamLayout) -> str:
    return f"{layout.name}_LEASES"


def worker_key(worker_id: str) -> str:
    return f"worker.{_UNSAFE_KEY.sub('_', worker_id)}"


def shard_key(shard: int) -> str:
    return f"shard.{shard}"


@dataclass
class ShardLeases:
    kv: KeyValue
    worker_id: str
    ttl_seconds: float
    # shard -> revision of our last write of its key
    held: dict[int, int] = field(default_factory=dict)
    # shard -> when (monotonic) our lease surely still holds: a safety margin before the TTL,
    # as the bucket's clock and ours do not tick together.
    _valid_until: dict[int, float] = field(default_factory=dict)
    _presence: int | None = None

    def owns(self, shard: int) -> bool:
        """Whether this worker may still process the shard (its lease has not run out)."""
        return shard in self.held and time.monotonic() < self._valid_until.get(shard, 0.0)

    def _written(self, shard: int, revision: int, started: float) -> None:
        self.held[shard] = revision
        self._valid_until[shard] = started + self.ttl_seconds * 0.8

    @classmethod
    async def open(
        cls, js: JetStreamContext, layout: StreamLayout, worker_id: str, ttl_seconds: float
    ) -> ShardLeases:
        """The lease bucket of ``layout``'s stream, created with ``ttl_seconds`` if it does not exist
        (an existing bucket keeps its TTL: all workers must agree on it)."""
        bucket = bucket_name(layout)
        try:
            kv = await js.key_value(bucket)
            status = await kv.status()
            ttl = status.ttl or ttl_seconds
            if abs(ttl - ttl_seconds) > 0.001:
                log.info("lease bucket %s has a TTL of %g s (kept; asked for %g s)", bucket, ttl, ttl_seconds)
        except nats.js.errors.BucketNotFoundError:
            kv = await js.create_key_value(
                bucket=bucket, ttl=ttl_seconds, history=1, replicas=layout.replicas
            )
            ttl = ttl_seconds
        return cls(kv, worker_id, ttl)

    @property
    def renew_every(self) -> float:
        return self.ttl_seconds / 3

    async def announce(self) -> None:
        """Say this worker is alive (counted by ``live_workers``)."""
        self._presence = await self.kv.put(worker_key(self.worker_id), self.worker_id.encode())

    async def live_workers(self) -> int:
        try:
            keys = await self.kv.keys()  # (servers before 2.10 ignore filters: filtered here)
        except nats.js.errors.NoKeysError:
            return 0
        return sum(1 for key in keys if key.startswith("worker."))

    async def acquire(self, shard: int) -> bool:
        started = time.monotonic()
        try:
            self._written(shard, await self.kv.create(shard_key(shard), self.worker_id.encode()), started)
        except nats.js.errors.KeyWrongLastSequenceError:
            return False  # another worker holds it
        log.info("worker %s took shard %d", self.worker_id, shard)
        return True

    async def renew(self, shard: int) -> bool:
        """Extend the lease; False (and the shard forgotten) if it was lost meanwhile."""
        revision = self.held.get(shard)
        if revision is None:
            return False
        started = time.monotonic()
        try:
            key, value = shard_key(shard), self.worker_id.encode()
            self._written(shard, await self.kv.update(key, value, last=revision), started)
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.KeyNotFoundError):
            # Expired (we were too slow) and maybe taken: whoever has it now owns the shard.
            del self.held[shard]
            self._valid_until.pop(shard, None)
            log.warning("worker %s lost its lease on shard %d", self.worker_id, shard)
            return False
        return True

    async def release(self, shard: int) -> None:
        revision = self.held.pop(shard, None)
        self._valid_until.pop(shard, None)
        if revision is None:
            return
        # An APIError: the revision moved on, the lease is already someone else's.
        with contextlib.suppress(nats.js.errors.APIError):
            await self.kv.delete(shard_key(shard), last=revision)
        log.info("worker %s released shard %d", self.worker_id, shard)

    async def leave(self) -> None:
        for shard in list(self.held):
            await self.release(shard)
        if self._presence is not None:
            try:
                await self.kv.delete(worker_key(self.worker_id))
            except nats.js.errors.Error as exc:
                log.warning("could not remove worker %s's presence key: %s", self.worker_id, exc)
