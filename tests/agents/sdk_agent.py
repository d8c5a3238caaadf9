"""Drives the SDK the way agent code would; prints a JSON summary on its last line.

Usage: sdk_agent.py MODE
  all    one of every call, including a tool call that raises and an async one
  noop   many calls of each kind (meant to run without CLAWTRACE_SOCKET)
  flood  far more events than the queue holds, as fast as possible
  loop   a thought every 10 ms for 3 s (the node agent may vanish meanwhile)
  fork   a thought from a forked child process, then one from the parent
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time

from clawtrace import sdk


class ToolBroke(Exception):
    pass


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def run_all() -> dict[str, object]:
    sdk.thought("first")
    with sdk.tool_call("search", {"q": "cats", "when": time}) as call:
        call.output = ["a", "b"]
    reraised = False
    try:
        with sdk.tool_call("shell", {"command": "rm -rf /tmp/x"}):
            raise ToolBroke("disk on fire")
    except ToolBroke:
        reraised = True
    sdk.llm_call(model="claude", input_tokens=10, output_tokens=5, duration_ms=12.5, cached_input_tokens=4)
    sdk.log("a quiet line", stream="stderr")

    async def async_tool() -> None:
        async with sdk.tool_call("async_fetch", {"url": "u"}) as call:
            await asyncio.sleep(0.01)
            call.output = 200

    asyncio.run(async_tool())
    sdk.thought("last")
    return {"reraised": reraised, "flushed": sdk.flush(5)}


def run_noop() -> dict[str, object]:
    before = fds()
    start = time.perf_counter()
    reraised = False
    for i in range(10_000):
        sdk.thought("t")
        sdk.llm_call(model="m", input_tokens=1, output_tokens=1, duration_ms=1.0)
        with sdk.tool_call("tool", {"i": i}) as call:
            call.output = i
    try:
        with sdk.tool_call("tool"):
            raise ToolBroke("still raised")
    except ToolBroke:
        reraised = True
    return {
        "seconds": time.perf_counter() - start,
        "enabled": sdk.enabled(),
        "threads": threading.active_count(),
        "new_fds": fds() - before,
        "reraised": reraised,
    }


def run_flood() -> dict[str, object]:
    start = time.perf_counter()
    text = "z" * 10_000
    for _ in range(50_000):
        sdk.thought(text)
    return {"seconds": time.perf_counter() - start}


def run_loop() -> dict[str, object]:
    errors = 0
    end = time.monotonic() + 3
    i = 0
    while time.monotonic() < end:
        i += 1
        try:
            sdk.thought(f"loop {i}")
            with sdk.tool_call("t", {"i": i}):
                pass
        except Exception:
            errors += 1
        time.sleep(0.01)
    return {"errors": errors, "iterations": i}


def run_fork() -> dict[str, object]:
    sdk.thought("parent before fork")
    sdk.flush(5)
    pid = os.fork()
    if pid == 0:
        sdk.thought("from the forked child")
        sdk.flush(5)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    sdk.thought("parent after fork")
    return {"child_status": status, "flushed": sdk.flush(5)}


result = {"all": run_all, "noop": run_noop, "flood": run_flood, "loop": run_loop, "fork": run_fork}[
    sys.argv[1]
]()
result["stats"] = sdk.stats()
print(json.dumps(result), flush=True)
