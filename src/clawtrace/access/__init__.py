"""Who may do what: API credentials and roles."""

from clawtrace.access.tokens import (
    ALL_ENVS,
    ROLES,
    SESSION_COOKIE,
    Authenticator,
    AuthError,
    Credential,
    PermissionDenied,
    create_token,
)

__all__ = [
    "ALL_ENVS",
    "ROLES",
    "SESSION_COOKIE",
    "AuthError",
    "Authenticator",
    "Credential",
    "PermissionDenied",
    "create_token",
]
