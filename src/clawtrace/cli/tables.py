"""Output shared by the commands that list things (alerts, audit, policy, approvals)."""

from __future__ import annotations

import json
import os
from datetime import datetime
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.table import Table


class DefaultGroup(click.Group):
    """A group that runs its ``default`` command when given only options (or
    nothing), so that ``clawtrace alerts --env prod`` lists alerts while
    ``clawtrace alerts history`` still reaches the subcommand. A word that is
    no command stays an error ("No such command"), not a stray argument."""

    def __init__(self, *args: Any, default: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.default = default
        self.no_args_is_help = False

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0].startswith("-") and args[0] not in ctx.help_option_names):
            args = [self.default, *args]
        return super().parse_args(ctx, args)


def plain_console() -> Console:
    # No markup: names, reasons, commands and details come from users and agents,
    # and "[critical] disk full" or "rm -rf [a-z]*" must print as written.
    console = Console(highlight=False, markup=False, emoji=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        # Piped: no terminal width to respect; keep each row on one line for grep.
        console = Console(highlight=False, markup=False, emoji=False, width=240)
    return console


def new_table(*columns: str) -> Table:
    out = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, header_style="bold")
    for column in columns:
        out.add_column(column, overflow="fold")
    return out


def print_json(body: Any) -> None:
    click.echo(json.dumps(body, indent=2))


def when(ts: float | None) -> str:
    """A moment in local time; the date only when it is not today."""
    if ts is None:
        return "-"
    moment = datetime.fromtimestamp(ts)
    if moment.date() == datetime.now().date():
        return moment.strftime("%H:%M:%S")
    return moment.strftime("%Y-%m-%d %H:%M:%S")
