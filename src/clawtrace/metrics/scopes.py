"""Scopes: which agents a number is about (one agent, an environment, ... the fleet)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

FLEET = "fleet"


def agent_scope(agent: str) -> str:
    return f"agent:{agent}"


def env_scope(env: str) -> str:
    return f"env:{env}"


def region_scope(region: str) -> str:
    return f"region:{region}"


def env_region_scope(env: str, region: str) -> str:
    return f"env_region:{env}/{region}"


def label_scope(key: str, value: str) -> str:
    return f"label:{key}={value}"


def group_scopes(env: str, region: str, labels: Mapping[str, str]) -> Iterator[str]:
    """Every group an agent with these attributes counts in."""
    yield FLEET
    yield env_scope(env)
    yield region_scope(region)
    yield env_region_scope(env, region)
    for key, value in labels.items():
        yield label_scope(key, value)


def scope_for(
    *, agent: str | None = None, env: str | None = None, region: str | None = None, label: str | None = None
) -> str:
    """The scope a query names; the most specific one wins."""
    if agent:
        return agent_scope(agent)
    if label:
        key, sep, value = label.partition("=")
        if not sep or not key:
            raise ValueError(f"label must be KEY=VALUE, not {label!r}")
        return label_scope(key, value)
    if env and region:
        return env_region_scope(env, region)
    if env:
        return env_scope(env)
    if region:
        return region_scope(region)
    return FLEET
