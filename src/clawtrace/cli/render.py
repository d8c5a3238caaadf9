"""How events look in a terminal (tail, replay)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from rich.text import Text

KIND_STYLES = {
    "log": "white",
    "thought": "magenta",
    "llm_call": "cyan",
    "tool_call": "yellow",
    "tool_result": "green",
    "heartbeat": "bright_black",
    "lifecycle": "blue",
    "policy": "bold red",
}


def _short(value: Any, limit: int = 200) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe(event: dict[str, Any], width: int = 200) -> Text:
    """The kind-specific part of a line, styled."""
    kind = event.get("kind", "?")
    if kind == "log":
        style = "red" if event.get("stream") == "stderr" else ""
        return Text(_short(event.get("line", ""), width), style=style)
    if kind == "thought":
        return Text(_short(event.get("text", ""), width), style="italic magenta")
    if kind == "llm_call":
        cost = event.get("cost_usd")
        parts = [
            f"{event.get('model')}",
            f"in={event.get('input_tokens')} out={event.get('output_tokens')}",
            f"{float(event.get('duration_ms', 0)) / 1000:.2f}s",
        ]
        if cost is not None:
            parts.append(f"${cost:.4f}")
        return Text("  ".join(parts), style="cyan")
    if kind == "tool_call":
        return Text(
            f"{event.get('tool')} {_short(event.get('args', {}), width)}  [{event.get('call_id')}]",
            style="yellow",
        )
    if kind == "tool_result":
        ok = bool(event.get("ok"))
        text = Text("ok" if ok else "FAILED", style="bold green" if ok else "bold red")
        text.append(f"  {float(event.get('duration_ms', 0)):.0f}ms  [{event.get('call_id')}]")
        if event.get("error"):
            text.append(f"  {_short(event['error'], width)}", style="red")
        elif event.get("output") is not None:
            text.append(f"  {_short(event['output'], width)}", style="bright_black")
        return text
    if kind == "heartbeat":
        cpu = event.get("cpu_percent")
        rss = event.get("rss_bytes")
        cpu_text = "-" if cpu is None else f"{cpu:.1f}%"
        rss_text = "-" if rss is None else f"{rss / 1_048_576:.1f} MiB"
        return Text(f"cpu {cpu_text}  rss {rss_text}", style="bright_black")
    if kind == "lifecycle":
        text = Text(str(event.get("state")), style="bold blue")
        if event.get("exit_code") is not None:
            text.append(f"  exit {event['exit_code']}")
        if event.get("reason"):
            text.append(f"  {event['reason']}")
        return text
    if kind == "policy":
        decision = str(event.get("decision"))
        style = "bold green" if decision == "allow" else "bold red"
        text = Text(decision.upper(), style=style)
        text.append(f"  {event.get('tool')}")
        if event.get("rule"):
            text.append(f"  rule={event['rule']}")
        if event.get("reason"):
            text.append(f"  {event['reason']}")
        return text
    return Text(_short(event, width))


def clock(ts: str | None) -> str:
    if not ts:
        return "--:--:--.---"
    try:
        moment = datetime.fromisoformat(ts)
    except ValueError:
        return ts
    return moment.strftime("%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def kind_label(kind: str) -> Text:
    return Text(f"{kind:<11}", style=KIND_STYLES.get(kind, ""))


def line(event: dict[str, Any], show_agent: bool = False) -> Text:
    text = Text(clock(event.get("ts")) + " ", style="bright_black")
    if show_agent:
        text.append(f"{event.get('agent', '?')} ", style="bold")
    kind = str(event.get("kind", "?"))
    if kind == "log":
        text.append(
            f"{event.get('stream', 'stdout'):<11}", style="red" if event.get("stream") == "stderr" else ""
        )
    else:
        text.append_text(kind_label(kind))
    text.append(" ")
    text.append_text(describe(event))
    return text
