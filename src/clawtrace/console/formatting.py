"""How the console writes numbers and times: short, unit always shown, a dash for no value.

Registered as Jinja filters by ``pages.py``; times are UTC, the one clock every
region's on-call engineers share.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

NO_VALUE = "\N{EN DASH}"


def seconds(value: float | None) -> str:
    """A duration given in seconds: "12 s", "4.5 min", "3.2 h", "2.0 d"."""
    if value is None:
        return NO_VALUE
    if value < 60:
        return f"{value:.0f} s"
    if value < 3600:
        return f"{value / 60:.1f} min"
    if value < 86400:
        return f"{value / 3600:.1f} h"
    return f"{value / 86400:.1f} d"


def millis(value: float | None) -> str:
    """A duration given in milliseconds: "850 ms", "1.2 s"."""
    if value is None:
        return NO_VALUE
    if value < 1000:
        return f"{value:.0f} ms"
    return f"{value / 1000:.1f} s"


def percent(ratio: float | None) -> str:
    if ratio is None:
        return NO_VALUE
    return f"{ratio * 100:.0f}%"


def usd(value: float | None, digits: int = 2) -> str:
    if value is None:
        return NO_VALUE
    return f"${value:,.{digits}f}"


def number(value: float | None, digits: int = 0) -> str:
    if value is None:
        return NO_VALUE
    return f"{value:,.{digits}f}"


def mebibytes(value: float | None) -> str:
    if value is None:
        return NO_VALUE
    return f"{value / 1048576:,.0f} MiB"


def clock(epoch: float | None) -> str:
    """Time of day, UTC, to the second: "03:02:11"."""
    if epoch is None:
        return NO_VALUE
    return datetime.fromtimestamp(epoch, UTC).strftime("%H:%M:%S")


def timestamp(epoch: float | None) -> str:
    """Date and time, UTC: "2026-01-31 03:02:11Z"."""
    if epoch is None:
        return NO_VALUE
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def ago(epoch: float | None, now: float) -> str:
    """How long before ``now``: "12 s ago"; a moment ahead of ``now`` reads "now"."""
    if epoch is None:
        return NO_VALUE
    return "now" if epoch >= now else f"{seconds(now - epoch)} ago"


def iso_to_epoch(value: str) -> float:
    """An event's RFC 3339 ``ts`` as epoch seconds."""
    return datetime.fromisoformat(value).timestamp()


FILTERS: dict[str, Any] = {
    "seconds": seconds,
    "millis": millis,
    "percent": percent,
    "usd": usd,
    "number": number,
    "mebibytes": mebibytes,
    "clock": clock,
    "timestamp": timestamp,
}
