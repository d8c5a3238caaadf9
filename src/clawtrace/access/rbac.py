"""The role model in Cedar: who may read, operate, administer or send events, and where.

The policies (``people.cedar``) and their schema (``people.cedarschema``) ship
in the package and are validated when this module is imported, so a gateway
with broken ones refuses to start: Cedar skips a policy that errors at run
time, which would turn a typo into a silent refusal (or, in a ``forbid``, a
silent grant). Decisions use the same engine as the agents' tool-call policies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import cedarpy

ALL_ENVS: Final = "*"
ROLES: Final = ("agent", "viewer", "operator", "admin")
# What each person's role adds; ``require("operator")`` asks Cedar for "operate".
ACTION_FOR_ROLE: Final = {"viewer": "read", "operator": "operate", "admin": "administer"}
INGEST: Final = "ingest"
ACTIONS: Final = (*ACTION_FOR_ROLE.values(), INGEST)

POLICY_FILE: Final = Path(__file__).with_name("people.cedar")
SCHEMA_FILE: Final = Path(__file__).with_name("people.cedarschema")

_NS: Final = "ClawTrace"
_ACTION_UIDS: Final = {name: {"type": f"{_NS}::Action", "id": name} for name in ACTIONS}


class RbacPolicyError(Exception):
    """The role policies or their schema do not parse or do not validate."""


@dataclass(frozen=True, slots=True)
class PeoplePolicy:
    """The parsed handles: parsing costs milliseconds, a decision with them microseconds."""

    schema: cedarpy.Schema
    policy_set: cedarpy.PolicySet


def load_policy(policies: str, schema_text: str) -> PeoplePolicy:
    """Parse and validate; raises RbacPolicyError saying what is wrong."""
    fix = "reinstall ClawTrace (the packaged clawtrace/access/people.* files were changed)"
    try:
        schema = cedarpy.Schema.from_str(schema_text)
    except ValueError as exc:
        raise RbacPolicyError(f"{SCHEMA_FILE.name} does not parse: {exc}; {fix}") from None
    try:
        policy_set = cedarpy.PolicySet.from_str(policies)
    except ValueError as exc:
        raise RbacPolicyError(f"{POLICY_FILE.name} does not parse: {exc}; {fix}") from None
    result = cedarpy.validate_policies(policies, schema)
    if not result.validation_passed:
        problems = "; ".join(str(error) for error in result.errors) or "no details"
        raise RbacPolicyError(
            f"{POLICY_FILE.name} does not validate against {SCHEMA_FILE.name}: {problems}; {fix}"
        )
    return PeoplePolicy(schema, policy_set)


POLICY: Final = load_policy(POLICY_FILE.read_text(encoding="utf-8"), SCHEMA_FILE.read_text(encoding="utf-8"))


def _env_uid(env: str) -> dict[str, str]:
    return {"type": f"{_NS}::Environment", "id": env}


class Person:
    """One credential as a Cedar principal, its entity parsed once.

    The Authenticator caches credentials, and each keeps its ``Person``, so a
    check is one ``is_authorized`` call with pre-parsed handles.
    """

    __slots__ = ("_entities", "_principal", "policy")

    def __init__(self, credential_id: str, role: str, env: str, policy: PeoplePolicy = POLICY) -> None:
        if role not in ROLES:
            raise ValueError(
                f"credential {credential_id} has role {role!r}, which this version does not know "
                f"(roles: {', '.join(ROLES)}): revoke it and create a new one"
            )
        self.policy = policy
        self._principal = {"type": f"{_NS}::Person", "id": credential_id}
        entity = {
            "uid": self._principal,
            "attrs": {"role": {"__entity": {"type": f"{_NS}::Role", "id": role}}, "env": env},
            # Membership in its environment is what `principal in resource` tests.
            "parents": [_env_uid(env)],
        }
        self._entities = cedarpy.Entities.from_json_str(json.dumps([entity]), policy.schema)

    def may(self, action: str, env: str) -> bool:
        """Whether Cedar permits ``action`` on environment ``env`` ("*": all of them)."""
        request = {"principal": self._principal, "action": _ACTION_UIDS[action], "resource": _env_uid(env)}
        return cedarpy.is_authorized(request, self.policy.policy_set, self._entities).allowed
