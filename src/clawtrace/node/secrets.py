"""Resolving a release's ``[secrets]`` on the node, at the moment its agent process starts.

A release holds references only (``env:NAME``, ``file:/abs/path``,
``vault:mount/path#key``); the values live on the node or in Vault and are
read here, each time a release is started. They go into the agent process's
environment and nowhere else: never to the spool, the node agent's log or an
event. Error messages therefore name the secret and its reference, and say
what is missing, but never quote a value.

Every secret is tried, and all the problems are reported at once: an
operator fixing a node wants the whole list, not one item per deploy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx

VAULT_ADDR_ENV: Final = "VAULT_ADDR"
VAULT_TOKEN_ENV: Final = "VAULT_TOKEN"
VAULT_NAMESPACE_ENV: Final = "VAULT_NAMESPACE"
VAULT_TIMEOUT: Final = 10.0
# A secret is a credential, not a data set: bigger than this is a wrong path.
MAX_SECRET_BYTES: Final = 64 * 1024
# Names a release may not read with env:NAME: the node agent's own credentials,
# which the (possibly misbehaving) agent process has no business holding.
NODE_CREDENTIALS: Final = frozenset({"CLAWTRACE_TOKEN", VAULT_TOKEN_ENV})


class SecretError(Exception):
    """Secrets that could not be resolved; ``problems`` say which, and what to do, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class VaultRef:
    """``vault:mount/path#key``: KV v2 at ``mount``, the secret at ``path``, one ``key`` of it."""

    mount: str
    path: str
    key: str

    @property
    def api_path(self) -> str:
        return f"{self.mount}/data/{self.path}"


def parse_vault_ref(rest: str) -> VaultRef | None:
    location, _, key = rest.partition("#")
    mount, _, path = location.strip("/").partition("/")
    if not mount or not path or not key:
        return None
    return VaultRef(mount=mount, path=path, key=key)


async def resolve_secrets(
    refs: Mapping[str, str],
    environ: Mapping[str, str],
    *,
    request_timeout: float = VAULT_TIMEOUT,
    transport: httpx.AsyncBaseTransport | None = None,
) -> dict[str, str]:
    """The value of every ``NAME = "scheme:ref"`` in ``refs``; raises SecretError listing every failure.

    ``environ`` is the node agent's own environment: where ``env:`` values and
    VAULT_ADDR / VAULT_TOKEN come from.
    """
    values: dict[str, str] = {}
    problems: list[str] = []
    vault: dict[str, VaultRef] = {}
    for name, ref in refs.items():
        scheme, _, rest = ref.partition(":")
        label = f"secret {name} ({ref})"
        if scheme == "env":
            value, problem = _from_env(rest, environ)
        elif scheme == "file":
            value, problem = await asyncio.to_thread(_from_file, rest)
        elif scheme == "vault":
            parsed = parse_vault_ref(rest)
            if parsed is not None:
                vault[name] = parsed
                continue
            value, problem = (
                None,
                "not a vault reference: write vault:MOUNT/PATH#KEY (e.g. vault:secret/app#token)",
            )
        else:
            value, problem = None, "unknown scheme: use env:NAME, file:/absolute/path or vault:MOUNT/PATH#KEY"
        if problem is not None:
            problems.append(f"{label}: {problem}")
        elif value is not None:
            values[name] = value
    if vault:
        found, vault_problems = await _from_vault(refs, vault, environ, request_timeout, transport)
        values.update(found)
        problems.extend(vault_problems)
    for name, value in values.items():
        if "\0" in value:
            problems.append(
                f"secret {name} ({refs[name]}): the value holds a NUL byte, which an environment variable "
                "cannot: store it encoded (base64, say) and decode it in the agent"
            )
    if problems:
        raise SecretError(problems)
    return values


def _from_env(name: str, environ: Mapping[str, str]) -> tuple[str | None, str | None]:
    if name in NODE_CREDENTIALS:
        return None, (
            f"{name} is a credential of the node agent itself and is never handed to an agent process: "
            "give the agent a credential of its own"
        )
    value = environ.get(name)
    if value is None:
        return None, f"{name} is not set in the node agent's environment: export it before `clawtrace run`"
    return value, None


def _from_file(path: str) -> tuple[str | None, str | None]:
    file = Path(path)
    if not file.is_absolute():
        return None, "file: needs an absolute path (file:/etc/agent/key)"
    try:
        with file.open("rb") as f:
            data = f.read(MAX_SECRET_BYTES + 1)
    except FileNotFoundError:
        return None, f"no such file {path} on this node: create it (readable by the node agent's user)"
    except IsADirectoryError:
        return None, f"{path} is a directory: name the file that holds the secret"
    except PermissionError:
        return None, f"the node agent's user cannot read {path}: fix its owner or mode"
    except OSError as exc:
        return None, f"cannot read {path}: {exc.strerror or exc}"
    if len(data) > MAX_SECRET_BYTES:
        return None, f"{path} is larger than {MAX_SECRET_BYTES // 1024} KiB: is it the right file?"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None, f"{path} is not UTF-8 text: store the secret as text (base64 for binary data)"
    # Editors and `echo > file` add a newline that is not part of the secret.
    if text.endswith("\n"):
        text = text[:-1]
        if text.endswith("\r"):
            text = text[:-1]
    return text, None


