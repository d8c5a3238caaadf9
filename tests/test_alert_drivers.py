"""The docker and kubernetes remediation drivers, through their real client libraries.

No engine or cluster runs here: each test starts a loopback HTTP server that
records every request and answers the way the Docker Engine API or the
Kubernetes API server would, and points the real client at it. The asserts
check the exact requests the libraries sent and the results the drivers made
of the answers.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import docker
import kubernetes.client
import pytest

from clawtrace.alerts.drivers.base import AgentTarget, RemediationDriver
from clawtrace.alerts.drivers.docker import DOCKER_API_VERSION, DockerDriver
from clawtrace.alerts.drivers.kubernetes import KubernetesDriver
from clawtrace.alerts.settings import DriverConfig

V = DOCKER_API_VERSION


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class FakeApi:
    """A loopback HTTP server: answers from ``routes``, 404 otherwise; records every request."""

    url: str
    routes: dict[tuple[str, str], tuple[int, Any]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)

    def answer(self, method: str, path: str, status: int, body: Any = None) -> None:
        self.routes[(method, path)] = (status, body)


@pytest.fixture
def api() -> Iterator[FakeApi]:
    fake = FakeApi(url="")

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            parts = urlsplit(self.path)
            fake.requests.append(
                Request(
                    self.command,
                    parts.path,
                    parts.query,
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                )
            )
            status, payload = fake.routes.get((self.command, parts.path), (404, {"message": "no route"}))
            data = b"" if payload is None else json.dumps(payload).encode()
            self.send_response(status)
            if data:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = do_PATCH = do_PUT = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.url = f"127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def closed_port() -> int:
    """A loopback port nothing listens on: connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def target(agent: str = "agent-7", **labels: str) -> AgentTarget:
    return AgentTarget(agent=agent, env="prod", region="eu-west", labels=labels)


# --- docker ---------------------------------------------------------------------------------------


def docker_driver(api: FakeApi, **config: Any) -> DockerDriver:
    client = docker.DockerClient(base_url=f"tcp://{api.url}", version=V)
    return DockerDriver(DriverConfig(type="docker", **config), client)


async def test_docker_restart_posts_restart_with_a_stop_timeout(api: FakeApi) -> None:
    api.answer("POST", f"/v{V}/containers/agent-7/restart", 204)
    driver: RemediationDriver = docker_driver(api)

    result = await driver.restart(target(), "tool_success_rate < 0.5")

    assert driver.name == "docker"
    assert result.ok, result.detail
    assert result.detail == "docker container 'agent-7' restarted"
    [request] = api.requests
    assert (request.method, request.path, request.query, request.body) == (
        "POST",
        f"/v{V}/containers/agent-7/restart",
        "t=10",
        b"",
    )


async def test_docker_stop_posts_stop(api: FakeApi) -> None:
    api.answer("POST", f"/v{V}/containers/agent-7/stop", 204)

    result = await docker_driver(api).stop(target(), "cost spike")

    assert result.ok, result.detail
    assert result.detail == "docker container 'agent-7' stopped"
    assert [(r.method, r.path, r.query) for r in api.requests] == [
        ("POST", f"/v{V}/containers/agent-7/stop", "t=10")
    ]


async def test_docker_container_template_is_filled_from_labels(api: FakeApi) -> None:
    api.answer("POST", f"/v{V}/containers/prod-claw_3/restart", 204)
    driver = docker_driver(api, container="{env}-{compose_service}")

    result = await driver.restart(target(compose_service="claw_3"), "r")

    assert result.ok, result.detail
    assert [r.path for r in api.requests] == [f"/v{V}/containers/prod-claw_3/restart"]


async def test_docker_missing_container_is_a_failed_result(api: FakeApi) -> None:
    api.answer("POST", f"/v{V}/containers/agent-7/restart", 404, {"message": "No such container: agent-7"})

    result = await docker_driver(api).restart(target(), "r")

    assert not result.ok
    assert (
        result.detail
        == "docker restart of container 'agent-7' failed: HTTP 404: no container named 'agent-7'"
    )


async def test_docker_engine_error_carries_status_and_message(api: FakeApi) -> None:
    api.answer(
        "POST",
        f"/v{V}/containers/agent-7/stop",
        500,
        {"message": "cannot stop container: permission denied"},
    )

    result = await docker_driver(api).stop(target(), "r")

    assert not result.ok
    assert result.detail == (
        "docker stop of container 'agent-7' failed: HTTP 500: cannot stop container: permission denied"
    )


async def test_docker_missing_label_fails_without_a_request(api: FakeApi) -> None:
    driver = docker_driver(api, container="{compose_project}-{agent}")

    result = await driver.restart(target(), "r")

    assert not result.ok
    assert "no label 'compose_project'" in result.detail
    assert "'{compose_project}-{agent}'" in result.detail
    assert api.requests == []


async def test_docker_rejects_a_name_that_would_leave_the_containers_path(api: FakeApi) -> None:
    driver = docker_driver(api, container="{box}")

    result = await driver.restart(target(box="../../images/x"), "r")

    assert not result.ok
    assert "'../../images/x'" in result.detail
    assert "not a valid container name" in result.detail
    assert api.requests == []


