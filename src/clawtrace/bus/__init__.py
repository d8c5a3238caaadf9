"""Message bus between gateway stages: in-memory (embedded) today, NATS JetStream next."""

from clawtrace.bus.base import Bus, Handler, Subscription, subject_matches
from clawtrace.bus.memory import MemoryBus


def open_bus(url: str) -> Bus:
    if url in ("", "memory://"):
        return MemoryBus()
    raise ValueError(f"unsupported bus URL {url!r}: use memory:// (NATS arrives with scale mode)")


__all__ = ["Bus", "Handler", "MemoryBus", "Subscription", "open_bus", "subject_matches"]
