"""Small HTTP helpers for the CLI commands that read from a gateway."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import click
import httpx

from clawtrace.protocol.client import http_base


class GatewayClient:
    def __init__(self, gateway: str, token: str) -> None:
        self.base = http_base(gateway)
        self.token = token
        self.http = httpx.Client(
            base_url=self.base, headers={"Authorization": f"Bearer {token}"}, timeout=30.0
        )

    def get(self, path: str, **params: Any) -> Any:
        try:
            response = self.http.get(path, params={k: v for k, v in params.items() if v is not None})
        except httpx.HTTPError as exc:
            raise click.ClickException(
                f"cannot reach the gateway at {self.base} ({exc}); is `clawtrace up` running? (--gateway)"
            ) from None
        if response.status_code >= 400:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text
            raise click.ClickException(f"{response.status_code}: {message}")
        return response.json()

    def live_url(self, **params: str | None) -> str:
        query = urlencode({k: v for k, v in params.items() if v})
        scheme, _, rest = self.base.partition("://")
        ws_base = ("wss" if scheme == "https" else "ws") + "://" + rest
        return f"{ws_base}/api/v1/live" + (f"?{query}" if query else "")
