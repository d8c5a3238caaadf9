"""Message bus between gateway stages: in-memory (embedded mode) or NATS (scale mode)."""

from clawtrace.bus.base import Bus, Handler, Subscription, subject_matches
from clawtrace.bus.errors import BusError
from clawtrace.bus.memory import MemoryBus

# URL schemes of the NATS bus (nats-py itself is imported only when one is opened).
NATS_SCHEMES = ("nats", "tls")


def is_nats_url(url: str) -> bool:
    return "://" in url and url.partition("://")[0] in NATS_SCHEMES


def open_bus(url: str, name: str = "clawtrace") -> Bus:
    """``memory://`` (the default: one process) or ``nats://HOST:PORT`` (scale mode; not yet connected:
    call ``start()``). ``name`` is how the connection shows up in the NATS server's monitoring."""
    if url in ("", "memory://"):
        return MemoryBus()
    if is_nats_url(url):
        try:
            from clawtrace.bus.nats import NatsBus
        except ImportError as exc:
            raise BusError(f"the NATS bus needs nats-py ({exc}): pip install 'clawtrace[nats]'") from None
        from clawtrace.bus.url import parse_bus_url

        return NatsBus(parse_bus_url(url).server, name=name)
    raise BusError(
        f"unsupported bus URL {url!r}: use memory:// (one process) or nats://HOST:PORT (scale mode)"
    )


def check_bus(url: str) -> None:
    """Fail early, before serving, with what to do: a bad URL, NATS unreachable, JetStream off."""
    if not is_nats_url(url):
        open_bus(url)  # memory:// needs no check; anything else is refused with the supported schemes
        return
    import asyncio

    try:
        from clawtrace.bus.scale import EventStreamLink
    except ImportError as exc:
        raise BusError(f"the NATS bus needs nats-py ({exc}): pip install 'clawtrace[nats]'") from None

    async def probe() -> None:
        link = await EventStreamLink.open(url, "clawtrace-check")
        await link.close()

    asyncio.run(probe())


__all__ = [
    "NATS_SCHEMES",
    "Bus",
    "BusError",
    "Handler",
    "MemoryBus",
    "Subscription",
    "check_bus",
    "is_nats_url",
    "open_bus",
    "subject_matches",
]
