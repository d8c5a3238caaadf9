"""The command of the test releases: says what the node agent gave it, then idles until SIGTERM.

Usage: release_agent.py [TOOL...]
  Prints one line of JSON: the release it runs (CLAWTRACE_RELEASE, _REF, _ROLE), its
  working directory, the first line of prompts/system.md there, GREETING (a
  release [env] value), the sha256 of API_KEY (a release secret: its digest, so
  the value itself never reaches a log), the model settings, and whether the
  node agent's own credentials leaked into its environment.
  Then it calls each TOOL once through the SDK and prints the outcomes as one more line.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from clawtrace import sdk


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    prompt = Path("prompts/system.md")
    secret = os.environ.get("API_KEY")
    facts: dict[str, Any] = {
        "release": os.environ.get("CLAWTRACE_RELEASE"),
        "ref": os.environ.get("CLAWTRACE_RELEASE_REF"),
        "role": os.environ.get("CLAWTRACE_ROLE"),
        "release_dir": os.environ.get("CLAWTRACE_RELEASE_DIR"),
        "cwd": os.getcwd(),
        "prompt": prompt.read_text().splitlines()[0] if prompt.exists() else None,
        "greeting": os.environ.get("GREETING"),
        "api_key_sha256": hashlib.sha256(secret.encode()).hexdigest() if secret is not None else None,
        "model": {k: v for k, v in os.environ.items() if k.startswith("CLAWTRACE_MODEL_")},
        "leaked": sorted(k for k in ("CLAWTRACE_TOKEN", "VAULT_TOKEN") if k in os.environ),
        "pid": os.getpid(),
    }
    print(json.dumps(facts), flush=True)
    if len(sys.argv) > 1:
        outcomes: list[dict[str, Any]] = []
        for tool in sys.argv[1:]:
            outcome: dict[str, Any] = {"tool": tool}
            try:
                with sdk.tool_call(tool, {"query": "weather"}) as call:
                    call.output = "sunny"
                outcome["ran"] = True
            except sdk.PolicyDenied as exc:
                outcome.update(ran=False, rule=exc.rule, reason=exc.reason)
            outcomes.append(outcome)
        sdk.flush()
        print(json.dumps({"outcomes": outcomes}), flush=True)
    while True:
        time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main())
