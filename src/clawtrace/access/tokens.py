"""API credentials: creation, hashing, verification, and what a role may do."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Final

from clawtrace.store import Store, TokenRecord

ALL_ENVS: Final = "*"
ROLES: Final = ("agent", "viewer", "operator", "admin")
# People's roles are ordered; ``agent`` may only send events.
_PEOPLE_RANK: Final = {"viewer": 1, "operator": 2, "admin": 3}
_PREFIX: Final = "ct_"
# The console keeps the credential a person logged in with in this HttpOnly cookie.
SESSION_COOKIE: Final = "clawtrace_token"


class AuthError(Exception):
    """A credential was missing, malformed, unknown, expired or revoked."""


class PermissionDenied(Exception):
    """A valid credential that does not allow the operation."""


@dataclass(frozen=True, slots=True)
class Credential:
    id: str
    env: str
    role: str
    name: str

    def covers_env(self, env: str) -> bool:
        return self.env in (ALL_ENVS, env)

    def may_ingest(self, env: str) -> bool:
        return self.role in ("agent", "admin") and self.covers_env(env)

    def has_role(self, needed: str, env: str | None = None) -> bool:
        """At least ``needed`` (viewer < operator < admin), in ``env`` if given."""
        if _PEOPLE_RANK.get(self.role, 0) < _PEOPLE_RANK[needed]:
            return False
        return env is None or self.covers_env(env)

    def readable_envs(self) -> list[str] | None:
        """Environments whose data this credential may read; None means all."""
        return None if self.env == ALL_ENVS else [self.env]

    def require(self, needed: str, env: str | None = None) -> None:
        if not self.has_role(needed, env):
            where = f" in environment {env!r}" if env else ""
            raise PermissionDenied(
                f"this credential ({self.role} for {self.env!r}) cannot do this: "
                f"it needs the {needed} role{where}"
            )


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

    The cache keeps 1,000 reconnecting agents from costing 1,000 store reads;
    a revocation takes effect within ``cache_seconds``.
    """

    def __init__(self, store: Store, cache_seconds: float = 5.0) -> None:
        self.store = store
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, Credential]] = {}

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
        if record.revoked is not None:
            raise AuthError(f"credential {token_id} was revoked")
        if record.expires is not None and record.expires <= now:
            raise AuthError(f"credential {token_id} has expired")
        credential = Credential(id=record.id, env=record.env, role=record.role, name=record.name)
        expiry = now + self.cache_seconds
        if record.expires is not None:
            expiry = min(expiry, record.expires)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[plain] = (expiry, credential)
        return credential
