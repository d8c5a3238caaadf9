"""The one exception the bus raises: what went wrong with NATS and what to do about it."""

from __future__ import annotations


class BusError(Exception):
    """The bus cannot do what was asked; the message says why and what to do."""