async def test_docker_unreachable_daemon_is_a_failed_result() -> None:
    port = closed_port()
    driver = DockerDriver(DriverConfig(type="docker", docker_base_url=f"tcp://127.0.0.1:{port}"))

    result = await driver.restart(target(), "r")

    assert not result.ok
    assert f"cannot reach the Docker daemon at tcp://127.0.0.1:{port}" in result.detail
    assert "Connection refused" in result.detail


async def test_docker_client_is_built_lazily_with_a_pinned_version(api: FakeApi) -> None:
    # Built before anything listens there: the constructor must not connect.
    driver = DockerDriver(DriverConfig(type="docker", docker_base_url=f"tcp://{api.url}"))
    api.answer("POST", f"/v{V}/containers/agent-7/stop", 204)

    result = await driver.stop(target(), "r")

    assert result.ok, result.detail
    # No /version request: the pinned API version needs no negotiation.
    assert [r.path for r in api.requests] == [f"/v{V}/containers/agent-7/stop"]


async def test_docker_without_base_url_uses_docker_host(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"tcp://{api.url}")
    monkeypatch.delenv("DOCKER_TLS_VERIFY", raising=False)
    monkeypatch.delenv("DOCKER_CERT_PATH", raising=False)
    api.answer("POST", f"/v{V}/containers/agent-7/restart", 204)

    result = await DockerDriver(DriverConfig(type="docker")).restart(target(), "r")

    assert result.ok, result.detail
    assert [r.path for r in api.requests] == [f"/v{V}/containers/agent-7/restart"]


async def test_docker_malformed_base_url_is_a_failed_result() -> None:
    driver = DockerDriver(DriverConfig(type="docker", docker_base_url="nonsense://x"))

    result = await driver.restart(target(), "r")

    assert not result.ok
    assert "cannot set up a client for nonsense://x" in result.detail


# --- kubernetes -----------------------------------------------------------------------------------

POD_PATH = "/api/v1/namespaces/agents/pods/a-7"
SCALE_PATH = "/apis/apps/v1/namespaces/agents/deployments/a-7/scale"


def k8s_driver(api: FakeApi, **config: Any) -> KubernetesDriver:
    configuration = kubernetes.client.Configuration()
    configuration.host = f"http://{api.url}"
    settings = {"pod": "{k8s_pod}", "namespace": "{k8s_namespace}", **config}
    return KubernetesDriver(
        DriverConfig(type="kubernetes", **settings), kubernetes.client.ApiClient(configuration)
    )


def k8s_target(**labels: str) -> AgentTarget:
    return target(k8s_pod="a-7", k8s_namespace="agents", **labels)


