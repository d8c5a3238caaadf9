"""Protocol v1: every message and event type, defined once.

The SDK, the node agent, the gateway, the simulator and the read API all
import these definitions; docs/protocol.md describes the same shapes for
clients in other languages.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec

PROTOCOL_VERSION = 1

# An agent role, as a release's manifest and ``hello`` name it.
ROLE_PATTERN = r"^[a-z][a-z0-9_-]{0,62}$"
Role = Annotated[str, msgspec.Meta(pattern=ROLE_PATTERN)]
Seq = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
Timestamp = Annotated[datetime, msgspec.Meta(tz=True)]
Identifier = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
# Agent ids appear in URL paths and bus subjects: no slashes, dots, spaces or wildcards.
AgentId = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_:@-]*$")]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
NonNegativeFloat = Annotated[float, msgspec.Meta(ge=0)]


class Envelope(msgspec.Struct, tag_field="kind", kw_only=True, omit_defaults=True):
    """Fields every event carries, whatever its kind.

    ``agent`` is only needed where the transport does not say which agent
    sent the event (NDJSON posts with a multi-agent credential); the gateway
    fills it in, and sets ``received`` to its own clock, before storing.
    """

    seq: Seq
    ts: Timestamp
    session: Identifier
    agent: AgentId | None = None
    received: datetime | None = None


class Log(Envelope, tag="log"):
    stream: Literal["stdout", "stderr"]
    line: str


class Thought(Envelope, tag="thought"):
    text: str


class LlmCall(Envelope, tag="llm_call"):
    model: str
    input_tokens: NonNegativeInt
    output_tokens: NonNegativeInt
    duration_ms: NonNegativeFloat
    cost_usd: NonNegativeFloat | None = None
    cached_input_tokens: NonNegativeInt = 0


class ToolCall(Envelope, tag="tool_call"):
    call_id: Identifier
    tool: Identifier
    args: dict[str, Any] = {}


class ToolResult(Envelope, tag="tool_result"):
    call_id: Identifier
    ok: bool
    duration_ms: NonNegativeFloat
    error: str | None = None
    output: Any = None


class Heartbeat(Envelope, tag="heartbeat"):
    cpu_percent: NonNegativeFloat | None = None
    rss_bytes: NonNegativeInt | None = None
    # The release id the agent process runs now (node agents following a role's releases).
    release: str | None = None


# The states of the agent process itself; "quarantined" and "released" say
# something about its tool policy, not whether it runs.
PROCESS_STATES = frozenset({"started", "exited", "restarting", "stopped"})


class Lifecycle(Envelope, tag="lifecycle"):
    state: Identifier
    exit_code: int | None = None
    reason: str | None = None


class PolicyDecision(Envelope, tag="policy"):
    """A tool call's policy decision, from the enforcement point that made it (audit)."""

    decision: Literal["allow", "deny", "require_approval"]
    tool: Identifier
    rule: str | None = None
    reason: str | None = None
    # The tool call it is about (the SDK's call_id), the shell command a
    # decision on a shell tool is about, and the bundle version that decided.
    call_id: str | None = None
    command: str | None = None
    policy_version: str | None = None
    # For require_approval: the approval's id; for the decision that follows
    # it, who approved or rejected (or "timeout").
    approval_id: str | None = None
    decided_by: str | None = None


Event = Log | Thought | LlmCall | ToolCall | ToolResult | Heartbeat | Lifecycle | PolicyDecision

EVENT_TYPES: dict[str, type[Envelope]] = {
    "log": Log,
    "thought": Thought,
    "llm_call": LlmCall,
    "tool_call": ToolCall,
    "tool_result": ToolResult,
    "heartbeat": Heartbeat,
    "lifecycle": Lifecycle,
    "policy": PolicyDecision,
}
KINDS: tuple[str, ...] = tuple(EVENT_TYPES)


# --- client -> gateway -----------------------------------------------------


class Hello(msgspec.Struct, tag_field="type", tag="hello", kw_only=True, omit_defaults=True):
    agent: AgentId
    env: Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")]
    region: str = ""
    labels: dict[str, str] = {}
    release: str | None = None
    # Set by a node agent that runs whatever release its environment wants for
    # this role (``clawtrace run --role``): the gateway sends it ``deploy`` commands.
    role: Role | None = None
    token: str | None = None
    protocol: int = PROTOCOL_VERSION


class Events(msgspec.Struct, tag_field="type", tag="events", kw_only=True):
    events: list[Event]


ClientMessage = Hello | Events


# --- gateway -> client -----------------------------------------------------


class Welcome(msgspec.Struct, tag_field="type", tag="welcome", kw_only=True):
    ack: NonNegativeInt
    protocol: int = PROTOCOL_VERSION
    max_frame_bytes: int = 1 << 20
    max_events_per_frame: int = 10_000
    # Why the agent is quarantined, or None: the node agent takes this as its
    # quarantine state on every connect (a release while it was offline included).
    quarantine: str | None = None


class Ack(msgspec.Struct, tag_field="type", tag="ack", kw_only=True):
    seq: NonNegativeInt


class Error(msgspec.Struct, tag_field="type", tag="error", kw_only=True):
    code: str
    message: str
    seq: int | None = None
    retry_after_ms: int | None = None
    # NDJSON posts only: the 1-based line of the body the error is about.
    line: int | None = None


# policy: payload is a policy bundle (clawtrace.policy.PolicyBundle as JSON);
# approval: payload {"approval_id", "approved": bool, "by", "reason"};
# deploy: payload {"release": full release id, "ref": "ROLE@VERSION"}, the release
# this agent should run (fetched from GET /v1/releases/{id}).
CommandAction = Literal["restart", "stop", "quarantine", "release", "policy", "approval", "deploy"]


class Command(msgspec.Struct, tag_field="type", tag="command", kw_only=True, omit_defaults=True):
    id: str
    action: CommandAction
    reason: str | None = None
    payload: dict[str, Any] = {}


ServerMessage = Welcome | Ack | Error | Command


def utc_now() -> datetime:
    return datetime.now(UTC)
