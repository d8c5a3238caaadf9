"""Roles per environment, decided by Cedar: the role model, credentials, and every route x every role."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from clawtrace.access import (
    Authenticator,
    AuthError,
    Credential,
    PermissionDenied,
    RbacPolicyError,
    RefusalAudit,
    create_token,
)
from clawtrace.access.rbac import POLICY_FILE, SCHEMA_FILE, load_policy
from clawtrace.protocol import CloseCode, ErrorCode
from clawtrace.store import Store, TokenRecord, open_store
from gateway_process import GatewayProcess

WAIT = 15.0
PEOPLE = ("viewer", "operator", "admin")
RANK = {"viewer": 1, "operator": 2, "admin": 3}
ROLES = ("agent", *PEOPLE)
CREDENTIAL_ENVS = ("dev", "prod", "*")
TARGET_ENVS = (None, "dev", "prod", "*")


# --- the role model ----------------------------------------------------------------------------


def expected_role(role: str, cred_env: str, needed: str, env: str | None) -> bool:
    """The issue's role model, written without Cedar: what the policies must agree with."""
    if role == "agent" or RANK[role] < RANK[needed]:
        return False
    # No environment: "in its own scope". "*" (all environments) only for a "*" credential.
    return env is None or cred_env == "*" or cred_env == env


def expected_ingest(role: str, cred_env: str, env: str) -> bool:
    return role in ("agent", "admin") and env != "*" and cred_env in ("*", env)


def test_the_shipped_policies_validate_against_the_schema() -> None:
    policy = load_policy(POLICY_FILE.read_text(), SCHEMA_FILE.read_text())
    assert policy.policy_set is not None


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("cred_env", CREDENTIAL_ENVS)
def test_every_role_and_environment_against_every_needed_role(role: str, cred_env: str) -> None:
    credential = Credential(id="c1", env=cred_env, role=role, name="")
    for needed in PEOPLE:
        for env in TARGET_ENVS:
            want = expected_role(role, cred_env, needed, env)
            assert credential.has_role(needed, env) is want, (role, cred_env, needed, env)
            if want:
                credential.require(needed, env)
            else:
                with pytest.raises(PermissionDenied):
                    credential.require(needed, env)
    for env in ("dev", "prod", "*"):
        assert credential.may_ingest(env) is expected_ingest(role, cred_env, env), (role, cred_env, env)


# A few rows spelt out, so that the table above cannot drift along with a wrong reference.
@pytest.mark.parametrize(
    ("role", "cred_env", "needed", "env", "allowed"),
    [
        ("viewer", "dev", "viewer", "dev", True),
        ("viewer", "dev", "viewer", "prod", False),
        ("viewer", "*", "viewer", "prod", True),
        ("viewer", "*", "operator", "prod", False),
        ("operator", "prod", "operator", "prod", True),
        ("operator", "prod", "operator", None, True),
        ("operator", "prod", "admin", "prod", False),
        ("operator", "*", "operator", "*", True),
        ("admin", "prod", "admin", "prod", True),
        ("admin", "prod", "admin", "*", False),
        ("admin", "prod", "viewer", "dev", False),
        ("admin", "*", "admin", "*", True),
        ("agent", "dev", "viewer", "dev", False),
        ("agent", "*", "viewer", None, False),
    ],
)
def test_spelt_out_decisions(role: str, cred_env: str, needed: str, env: str | None, allowed: bool) -> None:
    assert Credential(id="c", env=cred_env, role=role, name="").has_role(needed, env) is allowed


def test_star_credentials_cover_every_environment_and_the_global_resource() -> None:
    viewer = Credential(id="v", env="*", role="viewer", name="")
    assert viewer.readable_envs() is None and viewer.covers_env("anything")
    assert viewer.has_role("viewer", "anything") and viewer.has_role("viewer", "*")
    assert not viewer.has_role("operator", "anything")
    scoped = Credential(id="s", env="dev", role="admin", name="")
    assert scoped.readable_envs() == ["dev"] and not scoped.covers_env("prod")
    # Token management and other cross-environment things are Environment "*": "*" admins only.
    assert not scoped.has_role("admin", "*")
    assert Credential(id="a", env="*", role="admin", name="").has_role("admin", "*")


