"""Entry point: ``clawtrace`` and its command groups."""

from __future__ import annotations

import click

from clawtrace import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="clawtrace")
def cli() -> None:
    """ClawTrace: see what every agent in your fleet does and thinks.

    Start a gateway with `clawtrace up`, run agents under `clawtrace run`,
    watch them with `clawtrace tail` and `clawtrace replay`, or try it all at
    once with `clawtrace demo`.
    """


def _register() -> None:
    from clawtrace.cli.demo import demo
    from clawtrace.cli.replay import replay
    from clawtrace.cli.run import run
    from clawtrace.cli.simulate import simulate
    from clawtrace.cli.tail import tail
    from clawtrace.cli.token import token
    from clawtrace.cli.up import up

    for command in (up, demo, token, run, tail, replay, simulate):
        cli.add_command(command)


def main() -> None:
    _register()
    cli()
