"""Remediation through the Kubernetes API: delete an agent's pod, or scale its deployment to zero."""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
from collections.abc import Callable
from typing import Any

try:
    import kubernetes.client
    import kubernetes.config
    import urllib3.exceptions
    from kubernetes.client.exceptions import ApiException
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "the kubernetes driver needs the kubernetes package: pip install 'clawtrace[kubernetes]'"
    ) from exc

from clawtrace.alerts.drivers.base import ActionResult, AgentTarget
from clawtrace.alerts.settings import DriverConfig

# (connect, read) seconds: an unreachable API server must not hold a worker
# thread, and so the remediator, forever.
REQUEST_TIMEOUT = (5.0, 30.0)

# RFC 1123 names: namespaces are labels, pods and deployments subdomains.
# Checked here so a template that fills in badly fails with a reason instead
# of an API server 404 that looks like a missing pod.
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_SUBDOMAIN = re.compile(r"(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")

# Explicit, because this client's default for a dict body has changed between
# releases; a merge patch works on every resource, the scale subresource included.
_MERGE_PATCH = "application/merge-patch+json"


class _Refused(Exception):
    """An action that cannot be attempted; its message is the result's detail."""


class KubernetesDriver:
    """Restarts an agent by deleting its pod; stops it by scaling its deployment to zero."""

    name = "kubernetes"

    def __init__(self, config: DriverConfig, api_client: kubernetes.client.ApiClient | None = None) -> None:
        self._config = config
        self._api_client = api_client
        # Actions run in worker threads; the lock keeps two first actions from
        # loading the configuration twice.
        self._client_lock = threading.Lock()

    async def restart(self, target: AgentTarget, reason: str) -> ActionResult:
        try:
            namespace = _fill("namespace", self._config.namespace, target, _LABEL)
            pod = _fill("pod", self._config.pod, target, _SUBDOMAIN)
        except _Refused as exc:
            return ActionResult(ok=False, detail=str(exc))
        return await asyncio.to_thread(
            self._request, f"deleting pod {namespace}/{pod}", lambda api: _delete_pod(api, namespace, pod)
        )

    async def stop(self, target: AgentTarget, reason: str) -> ActionResult:
        if not self._config.deployment:
            return ActionResult(
                ok=False,
                detail="kubernetes stop refused: a bare pod cannot be stopped without its deployment "
                "being configured (set deployment in [gateway.alerts.driver]); "
                "deleting the pod would only get it recreated",
            )
        try:
            namespace = _fill("namespace", self._config.namespace, target, _LABEL)
            deployment = _fill("deployment", self._config.deployment, target, _SUBDOMAIN)
        except _Refused as exc:
            return ActionResult(ok=False, detail=str(exc))
        return await asyncio.to_thread(
            self._request,
            f"scaling deployment {namespace}/{deployment} to 0",
            lambda api: _scale_to_zero(api, namespace, deployment),
        )

    def _request(self, doing: str, call: Callable[[kubernetes.client.ApiClient], str]) -> ActionResult:
        try:
            api = self._get_api_client()
        except Exception as exc:
            return ActionResult(ok=False, detail=f"{doing} failed: {self._source()}: {exc}")
        try:
            detail = call(api)
        except _Refused as exc:
            return ActionResult(ok=False, detail=str(exc))
        except ApiException as exc:
            return ActionResult(ok=False, detail=f"{doing} failed: {_describe(exc)}")
        # urllib3 raises its own HTTPError family (MaxRetryError, ProtocolError)
        # for refused connections and timeouts; the rest are socket errors.
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            host = api.configuration.host
            return ActionResult(
                ok=False, detail=f"{doing} failed: cannot reach the API server at {host}: {exc}"
            )
        except Exception as exc:
            # The remediator audits a result; an exception would lose the action.
            return ActionResult(ok=False, detail=f"{doing} failed: {type(exc).__name__}: {exc}")
        return ActionResult(ok=True, detail=detail)

    def _get_api_client(self) -> kubernetes.client.ApiClient:
        with self._client_lock:
            if self._api_client is None:
                # A Configuration of our own, so the library's global default
                # (which other code in the process may use) is left alone.
                configuration = kubernetes.client.Configuration()
                # The config loaders, unlike the generated client, carry no annotations.
                if self._config.kubeconfig:
                    kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
                        config_file=os.path.expanduser(self._config.kubeconfig),
                        client_configuration=configuration,
                        # Refreshed credentials stay in memory: the gateway
                        # does not rewrite the operator's kubeconfig.
                        persist_config=False,
                    )
                else:
                    kubernetes.config.load_incluster_config(  # type: ignore[no-untyped-call]
                        client_configuration=configuration
                    )
                self._api_client = kubernetes.client.ApiClient(configuration)
            return self._api_client

    def _source(self) -> str:
        if self._config.kubeconfig:
            return f"cannot load kubeconfig {self._config.kubeconfig!r}"
        return "cannot load the in-cluster configuration (no kubeconfig is set)"


