"""``clawtrace replay``: step through one run of an agent, in order, with timings."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click
from rich.console import Console
from rich.text import Text

from clawtrace.cli import render
from clawtrace.cli.client import GatewayClient
from clawtrace.cli.options import gateway_options

REASONING_KINDS = ("thought", "llm_call", "tool_call", "tool_result", "policy", "lifecycle", "log")


def _seconds(ts: str) -> float:
    return datetime.fromisoformat(ts).timestamp()


def _load(client: GatewayClient, agent: str, session: str, kinds: tuple[str, ...]) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    after = 0
    while True:
        page = client.get(
            f"/api/v1/agents/{agent}/events",
            session=session,
            after_seq=after,
            limit=5000,
            kind=",".join(kinds),
        )
        events.extend(page["events"])
        if page["next_after_seq"] is None:
            return events
        after = page["next_after_seq"]


def _step_line(index: int, total: int, event: dict[str, Any], start: float, previous: float) -> Text:
    at = _seconds(event["ts"])
    text = Text(f"[{index + 1:>{len(str(total))}}/{total}] ", style="bold")
    text.append(f"+{at - start:9.3f}s ", style="bright_black")
    text.append(f"(Δ {at - previous:7.3f}s) ", style="bright_black")
    text.append_text(render.kind_label(str(event.get("kind"))))
    text.append(" ")
    text.append_text(render.describe(event))
    return text


@click.command()
@click.argument("agent")
@click.option("--session", default=None, help="Session id (see --list); default: the latest session.")
@click.option("--list", "list_sessions", is_flag=True, help="List the agent's sessions and exit.")
@click.option("--step", is_flag=True, help="Interactive: Enter = next, b = back, q = quit.")
@click.option("--heartbeats", is_flag=True, help="Include heartbeats (hidden by default).")
@gateway_options
def replay(
    agent: str,
    session: str | None,
    list_sessions: bool,
    step: bool,
    heartbeats: bool,
    gateway: str,
    token: str,
) -> None:
    """Replay one run (session) of AGENT: every thought, LLM call, tool call and
    result in order, with the time since the start and since the previous step.
    """
    client = GatewayClient(gateway, token)
    console = Console(highlight=False, soft_wrap=True)
    sessions = client.get(f"/api/v1/agents/{agent}/sessions")["sessions"]
    if list_sessions or not sessions:
        if not sessions:
            raise click.ClickException(f"agent {agent!r} has no stored sessions")
        for s in sessions:
            started = datetime.fromtimestamp(s["started"], UTC).strftime("%Y-%m-%d %H:%M:%S")
            seqs = f"seq {s['first_seq']}-{s['last_seq']}"
            console.print(f"{s['session']}  started {started}Z  {s['events']} events  {seqs}")
        return
    if session is None:
        session = sessions[-1]["session"]
        console.print(f"[bright_black]latest session of {agent}: {session}[/]")
    elif not any(s["session"] == session for s in sessions):
        raise click.ClickException(f"agent {agent!r} has no session {session!r} (see --list)")
    kinds = REASONING_KINDS + (("heartbeat",) if heartbeats else ())
    events = _load(client, agent, session, kinds)
    if not events:
        raise click.ClickException("that session has no events of the selected kinds")
    start = _seconds(events[0]["ts"])
    total = len(events)
    if not step:
        previous = start
        for index, event in enumerate(events):
            console.print(_step_line(index, total, event, start, previous))
            previous = _seconds(event["ts"])
        last = _seconds(events[-1]["ts"])
        console.print(f"[bold]{total} steps over {last - start:.3f}s[/]")
        return
    index = 0
    while 0 <= index < total:
        previous = _seconds(events[index - 1]["ts"]) if index else start
        console.print(_step_line(index, total, events[index], start, previous))
        answer = click.prompt("", default="", show_default=False, prompt_suffix="").strip().lower()
        if answer == "q":
            break
        index = max(0, index - 1) if answer == "b" else index + 1
