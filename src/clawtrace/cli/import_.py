"""``clawtrace import``: agent history from other tools, as ClawTrace sessions.

``clawtrace import openclaw PATH [--follow]`` reads OpenClaw transcripts
(clawtrace.openclaw) and sends them to the gateway over NDJSON.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from clawtrace.cli.client import GatewayClient
from clawtrace.cli.options import DEFAULT_GATEWAY, ca_file_option
from clawtrace.cli.tables import new_table, plain_console
from clawtrace.openclaw.importer import (
    DEFAULT_TEMPLATE,
    Importer,
    ImportFailed,
    NdjsonSender,
    Report,
    kinds_line,
    summary_rows,
    to_json_bytes,
)
from clawtrace.openclaw.mapping import DEFAULT_MAX_OUTPUT, Limits
from clawtrace.openclaw.transcripts import describe_path


@click.group("import")
def import_() -> None:
    """Import agent history from other tools as ClawTrace sessions.

    \b
      clawtrace import openclaw ~/.openclaw       every OpenClaw agent's transcripts
      clawtrace import openclaw ~/.openclaw -f    ... and keep importing new records
    """


def _default_path() -> str:
    return os.environ.get("OPENCLAW_STATE_DIR") or str(Path.home() / ".openclaw")


class _Progress:
    """A transient progress display on stderr, for a terminal only."""

    def __init__(self, enabled: bool) -> None:
        self.progress: Progress | None = None
        self.tasks: dict[str, TaskID] = {}
        if enabled:
            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
            )

    def __enter__(self) -> _Progress:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def update(self, phase: str, done: int, total: int | None) -> None:
        if self.progress is None:
            return
        label = "reading transcripts (records)" if phase == "read" else f"sending {phase[5:]} (events)"
        task = self.tasks.get(label)
        if task is None:
            task = self.tasks[label] = self.progress.add_task(label, total=total)
        self.progress.update(task, completed=done, total=total)


def _print_summary(report: Report, path: Path, gateway: str | None, env: str | None) -> None:
    console = plain_console()
    if gateway is None:
        where = " (dry run: nothing sent)"
    else:
        where = f" into {gateway}" + (f", environment {env}" if env else "")
    console.print(f"OpenClaw transcripts from {describe_path(path)}{where}")
    if not report.agents:
        console.print("no transcripts found")
    else:
        columns = ["agent", "openclaw agent", "sessions", "records", "events"]
        if gateway is not None:
            columns += ["stored", "already stored", "not stored"]
        table = new_table(*columns)
        for row in summary_rows(report):
            table.add_row(*row[: len(columns)])
        console.print(table)
    console.print(f"events: {kinds_line(report.events)}")
    if report.not_mapped:
        parts = ", ".join(f"{n} {what}" for what, n in report.not_mapped.most_common())
        console.print(f"not mapped (no ClawTrace counterpart): {parts}")
    if report.skipped:
        parts = ", ".join(f"{n} ({why})" for why, n in report.skipped.most_common())
        console.print(f"skipped: {parts}")
    for message in report.errors:
        click.echo(f"error: {message}", err=True)


@import_.command("openclaw")
@click.argument("path", required=False, type=click.Path(path_type=Path))
@click.option(
    "--gateway",
    envvar="CLAWTRACE_GATEWAY",
    default=DEFAULT_GATEWAY,
    show_default=True,
    help="Gateway base URL. Env: CLAWTRACE_GATEWAY.",
)
@click.option(
    "--token",
    envvar="CLAWTRACE_TOKEN",
    help="An agent credential (or admin) for the environment. Env: CLAWTRACE_TOKEN. "
    "Not needed with --dry-run.",
)
@ca_file_option
@click.option("--env", default=None, help="Environment of the imported agents. Default: the credential's.")
@click.option(
    "--agent",
    "template",
    default=DEFAULT_TEMPLATE,
    show_default=True,
    metavar="NAME",
    help="ClawTrace agent id; {id} is the OpenClaw agent id (characters outside letters, digits, "
    "'_:@-' become '-'). Without {id} PATH must hold a single OpenClaw agent.",
)
@click.option(
    "--follow", "-f", is_flag=True, help="After importing, keep importing new records until Ctrl-C."
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.05),
    default=1.0,
    show_default=True,
    help="With --follow: seconds between looks for new records.",
)
@click.option(
    "--settle",
    type=click.FloatRange(min=0),
    default=2.0,
    show_default=True,
    help="With --follow: hold records this many seconds before sending, so that records of other "
    "sessions written at the same moment are sent in order.",
)
@click.option(
    "--max-output",
    type=click.IntRange(min=100),
    default=DEFAULT_MAX_OUTPUT,
    show_default=True,
    help="Characters of a tool result's output to keep.",
)
@click.option("--dry-run", is_flag=True, help="Read and map everything, print the summary, send nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress display and no per-batch lines.")
def openclaw(
    path: Path | None,
    gateway: str,
    token: str | None,
    ca_file: str | None,
    env: str | None,
    template: str,
    follow: bool,
    interval: float,
    settle: float,
    max_output: int,
    dry_run: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Import OpenClaw transcripts: each OpenClaw session becomes a ClawTrace session.

    PATH is an OpenClaw state dir (default: $OPENCLAW_STATE_DIR, else ~/.openclaw; every
    agent in it), one agent's dir (agents/<id>), its agent/openclaw-agent.sqlite, or one
    session's .jsonl (OpenClaw before 2026.7.2). The database is only read, never locked:
    OpenClaw may keep running.

    Thinking becomes `thought`, each model answer an `llm_call` (tokens, cost), tool calls and
    results `tool_call` / `tool_result`, with OpenClaw's timestamps. Running it again stores
    nothing twice: sequence numbers come from the records themselves.

    \b
      clawtrace import openclaw ~/.openclaw --env dev
      clawtrace import openclaw ~/.openclaw/agents/main -f --agent 'laptop-{id}'
      clawtrace import openclaw session.jsonl --agent openclaw-main --dry-run
    """
    path = path or Path(_default_path())
    if not dry_run and not token:
        raise click.UsageError(
            "--token (or CLAWTRACE_TOKEN) is required to send: an agent credential for the environment "
            "(clawtrace token create --env dev --role agent); or use --dry-run"
        )
    err = Console(stderr=True, highlight=False, markup=False, emoji=False)
    sender = None
    client = None
    if not dry_run:
        assert token is not None
        client = GatewayClient(gateway, token, ca_file)

        def waiting(problem: str, delay: float) -> None:
            if not quiet:
                err.print(f"{problem}; retrying in {delay:.1f} s")

        sender = NdjsonSender(
            client.http,
            env=env,
            retry_for=math.inf if follow else 60.0,
            on_wait=waiting,
        )

    def sent(agent: str, events: int, sessions: int) -> None:
        if follow and not quiet:
            err.print(f"{datetime.now():%H:%M:%S}  {agent}: +{events} events ({sessions} session(s))")

    def warning(message: str) -> None:
        if not as_json:
            err.print(f"warning: {message}")

    interactive = sys.stderr.isatty() and not quiet and not as_json
    progress = _Progress(interactive and not follow)
    importer = Importer(
        path,
        sender,
        template=template,
        follow=follow,
        settle=settle,
        limits=Limits(output=max_output),
        on_progress=progress.update,
        on_sent=sent,
        on_warning=warning,
    )
    try:
        with progress:
            report = _follow(importer, interval, err, quiet) if follow else importer.run()
    except ImportFailed as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        if client is not None:
            client.http.close()
    if as_json:
        click.echo(to_json_bytes(report).decode())
    else:
        _print_summary(report, path, None if dry_run else client.base if client else gateway, env)
    if not report.ok:
        sys.exit(1)


def _follow(importer: Importer, interval: float, err: Console, quiet: bool) -> Report:
    stop = threading.Event()

    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous: dict[signal.Signals, Any] = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, handle)
    try:
        if not quiet:
            err.print(f"importing {describe_path(importer.path)}; following new records (Ctrl-C stops)")
        return importer.run_follow(stop, interval)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
