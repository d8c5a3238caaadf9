"""The ordered list of environments a release is promoted through (dev -> staging -> prod)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from clawtrace.envs.settings import EnvironmentSettings, GateSettings, RolloutSettings

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class UnknownEnvironment(Exception):
    """An environment that is not in the promotion order."""


@dataclass(frozen=True)
class Environments:
    order: tuple[str, ...]
    settings: Mapping[str, EnvironmentSettings] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = check_order(self.order)
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def entry(self) -> str:
        """Where releases come in (``clawtrace deploy``); every other one is reached by promotion."""
        return self.order[0]

    def _known(self, env: str) -> int:
        try:
            return self.order.index(env)
        except ValueError:
            raise UnknownEnvironment(
                f"unknown environment {env!r}: the environments are {' -> '.join(self.order)} "
                "(gateway setting environment_order)"
            ) from None

    def check(self, env: str) -> str:
        self._known(env)
        return env

    def previous(self, env: str) -> str | None:
        index = self._known(env)
        return self.order[index - 1] if index else None

    def before(self, a: str, b: str) -> bool:
        """Whether ``a`` comes before ``b`` in the order."""
        return self._known(a) < self._known(b)

    def of(self, env: str) -> EnvironmentSettings:
        return self.settings.get(env) or EnvironmentSettings()

    def gates(self, env: str) -> GateSettings:
        return self.of(env).gates

    def rollout(self, env: str) -> RolloutSettings:
        return self.of(env).rollout

    def needs_approval(self, env: str) -> bool:
        approval = self.gates(env).approval
        return env == self.order[-1] if approval is None else approval


def check_order(order: Sequence[str]) -> list[str]:
    problems = []
    if not order:
        problems.append(
            "environment_order is empty: list at least one environment, e.g. ['dev', 'staging', 'prod']"
        )
    for name in order:
        if not _NAME.match(name):
            problems.append(
                f"environment_order: {name!r} is not an environment name (letters, digits, '_', '-')"
            )
    duplicates = sorted({name for name in order if order.count(name) > 1})
    if duplicates:
        problems.append(f"environment_order names {', '.join(duplicates)} more than once")
    return problems
