"""Options shared by the commands that talk to a running gateway or a data dir."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from clawtrace.protocol.tls import CA_FILE_ENV, TLSConfigError, client_ssl_context

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_GATEWAY = "http://127.0.0.1:7420"
# Where the client commands' --ca-file waits for GatewayClient (cli/client.py).
CA_FILE_META = "clawtrace.ca_file"
CA_FILE_HELP = (
    "A private CA's certificate (PEM) to trust, besides the system's, for an https:// or wss:// "
    f"gateway. Env: {CA_FILE_ENV}. Verification cannot be turned off (docs/deployment.md, TLS)."
)


def _check_ca_file(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if not value:
        return None
    try:
        client_ssl_context(value)
    except TLSConfigError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
    return value


def _keep_ca_file(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    ctx.meta[CA_FILE_META] = _check_ca_file(ctx, param, value)


def ca_file_option(func: F) -> F:
    """``--ca-file`` (env CLAWTRACE_CA_FILE), checked, passed to the command as ``ca_file``."""
    return click.option(
        "--ca-file",
        envvar=CA_FILE_ENV,
        default=None,
        metavar="PEM",
        callback=_check_ca_file,
        help=CA_FILE_HELP,
    )(func)


def _gateway_options(role: str) -> Callable[[F], F]:
    def decorate(func: F) -> F:
        # Not passed to the command: GatewayClient finds it in the context.
        func = click.option(
            "--ca-file",
            envvar=CA_FILE_ENV,
            default=None,
            metavar="PEM",
            expose_value=False,
            callback=_keep_ca_file,
            help=CA_FILE_HELP,
        )(func)
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


# --gateway, --token (with the role the command needs in the help) and --ca-file.
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
