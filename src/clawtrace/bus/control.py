"""What scale-mode processes tell each other on the control subjects (core NATS, JSON).

None of it is durable: whoever must not miss something also finds it in the
store (quarantines, silences, acknowledgements, the agents' connected flag),
and the news only makes it known at once.

- ``<control>.quarantine``: ``QuarantineNews``, a quarantine set or lifted
  (by a gateway's API or a worker's remediation): every gateway's ``welcome``
  says so, and the worker evaluating the agent starts its remediation over
  after a release.
- ``<control>.presence.<shard>``: ``PresenceNews``, an agent of the shard
  connected to a gateway (with what its ``hello`` said) or disconnected; the
  worker holding the shard listens.
- ``<control>.alerts``: ``AlertNotice``, a silence created or expired, an
  alert acknowledged, through any gateway's API; every worker listens, the
  one evaluating the alert acts.
"""

from __future__ import annotations

import msgspec

from clawtrace.alerts.model import Silence
from clawtrace.store import AgentInfo, QuarantineRecord


class QuarantineNews(msgspec.Struct):
    agent: str
    record: QuarantineRecord | None  # None: lifted


class PresenceNews(msgspec.Struct, kw_only=True):
    agent: str
    connected: bool
    # One connection of the agent to one gateway: a disconnect counts only for the connection
    # it ends (the agent may already be connected again, to another gateway).
    connection: str
    at: float
    env: str = ""
    region: str = ""
    labels: dict[str, str] = {}
    release: str | None = None
    role: str | None = None

    def info(self) -> AgentInfo:
        return AgentInfo(self.agent, self.env, self.region, dict(self.labels), self.release, self.role)


class SilenceAdded(msgspec.Struct, tag="silence_added"):
    silence: Silence


class SilenceExpired(msgspec.Struct, tag="silence_expired"):
    id: str


class AlertAcknowledged(msgspec.Struct, tag="acknowledged", kw_only=True):
    rule: str
    # The alert's key part: the agent, or "@env" for an environment-wide alert.
    agent: str
    # Which firing of the alert was acknowledged (a later one is not).
    active_since: float | None
    actor: str
    at: float


AlertNotice = SilenceAdded | SilenceExpired | AlertAcknowledged

_notice_decoder = msgspec.json.Decoder(AlertNotice)
_presence_decoder = msgspec.json.Decoder(PresenceNews)
_quarantine_decoder = msgspec.json.Decoder(QuarantineNews)


def encode(news: QuarantineNews | PresenceNews | AlertNotice) -> bytes:
    return msgspec.json.encode(news)


def decode_notice(data: bytes) -> AlertNotice:
    notice: AlertNotice = _notice_decoder.decode(data)
    return notice


def decode_presence(data: bytes) -> PresenceNews:
    return _presence_decoder.decode(data)


def decode_quarantine(data: bytes) -> QuarantineNews:
    return _quarantine_decoder.decode(data)
