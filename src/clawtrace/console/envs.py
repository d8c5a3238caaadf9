"""The environments page: each role's desired release per environment, in promotion order, with
its rollout, the gates of its next promotion, and a diff of two environments.

The board (``/envs/live``) is a fragment htmx fetches again every few
seconds. Releases and rollout progress are what ``GET /api/v1/envs``
answers and the diff is ``GET /api/v1/envs/diff`` (their functions are
called directly). The gates are the check ``POST /api/v1/promotions`` makes
with ``"check": true``: the deployment service's own promotion, asked to
change nothing. Deploy, promote, approve and roll back go through the
console's copies of the API routes (``actions.py``), which decide who may.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.exceptions import HTTPException

from clawtrace.access import Credential
from clawtrace.alerts.rules_file import format_duration
from clawtrace.console.pages import api_json, api_message, render, signed_in
from clawtrace.envs.gates import GateResult
from clawtrace.gateway import envs_api, releases_api
from clawtrace.gateway.deployments import DeploymentRefused, DeploymentService

router = APIRouter(include_in_schema=False)

REFRESH_SECONDS = 5
# Releases offered in the deploy box's list, newest first.
RELEASES_OFFERED = 50


@dataclass(frozen=True, slots=True)
class Promotion:
    """The release live in the environment before ``target``, and whether it may enter ``target``."""

    release: str
    ref: str
    source: str
    target: str
    gates: list[GateResult]
    # The API's refusal when the promotion cannot even be checked (the message a Promote would get).
    refused: str | None = None

    @property
    def passed(self) -> bool:
        return self.refused is None and all(gate.passed for gate in self.gates)

    @property
    def failed(self) -> int:
        return sum(1 for gate in self.gates if not gate.passed)

    @property
    def awaits_approval(self) -> bool:
        return any(gate.gate == "approval" and not gate.passed for gate in self.gates)


@dataclass(frozen=True, slots=True)
class Column:
    """One environment of the promotion order."""

    name: str
    previous: str | None
    readable: bool
    settings: dict[str, Any]

    @property
    def gates_text(self) -> str:
        """The gates into this environment in a few words (the first environment has none)."""
        gates = self.settings.get("gates") or {}
        if not gates:
            return "entry: releases are deployed here"
        parts = [f"soak {format_duration(gates['soak_seconds'])}"]
        if gates.get("no_firing_alerts"):
            parts.append("no firing alerts")
        if gates.get("min_tool_success"):
            parts.append(f"tool success ≥ {gates['min_tool_success']:.0%}")
        if gates.get("max_cost_per_action") is not None:
            parts.append(f"≤ ${gates['max_cost_per_action']:.4f}/action")
        if gates.get("approval"):
            parts.append("admin approval")
        return "gates: " + " · ".join(parts)

    @property
    def rollout_text(self) -> str:
        rollout = self.settings.get("rollout") or {}
        if not rollout.get("canary"):
            text = "rollout: every agent at once"
        else:
            text = f"rollout: canary {rollout['canary']:.0%} for {format_duration(rollout['canary_seconds'])}"
        if rollout.get("auto_rollback"):
            text += f", auto rollback (watch {format_duration(rollout['watch_seconds'])})"
        return text


@dataclass(frozen=True, slots=True)
class Cell:
    """One role in one environment: its desired release and what waits to be promoted into it."""

    deployment: dict[str, Any] | None
    progress: dict[str, Any] | None
    promotion: Promotion | None
    # The environment before runs the same release: nothing waits.
    in_step_with: str | None


@dataclass(frozen=True, slots=True)
class Board:
    entry: str
    columns: list[Column]
    roles: list[str]
    cells: dict[tuple[str, str], Cell]

    def cell(self, role: str, env: str) -> Cell | None:
        return self.cells.get((role, env))

    @property
    def readable(self) -> list[str]:
        return [column.name for column in self.columns if column.readable]


async def check_promotion(
    service: DeploymentService, credential: Credential, release: str, source: str, target: str
) -> Promotion:
    """What ``POST /api/v1/promotions`` with ``check`` answers: the gates, or why it cannot be asked.

    Only for a ``target`` the person can read: the API route's check needs viewer there.
    """
    ref = service.ref(release) or release
    try:
        outcome = await service.promote(release, target, credential.actor, check_only=True)
    except DeploymentRefused as exc:
        return Promotion(release, ref, source, target, exc.gates or [], refused=str(exc))
    return Promotion(release, ref, source, target, outcome.gates)


async def board(request: Request, credential: Credential) -> Board:
    listed = await api_json(envs_api.list_environments(request, credential))
    service: DeploymentService = request.app.state.deployments
    columns = [Column(e["name"], e["previous"], e["readable"], e["settings"]) for e in listed["environments"]]
    # Unreadable environments come back without deployments: nothing of them is shown.
    deployed: dict[tuple[str, str], dict[str, Any]] = {
        (d["role"], e["name"]): d for e in listed["environments"] for d in e["deployments"]
    }
    roles = sorted({role for role, _ in deployed})
    cells: dict[tuple[str, str], Cell] = {}
    for role in roles:
        for column in columns:
            if not column.readable:
                continue
            here = deployed.get((role, column.name))
            before = deployed.get((role, column.previous)) if column.previous is not None else None
            promotion: Promotion | None = None
            in_step: str | None = None
            if before is not None and column.previous is not None:
                if here is not None and here["release"] == before["release"]:
                    in_step = column.previous
                else:
                    promotion = await check_promotion(
                        service, credential, before["release"], column.previous, column.name
                    )
            progress = here.get("progress") if here is not None else None
            cells[(role, column.name)] = Cell(here, progress, promotion, in_step)
    return Board(entry=listed["order"][0], columns=columns, roles=roles, cells=cells)


async def release_refs(request: Request, credential: Credential) -> list[str]:
    """ROLE@VERSION of the newest releases, for the deploy box's suggestions."""
    listed = await api_json(releases_api.list_releases(request, credential))
    return [f"{r['role']}@{r['version']}" for r in listed["releases"][:RELEASES_OFFERED]]


