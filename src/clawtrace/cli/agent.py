"""``clawtrace agent restart|stop|quarantine|release AGENT``: act on one agent
through the gateway, as an alert's remediation would (and audited the same way)."""

from __future__ import annotations

from urllib.parse import quote

import click

from clawtrace.cli.client import GatewayClient, GatewayError
from clawtrace.cli.options import operator_gateway_options

ACTIONS: dict[str, tuple[str, str]] = {
    "restart": (
        "Restart an agent's process.",
        "Restart AGENT's process through its node agent (`clawtrace run`); it must be connected.",
    ),
    "stop": (
        "Stop an agent's process.",
        "Stop AGENT's process through its node agent; it stays stopped until a restart"
        " command (or its node agent is restarted). It must be connected.",
    ),
    "quarantine": (
        "Quarantine an agent (deny-all tool policy) until released.",
        "Quarantine AGENT: recorded at the gateway (the fleet shows it as quarantined) and"
        " sent to its node agent, which records it and reports it; an offline agent learns it"
        " when it reconnects. The process keeps running for inspection. Tool calls are refused"
        " once the policy engine enforces it (docs/alerts.md).",
    ),
    "release": (
        "Lift an agent's quarantine.",
        "Lift AGENT's quarantine (recorded at the gateway, sent to its node agent now or when"
        " it reconnects).",
    ),
}


@click.group(short_help="Restart, stop, quarantine or release an agent.")
def agent() -> None:
    """Act on one agent through the gateway. Every action is recorded in the
    audit log (`clawtrace audit`) with who asked and why. Needs an operator
    credential for the agent's environment.

    \b
      clawtrace agent restart a-0417 --reason "stuck after the deploy"
      clawtrace agent quarantine a-0417 --reason "deleting files it should not"
      clawtrace agent release a-0417
    """


def _run(action: str, name: str, reason: str | None, gateway: str, token: str) -> None:
    client = GatewayClient(gateway, token)
    try:
        body = client.post(
            f"/api/v1/agents/{quote(name, safe='')}/commands", {"action": action, "reason": reason}
        )
    except GatewayError as exc:
        if exc.code == "not_connected":
            raise click.ClickException(
                f"{exc.detail} (`clawtrace top` shows which agents are connected)"
            ) from None
        if exc.status == 404:
            raise click.ClickException(f"{exc.detail}; `clawtrace top` lists the agents") from None
        raise
    click.echo(f"{action} {name}: {body['detail']}")


def _add(action: str) -> None:
    short_help, help_text = ACTIONS[action]

    @agent.command(action, short_help=short_help, help=help_text + " Needs an operator credential.")
    @click.argument("name", metavar="AGENT")
    @click.option(
        "--reason",
        default=None,
        help="Why; kept in the audit log and sent to the node agent. Default: who asked.",
    )
    @operator_gateway_options
    def command(name: str, reason: str | None, gateway: str, token: str) -> None:
        _run(action, name, reason, gateway, token)


for _action in ACTIONS:
    _add(_action)
