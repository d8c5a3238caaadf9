"""``clawtrace tail``: an agent's stdout, stderr, thoughts and tool calls, live."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any

import click
import msgspec
import websockets
from rich.console import Console

from clawtrace.cli import render
from clawtrace.cli.client import GatewayClient
from clawtrace.cli.options import gateway_options
from clawtrace.protocol import KINDS
from clawtrace.protocol.tls import explain_cert_error


def _history(client: GatewayClient, agent: str, lines: int, kinds: list[str]) -> list[dict[str, Any]]:
    record = client.get(f"/api/v1/agents/{agent}")
    after = max(0, int(record["last_seq"]) - lines) if not kinds else 0
    events: list[dict[str, Any]] = []
    while True:
        page = client.get(
            f"/api/v1/agents/{agent}/events", after_seq=after, limit=5000, kind=",".join(kinds) or None
        )
        events.extend(page["events"])
        if page["next_after_seq"] is None:
            break
        after = page["next_after_seq"]
    return events[-lines:] if lines else []


async def _follow(
    client: GatewayClient,
    console: Console,
    agent: str | None,
    env: str | None,
    kinds: list[str],
    lines: int,
) -> None:
    url = client.live_url(agent=agent, env=env, kind=",".join(kinds) or None)
    headers = {"Authorization": f"Bearer {client.token}"}
    last_seq: dict[str, int] = {}
    first = True
    delay = 0.5
    while True:
        try:
            async with websockets.connect(
                url, additional_headers=headers, max_size=None, ssl=client.ssl_context
            ) as ws:
                delay = 0.5
                # Subscribe first, then fill in history, so nothing falls in between.
                if agent is not None:
                    backlog = _history(client, agent, lines if first else 5000, kinds)
                    for event in backlog:
                        if event["seq"] > last_seq.get(agent, 0):
                            console.print(render.line(event))
                            last_seq[agent] = event["seq"]
                first = False
                async for frame in ws:
                    message = msgspec.json.decode(frame)
                    if message.get("type") == "error":
                        console.print(f"[yellow]gateway: {message.get('code')}: {message.get('message')}[/]")
                        if message.get("code") in ("unauthorized", "forbidden", "invalid_parameter"):
                            raise click.ClickException(str(message.get("message")))
                        continue
                    for event in message.get("events", []):
                        name = event.get("agent", "?")
                        if event["seq"] <= last_seq.get(name, 0):
                            continue
                        last_seq[name] = event["seq"]
                        console.print(render.line(event, show_agent=agent is None))
        except ssl.SSLCertVerificationError as exc:
            raise click.ClickException(explain_cert_error(exc, url)) from None
        except (OSError, websockets.exceptions.WebSocketException) as exc:
            console.print(f"[yellow]live connection lost ({exc}); reconnecting in {delay:.0f}s[/]")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 15)


@click.command()
@click.argument("agent", required=False)
@click.option("-f", "--follow", is_flag=True, help="Keep printing events as they arrive.")
@click.option("-n", "--lines", default=50, show_default=True, help="How many recent events to show first.")
@click.option(
    "--kind", "kinds", multiple=True, type=click.Choice(KINDS), help="Only these kinds (repeatable)."
)
@click.option("--env", default=None, help="With --follow and no AGENT: every agent of this environment.")
@gateway_options
def tail(
    agent: str | None,
    follow: bool,
    lines: int,
    kinds: tuple[str, ...],
    env: str | None,
    gateway: str,
    token: str,
) -> None:
    """Show an agent's stdout/stderr, thoughts, LLM and tool calls.

    \b
      clawtrace tail a-1                 # the last 50 events
      clawtrace tail a-1 -f              # ... then follow live
      clawtrace tail a-1 -f --kind thought --kind tool_call
      clawtrace tail --env prod -f       # every agent in prod, live
    """
    if agent is None and not follow:
        raise click.UsageError("give an AGENT, or use --follow (with --env) to watch many agents")
    client = GatewayClient(gateway, token)
    console = Console(highlight=False, soft_wrap=True)
    if not follow:
        assert agent is not None
        for event in _history(client, agent, lines, list(kinds)):
            console.print(render.line(event))
        return
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_follow(client, console, agent, env, list(kinds), lines))