def pod(name: str, *, controlled: bool = True) -> dict[str, Any]:
    """A pod as the API server returns it from a graceful delete."""
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": "agents",
        "uid": "0d5c1e8a-6f0b-4d43-9e55-3f4f0a1b2c3d",
        "deletionTimestamp": "2025-01-01T00:00:30Z",
        "deletionGracePeriodSeconds": 30,
    }
    if controlled:
        metadata["ownerReferences"] = [
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": f"{name}-5d4f8",
                "uid": "6a1f2b3c-0000-4000-8000-000000000001",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": metadata,
        "spec": {"containers": [{"name": "agent", "image": "clawtrace/agent:1"}]},
        "status": {"phase": "Running"},
    }


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    """A Kubernetes Status object, as the API server sends with every error."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


SCALE = {
    "kind": "Scale",
    "apiVersion": "autoscaling/v1",
    "metadata": {"name": "a-7", "namespace": "agents"},
    "spec": {"replicas": 0},
    "status": {"replicas": 2, "selector": "app=a-7"},
}


async def test_kubernetes_restart_deletes_the_pod(api: FakeApi) -> None:
    api.answer("DELETE", POD_PATH, 200, pod("a-7"))
    driver: RemediationDriver = k8s_driver(api)

    result = await driver.restart(k8s_target(), "tool_success_rate < 0.5")

    assert driver.name == "kubernetes"
    assert result.ok, result.detail
    assert result.detail == "pod agents/a-7 deleted; its controller recreates it"
    [request] = api.requests
    assert (request.method, request.path, request.query, request.body) == ("DELETE", POD_PATH, "", b"")


async def test_kubernetes_restart_accepts_a_status_answer(api: FakeApi) -> None:
    api.answer("DELETE", POD_PATH, 200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})

    result = await k8s_driver(api).restart(k8s_target(), "r")

    assert result.ok, result.detail


async def test_kubernetes_restart_of_a_bare_pod_is_reported(api: FakeApi) -> None:
    api.answer("DELETE", POD_PATH, 200, pod("a-7", controlled=False))

    result = await k8s_driver(api).restart(k8s_target(), "r")

    # Deleted, but nothing brings it back: not the restart that was asked for.
    assert not result.ok
    assert "no controller" in result.detail
    assert [r.method for r in api.requests] == ["DELETE"]


async def test_kubernetes_stop_scales_the_deployment_to_zero(api: FakeApi) -> None:
    api.answer("PATCH", SCALE_PATH, 200, SCALE)
    driver = k8s_driver(api, deployment="{k8s_deployment}")

    result = await driver.stop(k8s_target(k8s_deployment="a-7"), "cost spike")

    assert result.ok, result.detail
    assert result.detail == "deployment agents/a-7 scaled to 0 replicas"
    [request] = api.requests
    assert (request.method, request.path, request.query) == ("PATCH", SCALE_PATH, "")
    assert request.headers["content-type"] == "application/merge-patch+json"
    assert request.json() == {"spec": {"replicas": 0}}


async def test_kubernetes_stop_without_a_deployment_is_refused(api: FakeApi) -> None:
    result = await k8s_driver(api).stop(k8s_target(), "r")

    assert not result.ok
    assert "a bare pod cannot be stopped without its deployment being configured" in result.detail
    assert api.requests == []


async def test_kubernetes_missing_pod_is_a_failed_result(api: FakeApi) -> None:
    api.answer("DELETE", POD_PATH, 404, status(404, "NotFound", 'pods "a-7" not found'))

    result = await k8s_driver(api).restart(k8s_target(), "r")

    assert not result.ok
    assert result.detail == 'deleting pod agents/a-7 failed: HTTP 404 Not Found: pods "a-7" not found'


async def test_kubernetes_forbidden_names_status_and_rbac(api: FakeApi) -> None:
    message = (
        'deployments.apps "a-7" is forbidden: User "system:serviceaccount:clawtrace:gateway" '
        'cannot patch resource "deployments/scale" in API group "apps" in the namespace "agents"'
    )
    api.answer("PATCH", SCALE_PATH, 403, status(403, "Forbidden", message))

    result = await k8s_driver(api, deployment="a-7").stop(k8s_target(), "r")

    assert not result.ok
    assert result.detail.startswith("scaling deployment agents/a-7 to 0 failed: HTTP 403 Forbidden")
    assert "RBAC" in result.detail
    assert result.detail.endswith(message)


async def test_kubernetes_missing_label_fails_without_a_request(api: FakeApi) -> None:
    result = await k8s_driver(api).restart(target(k8s_namespace="agents"), "r")

    assert not result.ok
    assert result.detail == "agent 'agent-7' has no label 'k8s_pod' for the pod template '{k8s_pod}'"
    assert api.requests == []


async def test_kubernetes_rejects_an_invalid_name(api: FakeApi) -> None:
    result = await k8s_driver(api).restart(target(k8s_pod="A_7", k8s_namespace="agents"), "r")

    assert not result.ok
    assert "'A_7'" in result.detail
    assert "not a valid Kubernetes pod name" in result.detail
    assert api.requests == []


async def test_kubernetes_unreachable_api_server_is_a_failed_result() -> None:
    port = closed_port()
    configuration = kubernetes.client.Configuration()
    configuration.host = f"http://127.0.0.1:{port}"
    driver = KubernetesDriver(
        DriverConfig(type="kubernetes", pod="{agent}"), kubernetes.client.ApiClient(configuration)
    )

    result = await driver.restart(target(), "r")

    assert not result.ok
    assert result.detail.startswith(
        f"deleting pod default/agent-7 failed: cannot reach the API server at http://127.0.0.1:{port}"
    )
    assert "Connection refused" in result.detail


async def test_kubernetes_loads_the_kubeconfig_lazily(api: FakeApi, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "test", "cluster": {"server": f"http://{api.url}"}}],
                "users": [{"name": "gateway", "user": {"token": "s3cret"}}],
                "contexts": [{"name": "test", "context": {"cluster": "test", "user": "gateway"}}],
                "current-context": "test",
            }
        )
    )
    # Built before the file is read: the constructor must not load it.
    driver = KubernetesDriver(
        DriverConfig(type="kubernetes", pod="a-7", namespace="agents", kubeconfig=str(kubeconfig))
    )
    api.answer("DELETE", POD_PATH, 200, pod("a-7"))

    result = await driver.restart(target(), "r")

    assert result.ok, result.detail
    [request] = api.requests
    assert (request.method, request.path) == ("DELETE", POD_PATH)
    assert request.headers["authorization"] == "Bearer s3cret"


async def test_kubernetes_missing_kubeconfig_is_a_failed_result(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    driver = KubernetesDriver(DriverConfig(type="kubernetes", kubeconfig=str(missing)))

    result = await driver.restart(target(), "r")

    assert not result.ok
    assert result.detail.startswith(
        f"deleting pod default/agent-7 failed: cannot load kubeconfig '{missing}'"
    )


async def test_kubernetes_outside_a_cluster_is_a_failed_result(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    driver = KubernetesDriver(DriverConfig(type="kubernetes"))

    result = await driver.stop(target(), "r")
    assert not result.ok  # no deployment configured: refused before any configuration

    result = await driver.restart(target(), "r")
    assert not result.ok
    assert "cannot load the in-cluster configuration" in result.detail
