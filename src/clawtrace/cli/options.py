"""Options shared by the commands that talk to a running gateway or a data dir."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_GATEWAY = "http://127.0.0.1:7420"


def _gateway_options(role: str) -> Callable[[F], F]:
    def decorate(func: F) -> F:
        func = click.option(
            "--token",
            envvar="CLAWTRACE_TOKEN",
            required=True,
            help=f"API credential ({role} role or above). Env: CLAWTRACE_TOKEN.",
        )(func)
        func = click.option(
            "--gateway",
            envvar="CLAWTRACE_GATEWAY",
            default=DEFAULT_GATEWAY,
            show_default=True,
            help="Gateway base URL. Env: CLAWTRACE_GATEWAY.",
        )(func)
        return func

    return decorate


# --gateway and --token, with the role the command needs in the help.
gateway_options = _gateway_options("viewer")
operator_gateway_options = _gateway_options("operator")
admin_gateway_options = _gateway_options("admin")


def data_dir_option(func: F) -> F:
    return click.option(
        "--data-dir",
        envvar="CLAWTRACE_DATA_DIR",
        default=".clawtrace",
        show_default=True,
        type=click.Path(file_okay=False),
        help="Where the embedded gateway keeps its SQLite store. Env: CLAWTRACE_DATA_DIR.",
    )(func)
