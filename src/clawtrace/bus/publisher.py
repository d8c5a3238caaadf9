"""Publishes accepted frames to JetStream and says when JetStream has them all.

One frame (an agent's consecutive accepted events) becomes one JetStream
message (a JSON array of the events), or several when it is bigger than the
server's max payload. Each message's id is ``<agent>:<first seq>-<last seq>``:
JetStream stores a frame republished within its duplicate window once; a
resend cut differently is caught downstream, where workers dedupe by (agent, seq).

Publishing is ``publish_async`` with a bounded number of acks in flight, all
from one task so that an agent's frames reach the stream in the order they
were accepted. ``publish`` returns at once with a future that resolves when
JetStream acknowledged every message of the frame, or fails when one was
refused or no ack came within ``ack_timeout`` (nats-py's own ack futures
never time out, and a message written just before a disconnect may never be
answered).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass, field

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import PubAck

from clawtrace.bus.errors import BusError
from clawtrace.bus.layout import StreamLayout

log = logging.getLogger("clawtrace.bus.publisher")

MSG_ID_HEADER = "Nats-Msg-Id"
# How long a connecting agent's welcome may wait for its last seq in the stream.
LAST_SEQ_TIMEOUT = 2.0
# Room left in a message for the JSON brackets and NATS headers.
_PAYLOAD_HEADROOM = 512


@dataclass(eq=False)
class _Frame:
    chunks: list[tuple[str, bytes, str]]  # (subject, payload, message id)
    done: asyncio.Future[None]
    acks: list[asyncio.Future[PubAck]] = field(default_factory=list)
    acked: int = 0
    timer: asyncio.TimerHandle | None = None

    def ack_arrived(self, ack: asyncio.Future[PubAck]) -> None:
        if self.done.done():
            return
        if ack.cancelled():
            return  # only this frame's own timeout cancels its acks, and it failed the frame already
        error = ack.exception()
        if error is not None:
            self.fail(BusError(f"JetStream refused events: {type(error).__name__}: {error}"))
            return
        self.acked += 1
        if self.acked == len(self.chunks):
            self._finish()
            self.done.set_result(None)

    def fail(self, error: BusError) -> None:
        if self.done.done():
            return
        self._finish()
        self.done.set_exception(error)
        for ack in self.acks:
            # Cancelling frees the slot nats-py holds for it in the in-flight window.
            ack.cancel()

    def _finish(self) -> None:
        if self.timer is not None:
            self.timer.cancel()


def last_seq_of(msg_id: str) -> int:
    """The last seq named by a message id ``<agent>:<first>-<last>`` (0 if it is not one)."""
    _, _, seqs = msg_id.rpartition(":")
    last = seqs.rpartition("-")[2]
    return int(last) if last.isdigit() else 0


@dataclass
class PublisherStats:
    frames: int = 0
    messages: int = 0
    failed_frames: int = 0


class FramePublisher:
    def __init__(
        self,
        js: JetStreamContext,
        layout: StreamLayout,
        max_payload: int,
        ack_timeout: float = 10.0,
    ) -> None:
        self.js = js
        self.layout = layout
        self.max_payload = max_payload
        self.ack_timeout = ack_timeout
        self.stats = PublisherStats()
        self._queue: deque[_Frame] = deque()
        self._unresolved: set[asyncio.Future[None]] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="clawtrace-jetstream-publisher")

    async def close(self, drain_seconds: float = 5.0) -> None:
        """Publish what is queued and wait (up to ``drain_seconds``) for its acks, then stop."""
        if self._unresolved:
            await asyncio.wait(set(self._unresolved), timeout=drain_seconds)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for frame in self._queue:
            frame.fail(BusError("the gateway is shutting down; resend after reconnecting"))
        self._queue.clear()

    def publish(
        self, env: str, region: str, agent: str, events: list[bytes], seqs: list[int]
    ) -> asyncio.Future[None]:
        """Queue an agent's accepted events (JSON each, with their seqs, ascending)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        try:
            chunks = self._chunks(self.layout.subject(env, region, agent), agent, events, seqs)
        except BusError as exc:
            done.set_exception(exc)
            return done
        frame = _Frame(chunks, done)
        # From acceptance: time queued behind a full in-flight window is NATS being slow too.
        frame.timer = asyncio.get_running_loop().call_later(self.ack_timeout, self._expire, frame)
        self._queue.append(frame)
        self._wake.set()
        self.stats.frames += 1
        self._unresolved.add(done)
        done.add_done_callback(self._resolved)
        return done

    async def last_seq(self, env: str, region: str, agent: str) -> int:
        """The highest seq of the agent's last message in the stream (0 if none is left)."""
        subject = self.layout.subject(env, region, agent)
        try:
            msg = await asyncio.wait_for(
                self.js.get_last_msg(self.layout.name, subject, direct=self.layout.direct_get),
                LAST_SEQ_TIMEOUT,
            )
        except nats.js.errors.NotFoundError:
            return 0
        return last_seq_of(msg.headers.get(MSG_ID_HEADER, "") if msg.headers else "")

    def _resolved(self, done: asyncio.Future[None]) -> None:
        self._unresolved.discard(done)
        if done.cancelled() or done.exception() is not None:
            self.stats.failed_frames += 1

    def _chunks(
        self, subject: str, agent: str, events: list[bytes], seqs: list[int]
    ) -> list[tuple[str, bytes, str]]:
        budget = self.max_payload - _PAYLOAD_HEADROOM
        if sum(map(len, events)) + len(events) <= budget:
            # The usual frame: one message, no event too big (sized without a loop per event).
            return [self._chunk(subject, agent, events, seqs[0], seqs[-1])]
        chunks: list[tuple[str, bytes, str]] = []
        start = 0
        size = 0
        for index, event in enumerate(events):
            if len(event) > budget:
                raise BusError(
                    f"event seq {seqs[index]} of agent {agent!r} is {len(event)} bytes, more than NATS"
                    f" accepts in one message ({self.max_payload}): raise max_payload in the nats-server"
                    " configuration above the gateway's max_frame_bytes"
                )
            if index > start and size + len(event) + 1 > budget:
                chunks.append(self._chunk(subject, agent, events[start:index], seqs[start], seqs[index - 1]))
                start, size = index, 0
            size += len(event) + 1
        chunks.append(self._chunk(subject, agent, events[start:], seqs[start], seqs[-1]))
        return chunks

    @staticmethod
    def _chunk(
        subject: str, agent: str, events: list[bytes], first: int, last: int
    ) -> tuple[str, bytes, str]:
        return subject, b"[" + b",".join(events) + b"]", f"{agent}:{first}-{last}"

    async def _run(self) -> None:
        while True:
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            frame = self._queue[0]
            for subject, payload, msg_id in frame.chunks:
                if frame.done.done():
                    break
                try:
                    ack = await self.js.publish_async(subject, payload, headers={MSG_ID_HEADER: msg_id})
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    frame.fail(BusError(f"publishing to JetStream failed: {type(exc).__name__}: {exc}"))
                    break
                frame.acks.append(ack)
                self.stats.messages += 1
                ack.add_done_callback(frame.ack_arrived)
            self._queue.popleft()

    def _expire(self, frame: _Frame) -> None:
        if not frame.done.done():
            frame.fail(
                BusError(
                    f"JetStream did not acknowledge events within {self.ack_timeout:g} s"
                    " (NATS down or overloaded?); resend after the last ack"
                )
            )
