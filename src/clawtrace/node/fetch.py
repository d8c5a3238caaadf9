"""Fetching a release from the gateway: ``GET /v1/releases/{id}`` with the node agent's credential.

The gateway answers with the release exactly as ``clawtrace.envs.release.Release``
encodes (``{"id", "manifest", "files"}``); 404 when it has no such release,
403 when this credential's environment was never given it. Network errors
and 5xx answers are retried a few times with backoff; anything else is
final for this attempt, with a message that says what to do.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from typing import Final

import httpx
import msgspec

from clawtrace.envs.release import MAX_RELEASE_BYTES, Release
from clawtrace.protocol.client import http_base
from clawtrace.protocol.tls import context_for, explain_cert_error, find_cert_error

log = logging.getLogger("clawtrace.node.fetch")

RELEASES_PATH: Final = "/v1/releases/"
REQUEST_TIMEOUT: Final = 15.0
ATTEMPTS: Final = 4
FIRST_DELAY: Final = 0.5
MAX_DELAY: Final = 8.0
# The files may be up to MAX_RELEASE_BYTES; JSON escaping and the manifest add to that.
MAX_ANSWER_BYTES: Final = 2 * MAX_RELEASE_BYTES + (1 << 20)


class FetchError(Exception):
    """The release could not be fetched; the message says why and what to do."""


class ReleaseFetcher:
    def __init__(
        self,
        gateway: str,
        token: str | None,
        *,
        env: str,
        timeout: float = REQUEST_TIMEOUT,
        attempts: int = ATTEMPTS,
        first_delay: float = FIRST_DELAY,
        transport: httpx.AsyncBaseTransport | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.base = http_base(gateway)
        self.token = token
        self.env = env
        self.timeout = timeout
        self.attempts = max(attempts, 1)
        self.first_delay = first_delay
        self.transport = transport
        # https:// verifies the gateway's certificate like the uplink does (protocol/tls.py).
        self.ssl_context = ssl_context or context_for(self.base, None)

    def url_of(self, release_id: str) -> str:
        return f"{self.base}{RELEASES_PATH}{release_id}"

    async def fetch(self, release_id: str) -> Release:
        url = self.url_of(release_id)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        delay = self.first_delay
        last = ""
        async with httpx.AsyncClient(
            headers=headers,
            timeout=self.timeout,
            transport=self.transport,
            follow_redirects=False,
            verify=self.ssl_context or True,
        ) as client:
            for attempt in range(1, self.attempts + 1):
                try:
                    status, body = await _get(client, url)
                except httpx.HTTPError as exc:
                    cert_error = find_cert_error(exc)
                    if cert_error is not None:
                        # Retrying will not make the certificate trusted.
                        raise FetchError(explain_cert_error(cert_error, url)) from None
                    last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                else:
                    if status < 500:
                        return self._answer(release_id, url, status, body)
                    last = f"HTTP {status}: {_error_message(body)}"
                if attempt < self.attempts:
                    log.info("fetching %s failed (%s); trying again in %.1f s", url, last, delay)
                    await asyncio.sleep(delay * (0.75 + random.random() / 2))
                    delay = min(delay * 2, MAX_DELAY)
        raise FetchError(
            f"cannot fetch release {release_id[:12]} from {self.base} after {self.attempts} attempts "
            f"({last}): check that the gateway is up and reachable from this node"
        )

    def _answer(self, release_id: str, url: str, status: int, body: bytes) -> Release:
        short = release_id[:12]
        if status == 200:
            try:
                release = msgspec.json.decode(body, type=Release)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise FetchError(
                    f"the gateway's answer for release {short} is not a release ({exc}): "
                    "is --gateway the ClawTrace gateway, and are both the same version?"
                ) from None
            return release
        message = _error_message(body)
        if status == 401:
            raise FetchError(
                f"the gateway refused this node agent's credential when fetching release {short} "
                f"(401: {message}): pass a valid agent credential with --token"
            )
        if status == 403:
            raise FetchError(
                f"the gateway refused release {short} to this node agent (403: {message}): environment "
                f"{self.env!r} was never given it; deploy or promote it there first (clawtrace deploy / "
                f"clawtrace promote ROLE@VERSION), or check that --token is a credential of {self.env!r}"
            )
        if status == 404:
            raise FetchError(
                f"the gateway has no release {short} (404: {message}): it was never created there; "
                "create it (clawtrace release create DIR) and deploy it again"
            )
        raise FetchError(f"GET {url} answered HTTP {status}: {message}")


async def _get(client: httpx.AsyncClient, url: str) -> tuple[int, bytes]:
    """Status and body, reading at most MAX_ANSWER_BYTES (a bigger answer is not a release)."""
    async with client.stream("GET", url) as response:
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > MAX_ANSWER_BYTES:
                raise FetchError(
                    f"the answer of {url} is larger than {MAX_ANSWER_BYTES >> 20} MiB: not a release"
                )
        return response.status_code, bytes(body)


def _error_message(body: bytes) -> str:
    """The ``error.message`` of a gateway error body, else the start of the body."""
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError:
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])[:300]
        detail = data.get("detail")
        if isinstance(detail, str):
            return detail[:300]
    text = body.decode("utf-8", errors="replace").strip()
    return text[:300] or "(no body)"
