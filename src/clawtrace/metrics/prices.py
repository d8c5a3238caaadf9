"""The per-model price table: tokens -> USD."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path

import msgspec

DEFAULT_PRICES_FILE = Path(__file__).with_name("prices.toml")


class ModelPrice(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """USD per million tokens."""

    input: float
    output: float
    cached_input: float | None = None

    def cost(self, input_tokens: int, output_tokens: int, cached_input_tokens: int = 0) -> float:
        cached = min(cached_input_tokens, input_tokens)
        cached_rate = self.input if self.cached_input is None else self.cached_input
        return (
            (input_tokens - cached) * self.input + cached * cached_rate + output_tokens * self.output
        ) / 1_000_000


class _PriceFile(msgspec.Struct, forbid_unknown_fields=True):
    models: dict[str, ModelPrice]


class PriceTable:
    """Looks a model up by exact id, else by the longest known prefix."""

    def __init__(self, prices: Mapping[str, ModelPrice]) -> None:
        self.prices = {name.lower(): price for name, price in prices.items()}
        self._by_length = sorted(self.prices, key=len, reverse=True)
        self._cache: dict[str, ModelPrice | None] = {}

    @classmethod
    def load(
        cls, path: Path = DEFAULT_PRICES_FILE, overrides: Mapping[str, ModelPrice] | None = None
    ) -> PriceTable:
        try:
            document = tomllib.loads(path.read_text())
            table = msgspec.convert(document, _PriceFile).models
        except (OSError, tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
            raise ValueError(f"cannot read the price table {path}: {exc}") from None
        return cls({**table, **(overrides or {})})

    def lookup(self, model: str) -> ModelPrice | None:
        key = model.lower()
        if key in self._cache:
            return self._cache[key]
        name = key.rsplit("/", 1)[-1]
        price = self.prices.get(name)
        if price is None:
            price = next((self.prices[p] for p in self._by_length if name.startswith(p)), None)
        if len(self._cache) < 10_000:
            self._cache[key] = price
        return price

    def cost(
        self, model: str, input_tokens: int, output_tokens: int, cached_input_tokens: int = 0
    ) -> float | None:
        """USD for one call, or None for a model the table does not know."""
        price = self.lookup(model)
        if price is None:
            return None
        return price.cost(input_tokens, output_tokens, cached_input_tokens)
