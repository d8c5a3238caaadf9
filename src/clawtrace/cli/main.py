"""Entry point: ``clawtrace`` and its commands.

Commands are imported only when used, so `clawtrace run` (started once per
agent) does not pay for importing the gateway.
"""

from __future__ import annotations

import importlib

import click

from clawtrace import __version__

COMMANDS: dict[str, str] = {
    "up": "clawtrace.cli.up:up",
    "worker": "clawtrace.cli.worker:worker",
    "demo": "clawtrace.cli.demo:demo",
    "token": "clawtrace.cli.token:token",
    "run": "clawtrace.cli.run:run",
    "tail": "clawtrace.cli.tail:tail",
    "replay": "clawtrace.cli.replay:replay",
    "simulate": "clawtrace.cli.simulate:simulate",
    "top": "clawtrace.cli.top:top",
    "stats": "clawtrace.cli.stats:stats",
    "alerts": "clawtrace.cli.alerts:alerts",
    "audit": "clawtrace.cli.alerts:audit",
    "agent": "clawtrace.cli.agent:agent",
    "policy": "clawtrace.cli.policy:policy",
    "approvals": "clawtrace.cli.policy:approvals",
    "release": "clawtrace.cli.release:release",
    "deploy": "clawtrace.cli.envs:deploy",
    "promote": "clawtrace.cli.envs:promote",
    "rollback": "clawtrace.cli.envs:rollback",
    "env": "clawtrace.cli.envs:env",
    "import": "clawtrace.cli.import_:import_",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, _, attribute = target.partition(":")
        command = getattr(importlib.import_module(module_name), attribute)
        assert isinstance(command, click.Command)
        return command


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="clawtrace")
def cli() -> None:
    """ClawTrace: see what every agent in your fleet does and thinks.

    \b
    Start here:
      clawtrace demo                  gateway + console + 50 simulated agents
      clawtrace up                    run the gateway (127.0.0.1:7420, SQLite in ./.clawtrace)
      clawtrace token create ...      credentials for people and node agents
      clawtrace run ... -- CMD        run CMD as a supervised, observed agent
      clawtrace tail AGENT -f         its stdout/stderr, thoughts and tool calls, live
      clawtrace replay AGENT          step through one run's reasoning
      clawtrace top                   live fleet table: cost, failures, latency, heartbeats
      clawtrace stats AGENT           one agent's numbers and a chart of the last hour
      clawtrace alerts                what is firing now (history, ack, silence, rules: --help)
      clawtrace agent quarantine A    restart, stop, quarantine or release an agent
      clawtrace policy eval ...       what tool policy decides for a call (check, test, apply)
      clawtrace approvals             tool calls waiting for a person; approve or reject them
      clawtrace release create DIR    an immutable agent release (list, show, diff A B)
      clawtrace deploy R --env dev    make release R the one its role's agents run in dev
      clawtrace promote R --to prod   dev -> staging -> prod through gates (rollback, env diff)
      clawtrace audit                 who restarted, quarantined or silenced what, and why
      clawtrace import openclaw DIR   OpenClaw transcripts as sessions (idempotent; -f: follow)
    """


def main() -> None:
    cli()
