"""Small HTTP helpers for the CLI commands that talk to a gateway."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import click
import httpx

from clawtrace.cli.options import CA_FILE_META
from clawtrace.protocol.client import http_base
from clawtrace.protocol.tls import (
    CA_FILE_ENV,
    TLSConfigError,
    client_ssl_context,
    explain_cert_error,
    find_cert_error,
    is_tls_url,
)

# What to do about a refusal, where the gateway's own message cannot know
# how the credential was given.
_HINTS = {
    401: "check --token / CLAWTRACE_TOKEN",
    403: "give a credential with that role with --token / CLAWTRACE_TOKEN",
}


class GatewayError(click.ClickException):
    """The gateway answered with an error; ``code`` is its machine-readable kind."""

    def __init__(self, status: int, code: str, message: str) -> None:
        hint = _HINTS.get(status)
        super().__init__(f"{status}: {message}" + (f" ({hint})" if hint else ""))
        self.status = status
        self.code = code
        self.detail = message


@contextlib.contextmanager
def when_missing(message: str) -> Iterator[None]:
    """Say ``message`` (what was not found and how to list what exists) for the gateway's 404."""
    try:
        yield
    except GatewayError as exc:
        if exc.status == 404:
            raise click.ClickException(message) from None
        raise


class CertificateRefused(httpx.ConnectError):
    """The gateway's TLS certificate failed verification; the message says what failed and what to do."""


class _VerifyingClient(httpx.Client):
    """Turns a certificate failure, wherever httpx wraps it, into an explaining ``CertificateRefused``."""

    def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        try:
            return super().send(request, **kwargs)
        except httpx.ConnectError as exc:
            cert_error = find_cert_error(exc)
            if cert_error is None:
                raise
            message = explain_cert_error(cert_error, str(request.url))
            raise CertificateRefused(message, request=request) from exc


class GatewayClient:
    def __init__(self, gateway: str, token: str, ca_file: str | None = None) -> None:
        self.base = http_base(gateway)
        self.token = token
        if ca_file is None:
            # --ca-file of gateway_options (cli/options.py), else the environment for commands without it.
            ctx = click.get_current_context(silent=True)
            ca_file = (ctx.meta.get(CA_FILE_META) if ctx is not None else None) or os.environ.get(CA_FILE_ENV)
        self.ca_file = ca_file or None
        # https:// (and wss:// for the live tail) verify the gateway's certificate: protocol/tls.py.
        try:
            self.ssl_context = client_ssl_context(self.ca_file) if is_tls_url(self.base) else None
        except TLSConfigError as exc:
            raise click.ClickException(str(exc)) from None
        self.http = _VerifyingClient(
            base_url=self.base,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30.0,
            verify=self.ssl_context or True,
        )

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params)

    def post(self, path: str, body: Any = None, **params: Any) -> Any:
        """POST ``body`` as JSON (no body when None)."""
        return self.request("POST", path, params, json=body)

    def put(self, path: str, content: bytes | str, content_type: str, **params: Any) -> Any:
        return self.request("PUT", path, params, content=content, headers={"Content-Type": content_type})

    def delete(self, path: str, **params: Any) -> Any:
        return self.request("DELETE", path, params)

    def request(self, method: str, path: str, params: dict[str, Any], **kwargs: Any) -> Any:
        """The decoded JSON answer; a GatewayError (a ClickException) for an error answer,
        a ClickException when the gateway cannot be reached."""
        try:
            response = self.http.request(
                method, path, params={k: v for k, v in params.items() if v is not None}, **kwargs
            )
        except CertificateRefused as exc:
            raise click.ClickException(str(exc)) from None
        except httpx.HTTPError as exc:
            if isinstance(exc, httpx.RemoteProtocolError) and self.ssl_context is None:
                raise click.ClickException(
                    f"the gateway at {self.base} did not answer HTTP ({exc}); if it serves TLS,"
                    " use an https:// URL (--gateway)"
                ) from None
            raise click.ClickException(
                f"cannot reach the gateway at {self.base} ({exc or type(exc).__name__});"
                " is `clawtrace up` running? (--gateway)"
            ) from None
        if response.status_code >= 400:
            code = "http_error"
            try:
                error = response.json()["error"]
                code, message = str(error.get("code", code)), str(error["message"])
            except (ValueError, KeyError, TypeError, AttributeError):
                message = response.text.strip() or response.reason_phrase
            raise GatewayError(response.status_code, code, message)
        return response.json()

    def live_url(self, **params: str | None) -> str:
        query = urlencode({k: v for k, v in params.items() if v})
        scheme, _, rest = self.base.partition("://")
        ws_base = ("wss" if scheme == "https" else "ws") + "://" + rest
        return f"{ws_base}/api/v1/live" + (f"?{query}" if query else "")