def test_agent_credentials_only_send_events() -> None:
    agent = Credential(id="a", env="dev", role="agent", name="dev-1")
    assert agent.may_ingest("dev") and not agent.may_ingest("prod") and not agent.may_ingest("*")
    agent.require_ingest("dev")
    with pytest.raises(PermissionDenied, match="create an agent token"):
        agent.require_ingest("prod")
    with pytest.raises(PermissionDenied, match="agent credentials may only send events"):
        agent.require("viewer", "dev")
    # Even a "*" agent credential: events land in one environment.
    with pytest.raises(PermissionDenied, match="events belong to one environment"):
        Credential(id="a", env="*", role="agent", name="").require_ingest("*")


def test_refusal_message_names_the_credential_the_need_and_the_fix() -> None:
    viewer = Credential(id="abc123", env="dev", role="viewer", name="alice")
    with pytest.raises(PermissionDenied) as refused:
        viewer.require("operator", "prod")
    message = str(refused.value)
    for part in (
        "abc123",
        "'alice'",
        "viewer for 'dev'",
        "needs the operator role in environment 'prod'",
        "clawtrace token create --env prod --role operator",
    ):
        assert part in message, (part, message)
    with pytest.raises(PermissionDenied, match="needs the admin role in every environment"):
        viewer.require("admin", "*")
    with pytest.raises(PermissionDenied, match=r"needs the admin role\. .*--env dev --role admin"):
        viewer.require("admin")


def test_unknown_roles_are_refused_loudly() -> None:
    with pytest.raises(ValueError, match="unknown role 'root'"):
        Credential(id="c", env="dev", role="viewer", name="").has_role("root")
    with pytest.raises(ValueError, match="does not know"):
        Credential(id="c", env="dev", role="root", name="")


# --- refusals reach the hook ---------------------------------------------------------------------


def test_on_refusal_is_told_every_refusal_and_nothing_else() -> None:
    seen: list[tuple[str, str, str | None, str]] = []
    credential = Credential(
        id="c", env="dev", role="viewer", name="", on_refusal=lambda c, n, e, m: seen.append((c.id, n, e, m))
    )
    credential.require("viewer", "dev")
    assert credential.has_role("operator", "dev") is False
    assert credential.may_ingest("dev") is False
    assert seen == []  # questions are not refusals
    with pytest.raises(PermissionDenied) as refused:
        credential.require("operator", "dev")
    with pytest.raises(PermissionDenied):
        credential.require_ingest("dev")
    assert seen[0] == ("c", "operator", "dev", str(refused.value))
    assert seen[1][:3] == ("c", "agent", "dev")


def test_a_failing_hook_does_not_turn_the_refusal_into_something_else() -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("audit store is down")

    credential = Credential(id="c", env="dev", role="viewer", name="", on_refusal=broken)
    with pytest.raises(PermissionDenied):
        credential.require("admin", "dev")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = open_store("sqlite://", tmp_path)
    try:
        yield opened
    finally:
        opened.close()


def test_authenticator_hook_applies_to_credentials_already_cached(store: Store) -> None:
    auth = Authenticator(store)
    plain, _ = create_token(store, env="dev", role="viewer")
    credential = auth.authenticate(plain)
    seen: list[str] = []
    auth.on_refusal = lambda c, needed, env, message: seen.append(f"{c.id} {needed} {env}")
    assert auth.authenticate(plain) is credential  # from the cache
    with pytest.raises(PermissionDenied):
        credential.require("operator", "prod")
    assert seen == [f"{credential.id} operator prod"]


def test_expired_and_revoked_credentials_are_refused(store: Store) -> None:
    auth = Authenticator(store, cache_seconds=0.0)
    # A second to live: a busy machine may take a while between creating and checking it.
    expiring, _ = create_token(store, env="dev", role="admin", ttl_seconds=1.0)
    assert auth.authenticate(expiring).role == "admin"
    time.sleep(1.1)
    with pytest.raises(AuthError, match="has expired"):
        auth.authenticate(expiring)
    revoked, record = create_token(store, env="dev", role="operator")
    assert auth.authenticate(revoked).role == "operator"
    store.revoke_token(record.id, time.time())
    with pytest.raises(AuthError, match="was revoked"):
        auth.authenticate(revoked)
    with pytest.raises(AuthError, match="unknown credential"):
        auth.authenticate(revoked[:-2] + "xx")
    # Only the hash is stored.
    stored = store.get_token(record.id)
    assert stored is not None and revoked.split("_", 2)[2] not in stored.secret_hash