async def env_diff(request: Request, credential: Credential, a: str, b: str) -> dict[str, Any]:
    """``GET /api/v1/envs/diff`` for the two environments picked, or the API's reason it cannot."""
    if not a or not b:
        return {"diff": None, "diff_problem": "A diff compares two environments; your credential reads one."}
    try:
        answer = await api_json(envs_api.env_diff(request, a, b, credential))
    except HTTPException as exc:
        return {"diff": None, "diff_problem": api_message(exc)}
    return {"diff": answer, "diff_problem": None}


@router.get("/envs", response_class=HTMLResponse)
async def environments_page(request: Request) -> Response:
    credential = signed_in(request)
    if isinstance(credential, Response):
        return credential
    view = await board(request, credential)
    readable = view.readable
    # By default the first two environments the person can read, in promotion order.
    a = request.query_params.get("a") or (readable[0] if readable else "")
    b = request.query_params.get("b") or next((env for env in readable if env != a), "")
    may_deploy = credential.has_role("operator", view.entry)
    context: dict[str, Any] = {
        "board": view,
        "refresh_seconds": REFRESH_SECONDS,
        "a": a,
        "b": b,
        "releases": await release_refs(request, credential) if may_deploy else [],
    }
    context.update(await env_diff(request, credential, a, b))
    return render(request, "envs.html", credential, context, nav="envs")


@router.get("/envs/live", response_class=HTMLResponse)
async def board_fragment(request: Request) -> Response:
    """The board alone; htmx fetches it again every few seconds and after every button."""
    credential = signed_in(request)
    if isinstance(credential, Response):
        return credential
    return render(request, "envs_board.html", credential, {"board": await board(request, credential)})
