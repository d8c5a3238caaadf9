"""dev -> staging with real node agents: deploy, promote through gates, converge, roll back.

The node agents are real `clawtrace run --role` processes; their agent
processes are the releases' own commands, calling tools through the SDK.
The gateway runs in this process so that the test can move its clock past
the soak time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from clawtrace.cli.main import cli
from clawtrace.envs.settings import EnvironmentSettings, GateSettings, RolloutSettings
from clawtrace.gateway.settings import GatewaySettings
from gateway_thread import GatewayThread, MovableClock
from node_process import NodeAgentProcess
from releases import post, upload, write_release_dir
from waiting import wait_for

HOUR = 3600.0
WAIT = 30.0

# Calls a tool every 0.1 s through the SDK; MODE=bad makes every call fail (a reasoning loop).
AGENT_SCRIPT = """\
import os, time
from clawtrace import sdk

bad = os.environ.get("MODE") == "bad"
while True:
    try:
        with sdk.tool_call("search", {"q": "weather"}) as call:
            if bad:
                raise RuntimeError("no results")
            call.output = "sunny"
    except RuntimeError:
        pass
    time.sleep(0.1)
"""


@pytest.fixture
def clock() -> MovableClock:
    return MovableClock()


@pytest.fixture
def gateway(tmp_path: Path, clock: MovableClock) -> Iterator[GatewayThread]:
    settings = GatewaySettings(
        environment_order=["dev", "staging"],
        environments={
            "dev": EnvironmentSettings(rollout=RolloutSettings(rollback_on=["ReasoningLoop"])),
            "staging": EnvironmentSettings(
                gates=GateSettings(soak_seconds=HOUR, min_tool_success=0.9, approval=False),
                rollout=RolloutSettings(canary=0.5, canary_seconds=0),
            ),
        },
        log_level="warning",
    )
    gw = GatewayThread(tmp_path / "gw", settings, clock)
    gw.start()
    yield gw
    gw.stop()


def _running(gateway: GatewayThread, env: str, release: str) -> Callable[[], bool]:
    def check() -> bool:
        agents = gateway.get(f"/api/v1/envs/{env}/roles/researcher").json()["agents"]
        return bool(agents) and all(a["release"] == release for a in agents)

    return check


def _cli(gateway: GatewayThread, *args: str) -> Any:
    result = CliRunner().invoke(
        cli,
        [*args, "--gateway", gateway.http_url, "--token", gateway.token("*", "admin")],
        catch_exceptions=False,
    )
    return result


def test_releases_move_through_environments_on_real_node_agents(
    gateway: GatewayThread, clock: MovableClock, tmp_path: Path
) -> None:
    admin = gateway.token("*", "admin")
    good = upload(
        gateway.http_url,
        admin,
        write_release_dir(
            tmp_path / "v1", role="researcher", version="1.0.0", script=AGENT_SCRIPT, env={"MODE": "good"}
        ),
    ).id
    fixed = upload(
        gateway.http_url,
        admin,
        write_release_dir(
            tmp_path / "v1.1", role="researcher", version="1.1.0", script=AGENT_SCRIPT, env={"MODE": "good"}
        ),
    ).id
    looping = upload(
        gateway.http_url,
        admin,
        write_release_dir(
            tmp_path / "v2", role="researcher", version="2.0.0", script=AGENT_SCRIPT, env={"MODE": "bad"}
        ),
    ).id
    nodes = []
    for name, env in [("dev-1", "dev"), ("dev-2", "dev"), ("stg-1", "staging"), ("stg-2", "staging")]:
        (tmp_path / name).mkdir()
        nodes.append(
            NodeAgentProcess(
                tmp_path / name, gateway, [], agent=name, env=env, options=["--role", "researcher"], name=name
            )
        )
    try:
        # Run it in dev: both dev agents fetch it, start it, report it in their heartbeats.
        result = _cli(gateway, "deploy", "researcher@1.0.0", "--env", "dev")
        assert result.exit_code == 0, result.output
        wait_for(_running(gateway, "dev", good), WAIT, "dev agents on 1.0.0")
        # The registry has it too, once the heartbeat that reported it is written.
        wait_for(
            lambda: gateway.get("/api/v1/agents/dev-1").json().get("release") == good,
            WAIT,
            "the registry to record dev-1's release",
        )

        # Staging: the soak gate fails first, then passes once the clock moved an hour on.
        early = _cli(gateway, "promote", "researcher@1.0.0", "--to", "staging")
        assert early.exit_code == 1 and "soak gate: live in dev for" in early.output, early.output
        clock.advance(HOUR + 1)
        check = {"release": good, "to": "staging", "check": True}
        wait_for(
            lambda: post(gateway.http_url, admin, "/api/v1/promotions", check).json()["passed"],
            WAIT,
            "every gate of 1.0.0 into staging (its tool results in dev)",
        )
        promoted = _cli(gateway, "promote", "researcher@1.0.0", "--to", "staging")
        assert promoted.exit_code == 0, promoted.output
        wait_for(_running(gateway, "staging", good), WAIT, "staging agents on 1.0.0")
        status = gateway.get("/api/v1/envs/staging/roles/researcher").json()
        assert status["progress"]["running"] == status["progress"]["total"] == 2

        # Parity: the same release everywhere, so no release differs.
        diff = gateway.get("/api/v1/envs/diff", a="dev", b="staging").json()
        assert [i for i in diff["items"] if i["area"] == "release"] == []

        # A rollback by hand in dev.
        post(
            gateway.http_url, admin, "/api/v1/deployments", {"release": fixed, "env": "dev"}
        ).raise_for_status()
        wait_for(_running(gateway, "dev", fixed), WAIT, "dev agents on 1.1.0")
        diff = gateway.get("/api/v1/envs/diff", a="dev", b="staging").json()
        release_items = [i for i in diff["items"] if i["area"] == "release"]
        assert [(i["a"], i["b"], i["flagged"]) for i in release_items] == [
            ("researcher@1.1.0", "researcher@1.0.0", False)
        ]
        back = _cli(gateway, "rollback", "researcher", "--env", "dev", "--reason", "by hand")
        assert back.exit_code == 0 and "rolled back" in back.output, back.output
        wait_for(_running(gateway, "dev", good), WAIT, "dev agents back on 1.0.0")

        # A release that loops trips ReasoningLoop during its rollout and is rolled back on its own.
        post(
            gateway.http_url, admin, "/api/v1/deployments", {"release": looping, "env": "dev"}
        ).raise_for_status()
        current = wait_for(
            lambda: (
                (d := gateway.get("/api/v1/envs/dev/roles/researcher").json()["deployment"])["kind"]
                == "auto_rollback"
                and d
            ),
            60,
            "the automatic rollback",
        )
        assert current["release"] == good and current["previous"] == looping
        assert "ReasoningLoop on dev-" in current["reason"]
        wait_for(_running(gateway, "dev", good), WAIT, "dev agents back on 1.0.0 after the loop")
        audit = gateway.get("/api/v1/audit", action="auto_rollback").json()["entries"]
        assert audit and audit[0]["target"] == "researcher@1.0.0" and audit[0]["actor"] == "rollout"
        history = [h["kind"] for h in gateway.get("/api/v1/envs/dev/roles/researcher").json()["history"]]
        assert history == ["auto_rollback", "deploy", "rollback", "deploy", "deploy"]
    finally:
        for node in nodes:
            node.close()