def test_the_cache_never_outlives_an_expiry(store: Store) -> None:
    auth = Authenticator(store, cache_seconds=60.0)
    plain, _ = create_token(store, env="dev", role="viewer", ttl_seconds=1.0)
    auth.authenticate(plain)
    time.sleep(1.1)
    with pytest.raises(AuthError, match="has expired"):
        auth.authenticate(plain)


def test_a_stored_role_this_version_does_not_know_cannot_authenticate(store: Store) -> None:
    """A row written by a newer (or tampered-with) version: refused, not a 500."""
    secret = "s3cret"
    store.add_token(
        TokenRecord(
            id="r00t",
            secret_hash=hashlib.sha256(secret.encode()).hexdigest(),
            env="dev",
            role="root",
            name="",
            created=time.time(),
            expires=None,
            revoked=None,
        )
    )
    with pytest.raises(AuthError, match="role 'root'"):
        Authenticator(store).authenticate(f"ct_r00t_{secret}")


class FakeWriter:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.calls = 0

    def call(self, fn: Callable[[Store], Any]) -> asyncio.Future[Any]:
        self.calls += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result(fn(self.store))
        return future


async def test_refusal_audit_writes_entries_and_collapses_repeats(store: Store) -> None:
    now = [1000.0]
    audit = RefusalAudit(FakeWriter(store), window_seconds=10.0, clock=lambda: now[0])
    credential = Credential(id="c9", env="dev", role="viewer", name="", on_refusal=audit)
    for _ in range(5):
        with pytest.raises(PermissionDenied):
            credential.require("operator", "dev")
    now[0] += 11
    with pytest.raises(PermissionDenied):
        credential.require("operator", "dev")
    with pytest.raises(PermissionDenied):
        credential.require("admin")
    entries = store.query_audit(envs=["dev"], limit=10)
    assert len(entries) == 3, entries
    by_time = sorted(entries, key=lambda e: (e.ts, e.detail["needed"] == "admin"))
    assert [e.detail["repeats"] for e in by_time] == [0, 4, 0]
    first = by_time[0]
    assert (first.action, first.result, first.actor, first.env) == ("refused", "refused", "viewer:c9", "dev")
    assert "needs the operator role in environment 'dev'" in first.reason
    assert by_time[2].detail == {"needed": "admin", "env": None, "repeats": 0}


def test_refusal_audit_outside_an_event_loop_does_not_raise(store: Store) -> None:
    credential = Credential(
        id="c", env="dev", role="viewer", name="", on_refusal=RefusalAudit(FakeWriter(store))
    )
    with pytest.raises(PermissionDenied):
        credential.require("operator", "dev")


# --- the shipped Cedar is checked when ClawTrace starts ------------------------------------------


def test_policies_that_do_not_validate_are_refused() -> None:
    schema = SCHEMA_FILE.read_text()
    shipped = POLICY_FILE.read_text()
    with pytest.raises(RbacPolicyError, match=r"does not validate.*admn"):
        load_policy(shipped.replace('Role::"admin"', 'Role::"admn"', 1), schema)
    with pytest.raises(RbacPolicyError, match="does not validate"):
        load_policy(shipped.replace("principal.env ==", "principal.environment ==", 1), schema)
    with pytest.raises(RbacPolicyError, match="does not parse"):
        load_policy(shipped + "\npermit (", schema)
    with pytest.raises(RbacPolicyError, match=r"people\.cedarschema does not parse"):
        load_policy(shipped, schema + "\nentity")


