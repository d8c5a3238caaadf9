"""Building and uploading agent releases in tests."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import httpx
import msgspec

from clawtrace.envs.release import MANIFEST_FILE, Release, build_release


def write_release_dir(
    directory: Path,
    *,
    role: str,
    version: str,
    script: str = "import time\nwhile True:\n    time.sleep(1)\n",
    env: dict[str, str] | None = None,
    secrets: dict[str, str] | None = None,
) -> Path:
    """A release directory whose command runs ``script`` with this Python.

    Inline (``python -c``): a release holds its manifest, prompts, hooks and
    policy; the agent's code is what its command names, installed on the node.
    """
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "prompts").mkdir(exist_ok=True)
    (directory / "prompts" / "system.md").write_text(f"You are {role} {version}.\n")
    lines = [
        f'role = "{role}"',
        f'version = "{version}"',
        f"command = {json.dumps([sys.executable, '-u', '-c', script])}",
        'prompts = ["prompts/system.md"]',
        "",
        "[model]",
        'provider = "openai"',
        'name = "gpt-4.1-mini"',
    ]
    if env:
        lines += ["", "[env]", *(f'{key} = "{value}"' for key, value in env.items())]
    if secrets:
        lines += ["", "[secrets]", *(f'{key} = "{value}"' for key, value in secrets.items())]
    (directory / MANIFEST_FILE).write_text("\n".join(lines) + "\n")
    return directory


def upload(http_url: str, token: str, directory: Path) -> Release:
    release = build_release(directory)
    response = httpx.post(
        f"{http_url}/api/v1/releases",
        content=msgspec.json.encode(release),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code in (200, 201), response.text
    return release


def post(http_url: str, token: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{http_url}{path}", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