async def _from_vault(
    refs: Mapping[str, str],
    wanted: dict[str, VaultRef],
    environ: Mapping[str, str],
    request_timeout: float,
    transport: httpx.AsyncBaseTransport | None,
) -> tuple[dict[str, str], list[str]]:
    addr = environ.get(VAULT_ADDR_ENV, "").strip().rstrip("/")
    token = environ.get(VAULT_TOKEN_ENV, "").strip()
    missing = [n for n, v in ((VAULT_ADDR_ENV, addr), (VAULT_TOKEN_ENV, token)) if not v]
    if missing:
        unset = " and ".join(missing)
        how = "export VAULT_ADDR=https://vault.example:8200 and VAULT_TOKEN=<a token that can read it>"
        return {}, [
            f"secret {name} ({refs[name]}): {unset} {'is' if len(missing) == 1 else 'are'} not set in the "
            f"node agent's environment: {how} before `clawtrace run`"
            for name in wanted
        ]
    headers = {"X-Vault-Token": token}
    namespace = environ.get(VAULT_NAMESPACE_ENV, "").strip()
    if namespace:
        headers["X-Vault-Namespace"] = namespace
    values: dict[str, str] = {}
    problems: list[str] = []
    # One read per Vault secret, however many of its keys the release uses.
    documents: dict[str, dict[str, Any] | str] = {}
    async with httpx.AsyncClient(
        base_url=addr, headers=headers, timeout=request_timeout, transport=transport
    ) as client:
        for name, ref in wanted.items():
            label = f"secret {name} ({refs[name]})"
            document = documents.get(ref.api_path)
            if document is None:
                document = await _read_vault(client, addr, ref)
                documents[ref.api_path] = document
            if isinstance(document, str):
                problems.append(f"{label}: {document}")
                continue
            if ref.key not in document:
                keys = ", ".join(sorted(document)) or "none"
                problems.append(
                    f"{label}: the Vault secret {ref.mount}/{ref.path} has no key {ref.key!r}"
                    f" (its keys: {keys})"
                )
                continue
            value = document[ref.key]
            if isinstance(value, bool | int | float):
                value = str(value).lower() if isinstance(value, bool) else str(value)
            if not isinstance(value, str):
                problems.append(
                    f"{label}: the value of {ref.key!r} in {ref.mount}/{ref.path} is a JSON "
                    f"{type(value).__name__}, not a string: store it as a string"
                )
                continue
            values[name] = value
    return values, problems


async def _read_vault(client: httpx.AsyncClient, addr: str, ref: VaultRef) -> dict[str, Any] | str:
    """The ``data.data`` of one KV v2 secret, or why it could not be read (a problem line)."""
    where = f"{addr}/v1/{ref.api_path}"
    try:
        response = await client.get(f"/v1/{ref.api_path}")
    except httpx.HTTPError as exc:
        return f"cannot reach Vault at {addr} ({type(exc).__name__}: {exc}): check VAULT_ADDR and the network"
    if response.status_code == 403:
        return (
            f"Vault refused VAULT_TOKEN for {where} (403): the token is expired or its policy cannot read "
            f'"{ref.api_path}": grant read on it'
        )
    if response.status_code == 404:
        return (
            f"Vault has no secret at {where} (404): is the KV v2 mount {ref.mount!r} right? Write it with "
            f"`vault kv put -mount={ref.mount} {ref.path} {ref.key}=...`"
        )
    if response.status_code != 200:
        return f"Vault answered {where} with HTTP {response.status_code}: {_vault_errors(response)}"
    try:
        body = response.json()
    except ValueError:
        return f"Vault's answer for {where} is not JSON: is VAULT_ADDR the Vault server?"
    data = body.get("data") if isinstance(body, dict) else None
    document = data.get("data") if isinstance(data, dict) else None
    if document is None and isinstance(data, dict):
        return (
            f"the latest version of {ref.mount}/{ref.path} in Vault is deleted: "
            "restore it (vault kv undelete) or write it again"
        )
    if not isinstance(document, dict):
        return (
            f"Vault's answer for {where} has no data.data object: is {ref.mount!r} a KV version 2 mount? "
            "(KV v1 is not supported)"
        )
    return document


def _vault_errors(response: httpx.Response) -> str:
    try:
        errors = response.json().get("errors")
    except (ValueError, AttributeError):
        errors = None
    if isinstance(errors, list) and errors:
        return "; ".join(str(e)[:200] for e in errors)
    return response.text[:200] or "(no body)"