def test_a_broken_policy_file_stops_the_import() -> None:
    """What `clawtrace up` would meet: clawtrace.access does not import, so nothing starts."""
    code = textwrap.dedent(
        """
        import pathlib
        real = pathlib.Path.read_text
        def read_text(self, *args, **kwargs):
            text = real(self, *args, **kwargs)
            if self.name == "people.cedar":
                text = text.replace('Role::"operator"', 'Role::"operater"')
            return text
        pathlib.Path.read_text = read_text
        import clawtrace.access
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "RbacPolicyError" in result.stderr and "operater" in result.stderr, result.stderr[-2000:]


# --- every route x every role on a real gateway --------------------------------------------------

# Who may call each route. A role not listed must get 403 (before any body is looked at);
# a listed one anything but 401/403. Add every new route here: test_every_route_is_in_the_table
# fails until it is, so that no route ships without a decision about who may call it.
PUBLIC = frozenset({"anonymous", *ROLES})
VIEWER = frozenset(PEOPLE)
OPERATOR = frozenset({"operator", "admin"})
ADMIN = frozenset({"admin"})
INGEST = frozenset({"agent", "admin"})


@dataclass(frozen=True)
class Access:
    allowed: frozenset[str]
    # A console page: no credential is a redirect to /login, not a 401.
    page: bool = False
    # Known gaps, reported and expected to be fixed: role -> what happens instead. The test fails
    # (strict xfail) once the route behaves, so the entry gets removed.
    gaps: tuple[tuple[str, str], ...] = ()


ROUTES: dict[tuple[str, str], Access] = {
    ("GET", "/healthz"): Access(PUBLIC),
    ("GET", "/readyz"): Access(PUBLIC),
    ("GET", "/api/docs"): Access(PUBLIC),
    ("GET", "/docs/oauth2-redirect"): Access(PUBLIC),  # FastAPI's, not under docs_url
    ("GET", "/api/openapi.json"): Access(PUBLIC),
    ("MOUNT", "/static"): Access(PUBLIC),
    ("GET", "/login"): Access(PUBLIC),
    ("POST", "/login"): Access(PUBLIC),
    ("POST", "/logout"): Access(PUBLIC),
    ("GET", "/"): Access(VIEWER, page=True),
    ("GET", "/agents/{agent}"): Access(VIEWER, page=True),
    ("GET", "/fleet/table"): Access(VIEWER, page=True),
    ("GET", "/agents/{agent}/panel"): Access(VIEWER, page=True),
    ("GET", "/agents/{agent}/replay"): Access(VIEWER, page=True),
    ("GET", "/charts"): Access(VIEWER, page=True),
    ("GET", "/alerts"): Access(VIEWER, page=True),
    ("GET", "/alerts/live"): Access(VIEWER, page=True),
    ("GET", "/policies"): Access(VIEWER, page=True),
    ("GET", "/policies/approvals"): Access(VIEWER, page=True),
    ("GET", "/envs"): Access(VIEWER, page=True),
    ("GET", "/envs/live"): Access(VIEWER, page=True),
    ("GET", "/envs/{env}/roles/{role}"): Access(VIEWER, page=True),
    ("GET", "/envs/{env}/roles/{role}/live"): Access(VIEWER, page=True),
    # The console's cookie-authenticated copies of API routes (clawtrace/console/actions.py).
    ("GET", "/console/api/v1/agents/{agent}/events"): Access(VIEWER),
    ("GET", "/console/api/v1/metrics"): Access(VIEWER),
    ("POST", "/console/api/v1/agents/{agent}/commands"): Access(OPERATOR),
    ("POST", "/console/api/v1/alerts/{key:path}/ack"): Access(OPERATOR),
    ("POST", "/console/api/v1/silences"): Access(OPERATOR),
    ("DELETE", "/console/api/v1/silences/{silence_id}"): Access(OPERATOR),
    ("POST", "/console/api/v1/approvals/{approval_id}"): Access(OPERATOR),
    ("POST", "/console/api/v1/authorize"): Access(OPERATOR),
    ("POST", "/console/api/v1/deployments"): Access(OPERATOR),
    # A viewer may only ask for the gates (check: true).
    ("POST", "/console/api/v1/promotions"): Access(VIEWER),
    ("POST", "/console/api/v1/promotions/approvals"): Access(ADMIN),
    ("POST", "/console/api/v1/rollbacks"): Access(OPERATOR),
    ("GET", "/metrics"): Access(VIEWER),
    ("POST", "/v1/events"): Access(INGEST),
    # OTLP/HTTP (clawtrace/otlp/receiver.py).
    ("POST", "/v1/traces"): Access(INGEST),
    ("POST", "/v1/logs"): Access(INGEST),
    ("POST", "/v1/metrics"): Access(INGEST),
    ("WS", "/v1/agent"): Access(INGEST),
    ("WS", "/api/v1/live"): Access(VIEWER),
    ("GET", "/api/v1/agents"): Access(VIEWER),
    ("GET", "/api/v1/agents/{agent}"): Access(VIEWER),
    ("GET", "/api/v1/agents/{agent}/sessions"): Access(VIEWER),
    ("GET", "/api/v1/agents/{agent}/events"): Access(VIEWER),
    ("POST", "/api/v1/agents/{agent}/commands"): Access(OPERATOR),
    ("GET", "/api/v1/fleet"): Access(VIEWER),
    ("GET", "/api/v1/metrics"): Access(VIEWER),
    ("GET", "/api/v1/alerts"): Access(VIEWER),
    ("GET", "/api/v1/alerts/history"): Access(VIEWER),
    ("POST", "/api/v1/alerts/{key:path}/ack"): Access(OPERATOR),
    ("GET", "/api/v1/alerts/rules"): Access(VIEWER),
    ("PUT", "/api/v1/alerts/rules/{env}"): Access(ADMIN),
    ("GET", "/api/v1/silences"): Access(VIEWER),
    ("POST", "/api/v1/silences"): Access(OPERATOR),
    ("DELETE", "/api/v1/silences/{silence_id}"): Access(OPERATOR),
    ("GET", "/api/v1/audit"): Access(VIEWER),
    ("GET", "/api/v1/policies"): Access(VIEWER),
    ("GET", "/api/v1/policies/{env}"): Access(VIEWER),
    ("PUT", "/api/v1/policies/{env}"): Access(ADMIN),
    ("POST", "/api/v1/policies/{env}/rollback"): Access(ADMIN),
    ("POST", "/v1/authorize"): Access(frozenset({"agent", "operator", "admin"})),
    ("GET", "/api/v1/approvals"): Access(VIEWER),
    ("GET", "/api/v1/approvals/{approval_id}"): Access(VIEWER),
    ("POST", "/api/v1/approvals/{approval_id}"): Access(OPERATOR),
    # Releases belong to no environment until promoted: operator (viewer) in any environment.
    ("POST", "/api/v1/releases"): Access(OPERATOR),
    ("GET", "/api/v1/releases"): Access(VIEWER),
    ("GET", "/api/v1/releases/{ref}"): Access(VIEWER),
    # Environments: the role is checked again in the environment the body names.
    ("GET", "/api/v1/envs"): Access(VIEWER),
    ("GET", "/api/v1/envs/diff"): Access(VIEWER),
    ("GET", "/api/v1/envs/{env}/roles/{role}"): Access(VIEWER),
    ("POST", "/api/v1/deployments"): Access(OPERATOR),
    # A viewer may only ask for the gates (check: true).
    ("POST", "/api/v1/promotions"): Access(VIEWER),
    ("POST", "/api/v1/promotions/approvals"): Access(ADMIN),
    ("POST", "/api/v1/rollbacks"): Access(OPERATOR),
    # Node agents fetch the releases their environment was given.
    ("GET", "/v1/releases/{release_id}"): Access(INGEST),
}


def app_routes() -> set[tuple[str, str]]:
    from fastapi.routing import APIRoute, APIWebSocketRoute
    from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute

    from clawtrace.gateway.app import create_app
    from clawtrace.gateway.settings import load_settings

    found: set[tuple[str, str]] = set()

    def walk(routes: list[BaseRoute], prefix: str) -> None:
        for route in routes:
            included = getattr(route, "original_router", None)
            if included is not None:  # FastAPI >= 0.165 keeps included routers as one entry
                walk(included.routes, prefix + route.include_context.prefix)  # type: ignore[attr-defined]
            elif isinstance(route, (APIWebSocketRoute, WebSocketRoute)):
                found.add(("WS", prefix + route.path))
            elif isinstance(route, Mount):
                found.add(("MOUNT", prefix + route.path))
            elif isinstance(route, (APIRoute, Route)):
                methods = set(route.methods or ())
                if "GET" in methods:
                    methods.discard("HEAD")  # Starlette adds HEAD to every GET
                found.update((method, prefix + route.path) for method in methods)
            else:
                raise AssertionError(f"a route of a kind this test does not know: {route!r}")

    walk(create_app(load_settings()).routes, "")
    return found


def test_every_route_is_in_the_table() -> None:
    routes = app_routes()
    missing = sorted(routes - ROUTES.keys())
    assert not missing, f"routes with no access decision in tests/test_rbac.py ROUTES: {missing}"
    stale = sorted(ROUTES.keys() - routes)
    assert not stale, f"ROUTES lists routes the gateway no longer has: {stale}"


SEEDED_AGENT = "rbac-1"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    process = GatewayProcess(tmp_path_factory.mktemp("gw-rbac"))
    process.start()
    try:
        event = {
            "kind": "log",
            "seq": 1,
            "ts": "2026-03-01T12:00:00Z",
            "session": "s",
            "stream": "stdout",
            "line": "hello",
        }
        response = httpx.post(
            f"{process.http_url}/v1/events",
            content=json.dumps(event).encode(),
            params={"agent": SEEDED_AGENT},
            headers={"Authorization": f"Bearer {process.token('dev', 'agent')}"},
            timeout=WAIT,
        )
        assert response.status_code == 200 and response.json()["errors"] == [], response.text
        yield process
    finally:
        log = process.log()
        process.stop()
        assert "Traceback" not in log, log[-5000:]


@pytest.fixture(scope="module")
def silence_id(gw: GatewayProcess) -> str:
    body = {"target": "nothing-*", "reason": "rbac test", "duration_seconds": 3600, "env": "dev"}
    response = httpx.post(
        f"{gw.http_url}/api/v1/silences",
        json=body,
        headers={"Authorization": f"Bearer {gw.token('*', 'admin')}"},
        timeout=WAIT,
    )
    assert response.status_code == 201, response.text
    silence: str = response.json()["silence"]["id"]
    return silence


def token_for(gw: GatewayProcess, who: str) -> str | None:
    """anonymous, or a role's credential for environment "dev" (where the seeded agent is)."""
    return None if who == "anonymous" else gw.token("dev", who)


def call(gw: GatewayProcess, method: str, path: str, token: str | None, **params: str) -> httpx.Response:
    """One request with a body no route accepts: a refusal must come before looking at it."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    cookies = {"clawtrace_token": token} if token else {}
    if path == "/v1/events":
        params.setdefault("env", "dev")
    content = b"{" if method in ("POST", "PUT") else None
    with httpx.Client(base_url=gw.http_url, cookies=cookies, timeout=WAIT) as client:
        return client.request(method, path, headers=headers, params=params, content=content)


HTTP_ROUTES = sorted(key for key in ROUTES if key[0] not in ("WS", "MOUNT"))


@pytest.mark.parametrize(("method", "template"), HTTP_ROUTES, ids=[f"{m} {p}" for m, p in HTTP_ROUTES])
@pytest.mark.parametrize("who", ["anonymous", *ROLES])
def test_route_against_role(
    gw: GatewayProcess, silence_id: str, method: str, template: str, who: str, request: pytest.FixtureRequest
) -> None:
    access = ROUTES[(method, template)]
    gap = dict(access.gaps).get(who)
    if gap is not None:
        request.applymarker(pytest.mark.xfail(reason=gap, strict=True))
    values = {
        "agent": SEEDED_AGENT,
        "env": "dev",
        "silence_id": silence_id,
        "key": "no-such-alert",
        "approval_id": "no-such-approval",
        "ref": "no-such-release",
        "role": "researcher",
        "release_id": "0" * 64,
    }
    path = re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: values[m.group(1)], template)
    response = call(gw, method, path, token_for(gw, who))
    status = response.status_code
    what = f"{who} {method} {path} -> {status} {response.text[:300]}"
    if who in access.allowed:
        assert status not in (401, 403), what
        assert status < 500, what
    elif who == "anonymous":
        if access.page:
            assert status == 303 and response.headers["location"].startswith("/login"), what
        else:
            assert status == 401, what
            assert response.json()["error"]["code"] == ErrorCode.UNAUTHORIZED, what
    else:
        assert status == 403, what
        if not access.page:
            error = response.json()["error"]
            assert error["code"] == ErrorCode.FORBIDDEN, what
            assert error["message"], what


def test_an_other_environments_operator_cannot_act_on_dev(gw: GatewayProcess) -> None:
    """The role is per environment: operator for prod is nobody in dev."""
    prod_operator = gw.token("prod", "operator")
    response = call(gw, "POST", f"/api/v1/agents/{SEEDED_AGENT}/commands", prod_operator)
    # An agent of an environment the credential cannot read does not exist for it.
    assert response.status_code == 404, response.text
    response = call(gw, "PUT", "/api/v1/alerts/rules/dev", prod_operator)
    assert response.status_code == 403, response.text
    assert "operator for 'prod'" in response.json()["error"]["message"]
    for path in ("/api/v1/agents", "/api/v1/fleet"):
        response = call(gw, "GET", path, prod_operator, env="dev")
        assert response.status_code == 403, (path, response.text)


def test_refusals_are_audited(gw: GatewayProcess) -> None:
    """The gateway wires Authenticator(on_refusal=RefusalAudit(writer)): a refusal is in the audit log."""
    viewer = gw.token("dev", "viewer", name="audited viewer")
    response = call(gw, "PUT", "/api/v1/alerts/rules/dev", viewer)
    assert response.status_code == 403
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        entries = gw.get("/api/v1/audit", env="dev").json()["entries"]
        refused = [e for e in entries if e["action"] == "refused" and "audited viewer" in e["reason"]]
        if refused:
            assert refused[0]["detail"]["needed"] == "admin"
            return
        time.sleep(0.1)
    pytest.fail(
        f"no refusal in the audit log within {WAIT:g} s: does app.py pass on_refusal=RefusalAudit(writer)?"
    )


# --- the WebSockets ------------------------------------------------------------------------------


async def refused_with(url: str, token: str | None, first: dict[str, Any] | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with connect(url, additional_headers=headers, open_timeout=WAIT) as ws:
        if first is not None:
            await ws.send(json.dumps(first))
        messages = []
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(WAIT):
                while True:
                    messages.append(json.loads(await ws.recv()))
        assert closed.value.rcvd is not None
        errors = [m["code"] for m in messages if m["type"] == "error"]
        assert len(errors) == 1, messages
        return closed.value.rcvd.code, errors[0]


async def first_answer(url: str, token: str, first: dict[str, Any]) -> dict[str, Any]:
    async with connect(url, additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=WAIT) as ws:
        await ws.send(json.dumps(first))
        answer: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
        return answer


async def stays_open(url: str, token: str) -> bool:
    """Accepted: nothing arrives (no error, no close) while nothing happens."""
    async with connect(url, additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=WAIT) as ws:
        try:
            async with asyncio.timeout(0.5):
                await ws.recv()
        except TimeoutError:
            return True
        return False


@pytest.mark.parametrize("who", ROLES)
async def test_live_tail_against_role(gw: GatewayProcess, who: str) -> None:
    url = f"{gw.ws_url}/api/v1/live?env=dev"
    token = gw.token("dev", who)
    if who in ROUTES[("WS", "/api/v1/live")].allowed:
        assert await stays_open(url, token)
    else:
        assert await refused_with(url, token) == (CloseCode.FORBIDDEN, ErrorCode.FORBIDDEN)


async def test_live_tail_refuses_other_environments_and_strangers(gw: GatewayProcess) -> None:
    url = f"{gw.ws_url}/api/v1/live?env=prod"
    assert await refused_with(url, gw.token("dev", "viewer")) == (CloseCode.FORBIDDEN, ErrorCode.FORBIDDEN)
    assert await refused_with(url, None) == (CloseCode.UNAUTHORIZED, ErrorCode.UNAUTHORIZED)


@pytest.mark.parametrize("who", ROLES)
async def test_agent_socket_against_role(gw: GatewayProcess, who: str) -> None:
    url = f"{gw.ws_url}/v1/agent"
    hello = {"type": "hello", "agent": f"rbac-ws-{who}", "env": "dev"}
    token = gw.token("dev", who)
    if who in ROUTES[("WS", "/v1/agent")].allowed:
        answer = await first_answer(url, token, hello)
        assert answer["type"] == "welcome", answer
    else:
        assert await refused_with(url, token, hello) == (CloseCode.FORBIDDEN, ErrorCode.FORBIDDEN)
