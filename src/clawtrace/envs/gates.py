"""Promotion gates: what a release must have shown in the previous environment to enter the next.

Pure: the gateway gathers the facts (``GateFacts``) and the clock, this
module judges them, so the judgement can be tested with any clock.
"""

from __future__ import annotations

import msgspec

from clawtrace.alerts.rules_file import format_duration
from clawtrace.envs.settings import GateSettings


class GateFacts(msgspec.Struct, kw_only=True):
    """What is known about one release in the environment before the target."""

    previous_env: str
    # When it became the desired release there (None: it is not live there).
    live_since: float | None
    # "RULE on AGENT" of every firing alert of an agent running it there.
    firing: list[str] = []
    tool_results: int = 0
    tool_ok: int = 0
    actions: int = 0
    cost_usd: float = 0.0
    # Who approved it for the target environment, if anyone.
    approved_by: str | None = None


class GateResult(msgspec.Struct, kw_only=True):
    gate: str  # soak | alerts | tool_success | cost_per_action | approval
    passed: bool
    detail: str


def evaluate(
    gates: GateSettings, needs_approval: bool, facts: GateFacts, now: float, approve_hint: str
) -> list[GateResult]:
    """Every gate that applies, each with why it passed or failed."""
    where = facts.previous_env
    results: list[GateResult] = []
    if facts.live_since is None:
        return [GateResult(gate="soak", passed=False, detail=f"not live in {where}")]
    soaked = float(int(max(0.0, now - facts.live_since)))
    required = format_duration(gates.soak_seconds)
    results.append(
        GateResult(
            gate="soak",
            passed=soaked >= gates.soak_seconds,
            detail=f"live in {where} for {format_duration(soaked)} of the {required} required",
        )
    )
    if gates.no_firing_alerts:
        results.append(
            GateResult(
                gate="alerts",
                passed=not facts.firing,
                detail=f"firing in {where}: {', '.join(facts.firing)}"
                if facts.firing
                else f"no alert firing for it in {where}",
            )
        )
    if gates.min_tool_success:
        if facts.tool_results == 0:
            results.append(
                GateResult(
                    gate="tool_success",
                    passed=False,
                    detail=f"no tool results in {where} since it went live: nothing to judge the success "
                    f"rate (>= {gates.min_tool_success:.0%}) by yet",
                )
            )
        else:
            rate = facts.tool_ok / facts.tool_results
            results.append(
                GateResult(
                    gate="tool_success",
                    passed=rate >= gates.min_tool_success,
                    detail=f"tool success {rate:.1%} ({facts.tool_ok}/{facts.tool_results}) in {where}, "
                    f"at least {gates.min_tool_success:.0%} required",
                )
            )
    if gates.max_cost_per_action is not None:
        if facts.actions == 0:
            results.append(
                GateResult(
                    gate="cost_per_action",
                    passed=False,
                    detail=f"no actions in {where} since it went live: "
                    "nothing to judge the cost per action by yet",
                )
            )
        else:
            per_action = facts.cost_usd / facts.actions
            results.append(
                GateResult(
                    gate="cost_per_action",
                    passed=per_action <= gates.max_cost_per_action,
                    detail=f"${per_action:.4f} per action ({facts.actions} actions) in {where}, "
                    f"at most ${gates.max_cost_per_action:.4f} allowed",
                )
            )
    if needs_approval:
        results.append(
            GateResult(
                gate="approval",
                passed=facts.approved_by is not None,
                detail=f"approved by {facts.approved_by}"
                if facts.approved_by
                else f"needs an admin's approval: {approve_hint}",
            )
        )
    return results
