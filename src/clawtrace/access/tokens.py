"""API credentials: creation, hashing, verification, and what a role may do.

What a role may do is decided by Cedar (``rbac.py``, ``people.cedar``); this
module keeps the small API the gateway, console and CLI call.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, NoReturn

from clawtrace.access.rbac import ACTION_FOR_ROLE, INGEST, Person
from clawtrace.access.rbac import ALL_ENVS as ALL_ENVS
from clawtrace.access.rbac import ROLES as ROLES
from clawtrace.store import Store, TokenRecord

log = logging.getLogger("clawtrace.access")

_PREFIX: Final = "ct_"
# The console keeps the credential a person logged in with in this HttpOnly cookie.
SESSION_COOKIE: Final = "clawtrace_token"
# ``require_ingest`` reports this as the needed role.
INGEST_ROLE: Final = "agent"


class AuthError(Exception):
    """A credential was missing, malformed, unknown, expired or revoked."""


class PermissionDenied(Exception):
    """A valid credential that does not allow the operation."""


# (credential, needed role, environment or None, the message the caller gets).
RefusalHook = Callable[["Credential", str, str | None, str], None]


@dataclass(frozen=True, slots=True)
class Credential:
    id: str
    env: str
    role: str
    name: str
    # Told about every refusal of ``require`` / ``require_ingest`` (the gateway audits them).
    on_refusal: RefusalHook | None = field(default=None, kw_only=True, repr=False, compare=False)
    _person: Person = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_person", Person(self.id, self.role, self.env))

    @property
    def actor(self) -> str:
        """Who the audit log records for this credential: ``ROLE:ID``."""
        return f"{self.role}:{self.id}"

    def covers_env(self, env: str) -> bool:
        """Whether ``env`` is within the credential's scope (whatever its role)."""
        return self.env in (ALL_ENVS, env)

    def may_ingest(self, env: str) -> bool:
        """Whether it may send events for ``env`` (agent and admin credentials; never env "*")."""
        return self._person.may(INGEST, env)

    def has_role(self, needed: str, env: str | None = None) -> bool:
        """At least ``needed`` (viewer < operator < admin), in ``env`` if given."""
        action = ACTION_FOR_ROLE.get(needed)
        if action is None:
            raise ValueError(f"unknown role {needed!r}: needed roles are {', '.join(ACTION_FOR_ROLE)}")
        # Without an environment the question is "anywhere": the credential's own scope.
        return self._person.may(action, self.env if env is None else env)

    def readable_envs(self) -> list[str] | None:
        """Environments whose data this credential may read; None means all."""
        return None if self.env == ALL_ENVS else [self.env]

    def require(self, needed: str, env: str | None = None) -> None:
        """Raise PermissionDenied (and tell ``on_refusal``) unless ``has_role(needed, env)``."""
        if not self.has_role(needed, env):
            self._refuse(needed, env, self._refusal_message(needed, env))

    def require_ingest(self, env: str) -> None:
        """Raise PermissionDenied (and tell ``on_refusal``) unless ``may_ingest(env)``."""
        if self.may_ingest(env):
            return
        if env == ALL_ENVS:
            how = "events belong to one environment: name it (the hello's env, or ?env= on a post)"
        else:
            command = f"clawtrace token create --env {shlex.quote(env)} --role agent"
            how = f"create an agent token for it (`{command}`)"
        self._refuse(
            INGEST_ROLE, env, f"{self._describe()} may not send events for environment {env!r}: {how}"
        )

    def _describe(self) -> str:
        named = f"{self.name!r}, " if self.name else ""
        return f"credential {self.id} ({named}{self.role} for {self.env!r})"

    def _refusal_message(self, needed: str, env: str | None) -> str:
        where = ""
        if env == ALL_ENVS:
            where = " in every environment ('*')"
        elif env:
            where = f" in environment {env!r}"
        target = env or self.env
        article = "an" if needed[0] in "aeiou" else "a"
        why = "; agent credentials may only send events" if self.role == "agent" else ""
        return (
            f"{self._describe()} cannot do this: it needs the {needed} role{where}{why}. "
            f"Use {article} {needed} token for {target!r} (an admin creates one with "
            f"`clawtrace token create --env {shlex.quote(target)} --role {needed}`)"
        )

    def _refuse(self, needed: str, env: str | None, message: str) -> NoReturn:
        if self.on_refusal is not None:
            try:
                self.on_refusal(self, needed, env, message)
            except Exception:
                # A broken audit must not turn a refusal into a 500; the refusal stands.
                log.exception("recording the refusal of credential %s failed", self.id)
        raise PermissionDenied(message)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_token(
    store: Store, *, env: str, role: str, name: str = "", ttl_seconds: float | None = None
) -> tuple[str, TokenRecord]:
    """Create a credential; the plain text is returned once and never stored."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: choose one of {', '.join(ROLES)}")
    if not env:
        raise ValueError("an environment is required (or '*' for all environments)")
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(24)
    now = time.time()
    record = TokenRecord(
        id=token_id,
        secret_hash=_hash(secret),
        env=env,
        role=role,
        name=name,
        created=now,
        expires=None if ttl_seconds is None else now + ttl_seconds,
        revoked=None,
    )
    store.add_token(record)
    return f"{_PREFIX}{token_id}_{secret}", record


def parse_token(plain: str) -> tuple[str, str]:
    if not plain.startswith(_PREFIX) or plain.count("_") < 2:
        raise AuthError(
            "malformed credential: expected ct_<id>_<secret> as printed by `clawtrace token create`"
        )
    token_id, _, secret = plain[len(_PREFIX) :].partition("_")
    return token_id, secret


class Authenticator:
    """Verifies credentials against the store, caching briefly.

    The cache keeps 1,000 reconnecting agents from costing 1,000 store reads
    (and Cedar entity parses); a revocation takes effect within ``cache_seconds``.
    ``on_refusal`` is told about every refusal of a credential it returned,
    including credentials returned before it was set.
    """

    def __init__(
        self, store: Store, cache_seconds: float = 5.0, on_refusal: RefusalHook | None = None
    ) -> None:
        self.store = store
        self.cache_seconds = cache_seconds
        self.on_refusal = on_refusal
        self._cache: dict[str, tuple[float, Credential]] = {}

    def _refused(self, credential: Credential, needed: str, env: str | None, message: str) -> None:
        if self.on_refusal is not None:
            self.on_refusal(credential, needed, env, message)

    def authenticate(self, plain: str | None) -> Credential:
        if not plain:
            raise AuthError("missing credential: send `Authorization: Bearer <token>`")
        now = time.time()
        cached = self._cache.get(plain)
        if cached is not None and cached[0] > now:
            return cached[1]
        token_id, secret = parse_token(plain)
        record = self.store.get_token(token_id)
        if record is None or not hmac.compare_digest(record.secret_hash, _hash(secret)):
            raise AuthError("unknown credential: create one with `clawtrace token create`")
        renew = "create a new one with `clawtrace token create`"
        if record.revoked is not None:
            raise AuthError(f"credential {token_id} was revoked: {renew}")
        if record.expires is not None and record.expires <= now:
            raise AuthError(f"credential {token_id} has expired: {renew}")
        try:
            credential = Credential(
                id=record.id, env=record.env, role=record.role, name=record.name, on_refusal=self._refused
            )
        except ValueError as exc:  # a role this version does not know
            raise AuthError(str(exc)) from None
        expiry = now + self.cache_seconds
        if record.expires is not None:
            expiry = min(expiry, record.expires)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[plain] = (expiry, credential)
        return credential
