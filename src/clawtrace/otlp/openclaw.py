"""The names OpenClaw's diagnostics-otel plugin exports (OpenClaw 2026.9.x), and what each becomes.

From OpenClaw's docs (gateway/opentelemetry/spans-and-events.md, model-calls-and-metrics.md)
and the plugin's recorders:

* ``openclaw.model.call``: one model request (``openclaw.model_call.observation_unit`` =
  ``request``) or one opaque CLI turn (``turn``, ``gen_ai.operation.name`` = ``invoke_agent``).
  With ``OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental`` the span is named
  ``{operation} {model}`` instead; the ``openclaw.model_call.*`` attributes still mark it.
  -> ``llm_call`` (+ ``thought`` from captured output messages).
* ``openclaw.model.usage``: the run-level *sum* of the model calls' tokens (it also carries
  ``gen_ai.operation.name`` = ``chat``). Ignored: counting it too would double the tokens.
* ``openclaw.tool.execution``: ``execute_tool`` span -> ``tool_call`` + ``tool_result``;
  ``openclaw.outcome`` = ``blocked`` (policy or sandbox) is a failed result.
* ``openclaw.harness.run``: one agent turn, the outermost run span -> lifecycle
  ``run_started`` / ``run_completed`` | ``run_failed``.
* ``openclaw.run`` (nested in ``openclaw.harness.run`` for non-default harnesses),
  ``openclaw.exec`` (inside a tool execution), message/webhook/queue/session/context/
  memory/loop spans: ignored (no event kind of their own, or already counted).

OpenClaw exports no session identifiers (privacy); its sessions are therefore trace ids.
"""

from __future__ import annotations

from typing import Final

from clawtrace.otlp.values import Attributes

PREFIX: Final = "openclaw."
MODEL_CALL: Final = "openclaw.model.call"
MODEL_USAGE: Final = "openclaw.model.usage"
TOOL_EXECUTION: Final = "openclaw.tool.execution"
HARNESS_RUN: Final = "openclaw.harness.run"
OBSERVATION_UNIT: Final = "openclaw.model_call.observation_unit"

MODEL: Final = "openclaw.model"
TOOL_NAME: Final = "openclaw.toolName"
OUTCOME: Final = "openclaw.outcome"
DENIED_REASON: Final = "openclaw.deniedReason"
ERROR_CATEGORY: Final = "openclaw.errorCategory"
ERROR: Final = "openclaw.error"
HARNESS_ID: Final = "openclaw.harness.id"
TOOL_INPUT: Final = "openclaw.content.tool_input"
TOOL_OUTPUT: Final = "openclaw.content.tool_output"
OUTPUT_MESSAGES: Final = "openclaw.content.output_messages"
PROMPT_TOKENS: Final = "openclaw.model_call.usage.prompt_tokens"
OUTPUT_TOKENS: Final = "openclaw.model_call.usage.output_tokens"
CACHE_READ_TOKENS: Final = "openclaw.model_call.usage.cache_read_input_tokens"
# Metrics: process memory samples (histogram, bytes).
RSS_BYTES_METRIC: Final = "openclaw.memory.rss_bytes"


def is_model_call(name: str, attrs: Attributes) -> bool:
    return name == MODEL_CALL or OBSERVATION_UNIT in attrs


def is_openclaw(name: str) -> bool:
    return name.startswith(PREFIX)
