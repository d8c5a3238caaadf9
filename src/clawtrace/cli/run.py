"""``clawtrace run``: supervise one agent process and stream it to a gateway."""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from pathlib import Path

import click
import msgspec

from clawtrace.cli.options import ca_file_option
from clawtrace.node.agent import ROLE_LABEL, GatewayRefused, NodeAgent, NodeConfig
from clawtrace.node.hooks import DEFAULT_TIMEOUT as DEFAULT_HOOK_TIMEOUT
from clawtrace.node.spool import SpoolError
from clawtrace.node.supervisor import Backoff, RestartPolicy, SpawnError
from clawtrace.protocol.messages import Hello

EXIT_USAGE = 2


def _parse_labels(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE (example: --label team=search)")
        labels[key] = value
    return labels


def default_spool_dir(agent: str) -> Path:
    # Agent ids may contain '/' or other characters a path cannot; keep the
    # directory name recognisable but safe.
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", agent).lstrip(".") or "agent"
    return Path(".clawtrace") / "spool" / safe


def _positive(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if value <= 0:
        raise click.BadParameter("must be greater than 0")
    return value


def _check_identity(
    agent: str, env: str, region: str, labels: dict[str, str], release: str | None, role: str | None = None
) -> None:
    # The gateway rejects a malformed hello and the node agent would retry
    # forever; say what is wrong now instead.
    try:
        identity = {"agent": agent, "env": env, "region": region, "labels": labels, "release": release}
        msgspec.convert({**identity, "role": role}, Hello)
    except msgspec.ValidationError as exc:
        text = str(exc)
        hint = ""
        if "$.role" in text:
            hint = (
                f"--role {role!r} is not a role name: lower-case letters, digits, '-' and '_', starting "
                "with a letter (the `role` of the releases to run, e.g. researcher)"
            )
        elif "$.agent" in text:
            hint = (
                f"--agent {agent!r} is not a valid agent id: use letters, digits, '_', ':', '@' and '-', "
                "starting with a letter or digit"
            )
        elif "$.env" in text:
            hint = f"--env {env!r} is not a valid environment name: use letters, digits, '_' and '-'"
        raise click.UsageError(hint or f"invalid agent identity: {text}") from None


def _check_mode(
    role: str | None, command: tuple[str, ...], labels: dict[str, str], release: str | None
) -> None:
    """A command of its own, or a role's releases: exactly one of the two."""
    if role is None:
        if not command:
            raise click.UsageError(
                "nothing to run: give the command after `--` (clawtrace run ... -- python my_agent.py), "
                "or --role ROLE to run the releases the gateway deploys for that role"
            )
        return
    if command:
        raise click.UsageError(
            f"with --role the release's own `command` runs: drop `-- {' '.join(command)}`, or drop "
            "--role to run that command yourself"
        )
    if release is not None:
        raise click.UsageError(
            "with --role the gateway says which release runs: drop --release (it is reported for you)"
        )
    labelled = labels.get(ROLE_LABEL)
    if labelled is not None and labelled != role:
        raise click.UsageError(
            f"--label role={labelled} contradicts --role {role}: the tool policy would see one role and "
            "the gateway deploy the other; drop the label (--role sets it)"
        )


@click.command(
    "run",
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="""\b
Examples:
  clawtrace run --agent a-1 --env dev --region eu-west-1 \\
      --gateway ws://127.0.0.1:7420 --token "$TOKEN" -- python my_agent.py
  CLAWTRACE_GATEWAY=ws://gw:7420 CLAWTRACE_TOKEN=... \\
      clawtrace run --agent a-2 --env prod --label team=search -- ./agent --verbose
  # whatever release of role researcher is deployed to dev (clawtrace deploy researcher@1.4.0 --env dev)
  CLAWTRACE_TOKEN=... VAULT_ADDR=https://vault:8200 VAULT_TOKEN=... \\
      clawtrace run --role researcher --env dev --agent r-1 --gateway ws://gw:7420

\b
Exit status: the command's own exit status when it ends and is not
restarted (128+N if it was killed by signal N), 2 when the gateway refuses
the credential or the options are wrong, 127/126 when COMMAND cannot be run.
With --role it runs until SIGTERM or SIGINT, whatever the releases do.
""",
)
@click.option("--agent", required=True, help="Agent id, unique in the fleet (e.g. a-0417).")
@click.option("--env", "env_name", required=True, help="Environment the agent belongs to (e.g. dev).")
@click.option("--region", default="", help="Region label (e.g. eu-west-1).")
@click.option(
    "--label",
    "labels",
    multiple=True,
    callback=_parse_labels,
    metavar="KEY=VALUE",
    help="Extra label; repeat for several.",
)
@click.option("--release", default=None, help="Release id the agent runs (content hash or name).")
@click.option(
    "--role",
    default=None,
    metavar="ROLE",
    help="Run the releases the gateway deploys for this role in --env, instead of a COMMAND: fetched, "
    "verified, started in <spool-dir>/releases/<id>/ with their [env] and secrets, and replaced on the "
    "next deploy (docs/releases.md). Also the `role` label that tool policy sees.",
)
@click.option(
    "--cwd",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=None,
    help="Directory COMMAND runs in. [default: the current directory; with --role: the release's directory]",
)
@click.option(
    "--hook-timeout",
    type=float,
    default=DEFAULT_HOOK_TIMEOUT,
    show_default=True,
    callback=_positive,
    help="With --role: seconds a release's tool hook gets to answer before the call is denied. The SDK "
    "waits 10 s for a decision, so keep it well below that.",
)
@click.option(
    "--gateway",
    envvar="CLAWTRACE_GATEWAY",
    default="ws://127.0.0.1:7420",
    show_default=True,
    help="Gateway URL (ws:// or wss://). Env: CLAWTRACE_GATEWAY.",
)
@click.option(
    "--token",
    envvar="CLAWTRACE_TOKEN",
    default=None,
    help="Agent credential from `clawtrace token create --role agent`. Env: CLAWTRACE_TOKEN "
    "(preferred: a command line is visible to other users in `ps`). Not passed on to COMMAND.",
)
@ca_file_option
@click.option(
    "--spool-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where events wait for the gateway's ack. [default: ./.clawtrace/spool/<agent>]",
)
@click.option(
    "--heartbeat-interval",
    type=float,
    default=10.0,
    show_default=True,
    callback=_positive,
    help="Seconds between heartbeats (with the command's CPU and memory).",
)
@click.option(
    "--restart",
    "restart_policy",
    type=click.Choice([p.value for p in RestartPolicy]),
    default=RestartPolicy.ON_FAILURE.value,
    show_default=True,
    help="When to restart COMMAND after it exits on its own.",
)
@click.option(
    "--backoff-initial",
    type=float,
    default=10.0,
    show_default=True,
    callback=_positive,
    help="Seconds before the first restart; doubles on each crash.",
)
@click.option(
    "--backoff-max",
    type=float,
    default=300.0,
    show_default=True,
    callback=_positive,
    help="Longest wait between restarts, in seconds.",
)
@click.option(
    "--healthy-reset",
    type=float,
    default=600.0,
    show_default=True,
    callback=_positive,
    help="A run this many seconds long resets the restart backoff.",
)
@click.option(
    "--stop-timeout",
    type=float,
    default=10.0,
    show_default=True,
    callback=_positive,
    help="Seconds COMMAND gets to exit after SIGTERM before it is killed.",
)
@click.option(
    "--drain-timeout",
    type=float,
    default=5.0,
    show_default=True,
    help="On exit, seconds to wait for the gateway to ack spooled events (the rest stay spooled).",
)
@click.option(
    "--reconnect-max",
    type=float,
    default=10.0,
    show_default=True,
    callback=_positive,
    help="Longest wait between attempts to reach the gateway, in seconds.",
)
@click.option(
    "--echo/--no-echo",
    default=True,
    show_default=True,
    help="Also print COMMAND's stdout/stderr here.",
)
@click.option(
    "--workspace",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The agent's own directory for tool policy: paths inside it count as the workspace. "
    "[default: the directory COMMAND runs in]",
)
@click.option(
    "--policy-default",
    type=click.Choice(["allow", "deny"]),
    default="allow",
    show_default=True,
    help="Decision for tool calls while no policy bundle has reached this node agent "
    "(none configured for the environment yet). Decisions are recorded either way.",
)
@click.option(
    "--shell-policy/--no-shell-policy",
    default=False,
    show_default=True,
    help="Put sh and bash shims first on COMMAND's PATH (and SHELL): every `sh -c CMD` is checked "
    "against the tool policy (as tool 'exec') before it runs; a refusal exits 126.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="Verbosity of the node agent's own messages (on stderr).",
)
@click.argument("command", nargs=-1, required=False, type=click.UNPROCESSED, metavar="[-- COMMAND [ARGS]...]")
def run(
    agent: str,
    env_name: str,
    region: str,
    labels: dict[str, str],
    release: str | None,
    role: str | None,
    cwd: Path | None,
    hook_timeout: float,
    gateway: str,
    token: str | None,
    ca_file: str | None,
    spool_dir: Path | None,
    heartbeat_interval: float,
    restart_policy: str,
    backoff_initial: float,
    backoff_max: float,
    healthy_reset: float,
    stop_timeout: float,
    drain_timeout: float,
    reconnect_max: float,
    echo: bool,
    workspace: Path | None,
    policy_default: str,
    shell_policy: bool,
    log_level: str,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND as a supervised agent and stream what it does to the gateway.

    COMMAND's stdout and stderr lines, the events it reports through the SDK
    (`from clawtrace import sdk`), heartbeats with its CPU and memory, and
    its starts, exits and restarts are written to a local spool and sent to
    the gateway. COMMAND keeps running while the gateway is unreachable; the
    spool is sent when it is back. SIGTERM and SIGINT are passed on to
    COMMAND. Put `--` before COMMAND so its options are not read as ours.

    Tool policy is enforced here, with the environment's bundle from the
    gateway (kept in the spool directory for restarts): the SDK asks before
    every tool call, other languages ask with `curl --unix-socket
    "$CLAWTRACE_SOCKET" http://localhost/v1/authorize -d '{"tool": ...}'`,
    and --shell-policy checks shell commands. Give the agent its role with
    --label role=NAME.

    With --role ROLE (and no COMMAND) the node agent runs the release the
    gateway deploys for ROLE in --env: until the first one arrives it
    reports heartbeats and waits; each deploy is fetched, verified and
    started in place of the previous one; the release's policy and tool
    hooks apply on top of the environment's. The running release is kept in
    the spool directory and started again at once after a restart.
    """
    logging.basicConfig(
        level=log_level.upper(),
        stream=sys.stderr,
        format=f"clawtrace[{agent}] %(levelname)s %(message)s",
    )
    _check_identity(agent, env_name, region, labels, release, role)
    _check_mode(role, command, labels, release)
    if role is not None:
        labels = {**labels, ROLE_LABEL: role}
    if workspace is not None and not workspace.is_dir():
        raise click.BadParameter(
            f"{workspace} is not a directory; create it or point --workspace at the agent's directory",
            param_hint="--workspace",
        )
    if backoff_max < backoff_initial:
        raise click.BadParameter(
            f"--backoff-max ({backoff_max:g}) is smaller than --backoff-initial ({backoff_initial:g})",
            param_hint="--backoff-max",
        )
    if not token:
        click.echo(
            "clawtrace run: warning: no --token (or CLAWTRACE_TOKEN) given; a gateway that requires "
            "credentials will refuse this agent. Create one with "
            f"`clawtrace token create --env {env_name} --role agent`.",
            err=True,
        )
    config = NodeConfig(
        agent=agent,
        env=env_name,
        command=list(command),
        gateway=gateway,
        spool_dir=spool_dir if spool_dir is not None else default_spool_dir(agent),
        token=token or None,
        region=region,
        labels=labels,
        release=release,
        heartbeat_interval=heartbeat_interval,
        restart=RestartPolicy(restart_policy),
        backoff=Backoff(initial=backoff_initial, maximum=backoff_max, healthy_reset=healthy_reset),
        stop_timeout=stop_timeout,
        drain_timeout=max(drain_timeout, 0.0),
        reconnect_max=reconnect_max,
        echo=echo,
        workspace=str(workspace.resolve()) if workspace is not None else None,
        policy_default="deny" if policy_default == "deny" else "allow",
        shell_policy=shell_policy,
        cwd=str(cwd.resolve()) if cwd is not None else None,
        role=role,
        hook_timeout=hook_timeout,
        ca_file=ca_file,
    )
    try:
        status = asyncio.run(NodeAgent(config).run())
    except GatewayRefused as exc:
        click.echo(
            f"clawtrace run: the gateway at {gateway} refused agent {agent!r} in env {env_name!r} ({exc}).\n"
            "  The credential is missing, wrong, revoked or for another environment. Create an agent "
            f"credential with `clawtrace token create --env {env_name} --role agent` and pass it with "
            "--token or CLAWTRACE_TOKEN. The command was stopped.",
            err=True,
        )
        sys.exit(EXIT_USAGE)
    except SpoolError as exc:
        click.echo(f"clawtrace run: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    except SpawnError as exc:
        click.echo(f"clawtrace run: {exc}. Check the command after `--` and your PATH.", err=True)
        sys.exit(exc.exit_status)
    sys.exit(status)


if __name__ == "__main__":  # `python -m clawtrace.cli.run`, without the other commands
    run(prog_name="clawtrace run")
