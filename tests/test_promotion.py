"""Environments: deploy, promotion gates, approvals, rollback and env diff through the real API.

The gateway runs in this process (tests/gateway_thread.py) so that its clock
can be moved: soak times are hours, tests are seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from clawtrace.alerts.settings import AlertSettings
from clawtrace.cli.main import cli
from clawtrace.envs.diff import EnvSnapshot, RoleRelease, diff
from clawtrace.envs.gates import GateFacts, evaluate
from clawtrace.envs.rollout import FiringAlert, Follower, pick_canaries, plan
from clawtrace.envs.settings import EnvironmentSettings, GateSettings, RolloutSettings
from clawtrace.gateway.settings import GatewaySettings
from clawtrace.store.base import DeploymentRecord
from gateway_thread import GatewayThread, MovableClock
from releases import post, upload, write_release_dir

HOUR = 3600.0


# --- the judgement, with any clock --------------------------------------------


def test_soak_gate_fails_until_the_release_has_been_live_long_enough() -> None:
    gates = GateSettings(soak_seconds=HOUR, min_tool_success=None)
    facts = GateFacts(previous_env="dev", live_since=1000.0)
    early = evaluate(gates, False, facts, now=1000.0 + 600, approve_hint="")
    assert [(g.gate, g.passed) for g in early] == [("soak", False), ("alerts", True)]
    assert early[0].detail == "live in dev for 10m of the 1h required"
    late = evaluate(gates, False, facts, now=1000.0 + HOUR, approve_hint="")
    assert all(g.passed for g in late)


def test_metric_gates_judge_the_soak_window_and_say_why() -> None:
    gates = GateSettings(soak_seconds=0, min_tool_success=0.9, max_cost_per_action=0.05, approval=True)
    facts = GateFacts(
        previous_env="staging",
        live_since=0.0,
        firing=["ReasoningLoop on a-1"],
        tool_results=10,
        tool_ok=8,
        actions=10,
        cost_usd=1.0,
    )
    results = {g.gate: g for g in evaluate(gates, True, facts, now=10.0, approve_hint="approve it")}
    assert not results["alerts"].passed and "ReasoningLoop on a-1" in results["alerts"].detail
    assert not results["tool_success"].passed and "80.0% (8/10)" in results["tool_success"].detail
    assert not results["cost_per_action"].passed and "$0.1000 per action" in results["cost_per_action"].detail
    assert not results["approval"].passed and "approve it" in results["approval"].detail
    nothing = evaluate(
        gates, False, GateFacts(previous_env="staging", live_since=0.0), now=10.0, approve_hint=""
    )
    assert "no tool results" in {g.gate: g for g in nothing}["tool_success"].detail


def _deployment(**fields: Any) -> DeploymentRecord:
    base: dict[str, Any] = dict(
        env="prod",
        role="r",
        release="new",
        previous="old",
        kind="promote",
        actor="t",
        reason="",
        created=0.0,
        phase="canary",
        phase_since=0.0,
    )
    return DeploymentRecord(**{**base, **fields})


def test_a_canary_gets_the_release_first_then_everyone_then_it_is_complete() -> None:
    settings = RolloutSettings(canary=0.25, canary_seconds=60)
    agents = [f"a-{i}" for i in range(8)]
    followers = [Follower(a, "old") for a in agents]
    deployment = _deployment()
    first = plan(deployment, followers, settings, (), now=1.0)
    assert first.phase is not None and first.phase[0] == "canary"
    canary = first.phase[2]
    assert len(canary) == 2 and canary == pick_canaries(agents, "new", 0.25)
    assert {a for a, r in first.targets.items() if r == "new"} == set(canary)
    deployment.canary = canary
    running = [Follower(a, "new" if a in canary else "old") for a in agents]
    assert plan(deployment, running, settings, (), now=30.0).phase is None  # soaking
    rolling = plan(deployment, running, settings, (), now=61.0)
    assert rolling.phase is not None and rolling.phase[0] == "rolling"
    assert set(rolling.targets.values()) == {"new"}
    deployment.phase = "rolling"
    done = plan(deployment, [Follower(a, "new") for a in agents], settings, (), now=70.0)
    assert done.phase is not None and done.phase[0] == "complete"


def test_an_alert_on_an_agent_running_the_new_release_rolls_it_back() -> None:
    settings = RolloutSettings(rollback_on=["ReasoningLoop"], watch_seconds=600)
    deployment = _deployment(phase="complete", phase_since=100.0)
    followers = [Follower("a-1", "new"), Follower("a-2", "old")]
    on_old = plan(deployment, followers, settings, [FiringAlert("ReasoningLoop", "a-2")], now=200.0)
    assert on_old.rollback is None
    other_rule = plan(deployment, followers, settings, [FiringAlert("CostSpike", "a-1")], now=200.0)
    assert other_rule.rollback is None
    tripped = plan(deployment, followers, settings, [FiringAlert("ReasoningLoop", "a-1")], now=200.0)
    assert tripped.rollback == "ReasoningLoop on a-1 during the rollout"
    after_watch = plan(deployment, followers, settings, [FiringAlert("ReasoningLoop", "a-1")], now=701.0)
    assert after_watch.rollback is None
    a_rollback = _deployment(kind="rollback", phase="rolling")
    assert (
        plan(a_rollback, followers, settings, [FiringAlert("ReasoningLoop", "a-1")], now=1.0).rollback is None
    )


def _snapshot(env: str, releases: dict[str, str], history: set[str], **fields: Any) -> EnvSnapshot:
    return EnvSnapshot(
        env=env,
        releases={role: RoleRelease(id=rid, ref=f"{role}@{rid}") for role, rid in releases.items()},
        history=history,
        policy_version=fields.get("policy_version"),
        policy_files=fields.get("policy_files", {}),
        rules=fields.get("rules", {}),
        settings=fields.get("settings", {}),
    )


def test_env_diff_flags_drift_but_not_a_pending_promotion() -> None:
    staging = _snapshot(
        "staging",
        {"researcher": "2", "writer": "1", "coder": "1"},
        {"1", "2"},
        rules={"CostSpike": {"threshold": 5}},
        settings={"gates": {"soak_seconds": 3600}},
    )
    prod = _snapshot(
        "prod",
        {"researcher": "1", "coder": "9", "ops": "1"},
        {"1", "9"},
        rules={"CostSpike": {"threshold": 10}},
        settings={"gates": {"soak_seconds": 86400}},
    )
    result = {(i.area, i.key): i for i in diff(staging, prod, a_first=True).items}
    assert not result[("release", "researcher")].flagged  # staging is ahead: awaiting promotion
    assert not result[("release", "writer")].flagged  # not promoted yet
    assert result[("release", "coder")].flagged  # prod runs what staging never had
    assert result[("release", "ops")].flagged  # only in prod
    assert result[("rule", "CostSpike")].flagged
    assert result[("rule", "CostSpike")].note == "differs in threshold"
    assert not result[("setting", "gates.soak_seconds")].flagged
    assert len(result) == 6


# --- through the API -----------------------------------------------------------


@pytest.fixture
def clock() -> MovableClock:
    return MovableClock()


@pytest.fixture
def gateway(tmp_path: Path, clock: MovableClock) -> Iterator[GatewayThread]:
    settings = GatewaySettings(
        environments={
            "staging": EnvironmentSettings(gates=GateSettings(soak_seconds=HOUR, min_tool_success=None)),
            "prod": EnvironmentSettings(gates=GateSettings(soak_seconds=2 * HOUR, min_tool_success=None)),
        },
        log_level="warning",
        alerts=AlertSettings(rules_dir=str(tmp_path / "rules")),
    )
    gw = GatewayThread(tmp_path / "gw", settings, clock)
    gw.start()
    yield gw
    gw.stop()


def _release(gateway: GatewayThread, tmp_path: Path, version: str) -> str:
    directory = write_release_dir(tmp_path / f"researcher-{version}", role="researcher", version=version)
    return upload(gateway.http_url, gateway.token("*", "admin"), directory).id


def test_promotion_path_with_gates_approval_rollback_and_audit(
    gateway: GatewayThread, clock: MovableClock, tmp_path: Path
) -> None:
    admin = gateway.token("*", "admin")
    operator = gateway.token("*", "operator")
    first = _release(gateway, tmp_path, "1.0.0")
    second = _release(gateway, tmp_path, "1.1.0")

    # Releases enter through dev only.
    refused = post(
        gateway.http_url, operator, "/api/v1/deployments", {"release": "researcher@1.0.0", "env": "prod"}
    )
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "not_entry_environment"
    missing = post(
        gateway.http_url, operator, "/api/v1/deployments", {"release": "researcher@9.9", "env": "dev"}
    )
    assert missing.status_code == 404 and "clawtrace release list" in missing.json()["error"]["message"]
    unknown_env = post(gateway.http_url, operator, "/api/v1/deployments", {"release": first, "env": "qa"})
    assert (
        unknown_env.status_code == 404 and "dev -> staging -> prod" in unknown_env.json()["error"]["message"]
    )

    deployed = post(
        gateway.http_url, operator, "/api/v1/deployments", {"release": "researcher@1.0.0", "env": "dev"}
    )
    assert deployed.status_code == 201, deployed.text
    assert deployed.json()["deployment"]["release"] == first

    # Skipping staging is refused, and says what to do.
    skip = post(
        gateway.http_url, operator, "/api/v1/promotions", {"release": "researcher@1.0.0", "to": "prod"}
    )
    assert skip.status_code == 409 and skip.json()["error"]["code"] == "not_live"
    assert "promote it to staging first" in skip.json()["error"]["message"]

    # The soak gate fails while the release is young, and passes an hour later.
    early = post(
        gateway.http_url, operator, "/api/v1/promotions", {"release": "researcher@1.0.0", "to": "staging"}
    )
    assert early.status_code == 409 and early.json()["error"]["code"] == "gate_failed"
    gates = {g["gate"]: g for g in early.json()["error"]["gates"]}
    assert not gates["soak"]["passed"] and "of the 1h required" in gates["soak"]["detail"]
    clock.advance(HOUR + 1)
    promoted = post(
        gateway.http_url, operator, "/api/v1/promotions", {"release": "researcher@1.0.0", "to": "staging"}
    )
    assert promoted.status_code == 201, promoted.text
    assert promoted.json()["deployment"]["env"] == "staging"

    # Prod needs an admin's approval: an operator cannot give it; a viewer cannot either.
    clock.advance(2 * HOUR + 1)
    check = post(
        gateway.http_url,
        gateway.token("*", "viewer"),
        "/api/v1/promotions",
        {"release": first, "to": "prod", "check": True},
    )
    assert check.status_code == 200
    assert {g["gate"]: g["passed"] for g in check.json()["gates"]} == {
        "soak": True,
        "alerts": True,
        "approval": False,
    }
    for who in ("viewer", "operator"):
        denied = post(
            gateway.http_url,
            gateway.token("prod", who),
            "/api/v1/promotions/approvals",
            {"release": first, "to": "prod"},
        )
        assert denied.status_code == 403, denied.text
    not_approved = post(gateway.http_url, operator, "/api/v1/promotions", {"release": first, "to": "prod"})
    assert not_approved.status_code == 409 and "approval" in not_approved.json()["error"]["message"]
    approved = post(
        gateway.http_url,
        admin,
        "/api/v1/promotions/approvals",
        {"release": first, "to": "prod", "reason": "CAB-12"},
    )
    assert approved.status_code == 201
    into_prod = post(gateway.http_url, operator, "/api/v1/promotions", {"release": first, "to": "prod"})
    assert into_prod.status_code == 201, into_prod.text

    # A second release in dev; a rollback by hand there goes back to the first.
    post(
        gateway.http_url, operator, "/api/v1/deployments", {"release": second, "env": "dev"}
    ).raise_for_status()
    back = post(
        gateway.http_url, operator, "/api/v1/rollbacks", {"role": "researcher", "env": "dev", "reason": "bad"}
    )
    assert back.status_code == 201
    assert back.json()["deployment"]["release"] == first and back.json()["deployment"]["kind"] == "rollback"
    nothing = post(gateway.http_url, operator, "/api/v1/rollbacks", {"role": "researcher", "env": "prod"})
    assert nothing.status_code == 409 and nothing.json()["error"]["code"] == "nothing_to_roll_back_to"
    # Rolling back again does not return to the release just rolled back.
    again = post(gateway.http_url, operator, "/api/v1/rollbacks", {"role": "researcher", "env": "dev"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "nothing_to_roll_back_to"
    # Going forward again is a deploy, and a rollback can name where to go.
    post(
        gateway.http_url, operator, "/api/v1/deployments", {"release": second, "env": "dev"}
    ).raise_for_status()
    named = post(
        gateway.http_url, operator, "/api/v1/rollbacks", {"role": "researcher", "env": "dev", "to": first}
    )
    assert named.status_code == 201 and named.json()["deployment"]["release"] == first

    status = gateway.get("/api/v1/envs/dev/roles/researcher").json()
    assert [h["kind"] for h in status["history"]] == ["rollback", "deploy", "rollback", "deploy", "deploy"]
    assert [h["phase"] for h in status["history"]][1:] == [
        "rolled_back",
        "superseded",
        "rolled_back",
        "superseded",
    ]

    audit = gateway.get("/api/v1/audit", limit=50).json()["entries"]
    actions = [(e["action"], e["env"], e["result"]) for e in audit if e["action"] != "create_release"]
    for expected in [
        ("deploy", "dev", "ok"),
        ("promote", "staging", "refused"),
        ("promote", "staging", "ok"),
        ("approve_promotion", "prod", "ok"),
        ("promote", "prod", "ok"),
        ("rollback", "dev", "ok"),
    ]:
        assert expected in actions, (expected, actions)


def test_a_credential_of_one_environment_cannot_act_on_another(
    gateway: GatewayThread, tmp_path: Path
) -> None:
    release = _release(gateway, tmp_path, "1.0.0")
    dev_operator = gateway.token("dev", "operator")
    assert (
        post(
            gateway.http_url, dev_operator, "/api/v1/deployments", {"release": release, "env": "dev"}
        ).status_code
        == 201
    )
    for path, body in [
        ("/api/v1/promotions", {"release": release, "to": "staging"}),
        ("/api/v1/rollbacks", {"role": "researcher", "env": "prod"}),
    ]:
        assert post(gateway.http_url, dev_operator, path, body).status_code == 403
    assert (
        gateway.get("/api/v1/envs/prod/roles/researcher", token=gateway.token("dev", "viewer")).status_code
        == 403
    )
    assert (
        gateway.get("/api/v1/envs/diff", token=gateway.token("dev", "viewer"), a="dev", b="prod").status_code
        == 403
    )
    # A node agent gets a release its environment was given, not another environment's.
    assert gateway.get(f"/v1/releases/{release}", token=gateway.token("dev", "agent")).json()["id"] == release
    assert gateway.get(f"/v1/releases/{release}", token=gateway.token("prod", "agent")).status_code == 403


def test_env_diff_over_the_api(gateway: GatewayThread, clock: MovableClock, tmp_path: Path) -> None:
    operator = gateway.token("*", "operator")
    first = _release(gateway, tmp_path, "1.0.0")
    post(
        gateway.http_url, operator, "/api/v1/deployments", {"release": first, "env": "dev"}
    ).raise_for_status()
    body = gateway.get("/api/v1/envs/diff", a="dev", b="staging").json()
    items = {(i["area"], i["key"]): i for i in body["items"]}
    assert items[("release", "researcher")]["a"] == "researcher@1.0.0"
    assert items[("release", "researcher")]["b"] is None
    assert not items[("release", "researcher")]["flagged"]
    soak = items[("setting", "gates.soak_seconds")]
    assert (soak["a"], soak["b"], soak["flagged"]) == (None, HOUR, False)
    assert body["flagged"] == 0
    clock.advance(HOUR + 1)
    post(
        gateway.http_url, operator, "/api/v1/promotions", {"release": first, "to": "staging"}
    ).raise_for_status()
    after = gateway.get("/api/v1/envs/diff", a="dev", b="staging").json()
    assert [i for i in after["items"] if i["area"] == "release"] == []


def test_env_diff_and_gate_check_on_the_command_line(gateway: GatewayThread, tmp_path: Path) -> None:
    admin = gateway.token("*", "admin")
    first = _release(gateway, tmp_path, "1.0.0")
    post(gateway.http_url, admin, "/api/v1/deployments", {"release": first, "env": "dev"}).raise_for_status()
    # Wide, as in a pipeline's log: a narrow terminal folds long cells.
    runner = CliRunner(env={"COLUMNS": "240"})
    auth = ["--gateway", gateway.http_url, "--token", admin]

    check = runner.invoke(cli, ["promote", "researcher@1.0.0", "--to", "staging", "--check", *auth])
    assert check.exit_code == 1, check.output
    assert "soak" in check.output and "FAIL" in check.output and "nothing changed: --check" in check.output

    same = runner.invoke(cli, ["env", "diff", "staging", "prod", *auth])
    assert same.exit_code == 0, same.output
    assert "nothing flagged" in same.output

    # A rule that exists in staging only is drift: flagged, exit status 1.
    response = httpx.put(
        f"{gateway.http_url}/api/v1/alerts/rules/staging",
        content="rules:\n  - name: SlowThinking\n    condition: reasoning_latency_p95_ms > 20000\n",
        headers={"Authorization": f"Bearer {admin}"},
    )
    assert response.status_code == 200, response.text
    drift = runner.invoke(cli, ["env", "diff", "staging", "prod", *auth])
    assert drift.exit_code == 1, drift.output
    assert (
        "SlowThinking" in drift.output and "only in staging" in drift.output and "1 flagged" in drift.output
    )

    listing = runner.invoke(cli, ["env", *auth])
    assert listing.exit_code == 0, listing.output
    assert "dev -> staging -> prod" in listing.output and "researcher@1.0.0" in listing.output
