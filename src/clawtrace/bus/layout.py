"""Where events live on JetStream: one stream, subjects sharded by agent.

Subject of an agent's events::

    <prefix>.<shard>.<env>.<region>.<agent>      e.g. ct.events.7.prod.eu-west-1.a-0417

``shard`` is a stable hash of the agent id (CRC-32 of its UTF-8 bytes, modulo
the shard count), so every event of an agent lands in one shard, and a
worker that owns a shard sees all of that agent's events, in order. The
stream lists one subject filter per shard (``<prefix>.<k>.>``): the shard
count is part of the stream's own configuration, so every gateway and worker
reads the same count from it rather than trusting its own settings.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, replace

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from clawtrace.bus.errors import BusError

DEFAULT_STREAM = "CLAWTRACE_EVENTS"
DEFAULT_PREFIX = "ct.events"
DEFAULT_SHARDS = 16
# What a subject token may hold; anything else in a region is replaced (agent ids and
# environments are already restricted to safe characters by the protocol).
_UNSAFE_TOKEN = re.compile(r"[^A-Za-z0-9_:@-]")
EMPTY_TOKEN = "_"


def shard_of(agent: str, shards: int) -> int:
    """The agent's shard: the same in every process and language (CRC-32, IEEE)."""
    return zlib.crc32(agent.encode()) % shards


def subject_token(value: str) -> str:
    return _UNSAFE_TOKEN.sub("_", value) or EMPTY_TOKEN


@dataclass(frozen=True, slots=True)
class EventSubject:
    shard: int
    env: str
    region: str
    agent: str


@dataclass(frozen=True, slots=True)
class StreamLayout:
    name: str = DEFAULT_STREAM
    prefix: str = DEFAULT_PREFIX
    shards: int = DEFAULT_SHARDS
    # How long JetStream keeps events (a buffer for workers or the store being down).
    max_age_seconds: float = 24 * 3600.0
    # A frame republished within this window (same message id) is stored once.
    duplicate_window_seconds: float = 120.0
    replicas: int = 1
    # Whether the stream answers direct gets (read by any replica, off JetStream's API path):
    # a gateway reads each connecting agent's last message that way.
    direct_get: bool = True

    def subject(self, env: str, region: str, agent: str) -> str:
        return f"{self.prefix}.{shard_of(agent, self.shards)}.{env}.{subject_token(region)}.{agent}"

    def shard_subjects(self, shard: int) -> str:
        return f"{self.prefix}.{shard}.>"

    @property
    def all_subjects(self) -> str:
        return f"{self.prefix}.*.*.*.*"

    def agent_subjects(self, agent: str, env: str = "*") -> str:
        """Every subject an agent's events may have (any region)."""
        return f"{self.prefix}.{shard_of(agent, self.shards)}.{env}.*.{agent}"

    def env_subjects(self, env: str) -> str:
        return f"{self.prefix}.*.{env}.*.*"

    @property
    def control_prefix(self) -> str:
        """Core NATS subjects beside the stream (never captured by it): commands, quarantine,
        presence and alert news (bus/control.py)."""
        base = self.prefix.removesuffix(".events") if self.prefix != ".events" else self.prefix
        return f"{base}.control"

    def command_subject(self, agent: str) -> str:
        """Where a command for ``agent`` goes: the gateway holding its connection listens there."""
        return f"{self.control_prefix}.command.{agent}"

    @property
    def quarantine_subject(self) -> str:
        return f"{self.control_prefix}.quarantine"

    def presence_subject(self, shard: int) -> str:
        """Where gateways say that an agent of ``shard`` connected or disconnected (its owner listens)."""
        return f"{self.control_prefix}.presence.{shard}"

    @property
    def alerts_subject(self) -> str:
        """Operator actions on alerts (silences, acknowledgements) for the workers that evaluate them."""
        return f"{self.control_prefix}.alerts"

    def parse(self, subject: str) -> EventSubject:
        head = self.prefix + "."
        if not subject.startswith(head):
            raise ValueError(f"subject {subject!r} is not under {self.prefix!r}")
        parts = subject[len(head) :].split(".")
        if len(parts) != 4 or not parts[0].isdigit():
            raise ValueError(f"subject {subject!r} is not {self.prefix}.<shard>.<env>.<region>.<agent>")
        return EventSubject(int(parts[0]), parts[1], parts[2], parts[3])

    def config(self) -> StreamConfig:
        return StreamConfig(
            name=self.name,
            description=f"ClawTrace events, {self.shards} shards by agent",
            subjects=[self.shard_subjects(shard) for shard in range(self.shards)],
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.OLD,
            max_age=self.max_age_seconds,
            storage=StorageType.FILE,
            num_replicas=self.replicas,
            duplicate_window=self.duplicate_window_seconds,
            allow_direct=self.direct_get,
        )

    def shards_in(self, subjects: list[str]) -> int:
        """The shard count of a stream with these subjects; a BusError if they are not ours."""
        expected = {self.shard_subjects(shard) for shard in range(len(subjects))}
        if not subjects or set(subjects) != expected:
            raise BusError(
                f"JetStream stream {self.name} has subjects {subjects[:4]}... which are not"
                f" {self.prefix}.<shard>.> for shards 0..N-1: another program uses that name;"
                " pick another stream name or delete that stream"
            )
        return len(subjects)


async def ensure_stream(js: JetStreamContext, layout: StreamLayout) -> StreamLayout:
    """Create the event stream if it does not exist; return the layout as the stream has it.

    An existing stream keeps its shard count (changing it would move agents to
    other shards while their older events wait in the old ones).
    """
    try:
        info = await js.stream_info(layout.name)
    except nats.js.errors.NotFoundError:
        try:
            info = await js.add_stream(layout.config())
        except nats.js.errors.BadRequestError as exc:
            # Two processes starting at once: the other one created it.
            if exc.err_code != 10058:  # stream name already in use
                raise BusError(f"cannot create JetStream stream {layout.name}: {exc.description}") from None
            info = await js.stream_info(layout.name)
    except nats.js.errors.ServiceUnavailableError:
        raise BusError("JetStream is not enabled on the NATS server: start nats-server with -js") from None
    subjects = list(info.config.subjects or [])
    return replace(layout, shards=layout.shards_in(subjects), direct_get=bool(info.config.allow_direct))
