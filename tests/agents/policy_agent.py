"""An agent whose tool calls meet the node agent's policy; prints a JSON summary on its last line.

Usage: policy_agent.py MODE [ARGS]
  sdk              tool calls through the SDK: a refused rm -rf /, an allowed rm -rf ./build,
                   an async refusal, and authorize() without a tool call
  approval         a "deploy" tool call that needs a person, twice (the test approves, then rejects)
  shell CANARY     shell commands through PATH: sh -c "echo hi", sh -c "rm -rf CANARY",
                   bash -c, a script file, and what SHELL points at
  wait INFO STOP   write the environment the node agent gave it to INFO, then idle until STOP exists
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from clawtrace import sdk


def denial(exc: sdk.PolicyDenied) -> dict[str, Any]:
    return {
        "rule": exc.rule,
        "reason": exc.reason,
        "command": exc.command,
        "text": str(exc),
        "decided_by": exc.decided_by,
        "approval_id": exc.approval_id,
    }


def run_sdk() -> dict[str, Any]:
    out: dict[str, Any] = {"enforced": sdk.enforced()}
    ran_rm_root = False
    try:
        with sdk.tool_call("exec", {"command": "rm -rf /"}):
            ran_rm_root = True  # never reached: the call is refused before it runs
    except sdk.PolicyDenied as exc:
        out["root"] = denial(exc)
    out["ran_rm_root"] = ran_rm_root

    Path("build").mkdir(exist_ok=True)
    with sdk.tool_call("exec", {"command": "rm -rf ./build"}) as call:
        call.output = subprocess.run(["rm", "-rf", "./build"], check=True).returncode
        out["build_authorization"] = call.authorization.decision if call.authorization else None
    out["build_removed"] = not Path("build").exists()

    async def refused_async() -> dict[str, Any] | None:
        try:
            async with sdk.tool_call("exec", {"command": "sudo reboot"}):
                return None
        except sdk.PolicyDenied as exc:
            return denial(exc)

    out["async"] = asyncio.run(refused_async())
    asked = sdk.authorize("delete_database", {"name": "prod"})
    out["authorize"] = {"decision": asked.decision, "rule": asked.rule, "reason": asked.reason}
    out["search_allowed"] = sdk.authorize("search", {"q": "cats"}).allowed
    out["flushed"] = sdk.flush(5)
    return out


def run_approval() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for attempt in ("first", "second"):
        started = time.monotonic()
        try:
            with sdk.tool_call("deploy", {"service": "web"}) as call:
                call.output = "deployed"
                auth = call.authorization
                out[attempt] = {"ran": True, "approval_id": auth.approval_id if auth else None}
                out[attempt]["decided_by"] = auth.decided_by if auth else None
        except sdk.PolicyDenied as exc:
            out[attempt] = {"ran": False, **denial(exc)}
        out[attempt]["waited"] = time.monotonic() - started
    out["flushed"] = sdk.flush(5)
    return out


def sh(argv: list[str]) -> dict[str, Any]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    return {"status": done.returncode, "stdout": done.stdout, "stderr": done.stderr}


def run_shell(canary: str) -> dict[str, Any]:
    Path("build.sh").write_text("echo built\n")
    return {
        "echo": sh(["sh", "-c", "echo hi"]),
        "rm": sh(["sh", "-c", f"rm -rf {canary}"]),
        "bash": sh(["bash", "-lc", "echo from bash"]),
        "script": sh(["sh", "build.sh"]),
        "nested": sh(["bash", "-c", f"sh -c 'rm -r -f {canary}'"]),
        "shell_env": os.environ.get("SHELL", ""),
        "canary_kept": Path(canary).exists(),
    }


def run_wait(info: str, stop: str) -> dict[str, Any]:
    keys = ("CLAWTRACE_SOCKET", "CLAWTRACE_POLICY", "SHELL", "PATH")
    Path(info).write_text(json.dumps({key: os.environ.get(key) for key in keys}))
    deadline = time.monotonic() + 120
    while not Path(stop).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return {"stopped": Path(stop).exists()}


mode = sys.argv[1]
if mode == "sdk":
    result = run_sdk()
elif mode == "approval":
    result = run_approval()
elif mode == "shell":
    result = run_shell(sys.argv[2])
else:
    result = run_wait(sys.argv[2], sys.argv[3])
print(json.dumps(result), flush=True)
