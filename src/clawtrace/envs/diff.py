"""What differs between two environments: releases per role, policy, alert rules, settings.

Divergence is flagged unless it is a pending promotion: a role whose release
in the later environment is behind one the earlier environment runs (it has
been, or will be, promoted), or a role the later environment does not run
yet. Settings are expected to differ (prod has stricter gates), so they are
shown but not flagged.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from typing import Any

import msgspec


class RoleRelease(msgspec.Struct, kw_only=True, frozen=True):
    id: str
    ref: str


class EnvSnapshot(msgspec.Struct, kw_only=True):
    env: str
    releases: dict[str, RoleRelease]
    # Every release id that was ever desired there (to tell a pending promotion from drift).
    history: Set[str]
    policy_version: str | None
    policy_files: dict[str, str]
    # Rule name -> the rule as plain data (without where it was read from).
    rules: dict[str, dict[str, Any]]
    settings: dict[str, Any]


class DiffItem(msgspec.Struct, kw_only=True):
    area: str  # release | policy | rule | setting
    key: str
    a: Any
    b: Any
    note: str
    flagged: bool


class EnvDiff(msgspec.Struct, kw_only=True):
    a: str
    b: str
    items: list[DiffItem]

    @property
    def flagged(self) -> list[DiffItem]:
        return [item for item in self.items if item.flagged]


def diff(a: EnvSnapshot, b: EnvSnapshot, a_first: bool) -> EnvDiff:
    """``a_first``: ``a`` comes before ``b`` in the promotion order."""
    items = _releases(a, b, a_first) + _policy(a, b) + _rules(a, b) + _settings(a, b)
    return EnvDiff(a=a.env, b=b.env, items=items)


def _releases(a: EnvSnapshot, b: EnvSnapshot, a_first: bool) -> list[DiffItem]:
    early, late = (a, b) if a_first else (b, a)
    items = []
    for role in sorted(set(a.releases) | set(b.releases)):
        ra, rb = a.releases.get(role), b.releases.get(role)
        if ra == rb:
            continue
        in_early, in_late = early.releases.get(role), late.releases.get(role)
        if in_late is None:
            pending, note = True, f"not in {late.env} yet: pending promotion"
        elif in_early is None:
            pending, note = False, f"runs in {late.env} but not in {early.env}"
        elif in_early.id not in late.history and in_late.id in early.history:
            pending, note = True, f"{in_early.ref} awaits promotion to {late.env}"
        else:
            pending, note = False, f"{late.env} runs {in_late.ref}, which is not on the way from {early.env}"
        items.append(
            DiffItem(
                area="release",
                key=role,
                a=ra.ref if ra else None,
                b=rb.ref if rb else None,
                note=note,
                flagged=not pending,
            )
        )
    return items


def _policy(a: EnvSnapshot, b: EnvSnapshot) -> list[DiffItem]:
    if a.policy_files == b.policy_files:
        return []
    changed = sorted(
        path
        for path in set(a.policy_files) | set(b.policy_files)
        if a.policy_files.get(path) != b.policy_files.get(path)
    )
    return [
        DiffItem(
            area="policy",
            key="bundle",
            a=a.policy_version,
            b=b.policy_version,
            note=f"files differ: {', '.join(changed)}" if changed else "settings differ",
            flagged=True,
        )
    ]


def _rules(a: EnvSnapshot, b: EnvSnapshot) -> list[DiffItem]:
    items = []
    for name in sorted(set(a.rules) | set(b.rules)):
        ra, rb = a.rules.get(name), b.rules.get(name)
        shown_a: Any
        shown_b: Any
        if ra == rb:
            continue
        if ra is None or rb is None:
            note = f"only in {a.env if rb is None else b.env}"
            shown_a, shown_b = ("present" if ra else None), ("present" if rb else None)
        else:
            fields = sorted(key for key in set(ra) | set(rb) if ra.get(key) != rb.get(key))
            note = f"differs in {', '.join(fields)}"
            shown_a = {key: ra.get(key) for key in fields}
            shown_b = {key: rb.get(key) for key in fields}
        items.append(DiffItem(area="rule", key=name, a=shown_a, b=shown_b, note=note, flagged=True))
    return items


def _flatten(value: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, Mapping):
            out.update(_flatten(item, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = item
    return out


def _settings(a: EnvSnapshot, b: EnvSnapshot) -> list[DiffItem]:
    fa, fb = _flatten(a.settings), _flatten(b.settings)
    return [
        DiffItem(
            area="setting",
            key=key,
            a=fa.get(key),
            b=fb.get(key),
            note="per-environment setting",
            flagged=False,
        )
        for key in sorted(set(fa) | set(fb))
        if fa.get(key) != fb.get(key)
    ]
