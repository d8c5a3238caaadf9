"""Per-environment settings: retention, promotion gates and rollout (``[gateway.environments.NAME]``)."""

from __future__ import annotations

from typing import Annotated

import msgspec

Fraction = Annotated[float, msgspec.Meta(ge=0, le=1)]
Seconds = Annotated[float, msgspec.Meta(ge=0)]

DEFAULT_ORDER = ("dev", "staging", "prod")


class GateSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True, omit_defaults=True):
    """What a release must show in the previous environment before it may enter this one."""

    # How long it must have been the desired release there.
    soak_seconds: Seconds = 3600.0
    # No alert may be firing for an agent that runs it there.
    no_firing_alerts: bool = True
    # Tool results ok / all tool results of its agents there since it went live (0 or None: no gate).
    min_tool_success: Fraction | None = 0.9
    # USD spent on LLM calls per action (tool call) there since it went live (None: no gate).
    max_cost_per_action: Annotated[float, msgspec.Meta(ge=0)] | None = None
    # An admin's approval; None: required for the last environment of the order only.
    approval: bool | None = None


class RolloutSettings(
    msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True, omit_defaults=True
):
    """How a new desired release reaches this environment's agents."""

    # The fraction of agents that get a new release first (0: everyone at once).
    canary: Fraction = 0.0
    # How long the canaries run it before everyone else follows.
    canary_seconds: Seconds = 300.0
    # Go back to the previous release when it trips an alert during the rollout ...
    auto_rollback: bool = True
    # ... or within this long after the last agent got it.
    watch_seconds: Seconds = 600.0
    # The alert rules that roll back (empty: any firing alert of an agent on the new release).
    rollback_on: list[str] = []


class EnvironmentSettings(
    msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True, omit_defaults=True
):
    retention_days: float | None = None
    gates: GateSettings = GateSettings()
    rollout: RolloutSettings = RolloutSettings()
