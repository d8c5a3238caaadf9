"""Who may do what: API credentials and roles (decided by Cedar, see rbac.py)."""

from clawtrace.access.audit import RefusalAudit
from clawtrace.access.rbac import ALL_ENVS, ROLES, RbacPolicyError
from clawtrace.access.tokens import (
    SESSION_COOKIE,
    Authenticator,
    AuthError,
    Credential,
    PermissionDenied,
    RefusalHook,
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
    "RbacPolicyError",
    "RefusalAudit",
    "RefusalHook",
    "create_token",
]