def _delete_pod(api: kubernetes.client.ApiClient, namespace: str, pod: str) -> str:
    # Raw response: only ownerReferences is wanted, and skipping the model
    # means a pod with fields this client does not know cannot fail a delete
    # that already happened.
    response = kubernetes.client.CoreV1Api(api).delete_namespaced_pod(
        pod, namespace, _preload_content=False, _request_timeout=REQUEST_TIMEOUT
    )
    deleted = _json(response)
    # A Pod body names its owners; anything else (a Status) says nothing either way.
    if deleted.get("kind") == "Pod":
        owners = deleted.get("metadata", {}).get("ownerReferences") or []
        controlled = any(owner.get("controller") for owner in owners)
    else:
        controlled = True
    if not controlled:
        raise _Refused(
            f"pod {namespace}/{pod} was deleted but has no controller, so nothing will recreate it: "
            "the agent is stopped, not restarted"
        )
    return f"pod {namespace}/{pod} deleted; its controller recreates it"


def _scale_to_zero(api: kubernetes.client.ApiClient, namespace: str, deployment: str) -> str:
    response = kubernetes.client.AppsV1Api(api).patch_namespaced_deployment_scale(
        deployment,
        namespace,
        {"spec": {"replicas": 0}},
        _content_type=_MERGE_PATCH,
        _preload_content=False,
        _request_timeout=REQUEST_TIMEOUT,
    )
    _json(response)
    return f"deployment {namespace}/{deployment} scaled to 0 replicas"


def _json(response: Any) -> dict[str, Any]:
    """The JSON object of a raw urllib3 response ({} if it is not one); releases the connection."""
    try:
        data = response.data
    finally:
        response.release_conn()
    try:
        parsed = json.loads(data)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _fill(what: str, template: str, target: AgentTarget, pattern: re.Pattern[str]) -> str:
    try:
        value = target.fill(template)
    except KeyError as exc:
        raise _Refused(
            f"agent {target.agent!r} has no label {exc.args[0]!r} for the {what} template {template!r}"
        ) from exc
    except (ValueError, IndexError, AttributeError) as exc:
        raise _Refused(f"invalid {what} template {template!r}: {exc}") from exc
    if not pattern.fullmatch(value):
        raise _Refused(
            f"{what} template {template!r} gave {value!r} for agent {target.agent!r}, "
            f"which is not a valid Kubernetes {what} name"
        )
    return value


def _describe(exc: ApiException) -> str:
    """``HTTP 404 Not Found: pods "a-7" not found`` from the API server's Status."""
    if not exc.status:
        # The client reports TLS failures as status 0.
        return f"no HTTP response: {exc.reason}"
    message = ""
    if exc.body:
        try:
            status = json.loads(exc.body)
        except ValueError:
            message = str(exc.body).strip()[:300]
        else:
            if isinstance(status, dict):
                message = str(status.get("message", ""))
    text = f"HTTP {exc.status} {exc.reason or ''}".rstrip()
    if exc.status in (401, 403):
        text += " (check the gateway's credentials and RBAC permissions, docs/alerts.md)"
    return f"{text}: {message}" if message else text
