"""``clawtrace deploy|promote|rollback|env``: releases through dev -> staging -> prod."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from clawtrace.cli.client import GatewayClient, GatewayError
from clawtrace.cli.options import gateway_options, operator_gateway_options
from clawtrace.cli.tables import DefaultGroup, new_table, plain_console, print_json, when

_json_option = click.option("--json", "as_json", is_flag=True, help="Print the gateway's answer as JSON.")
_reason_option = click.option("--reason", default="", help="Why (kept in the audit log).")


def _print_gates(gates: list[dict[str, Any]]) -> None:
    table = new_table("GATE", "", "DETAIL")
    for gate in gates:
        table.add_row(gate["gate"], "pass" if gate["passed"] else "FAIL", gate["detail"])
    plain_console().print(table)


def _deployment_line(deployment: dict[str, Any]) -> str:
    previous = f" (was {deployment['previous_ref']})" if deployment.get("previous_ref") else ""
    where = f"{deployment['role']} in {deployment['env']}"
    return f"{deployment['ref']} is now the desired release of {where}{previous}"


@click.command()
@click.argument("release")
@click.option("--env", required=True, help="The first environment of the order (e.g. dev).")
@_reason_option
@_json_option
@operator_gateway_options
def deploy(release: str, env: str, reason: str, as_json: bool, gateway: str, token: str) -> None:
    """Make RELEASE (ROLE@VERSION, id or id prefix) the desired release of its role in the first
    environment; its node agents (`clawtrace run --role ROLE`) switch to it. Later environments
    get it by `clawtrace promote`.

    \b
      clawtrace deploy researcher@1.4.0 --env dev
    """
    body = GatewayClient(gateway, token).post(
        "/api/v1/deployments", {"release": release, "env": env, "reason": reason}
    )
    if as_json:
        print_json(body)
        return
    click.echo(_deployment_line(body["deployment"]))
    click.echo(f"follow the rollout: clawtrace env status {body['deployment']['role']} --env {env}")


@click.command()
@click.argument("release")
@click.option("--to", "target", required=True, help="The environment to promote into (the next one).")
@click.option("--check", is_flag=True, help="Only show the gates (viewer is enough); change nothing.")
@click.option(
    "--approve",
    is_flag=True,
    help="Record your approval (admin of the target environment), then promote if every other gate passes.",
)
@_reason_option
@_json_option
@operator_gateway_options
def promote(
    release: str,
    target: str,
    check: bool,
    approve: bool,
    reason: str,
    as_json: bool,
    gateway: str,
    token: str,
) -> None:
    """Copy RELEASE, live in the environment before --to, into --to if its gates pass
    (soak time, no firing alerts, tool success, cost per action; an admin's approval for prod).

    \b
      clawtrace promote researcher@1.4.0 --to staging --check    the gates, nothing changes
      clawtrace promote researcher@1.4.0 --to staging
      clawtrace promote researcher@1.4.0 --to prod --approve     (admin) approve and promote

    Exit status 1 when a gate fails (each failed gate says why).
    """
    client = GatewayClient(gateway, token)
    if approve:
        client.post("/api/v1/promotions/approvals", {"release": release, "to": target, "reason": reason})
        if not as_json:
            click.echo(f"approved {release} for {target}")
    try:
        body = client.post(
            "/api/v1/promotions", {"release": release, "to": target, "reason": reason, "check": check}
        )
    except GatewayError as exc:
        if exc.code != "gate_failed":
            raise
        # The gates, each with its reason, then the error.
        gates = client.post("/api/v1/promotions", {"release": release, "to": target, "check": True})["gates"]
        if as_json:
            print_json({"promoted": False, "gates": gates})
        else:
            _print_gates(gates)
        raise click.ClickException(f"not promoted: {exc.detail}") from None
    if as_json:
        print_json(body)
        return
    _print_gates(body["gates"])
    if check:
        verdict = "every gate passes" if body["passed"] else "a gate fails"
        click.echo(f"{body['ref']} -> {target}: {verdict} (nothing changed: --check)")
        if not body["passed"]:
            sys.exit(1)
        return
    click.echo(_deployment_line(body["deployment"]))


@click.command()
@click.argument("role")
@click.option("--env", required=True, help="The environment to roll back.")
@click.option("--to", "to", default=None, help="A release that ran there before (default: the previous one).")
@_reason_option
@_json_option
@operator_gateway_options
def rollback(
    role: str, env: str, to: str | None, reason: str, as_json: bool, gateway: str, token: str
) -> None:
    """Go back to the release ROLE ran in ENV before the current one (or to --to).

    \b
      clawtrace rollback researcher --env prod
      clawtrace rollback researcher --env prod --to researcher@1.3.0
    """
    body = GatewayClient(gateway, token).post(
        "/api/v1/rollbacks", {"role": role, "env": env, "to": to, "reason": reason}
    )
    if as_json:
        print_json(body)
        return
    click.echo("rolled back: " + _deployment_line(body["deployment"]))


@click.group(cls=DefaultGroup, default="list")
def env() -> None:
    """The environments releases are promoted through.

    \b
      clawtrace env                         the order, each role's release and rollout progress
      clawtrace env status ROLE --env prod  one role's rollout: agents, canaries, history
      clawtrace env diff staging prod       what differs (releases, policy, alert rules, settings)
    """


@env.command("list")
@_json_option
@gateway_options
def list_envs(as_json: bool, gateway: str, token: str) -> None:
    """The promotion order and the desired release of every role, with rollout progress."""
    body = GatewayClient(gateway, token).get("/api/v1/envs")
    if as_json:
        print_json(body)
        return
    console = plain_console()
    console.print("environments: " + " -> ".join(body["order"]))
    table = new_table("ENV", "ROLE", "RELEASE", "PHASE", "PROGRESS", "SINCE", "BY")
    for environment in body["environments"]:
        if not environment["readable"]:
            table.add_row(environment["name"], "(not readable with this credential)", "", "", "", "", "")
            continue
        if not environment["deployments"]:
            table.add_row(environment["name"], "-", "-", "", "", "", "")
        for deployment in environment["deployments"]:
            progress = deployment.get("progress") or {}
            table.add_row(
                environment["name"],
                deployment["role"],
                deployment["ref"],
                deployment["phase"],
                f"{progress.get('running', 0)}/{progress.get('total', 0)}",
                when(deployment["created"]),
                f"{deployment['kind']} by {deployment['actor']}",
            )
    console.print(table)


@env.command("status")
@click.argument("role")
@click.option("--env", "env_name", required=True, help="The environment.")
@_json_option
@gateway_options
def status(role: str, env_name: str, as_json: bool, gateway: str, token: str) -> None:
    """ROLE's desired release in --env, how far its rollout got, and its history."""
    body = GatewayClient(gateway, token).get(f"/api/v1/envs/{env_name}/roles/{role}")
    if as_json:
        print_json(body)
        return
    console = plain_console()
    deployment = body["deployment"]
    if deployment is None:
        console.print(f"no release of {role} was deployed in {env_name}")
        return
    console.print(f"{role} in {env_name}: {deployment['ref']} ({deployment['phase']})")
    console.print(f"  {body['progress']['text']}")
    if deployment["canary"]:
        console.print(f"  canaries: {', '.join(deployment['canary'])}")
    if deployment["detail"]:
        console.print(f"  {deployment['detail']}")
    agents = new_table("AGENT", "RELEASE", "")
    for agent in body["agents"]:
        agents.add_row(agent["agent"], agent["ref"] or "-", "canary" if agent["canary"] else "")
    console.print(agents)
    history = new_table("WHEN", "KIND", "RELEASE", "PREVIOUS", "BY", "REASON")
    for item in body["history"]:
        history.add_row(
            when(item["created"]),
            item["kind"],
            item["ref"],
            item["previous_ref"] or "-",
            item["actor"],
            item["reason"],
        )
    console.print(history)


def _shown(value: Any) -> str:
    if value is None:
        return "-"
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


@env.command("diff")
@click.argument("a")
@click.argument("b")
@_json_option
@gateway_options
def diff(a: str, b: str, as_json: bool, gateway: str, token: str) -> None:
    """What differs between environments A and B, side by side.

    Divergence that is not a pending promotion is flagged (!); differing
    settings are shown, not flagged. Exit status 1 when something is flagged.
    """
    body = GatewayClient(gateway, token).get("/api/v1/envs/diff", a=a, b=b)
    if as_json:
        print_json(body)
    else:
        console = plain_console()
        if not body["items"]:
            console.print(f"{a} and {b} do not differ")
            return
        table = new_table("", "AREA", "WHAT", a.upper(), b.upper(), "NOTE")
        for item in body["items"]:
            table.add_row(
                "!" if item["flagged"] else "",
                item["area"],
                item["key"],
                _shown(item["a"]),
                _shown(item["b"]),
                item["note"],
            )
        console.print(table)
        flagged = body["flagged"]
        console.print(
            f"{flagged} flagged difference(s)" if flagged else "nothing flagged (pending promotions only)"
        )
    if body["flagged"]:
        sys.exit(1)
