"""Remediation through the Docker Engine API: restart or stop an agent's container."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable

try:
    import docker
    import docker.errors
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError("the docker driver needs the docker package: pip install 'clawtrace[docker]'") from exc

from clawtrace.alerts.drivers.base import ActionResult, AgentTarget
from clawtrace.alerts.settings import DriverConfig

# Pinned so creating the client sends no /version request. 1.44 (Engine 25) is
# the oldest version Engine 29 still serves; restart and stop have not changed
# since long before it.
DOCKER_API_VERSION = "1.44"
# Seconds the engine waits after SIGTERM before it kills the container.
STOP_TIMEOUT_SECONDS = 10

# Docker's own rule for container names; IDs (hex) match it too. Checked here
# because the SDK leaves "/" unescaped in the URL, so a label like "../x" would
# otherwise reach some other endpoint.
_CONTAINER_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")


class DockerDriver:
    """Restarts or stops the container named by ``config.container`` for an agent."""

    name = "docker"

    def __init__(self, config: DriverConfig, client: docker.DockerClient | None = None) -> None:
        self._config = config
        self._client = client
        # Actions run in worker threads; the lock keeps two first actions from
        # building two clients.
        self._client_lock = threading.Lock()

    async def restart(self, target: AgentTarget, reason: str) -> ActionResult:
        return await self._act(
            target,
            "restart",
            lambda api, container: api.restart(container, timeout=STOP_TIMEOUT_SECONDS),
        )

    async def stop(self, target: AgentTarget, reason: str) -> ActionResult:
        return await self._act(
            target,
            "stop",
            lambda api, container: api.stop(container, timeout=STOP_TIMEOUT_SECONDS),
        )

    async def _act(
        self, target: AgentTarget, verb: str, call: Callable[[docker.APIClient, str], None]
    ) -> ActionResult:
        container = _container_name(self._config.container, target)
        if isinstance(container, ActionResult):
            return container
        return await asyncio.to_thread(self._request, verb, container, call)

    def _request(
        self, verb: str, container: str, call: Callable[[docker.APIClient, str], None]
    ) -> ActionResult:
        failed = f"docker {verb} of container {container!r} failed"
        try:
            client = self._get_client()
        except Exception as exc:
            # DockerException for a malformed base_url or DOCKER_HOST, anything
            # else for a broken Docker CLI config the SDK reads.
            return ActionResult(
                ok=False, detail=f"{failed}: cannot set up a client for {self._daemon()}: {exc}"
            )
        try:
            # The low-level API: one request per action, where the high-level
            # containers.get() would first inspect the container.
            call(client.api, container)
        except docker.errors.NotFound:
            return ActionResult(ok=False, detail=f"{failed}: HTTP 404: no container named {container!r}")
        except docker.errors.APIError as exc:
            return ActionResult(
                ok=False, detail=f"{failed}: HTTP {exc.status_code}: {exc.explanation or exc}"
            )
        # requests' connection errors and timeouts are OSErrors.
        except (docker.errors.DockerException, OSError) as exc:
            return ActionResult(
                ok=False, detail=f"{failed}: cannot reach the Docker daemon at {self._daemon()}: {exc}"
            )
        except Exception as exc:
            # The remediator audits a result; an exception would lose the action.
            return ActionResult(ok=False, detail=f"{failed}: {type(exc).__name__}: {exc}")
        done = "restarted" if verb == "restart" else "stopped"
        return ActionResult(ok=True, detail=f"docker container {container!r} {done}")

    def _get_client(self) -> docker.DockerClient:
        with self._client_lock:
            if self._client is None:
                if self._config.docker_base_url:
                    self._client = docker.DockerClient(
                        base_url=self._config.docker_base_url, version=DOCKER_API_VERSION
                    )
                else:
                    self._client = docker.from_env(version=DOCKER_API_VERSION)
            return self._client

    def _daemon(self) -> str:
        return self._config.docker_base_url or "DOCKER_HOST or the local socket"


def _container_name(template: str, target: AgentTarget) -> str | ActionResult:
    """The container for ``target``, or the failed result saying why there is none."""
    try:
        name = target.fill(template)
    except KeyError as exc:
        return ActionResult(
            ok=False,
            detail=f"agent {target.agent!r} has no label {exc.args[0]!r} "
            f"for the container template {template!r}",
        )
    except (ValueError, IndexError, AttributeError) as exc:
        return ActionResult(ok=False, detail=f"invalid container template {template!r}: {exc}")
    if not _CONTAINER_NAME.fullmatch(name):
        return ActionResult(
            ok=False,
            detail=f"container template {template!r} gave {name!r} for agent {target.agent!r}, "
            "which is not a valid container name",
        )
    return name
